"""Liquid-S4 after training: how large each trained layer's liquid term is against its S4 part on
the task's own data, and how much it changes the SSM parameters' gradients of the task's loss.

For every finished Liquid-S4 cell of a `lssl compare` study (OUT/TASK/MODEL/seedK/ with its
best checkpoint), on the first `--batch` sequences of the task's validation split:

* std ratio, per block: every LiquidS4 layer's own input x (captured in the forward pass) gives
  its pre-activation output (B, L, C, H) twice, with the liquid term (the trained degree) and
  without it (degree 1, the S4 part K * x + D x); the ratio is std(difference) / std(S4 part).
  At initialisation it is 0.035-0.16 for PB and 0.19-1.2 for KB
  (`benchmarks/liquid_diagnosis.py`); with liquid_gain="zero" it starts at 0 and measures how
  far training moved the layer away from S4.
* |gain|: the mean absolute per-feature liquid gain of that layer (liquid_gain="zero" only).
* grad ratio of each SSM parameter group (summed over layers): the norm of the gradient of the
  task's loss on that batch with the liquid terms over the norm with every layer at degree 1
  (the same trained weights). 1 means the liquid term leaves that gradient alone.
* test: the cell's test metric (results.json), for reading the rows against the table.

    python benchmarks/liquid_trained.py runs/studies/liquid [--tasks bidmc-hr,control] [--out F]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import table_head, write_table
from liquid_diagnosis import PARAMS

from lssl import LiquidS4
from lssl import config as cfgmod
from lssl.layer import SSMLayer
from lssl.train import batches, checkpoint, loop, metrics



def pre_activation(layer: LiquidS4, x: torch.Tensor) -> torch.Tensor:
    """The layer's SSM output plus D x (and the PB pointwise term) before the activation,
    (B, L, C, H), for its input x (B, L, H) at its current degree."""
    layer.liquid.set_length(x.shape[1])
    y, pointwise, _ = layer._convolve(x, None, False, 1.0)
    return layer._skip(y, x, pointwise)


def liquid_layers(model: torch.nn.Module) -> list[LiquidS4]:
    return [m for m in model.modules() if isinstance(m, LiquidS4)]


def set_degree(layers: list[LiquidS4], degrees: list[int]) -> None:
    for layer, p in zip(layers, degrees):
        layer.degree = p


def ssm_grad_norms(model: torch.nn.Module, batch: dict, task: str) -> dict[str, float]:
    """|d loss / d param| of each group of `PARAMS`, over every SSM layer of the model."""
    kernels = [m.kernel for m in model.modules() if isinstance(m, SSMLayer)]
    named = [(k, n) for group in PARAMS.values() for n in group for k in kernels if getattr(k, n, None) is not None]
    tensors = [getattr(k, n) for k, n in named]
    out = loop.forward(model, batch)
    grads = torch.autograd.grad(metrics.loss(task, out, batch["y"]), tensors)
    norms = {}
    for key, group in PARAMS.items():
        parts = [g.norm() for (_, n), g in zip(named, grads) if n in group]
        norms[key] = torch.stack(parts).norm().item() if parts else float("nan")
    return norms


def diagnose_cell(run_dir: Path, spec, n: int) -> list[dict]:
    """One row per LiquidS4 layer of the cell's best checkpoint (grad ratios on the first row)."""
    path = run_dir / "checkpoints" / "best.safetensors"
    tensors, meta = checkpoint.read(path)
    model = loop.build_model(checkpoint.model_args_of(meta, tensors))
    checkpoint.load_weights(model, tensors, path)
    model.eval()  # no dropout; the gradients below are of the eval-mode loss
    layers = liquid_layers(model)
    if not layers or not all(layer.liquid.causal for layer in layers):
        return []
    batch = batches.to_device(spec.collate([spec.val[i] for i in range(n)]), torch.device("cpu"), torch.float32)
    inputs: list[torch.Tensor] = []
    hooks = [layer.register_forward_pre_hook(lambda mod, args: inputs.append(args[0].detach())) for layer in layers]
    with torch.no_grad():
        loop.forward(model, batch)
    for h in hooks:
        h.remove()
    degrees = [layer.degree for layer in layers]
    rows = []
    with torch.no_grad():
        for i, (layer, x) in enumerate(zip(layers, inputs)):
            full = pre_activation(layer, x)
            layer.degree = 1
            s4 = pre_activation(layer, x)
            layer.degree = degrees[i]
            gain = layer.liquid.gain
            rows.append({"block": i, "std ratio": ((full - s4).std() / s4.std()).item(),
                         "|gain|": float("nan") if gain is None else gain.abs().mean().item()})
    with_liquid = ssm_grad_norms(model, batch, spec.task)
    set_degree(layers, [1] * len(layers))
    without = ssm_grad_norms(model, batch, spec.task)
    set_degree(layers, degrees)
    rows[0].update({f"grad {k}": with_liquid[k] / without[k] for k in PARAMS})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a study's output root (OUT of lssl compare)")
    parser.add_argument("--tasks", default=None, help="comma-separated tasks (default: every task there)")
    parser.add_argument("--batch", type=int, default=16, help="validation sequences per cell")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    tasks = args.tasks.split(",") if args.tasks else sorted(p.name for p in args.root.iterdir() if p.is_dir())
    header = ["task", "model", "seed", "test", "block", "std ratio", "|gain|", *(f"grad {k}" for k in PARAMS)]
    lines = [
        f"Study {args.root}: best checkpoints, first {args.batch} validation sequences per cell. std ratio = "
        "std(liquid part) / std(S4 part) of each LiquidS4 layer's pre-activation output on its own input; "
        "grad = |grad of the loss with the liquid terms| / |without| (degree 1, same weights), all layers.",
        "",
        *table_head(header),
    ]
    for task in tasks:
        spec = None
        for run_dir in sorted((args.root / task).glob("*/seed*")):
            results = run_dir / "results.json"
            if not results.exists():
                continue
            cfg = cfgmod.load(run_dir / "config.toml")
            if cfg.model.layer != "liquid-s4":
                continue
            if spec is None:
                spec = loop.load_data(cfg.data)
            rows = diagnose_cell(run_dir, spec, min(args.batch, len(spec.val)))
            test = json.loads(results.read_text())["test"][metrics.METRIC[spec.task]]
            for row in rows:
                cells = [task, run_dir.parent.name, run_dir.name.removeprefix("seed"), f"{test:.4g}"]
                cells += [str(row["block"]), f"{row['std ratio']:.3g}", f"{row['|gain|']:.3g}"]
                cells += [f"{row[f'grad {k}']:.3g}" if f"grad {k}" in row else "" for k in PARAMS]
                lines.append("| " + " | ".join(cells) + " |")
                print(lines[-1], flush=True)
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
