"""Kernel benchmark: forward + backward time and peak memory of each SSM kernel.

For every kernel and shape: check the kernel against the explicit-powers reference at a small
size, then time `K = kernel(L); (K * G).sum().backward()` (median of --repeats after one
warm-up) interleaved, round-robin, with the floor: the causal FFT convolution alone (forward and
backward, precomputed kernel) at batch 4 and the same (H, L). The machine's speed drifts, so the
ratios to the floor (taken in the same round) are the figures to compare. Peak memory is the
growth of the peak resident set size over the process's size after building the module, measured
in a fresh process per (kernel, shape).

    python benchmarks/kernels.py [--repeats 5] [--quick] [--out benchmarks/kernels.md]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from common import FLOOR, Step, floor_step, interleaved, median_ratio, peak_memory_mb, write_table

from lssl.kernels import reference
from lssl.kernels.diag import DiagKernel
from lssl.kernels.dplr import DPLRKernel
from lssl.kernels.krylov import KrylovKernel
from lssl.kernels.resolvent import ResolventKernel

KERNELS: dict[str, Callable[[int, int], torch.nn.Module]] = {
    "S4D (diag, zoh)": lambda H, N: DiagKernel(d_model=H, d_state=N),
    "S4 (DPLR, legs)": lambda H, N: DPLRKernel(d_model=H, d_state=N),
    "LSSL (legs, learned A, dt)": lambda H, N: KrylovKernel(d_model=H, d_state=N, learn_a=True, share_a=False),
    "LSSL (legs, fixed A, learned dt)": lambda H, N: KrylovKernel(d_model=H, d_state=N),
    # The learned-A kernel by its generating function (O(H N L), no N^3 term).
    "LSSL resolvent (legs, learned A, dt)": (
        lambda H, N: ResolventKernel(d_model=H, d_state=N, learn_a=True, share_a=False)
    ),
}
# The S4 kernel with its Cauchy sums, and LSSL's resolvent kernel with its solves, as compiled
# loops, where numba is installed.
if importlib.util.find_spec("numba") is not None:
    KERNELS["S4 (DPLR, legs, numba)"] = lambda H, N: DPLRKernel(d_model=H, d_state=N, backend="numba")
    KERNELS["LSSL resolvent (legs, learned A, dt, numba)"] = (
        lambda H, N: ResolventKernel(d_model=H, d_state=N, learn_a=True, share_a=False, backend="numba")
    )
# (kernel, (H, N, L)) -> (max ratio to the floor or None, max peak MB).
TARGETS = {
    ("S4D (diag, zoh)", (128, 64, 16000)): (1.0, 1024),
    ("S4 (DPLR, legs)", (128, 64, 16000)): (2.0, 1024),
    ("S4 (DPLR, legs, numba)", (128, 64, 16000)): (2.0, 1024),
    ("LSSL (legs, learned A, dt)", (128, 64, 16000)): (2.0, 1024),
    ("LSSL (legs, learned A, dt)", (256, 256, 1024)): (None, 8192),
}
SHAPES = [(128, 64, 1024), (128, 64, 4096), (128, 64, 16000), (256, 256, 1024)]
QUICK_SHAPES = [(128, 64, 1024), (256, 256, 1024)]


def check_against_reference(name: str) -> float:
    """Relative max error of the fast kernel against explicit powers, float64, small size."""
    torch.manual_seed(0)
    k = KERNELS[name](2, 8).double()
    K = k(64)
    R = reference.kernel(*k.discrete(64), 64)
    err = ((K - R).abs().max() / R.abs().max()).item()
    if err > 1e-9:
        raise SystemExit(f"{name}: kernel differs from the reference by {err:.2e}")
    return err


def kernel_step(k: torch.nn.Module, L: int) -> Step:
    G = torch.randn(k.channels, k.d_model, L)

    def step():
        k.zero_grad(set_to_none=True)
        (k(L) * G).sum().backward()

    return step


def make_step(name: str, H: int, N: int, L: int) -> Step:
    if name == FLOOR:
        return floor_step(H, L)
    return kernel_step(KERNELS[name](H, N), L)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="only the L=1024 shapes")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    errs = {name: check_against_reference(name) for name in KERNELS}
    rows = []
    for H, N, L in QUICK_SHAPES if args.quick else SHAPES:
        torch.manual_seed(0)
        steps = {name: make_step(name, H, N, L) for name in [FLOOR, *KERNELS]}
        rounds, _ = interleaved(steps, args.repeats)
        times = {name: statistics.median(t) for name, t in rounds.items()}
        ratios = {name: median_ratio(rounds, name, FLOOR) for name in rounds}
        del steps
        for name in [FLOOR, *KERNELS]:
            med, ratio = times[name], ratios[name]
            mem = peak_memory_mb("kernels", name, H, N, L)
            target, verdict = "", ""
            if (name, (H, N, L)) in TARGETS:
                max_ratio, max_mb = TARGETS[name, (H, N, L)]
                target = ("" if max_ratio is None else f"<= {max_ratio:g}x, ") + f"< {max_mb / 1024:g} GB"
                met = (max_ratio is None or ratio <= max_ratio) and mem < max_mb
                verdict = "met" if met else "MISSED"
            rows.append(f"| {name} | {H} | {N} | {L} | {med:.3f} | {ratio:.2f} | {mem:.0f} | {target} | {verdict} |")
            print(rows[-1], flush=True)
    header = [
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, median of {args.repeats}.",
        "Reference check (float64, H=2, N=8, L=64, relative max error): "
        + ", ".join(f"{n}: {e:.1e}" for n, e in errs.items()),
        "",
        "| kernel | H | N | L | fwd+bwd (s) | ratio to floor | peak MB | target | |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    write_table(header + rows, args.out)


if __name__ == "__main__":
    main()
