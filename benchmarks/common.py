"""Shared pieces of the benchmarks: the FFT-convolution floor, interleaved timing and peak
memory in a fresh process."""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lssl.ops.fftconv import fftconv

BATCH = 4
FLOOR = "FFT conv floor (B=4)"
PLAIN_FLOOR = "plain FFT conv (B=4)"
Step = Callable[[], None]


def plain_fftconv(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """`fftconv` written as plain torch (rfft, product, irfft, autograd's own backward): what an
    FFT convolution costs without ours. u (B, H, L), K (C, H, L) -> (B, C, H, L)."""
    L = u.shape[-1]
    n = 2 * L
    return torch.fft.irfft(torch.fft.rfft(u, n=n)[:, None] * torch.fft.rfft(K, n=n), n=n)[..., :L]


def floor_step(H: int, L: int, conv: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = fftconv) -> Step:
    """Forward + backward of the causal FFT convolution alone, with a precomputed kernel (`conv`:
    our `fftconv`, or `plain_fftconv` for the plain-torch reference)."""
    u = torch.randn(BATCH, H, L, requires_grad=True)
    K = torch.randn(1, H, L, requires_grad=True)
    G = torch.randn(BATCH, 1, H, L)

    def step():
        u.grad = K.grad = None
        (conv(u, K) * G).sum().backward()

    return step


def table_head(header: list[str]) -> list[str]:
    """A markdown table's header row and rule for the column names `header`."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]


def write_table(lines: list[str], out: Path | None) -> None:
    """Print a benchmark's table (its lines joined) and, with `out` given, write it there too."""
    table = "\n".join(lines)
    print("\n" + table)
    if out:
        out.write_text(table + "\n")


def minor_faults() -> int:
    """Minor page faults of this process so far: each maps a fresh zero-filled page, which is
    what a large tensor costs when the allocator hands it to the system on free and gets new
    pages on the next allocation (glibc's malloc above its mmap threshold)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def interleaved(steps: dict[str, Step], repeats: int) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """The time and the minor page faults of each step in every round, after one warm-up round;
    rounds run every step once, round-robin, so that the steps of one round see the same state
    of the machine."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    faults: dict[str, list[int]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            f, t = minor_faults(), time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t)
            faults[name].append(minor_faults() - f)
    return times, faults


def median_ratio(rounds: dict[str, list[float]], name: str, reference: str) -> float:
    """The median over rounds of name's time over reference's time in the same round."""
    return statistics.median(t / r for t, r in zip(rounds[name], rounds[reference]))


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM, which, unlike ru_maxrss, is not inherited
    from the parent across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def peak_memory_mb(module: str, name: str, *shape: int) -> float:
    """Growth of the peak RSS during one `module.make_step(name, *shape)()`, in a fresh process."""
    code = (
        "import json, sys, torch; sys.path.insert(0, 'benchmarks');"
        f"import common, {module} as b; torch.set_num_threads(2);"
        f"step = b.make_step({name!r}, {', '.join(map(str, shape))});"
        "base = common.peak_rss_mb(); step(); print(json.dumps(common.peak_rss_mb() - base))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
