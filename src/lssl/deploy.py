"""The recurrent view for deployment: a trained model's step as a graph of real tensors, for
torch.export and ONNX runtimes.

`StreamingModel(model, rate)` freezes a `SequenceModel` (pooling='none') for streaming: every
layer's discrete system is computed once (its `recurrence` at step dt * rate) and kept as
buffers, complex numbers as (real, imaginary) pairs, so that one call is

    y_t, states_t = streaming(x_t, *states_{t-1})

with only real arithmetic: encoder, each block's norm and SSM step (state and, for Liquid-S4,
its memory of past inputs), D skip, activation, mix, residual, final norm, decoder. Its states
are explicit tensors (`state_spec`): (B, H, N/2, 2) for the conjugate-pair kernels (S4, S4D,
Liquid-S4's S4 part), (B, H, N) for LSSL, plus (B, H, M) for a Liquid-S4 memory.

`ForwardModel(model, length, rate)` freezes the convolutional view at one sequence length: every
layer's kernel K as a buffer, the convolution as a grouped Conv1d.

`export(model, path, mode=...)` writes either as an ONNX model with a JSON sidecar naming the
inputs, outputs and their shapes (`lssl export CHECKPOINT --format onnx [--mode forward]`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .kernels.base import DenseRecurrence, DiagonalRecurrence
from .kernels.liquid import pointwise_term
from .layer import LiquidRecurrence, LiquidS4, LiquidState, SSMLayer
from .model import SequenceModel

Tensor = torch.Tensor


class DenseStep(nn.Module):
    """x_t = A_bar x_{t-1} + B_bar u_t, y_t = C x_t on a real state (B, H, N) (`DenseRecurrence`
    of a real system: LSSL)."""

    def __init__(self, rec: DenseRecurrence):
        super().__init__()
        if rec.is_complex:
            raise ValueError("DenseStep takes a real system")
        self.register_buffer("A_T", rec.A_T.detach().clone())  # (H, N, N)
        self.register_buffer("B", rec.B.detach().clone())  # (H, 1, N)
        self.register_buffer("C_T", rec.C_T.detach().clone())  # (H, N, C)

    def forward(self, u: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """u (B, H), state (B, H, N) -> y (B, C, H), new state (B, H, N)."""
        x = torch.bmm(state.transpose(0, 1), self.A_T) + u.T[..., None] * self.B  # (H, B, N)
        y = torch.bmm(x, self.C_T)  # (H, B, C)
        return y.permute(1, 2, 0), x.transpose(0, 1)


class PairStep(nn.Module):
    """`DiagonalRecurrence` (S4D, S4) on the half state as (real, imaginary) pairs (B, H, N/2, 2):
    x_t = a * x_{t-1} + b u_t - sum_k U_k s_k with s_k = 2 Re(V_k . x_{t-1}), y_t = 2 Re(C . x_t),
    the complex product a * x written out as (a_r x_r - a_i x_i, a_r x_i + a_i x_r)."""

    def __init__(self, rec: DiagonalRecurrence):
        super().__init__()
        self.register_buffer("a", torch.view_as_real(rec.a.detach()).clone())  # (H, N/2, 2)
        self.register_buffer("b", rec.b.detach().clone())  # (H, N) interleaved
        self.register_buffer("C", rec.C.detach().clone())  # (H, N, C) functional
        self.rank = 0 if rec.V is None else rec.V.shape[-1]
        if self.rank:
            self.register_buffer("U", rec.U.detach().clone())  # (r, H, N), sign included
            self.register_buffer("V", rec.V.detach().clone())  # (H, N, r) functional

    def forward(self, u: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """u (B, H), state (B, H, N/2, 2) -> y (B, C, H), new state (B, H, N/2, 2)."""
        re, im = state[..., 0], state[..., 1]
        a_re, a_im = self.a[..., 0], self.a[..., 1]
        x = torch.stack([a_re * re - a_im * im, a_re * im + a_im * re], dim=-1).flatten(-2)  # (B, H, N)
        x = x + u[..., None] * self.b
        if self.rank:
            s = torch.bmm(state.flatten(-2).transpose(0, 1), self.V)  # (H, B, r)
            for k in range(self.rank):
                x = x + s[..., k].T[..., None] * self.U[k]
        y = torch.bmm(x.transpose(0, 1), self.C)  # (H, B, C)
        return y.permute(1, 2, 0), x.unflatten(-1, (-1, 2))


def ssm_step(rec: Any) -> nn.Module:
    """The frozen real step of a layer's discrete system (its `_build_recurrence`)."""
    ssm = rec.ssm if isinstance(rec, LiquidRecurrence) else rec
    if isinstance(ssm, DiagonalRecurrence):
        return PairStep(ssm)
    if isinstance(ssm, DenseRecurrence):
        return DenseStep(ssm)
    raise ValueError(f"no streaming step for the recurrence {type(ssm).__name__}")


