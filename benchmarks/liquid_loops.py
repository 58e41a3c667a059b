"""Liquid-S4 PB loops (backend="numba"): forward + backward time of the window polynomial
z = sum_p a_p e_p(causal window W_p) in the (B, L, H) layout, with the written-out loops of
orders 2 to 4 against the generic loops for any order (`window_forward(..., written_out=False)`),
interleaved in one process, ratios taken within each round. The windows are the default rule's
for the sequence length. A second table times the whole liquid signals as the layer computes
them (`pb_signal`, `kb_signal`: input (B, H, L) as a view of the layer's (B, L, H) input,
gradients to the input and to s) with backend="torch" against backend="numba". Needs numba.

    python benchmarks/liquid_loops.py [--repeats 15] [--out benchmarks/liquid_loops.md]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numba
import numpy as np
import torch
from common import BATCH, interleaved, median_ratio, write_table

from lssl.kernels.liquid import default_window, kb_signal, pb_signal
from lssl.ops import liquid_numba

SHAPES = [(128, 1024), (128, 4096), (128, 16000)]


def loops_step(x: np.ndarray, a: np.ndarray, windows: np.ndarray, g: np.ndarray, written_out: bool):
    """Forward and backward loops of one PB signal, as `WindowPolynomialNumba` runs them."""
    orders = np.arange(2, len(windows) + 2)
    z, gx, ga = np.empty_like(x), np.empty_like(x), np.empty(a.shape)

    def step():
        liquid_numba.window_forward(x, a, orders, windows, z, written_out)
        liquid_numba.window_backward(x, a, orders, windows, g, gx, ga, written_out)

    return step


def signal_step(liquid: str, u: torch.Tensor, s: torch.Tensor, P: int, g: torch.Tensor, backend: str):
    """Forward and backward of one liquid signal (PB's z or KB's w) as the layer runs it."""
    windows = [default_window(u.shape[-1], p) for p in range(2, P + 1)]

    def step():
        u.grad, s.grad = None, None
        if liquid == "pb":
            out, _ = pb_signal(u, s, windows, backend=backend)
        else:
            out, _ = kb_signal(u, s, P, backend=backend)
        (out * g).sum().backward()

    return step


def signal_rows(repeats: int) -> list[str]:
    """The torch backend's signals against the numba backend's, interleaved."""
    rows = []
    for H, L in SHAPES:
        for liquid in ("pb", "kb"):
            for P in (2, 3, 4):
                # u and the output's gradient g (B, H, L) are views of (B, L, H), as in the layer.
                u = torch.randn(BATCH, L, H).transpose(1, 2).requires_grad_()
                s = (0.1 * torch.randn(H)).requires_grad_()
                g = torch.randn(BATCH, L, H).transpose(1, 2)
                steps = {backend: signal_step(liquid, u, s, P, g, backend) for backend in ("torch", "numba")}
                rounds, _ = interleaved(steps, repeats)
                ms = {name: 1e3 * statistics.median(t) for name, t in rounds.items()}
                ratio = median_ratio(rounds, "numba", "torch")
                rows.append(f"| {liquid.upper()} | {P} | {H} | {L} | {ms['torch']:.1f} | {ms['numba']:.1f} | {ratio:.2f} |")
                print(rows[-1], flush=True)
    return rows


def loop_rows(repeats: int) -> list[str]:
    """The written-out PB loops against the generic ones, interleaved."""
    rows = []
    for H, L in SHAPES:
        for P in (2, 3, 4):
            windows = np.array([default_window(L, p) for p in range(2, P + 1)])
            x = torch.randn(BATCH, L, H).numpy()
            g = torch.randn(BATCH, L, H).numpy()
            a = torch.randn(P - 1, BATCH, H, dtype=torch.float64).numpy()
            steps = {"generic": loops_step(x, a, windows, g, False), "written out": loops_step(x, a, windows, g, True)}
            rounds, _ = interleaved(steps, repeats)
            ms = {name: 1e3 * statistics.median(t) for name, t in rounds.items()}
            ratio = median_ratio(rounds, "written out", "generic")
            rows.append(
                f"| {P} | {', '.join(map(str, windows))} | {H} | {L} | {ms['generic']:.2f} | {ms['written out']:.2f} "
                f"| {ratio:.2f} |"
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    numba.set_num_threads(2)
    write_table(
        [
            f"numba {numba.__version__}, torch {torch.__version__}, 2 threads, float32 input, batch {BATCH}, "
            f"median of {args.repeats}.",
            "",
            "PB loops, forward + backward:",
            "",
            "| P | windows | H | L | generic loops (ms) | written out (ms) | ratio |",
            "|---|---|---|---|---|---|---|",
            *loop_rows(args.repeats),
            "",
            "Liquid signals as the layer computes them, forward + backward (gradients to the input and s):",
            "",
            "| liquid | P | H | L | backend torch (ms) | backend numba (ms) | ratio |",
            "|---|---|---|---|---|---|---|",
            *signal_rows(args.repeats),
        ],
        args.out,
    )


if __name__ == "__main__":
    main()
