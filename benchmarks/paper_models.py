"""Paper-model benchmark: the training step of a whole model built from a paper config (forward,
cross-entropy, backward, Adam step at the config's batch size and sequence length, random
inputs of the data set's shape), for the config as written and for variants of it, interleaved
in one process (one step of each variant per round; ratios taken within each round), and the
epoch time that the median step extrapolates to.

Default: `configs/paper/lssl-smnist.toml` (6 LSSL layers, H = N = 128, learned A shared,
L = 784, batch 50), as configured (kernel='resolvent'), with the Krylov kernel, and with
layer = "s4" (the same config; S4 takes the measure, channels, dt range and hints, not LSSL's
learn modes).

    python benchmarks/paper_models.py [--config configs/paper/lssl-smnist.toml] [--steps 50]
        [--quick] [--out benchmarks/paper_models.md]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch
from common import write_table

from lssl import config as configs
from lssl.model import SequenceModel

# The data sets' shapes (length, input channels, classes, training examples): the registry's
# descriptions, without loading the data.
SHAPES = {"smnist": (784, 1, 10, 50000), "pmnist": (784, 1, 10, 50000), "sfmnist": (1024, 1, 10, 50000)}
# Layer arguments that only LSSL takes.
LSSL_ONLY = ("learn_a", "share_a", "kernel", "backend", "disc")


def variants(cfg: configs.Config) -> dict[str, dict]:
    """The model's SequenceModel arguments as configured, with the Krylov kernel, and as S4."""
    L, d_in, d_out, _ = SHAPES[cfg.data.name]
    base = dict(d_input=d_in, d_output=d_out, d_model=cfg.model.d_model, n_layers=cfg.model.n_layers,
                norm=cfg.model.norm, prenorm=cfg.model.prenorm, dropout=cfg.model.dropout, pooling=cfg.model.pooling)
    layer_args = {"d_state": cfg.model.d_state, **cfg.model.layer_args}
    kernel = layer_args.get("kernel", "krylov")
    out = {f"{cfg.model.layer} ({kernel}{', ' + layer_args['backend'] if 'backend' in layer_args else ''})":
           dict(base, layer=cfg.model.layer, layer_args=layer_args)}
    if kernel != "krylov":
        krylov = {k: v for k, v in layer_args.items() if k not in ("kernel", "backend")}
        out[f"{cfg.model.layer} (krylov)"] = dict(base, layer=cfg.model.layer, layer_args=krylov)
    s4 = {k: v for k, v in layer_args.items() if k not in LSSL_ONLY}
    out["s4"] = dict(base, layer="s4", layer_args=s4)
    return out


def train_step(model: SequenceModel, batch: int, L: int, d_in: int, d_out: int):
    """One optimiser step of `model` on a fixed random batch."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, L, d_in)
    y = torch.randint(0, d_out, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/paper/lssl-smnist.toml"))
    parser.add_argument("--steps", type=int, default=50, help="timed steps per variant (after 2 warm-up steps)")
    parser.add_argument("--quick", action="store_true", help="3 steps, 2 layers: a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    overrides = ["model.n_layers=2"] if args.quick else []
    cfg = configs.load(args.config, overrides)
    steps = 3 if args.quick else args.steps
    L, d_in, d_out, n_train = SHAPES[cfg.data.name]
    batch = cfg.train.batch_size
    runs = {}
    for name, model_args in variants(cfg).items():
        torch.manual_seed(0)
        runs[name] = train_step(SequenceModel(**model_args), batch, L, d_in, d_out)
    for run in runs.values():
        for _ in range(2):
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(steps):
        for name, run in runs.items():
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
    s4 = times["s4"]
    epoch_steps = math.ceil(n_train / batch)
    rows = []
    for name, t in times.items():
        ratio = statistics.median(a / b for a, b in zip(t, s4))
        median = statistics.median(t)
        rows.append(f"| {name} | {median:.3f} | {median * epoch_steps / 60:.1f} | {ratio:.2f} |")
    write_table(
        [
            f"`{args.config}`{' (quick: 2 layers)' if args.quick else ''}: batch {batch}, L = {L}, "
            f"{cfg.model.n_layers} layers, H = {cfg.model.d_model}, N = {cfg.model.d_state}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, float32; median of {steps} interleaved training steps; an epoch is "
            f"{epoch_steps} steps.",
            "",
            "| model | step (s) | epoch (min) | ratio to s4 |",
            "|---|---|---|---|",
            *rows,
        ],
        args.out,
    )


if __name__ == "__main__":
    main()
