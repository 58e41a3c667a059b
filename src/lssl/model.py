"""Deep sequence models: encoder -> n residual blocks (SSM layer, norm, dropout) -> pooling ->
decoder (LSSL App. B.4, S4's backbone), with a recurrent `step` for streaming the whole stack."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._checks import check_choice, check_finite, check_length
from .layer import LAYERS, SSMLayer, refuse_low_precision

Tensor = torch.Tensor

NORMS = ("layer", "batch", "none")
POOLINGS = ("mean", "last", "none")


class Norm(nn.Module):
    """LayerNorm or BatchNorm over the H features of (B, L, H) (or (B, H) in step mode)."""

    def __init__(self, d_model: int, kind: str):
        super().__init__()
        check_choice("norm", kind, NORMS)
        self.kind = kind
        self.norm = {"layer": nn.LayerNorm, "batch": nn.BatchNorm1d, "none": lambda d: nn.Identity()}[kind](d_model)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "batch" and x.dim() == 3:
            return self.norm(x.transpose(1, 2)).transpose(1, 2)
        return self.norm(x)


class Block(nn.Module):
    """Residual block: pre-norm x + Dropout(layer(Norm(x))) or post-norm Norm(x + Dropout(layer(x)))."""

    def __init__(self, layer: SSMLayer, norm: str = "layer", prenorm: bool = True, dropout: float = 0.0):
        super().__init__()
        self.layer, self.prenorm = layer, prenorm
        self.norm = Norm(layer.d_model, norm)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, rate: float = 1.0, dt_scale: Tensor | None = None) -> Tensor:
        """(B, L, H) -> (B, L, H); rate and dt_scale (B, L) as in `SSMLayer.forward`."""
        if self.prenorm:
            return x + self.dropout(self.layer(self.norm(x), rate=rate, dt_scale=dt_scale))
        return self.norm(x + self.dropout(self.layer(x, rate=rate, dt_scale=dt_scale)))

    def step(
        self, x: Tensor, state: Tensor, rate: float = 1.0, dt_scale: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(B, H) -> (B, H), one sample; dt_scale (B,) as in `SSMLayer.step`."""
        if self.prenorm:
            y, state = self.layer.step(self.norm(x), state, rate, dt_scale)
            return x + self.dropout(y), state
        y, state = self.layer.step(x, state, rate, dt_scale)
        return self.norm(x + self.dropout(y)), state