class LayerStep(nn.Module):
    """One layer's recurrent view, frozen at `rate`: x (B, H) and its states -> y (B, H) and the
    new states; the SSM state as in `ssm_step`, plus Liquid-S4's memory (B, H, M)."""

    def __init__(self, layer: SSMLayer, rate: float = 1.0):
        super().__init__()
        if layer.bidirectional:
            raise ValueError("a bidirectional layer has no recurrent view to export")
        if isinstance(layer, LiquidS4):
            layer._check_causal()
        with torch.no_grad():
            rec = layer._build_recurrence(rate)
        self.ssm = ssm_step(rec)
        self.D = nn.Parameter(layer.D.detach().clone(), requires_grad=False)
        self.activation, self.mix = layer.activation, layer.mix
        self.liquid = None
        if isinstance(layer, LiquidS4) and layer.degree > 1:
            self.liquid = layer.liquid
            self.register_buffer("s", rec.s.detach().clone())  # (H,)
            self.register_buffer("K0", rec.K0.detach().clone())  # (1, C, H)

    def forward(self, x: Tensor, state: Tensor, memory: Tensor | None = None) -> tuple[Tensor, ...]:
        """x (B, H) -> y (B, H), the new SSM state (and the new memory for Liquid-S4)."""
        u = x
        z = None
        if self.liquid is not None:
            w, z, memory = self.liquid.signals(x[..., None], self.s, memory)  # (B, H, 1) each
            u = w[..., 0]
        y, state = self.ssm(u, state)  # (B, C, H)
        if z is not None:
            y = y + self.K0 * z[:, None, :, 0].to(y.dtype)
        y = self.mix(self.activation((y + self.D * x[:, None]).flatten(-2)))
        return (y, state) if self.liquid is None else (y, state, memory.to(x.dtype))



def real_state(layer: SSMLayer, state: Any) -> list[Tensor]:
    """A layer's state (from `default_state` or `step`) as `LayerStep`'s state tensors."""
    ssm = state.ssm if isinstance(state, LiquidState) else state
    tensors = [torch.view_as_real(ssm).clone() if ssm.is_complex() else ssm]
    if isinstance(layer, LiquidS4) and layer.degree > 1:
        tensors.append(state.memory.to(ssm.real.dtype))
    return tensors


