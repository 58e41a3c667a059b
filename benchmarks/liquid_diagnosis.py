"""Liquid-S4 at initialisation: how large the liquid term is against the S4 part of the same
layer, and how much it changes the SSM parameters' gradients.

For LiquidS4 (S4 kernel) with the PB and KB terms at degrees 2 and 3, plain and with
liquid_scale="normalized", H = N = 64, L in {256, 1024, 4096}, unit-variance Gaussian inputs
times a scale a in {0.5, 1, 2}: the layer's pre-activation output y (mix="none",
activation="identity") splits into the S4 part K * u + D u (the same layer at degree 1) and the
liquid part (the rest). Columns:

* std ratio at a: std(liquid part) / std(S4 part). The order-p term grows like a^p and the S4
  part like a, so a degree-2 ratio doubles from a = 1 to a = 2.
* grad ratio of each SSM parameter (Lambda = its real and imaginary parts together, P, B, C,
  log dt), at a = 1: the norm of d(y . G)/d(param) with the liquid term over that without it,
  for one random upstream gradient G on y; 1 means the liquid term leaves that gradient alone.

liquid_gain="zero" is not a row: at initialisation it is S4 exactly (ratio 0, grad ratios 1;
tests/test_liquid_options.py). Seeds: --seed for the layer (the same SSM parameters in every
row), --seed + 1 for the inputs and G.

    python benchmarks/liquid_diagnosis.py [--quick] [--out benchmarks/liquid_diagnosis.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import table_head, write_table

from lssl import LiquidS4

SCALES = (0.5, 1.0, 2.0)
PARAMS = {"Lambda": ("log_neg_re", "lam_im"), "P": ("P",), "B": ("B",), "C": ("C",), "log_dt": ("log_dt",)}


def make_layer(term: str, degree: int, scale: str | None, d_model: int, length: int, seed: int) -> LiquidS4:
    """LiquidS4 with its pre-activation output visible, (B, L, H) -> (B, L, H) (C = 1), and the
    liquid term at full size (liquid_gain='none'; the default gain starts it at 0)."""
    torch.manual_seed(seed)
    return LiquidS4(d_model, d_state=d_model, degree=degree, liquid=term, liquid_gain="none", liquid_scale=scale,
                    l_max=length, mix="none", activation="identity")


def grad_norms(layer: LiquidS4, x: torch.Tensor, G: torch.Tensor) -> dict[str, float]:
    """|d(y . G)/d(param)| for each group of `PARAMS`, y = layer(x) (B, L, H)."""
    names = [n for group in PARAMS.values() for n in group]
    tensors = [getattr(layer.kernel, n) for n in names]
    grads = dict(zip(names, torch.autograd.grad((layer(x) * G).sum(), tensors)))
    return {k: torch.stack([grads[n].norm() for n in group]).norm().item() for k, group in PARAMS.items()}


def diagnose(term: str, degree: int, scale: str | None, d_model: int, length: int, batch: int, seed: int) -> dict:
    """One row: std ratios at every input scale and gradient-norm ratios at scale 1."""
    layer = make_layer(term, degree, scale, d_model, length, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, length, d_model, generator=gen)
    G = torch.randn(batch, length, d_model, generator=gen)
    row = {}
    with torch.no_grad():
        for a in SCALES:
            layer.degree = degree
            y = layer(a * x)
            layer.degree = 1
            s4 = layer(a * x)
            row[f"std {a:g}"] = ((y - s4).std() / s4.std()).item()
    layer.degree = 1
    without = grad_norms(layer, x, G)
    layer.degree = degree
    with_liquid = grad_norms(layer, x, G)
    row.update({k: with_liquid[k] / without[k] for k in PARAMS})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: H = N = 8, L = 64, batch 1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    d_model, lengths, batch = (8, [64], 1) if args.quick else (64, [256, 1024, 4096], args.batch)
    header = ["term", "degree", "liquid_scale", "L", *(f"std ratio a={a:g}" for a in SCALES),
              *(f"grad {k}" for k in PARAMS)]
    lines = [
        f"H = N = {d_model}, batch {batch}, seeds: layer {args.seed}, inputs {args.seed + 1}; "
        "std ratio = std(liquid part) / std(S4 part) of the pre-activation output for inputs a N(0, 1); "
        "grad = |grad with the liquid term| / |grad without| at a = 1.",
        "",
        *table_head(header),
    ]
    for term in ("pb", "kb"):
        for degree in (2, 3):
            for scale in (None, "normalized"):
                for length in lengths:
                    row = diagnose(term, degree, scale, d_model, length, batch, args.seed)
                    cells = [term.upper(), str(degree), scale or "-", str(length)]
                    cells += [f"{v:.3g}" for v in row.values()]
                    lines.append("| " + " | ".join(cells) + " |")
                    print(lines[-1], flush=True)
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