class SequenceModel(nn.Module):
    """Encoder -> blocks -> pooling -> decoder.

    Args:
        d_input: input features per step (Linear encoder), or None with `vocab_size` for token
            inputs (Embedding encoder).
        d_output: output size (classes or regression targets).
        d_model: H. n_layers: number of blocks.
        layer: one of `LAYERS` ('lssl', 's4', 's4d'); layer_args: its keyword arguments
            (besides d_model).
        norm: 'layer', 'batch' or 'none'. prenorm: pre- (True) or post-norm blocks; a pre-norm
            stack ends with one more norm. dropout: on each residual branch.
        pooling: 'mean' or 'last' over time (classification/regression of whole sequences), or
            'none' for an output at every step.
        vocab_size: number of tokens, for an Embedding encoder.
        target_mean, target_std: (d_output,) statistics of regression targets; the output is then
            decoder(h) * target_std + target_mean, so the network itself predicts standardised
            targets (stored as buffers, saved with the weights). None: the decoder's output.
    Input (B, L, d_input) float or (B, L) token ids; output (B, d_output), or (B, L, d_output)
    with pooling='none'.
    """

    def __init__(
        self,
        d_input: int | None,
        d_output: int,
        d_model: int = 128,
        n_layers: int = 4,
        layer: str = "s4d",
        layer_args: dict[str, Any] | None = None,
        norm: str = "layer",
        prenorm: bool = True,
        dropout: float = 0.0,
        pooling: str = "mean",
        vocab_size: int | None = None,
        target_mean: list[float] | None = None,
        target_std: list[float] | None = None,
    ):
        super().__init__()
        check_choice("layer", layer, LAYERS)
        check_choice("pooling", pooling, POOLINGS)
        check_choice("norm", norm, NORMS)
        check_length("d_output", d_output)
        check_length("n_layers", n_layers)
        if (d_input is None) == (vocab_size is None):
            raise ValueError("give exactly one of d_input (float inputs) and vocab_size (token inputs)")
        if d_input is not None:
            check_length("d_input", d_input)
        self.d_input, self.vocab_size, self.pooling, self.d_model = d_input, vocab_size, pooling, d_model
        self.encoder = nn.Embedding(vocab_size, d_model) if vocab_size else nn.Linear(d_input, d_model)
        self.blocks = nn.ModuleList(
            Block(LAYERS[layer](d_model, **(layer_args or {})), norm=norm, prenorm=prenorm, dropout=dropout)
            for _ in range(n_layers)
        )
        self.final_norm = Norm(d_model, norm if prenorm else "none")
        self.decoder = nn.Linear(d_model, d_output)
        if (target_mean is None) != (target_std is None):
            raise ValueError("give both target_mean and target_std, or neither")
        self.standardised = target_mean is not None
        if self.standardised:
            mean, std = torch.tensor(target_mean, dtype=torch.float64), torch.tensor(target_std, dtype=torch.float64)
            if mean.shape != (d_output,) or std.shape != (d_output,) or not (std > 0).all():
                raise ValueError(f"target_mean and target_std must be {d_output} numbers with target_std > 0")
            self.register_buffer("target_mean", mean.to(torch.get_default_dtype()))
            self.register_buffer("target_std", std.to(torch.get_default_dtype()))

    def _decode(self, h: Tensor) -> Tensor:
        out = self.decoder(h)
        return out * self.target_std + self.target_mean if self.standardised else out

    def _encode(self, x: Tensor) -> Tensor:
        if self.vocab_size:
            if x.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"x must hold integer token ids for an Embedding encoder, got {x.dtype}")
            if x.numel() and (x.min() < 0 or x.max() >= self.vocab_size):
                raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got [{x.min()}, {x.max()}]")
            return self.encoder(x)
        if not x.is_floating_point() or x.shape[-1] != self.d_input:
            raise ValueError(f"x must be float with last dim d_input={self.d_input}, got {x.dtype} {tuple(x.shape)}")
        check_finite("x", x)
        return self.encoder(x)

    def forward(
        self, x: Tensor, lengths: Tensor | None = None, rate: float = 1.0, dt_scale: Tensor | None = None
    ) -> Tensor:
        """Args:
            x: (B, L, d_input) or (B, L) token ids.
            lengths: (B,) valid lengths for padded batches (padding at the end), or None.
            rate: sampling-rate factor passed to every layer.
            dt_scale: (B, L) positive time gaps of irregularly sampled inputs, in training
                steps, passed to every layer (see `SSMLayer.forward`); None for regular steps.
        Returns:
            (B, d_output), or (B, L, d_output) with pooling='none'.
        """
        expected = 2 if self.vocab_size else 3
        if x.dim() != expected:
            layout = "(B, L)" if self.vocab_size else "(B, L, d_input)"
            raise ValueError(f"x must have shape {layout}, got {tuple(x.shape)}")
        mask = None
        if lengths is not None:
            if lengths.shape != (x.shape[0],) or (lengths < 1).any() or (lengths > x.shape[1]).any():
                raise ValueError(f"lengths must be (B,) with values in [1, L={x.shape[1]}], got {lengths.tolist()}")
            mask = (torch.arange(x.shape[1], device=x.device) < lengths[:, None])[..., None]  # (B, L, 1)
        h = self._encode(x)  # (B, L, H)
        for block in self.blocks:
            # Zero the padding before every layer: causal layers never see it anyway, and
            # bidirectional ones must not.
            h = block(h if mask is None else h * mask, rate=rate, dt_scale=dt_scale)
        h = self.final_norm(h)
        if self.pooling == "mean":
            h = h.mean(1) if mask is None else (h * mask).sum(1) / lengths[:, None]
        elif self.pooling == "last":
            h = h[:, -1] if mask is None else h[torch.arange(h.shape[0]), lengths - 1]
        return self._decode(h)

    def _apply(self, fn: Any, recurse: bool = True) -> SequenceModel:
        refuse_low_precision(fn, "SequenceModel")  # before the encoder is converted, not after it
        return super()._apply(fn, recurse)

    def default_state(self, batch: int) -> list[Tensor]:
        """The zero state of every layer."""
        return [block.layer.default_state(batch) for block in self.blocks]

    def step(
        self, x: Tensor, states: list[Tensor], rate: float = 1.0, dt_scale: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """Stream one time step through the stack (pooling='none' models).

        Args:
            x: (B, d_input) or (B,) token ids. states: from `default_state` or earlier steps.
            rate, dt_scale: as in `SSMLayer.step` (dt_scale (B,) the gap before this sample).
        Returns:
            y (B, d_output) and the new states.
        """
        if self.pooling != "none":
            raise ValueError(f"step needs a model with pooling='none' (an output per step), got pooling={self.pooling!r}")
        h = self._encode(x)  # (B, H)
        new_states = []
        for block, state in zip(self.blocks, states):
            h, state = block.step(h, state, rate, dt_scale)
            new_states.append(state)
        return self._decode(self.final_norm(h)), new_states