class StreamingModel(nn.Module):
    """A `SequenceModel`'s `step` frozen at `rate` in real arithmetic (module docstring):
    forward(x (B, d_input) or (B,) token ids, *states) -> (y (B, d_output), *new states), the
    states in the order of `state_spec`. y is the model's output on the sequence so far: per
    step for pooling='none' and 'last'; for pooling='mean' the decoded running mean (two more
    states: the sum (B, H) and the count (B, 1) of the steps so far), so after the last sample
    of a sequence it is `model(x)` of the whole sequence."""

    def __init__(self, model: SequenceModel, rate: float = 1.0):
        super().__init__()
        self.model = model.eval()
        self.steps = nn.ModuleList(LayerStep(block.layer, rate) for block in model.blocks)

    def state_spec(self, batch: int) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of every state tensor, in call order."""
        spec = []
        for i, state in enumerate(self.initial_states(batch)):
            names = ["state", "memory"][: len(state)]
            spec += [(f"block{i}.{n}", tuple(t.shape)) for n, t in zip(names, state)]
        if self.model.pooling == "mean":
            spec += [("pool.sum", (batch, self.model.d_model)), ("pool.count", (batch, 1))]
        return spec

    def initial_states(self, batch: int) -> list[list[Tensor]]:
        """The zero states of the blocks, per block."""
        return [real_state(block.layer, block.layer.default_state(batch)) for block in self.model.blocks]

    def zero_states(self, batch: int) -> list[Tensor]:
        """The zero states as the flat list `forward` takes."""
        states = [t for block in self.initial_states(batch) for t in block]
        if self.model.pooling == "mean":
            dtype = self.model.decoder.weight.dtype
            states += [torch.zeros(batch, self.model.d_model, dtype=dtype), torch.zeros(batch, 1, dtype=dtype)]
        return states

    def forward(self, x: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        model = self.model
        h = model.encoder(x)  # (B, H)
        new: list[Tensor] = []
        i = 0
        for block, step in zip(model.blocks, self.steps):
            n = 1 if step.liquid is None else 2
            block_states = states[i : i + n]
            i += n
            inp = block.norm(h) if block.prenorm else h
            y, *out = step(inp, *block_states)
            h = h + y if block.prenorm else block.norm(h + y)
            new += out
        h = model.final_norm(h)
        if model.pooling == "mean":
            total, count = states[i] + h, states[i + 1] + 1
            new += [total, count]
            h = total / count
        return (model._decode(h), *new)


def causal_conv(u: Tensor, K: Tensor) -> Tensor:
    """The causal convolution of `fftconv` as a grouped Conv1d (real arithmetic, O(L^2) per
    feature; what ONNX runtimes execute natively). u (B, H, L), K (C, H, L) -> (B, C, H, L)."""
    B, H, L = u.shape
    C = K.shape[0]
    weight = K[..., :L].permute(1, 0, 2).reshape(H * C, 1, L).flip(-1)  # (H C, 1, L)
    y = nn.functional.conv1d(nn.functional.pad(u, (L - 1, 0)), weight, groups=H)  # (B, H C, L)
    return y.view(B, H, C, L).transpose(1, 2)


class LayerForward(nn.Module):
    """One layer's convolutional view frozen at length L and `rate`: its kernel K (and for
    Liquid-S4 s = 1^T B_bar) kept as buffers, the convolution as `causal_conv`. x (B, L, H) ->
    y (B, L, H), as `layer(x, rate=rate)`."""

    def __init__(self, layer: SSMLayer, length: int, rate: float = 1.0):
        super().__init__()
        self.layer = layer
        self.liquid = isinstance(layer, LiquidS4) and layer.degree > 1
        if isinstance(layer, LiquidS4):
            layer._check_causal()
            if self.liquid and layer.bidirectional:
                raise ValueError("a bidirectional Liquid-S4 layer has no frozen convolutional export yet")
            layer.liquid.set_length(length)
        with torch.no_grad():
            self.register_buffer("K", layer.kernel(length, rate).detach().clone())  # (C or 2C, H, L)
            if self.liquid:
                self.register_buffer("s", layer.kernel.input_sum(rate).detach().clone())  # (H,)

    def forward(self, x: Tensor) -> Tensor:
        layer, u = self.layer, x.transpose(1, 2)  # (B, H, L)
        pointwise = None
        if self.liquid:
            folded = self.K.shape[0] == 1  # as `LiquidTerm.forward`: one channel's K_0 is folded into z
            K0 = self.K[..., 0]
            w, z, _ = layer.liquid.signals(u, self.s, None, K0[0] if folded else None)
            y = causal_conv(w.to(x.dtype), self.K)
            if z is not None:
                pointwise = pointwise_term(z.to(x.dtype), K0, folded)
        elif layer.bidirectional:
            forward, backward = self.K.chunk(2, dim=0)
            y = causal_conv(u, forward) + causal_conv(u.flip(-1), backward).flip(-1)
        else:
            y = causal_conv(u, self.K)
        return layer._output(layer._skip(y, x, pointwise))


class ForwardModel(nn.Module):
    """A `SequenceModel`'s forward on sequences of one length L, frozen at `rate` in real
    arithmetic: x (B, L, d_input) or (B, L) token ids -> `model(x, rate=rate)` (no padding)."""

    def __init__(self, model: SequenceModel, length: int, rate: float = 1.0):
        super().__init__()
        self.model = model.eval()
        self.layers = nn.ModuleList(LayerForward(block.layer, length, rate) for block in model.blocks)

    def forward(self, x: Tensor) -> Tensor:
        model = self.model
        h = model.encoder(x)  # (B, L, H)
        for block, layer in zip(model.blocks, self.layers):
            h = h + layer(block.norm(h)) if block.prenorm else block.norm(h + layer(h))
        h = model.final_norm(h)
        if model.pooling == "mean":
            h = h.mean(1)
        elif model.pooling == "last":
            h = h[:, -1]
        return model._decode(h)


def example_batch(sizes: set[int], model: SequenceModel) -> int:
    """The batch size of the example inputs for tracing: > 1 and unlike every other dimension
    (`sizes` and the model's widths), so that the tracer keeps it symbolic instead of tying it
    to a size that merely equals it."""
    taken = sizes | {model.d_model, model.d_input or 1, model.decoder.out_features}
    return min(set(range(2, max(taken) + 2)) - taken)


def export(model: SequenceModel, path: str | Path, rate: float = 1.0, opset: int = 18, mode: str = "step",
           length: int | None = None) -> Path:
    """Write the model's streaming step (mode 'step') or its whole-sequence forward at one
    `length` (mode 'forward') as ONNX to `path` and its description to `path` with suffix
    '.json': inputs ('x', then for 'step' every state), outputs ('y', then every new state),
    their shapes (dimension 0 is the batch, dynamic) and dtypes.

    Args:
        model: a `SequenceModel`, in eval mode after this call.
        rate: the sampling-rate factor the step or forward is frozen at.
        mode: 'step' (`StreamingModel`) or 'forward' (`ForwardModel`; needs `length`).
    Returns:
        The ONNX file's path.
    """
    path = Path(path)
    if mode == "forward":
        return export_forward(model, path, rate, opset, length)
    if mode != "step":
        raise ValueError(f"unknown mode {mode!r}; known: 'step', 'forward'")
    stream = StreamingModel(model, rate)
    batch = example_batch({size for _, shape in stream.state_spec(1) for size in shape[1:]}, model)
    x = torch.zeros(batch, dtype=torch.int64) if model.vocab_size else torch.zeros(batch, model.d_input)
    states = stream.zero_states(batch)
    spec = stream.state_spec(batch)
    names_in = ["x"] + [name for name, _ in spec]
    names_out = ["y"] + [f"{name}.next" for name, _ in spec]
    dim = torch.export.Dim("batch", min=1)
    dynamic = ({0: dim}, tuple({0: dim} for _ in states))  # (x, *states) as the signature nests them
    with torch.no_grad():
        y, *_ = stream(x, *states)
        program = torch.onnx.export(stream, (x, *states), dynamo=True, input_names=names_in, output_names=names_out,
                                    dynamic_shapes=dynamic, opset_version=opset, verbose=False)
    program.save(str(path))
    sidecar = {
        "format": "lssl-onnx-step", "rate": rate,
        "inputs": [entry(n, t) for n, t in zip(names_in, [x, *states])],
        "outputs": [entry(n, t) for n, t in zip(names_out, [y, *states])],
        "states": "every state input starts at zeros and is replaced by its '.next' output after each step",
    }
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return path


def entry(name: str, t: Tensor) -> dict[str, Any]:
    """A sidecar's description of one input or output: its name, shape (batch 'B') and dtype."""
    return {"name": name, "shape": ["B", *t.shape[1:]], "dtype": str(t.dtype).removeprefix("torch.")}


def export_forward(model: SequenceModel, path: Path, rate: float, opset: int, length: int | None) -> Path:
    """`export` in mode 'forward': `ForwardModel` at `length`."""
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(f"mode='forward' needs length, a positive int (the sequence length), got {length!r}")
    frozen = ForwardModel(model, length, rate)
    batch = example_batch({length}, model)
    shape = (batch, length) if model.vocab_size else (batch, length, model.d_input)
    x = torch.zeros(shape, dtype=torch.int64) if model.vocab_size else torch.zeros(shape)
    with torch.no_grad():
        y = frozen(x)
        program = torch.onnx.export(frozen, (x,), dynamo=True, input_names=["x"], output_names=["y"],
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), opset_version=opset,
                                    verbose=False)
    program.save(str(path))
    sidecar = {
        "format": "lssl-onnx-forward", "rate": rate, "length": length,
        "inputs": [entry("x", x)], "outputs": [entry("y", y)],
    }
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return path
