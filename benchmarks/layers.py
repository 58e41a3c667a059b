"""Layer benchmark: forward + backward time and peak memory of one layer (kernel, convolution,
D, activation, output mixing; gradients of the parameters and of the input, as inside a model
and as in the floor) at batch 4, against the FFT-convolution floor at the same shape
(interleaved in one process; ratios taken within each round), and the recurrent step latency.
The floor is our `fftconv` (its backward written out); "ratio to plain conv" is the ratio to the
same convolution in plain torch (rfft, product, irfft, autograd's backward), for scale.
"faulted MB" is the memory a step mapped afresh (its minor page faults times the page size,
median over rounds): what the allocator gave back to the system and faulted in again, a cost
that depends on the allocator's state more than on the layer. Liquid-S4 rows are also compared
with the plain S4 layer of the same backend (the median over rounds of the two layers' time
ratio in the same round).

    python benchmarks/layers.py [--repeats 5] [--quick] [--out benchmarks/layers.md]
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import (
    BATCH,
    FLOOR,
    PLAIN_FLOOR,
    Step,
    floor_step,
    interleaved,
    median_ratio,
    peak_memory_mb,
    plain_fftconv,
    write_table,
)

from lssl import LSSL, S4, S4D, LiquidS4
from lssl.layer import SSMLayer

LAYERS: dict[str, Callable[[int, int], SSMLayer]] = {
    "S4D": lambda H, N: S4D(H, d_state=N),
    "S4": lambda H, N: S4(H, d_state=N),
    # The same layer with the kernel's Cauchy sums as compiled loops (needs numba).
    "S4 (numba)": lambda H, N: S4(H, d_state=N, backend="numba"),
    "LSSL (learned A, dt)": lambda H, N: LSSL(H, d_state=N, learn_a=True, share_a=False),
    # The same parameters, the kernel by its generating function (O(H N L), no N^3 term).
    "LSSL (learned A, dt; resolvent)": lambda H, N: LSSL(H, d_state=N, learn_a=True, share_a=False, kernel="resolvent"),
    "LSSL (learned A, dt; resolvent, numba)": (
        lambda H, N: LSSL(H, d_state=N, learn_a=True, share_a=False, kernel="resolvent", backend="numba")
    ),
    "LSSL-fixed": lambda H, N: LSSL(H, d_state=N, learn_a=False, learn_dt=False),
    **{
        f"Liquid-S4 {term.upper()} P={P}": (lambda H, N, term=term, P=P: LiquidS4(H, d_state=N, degree=P, liquid=term))
        for term in ("pb", "kb")
        for P in (2, 3, 4)
    },
    # The same layers with the liquid signals and the Cauchy sums as compiled loops (needs numba).
    **{
        f"Liquid-S4 {term.upper()} P={P} (numba)": (
            lambda H, N, term=term, P=P: LiquidS4(H, d_state=N, degree=P, liquid=term, backend="numba")
        )
        for term in ("pb", "kb")
        for P in (2, 3, 4)
    },
}
HAVE_NUMBA = importlib.util.find_spec("numba") is not None
# Bytes per page, for the memory the minor page faults of a step mapped afresh.
PAGE = resource.getpagesize()
# Liquid-S4 at P <= 3: at most 1.25x our S4 layer at every shape; at L=16000 also 4x faster and
# a quarter of the memory of the official Liquid-S4 layer (9.8 s, 11.5 GB on this machine).
LIQUID_MAX_RATIO_TO_S4 = 1.25
LIQUID_OFFICIAL = {(128, 64, 16000): (9.8 / 4, 11.5 * 1024 / 4)}
# (layer, (H, N, L)) -> (max ratio to the floor, max peak MB: half the official layer's).
TARGETS = {
    ("S4D", (128, 64, 16000)): (2.5, 1450),
    ("S4", (128, 64, 16000)): (3.0, 5650),
    ("S4 (numba)", (128, 64, 16000)): (3.0, 5650),
    ("LSSL (learned A, dt)", (128, 64, 16000)): (3.0, 1600),
    ("LSSL-fixed", (128, 64, 16000)): (1.3, 900),
}
SHAPES = [(128, 64, 1024), (128, 64, 4096), (128, 64, 16000), (256, 256, 1024)]
# LSSL with a learned A against our S4 layer (torch backend): (H, N, L) -> max time ratio; peak
# memory at most S4's.
LSSL_MAX_RATIO_TO_S4 = {(256, 256, 1024): 2.0, (128, 64, 16000): 1.0}
QUICK_SHAPES = [(128, 64, 1024)]
# (layer, batch) -> step latency target in ms at H=128, N=64.
STEP_TARGETS = {("S4", 1): 0.1, ("S4", 64): 0.5, ("S4D", 1): 0.05, ("S4D", 64): 0.2, ("LSSL (learned A, dt)", 1): 0.15}


def layer_step(layer: SSMLayer, L: int) -> Step:
    """Forward + backward of the layer, with the gradient of its input too: inside a model every
    layer's input depends on parameters (the encoder's, at least), and the floor pays for it."""
    x = torch.randn(BATCH, L, layer.d_model, requires_grad=True)
    G = torch.randn(BATCH, L, layer.d_model)

    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        (layer(x) * G).sum().backward()

    return step


def make_step(name: str, H: int, N: int, L: int) -> Step:
    if name == FLOOR:
        return floor_step(H, L)
    if name == PLAIN_FLOOR:
        return floor_step(H, L, plain_fftconv)
    return layer_step(LAYERS[name](H, N), L)


def step_latency_ms(layer: SSMLayer, batch: int, steps: int = 1000, block: int = 50) -> tuple[float, float]:
    """Median time (ms) of one SSM recurrence step (the kernel's `recurrence().step`, what the
    targets and the official figures count) and of one full `layer.step` (input checks, D,
    activation and output mixing on top; for Liquid-S4 also its liquid terms), in inference
    mode, after one forward pass at L = 1024 (which sets Liquid-S4's PB windows). The two are
    timed in alternating blocks of `block` steps, so both see the machine's drift while each
    runs as a stream would (alternating every single step lets each evict the other's working
    set and more than doubles the B = 64 SSM step)."""
    x = torch.randn(batch, layer.d_model)
    with torch.inference_mode():
        layer(torch.randn(1, 1024, layer.d_model))
        recurrence = layer.kernel.recurrence(1.0)
        ssm_state = layer.kernel.default_state(batch)
        layer_state = layer.default_state(batch)
        for _ in range(20):
            _, ssm_state = recurrence.step(x, ssm_state)
            _, layer_state = layer.step(x, layer_state)
        ssm, full = [], []
        for _ in range(steps // block):
            for _ in range(block):
                t = time.perf_counter()
                _, ssm_state = recurrence.step(x, ssm_state)
                ssm.append(time.perf_counter() - t)
            for _ in range(block):
                t = time.perf_counter()
                _, layer_state = layer.step(x, layer_state)
                full.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ssm), 1e3 * statistics.median(full)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="only the L=1024 shape")
    parser.add_argument("--steps-only", action="store_true", help="only the recurrent step table")
    parser.add_argument("--shape", action="append", default=None, metavar="H,N,L",
                        help="only this shape (repeatable; default: all shapes)")
    parser.add_argument("--layers", nargs="+", choices=list(LAYERS), metavar="NAME",
                        default=[name for name in LAYERS if HAVE_NUMBA or "numba" not in name],
                        help="only these layers (Liquid-S4 ratios need the S4 of their backend among them; "
                        "numba rows need numba)")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    shapes = [tuple(int(v) for v in shape.split(",")) for shape in args.shape] if args.shape else SHAPES
    names = [FLOOR, PLAIN_FLOOR, *args.layers]
    rows = []
    for H, N, L in [] if args.steps_only else QUICK_SHAPES if args.quick else shapes:
        torch.manual_seed(0)
        steps = {name: make_step(name, H, N, L) for name in names}
        rounds, faults = interleaved(steps, args.repeats)
        times = {name: statistics.median(t) for name, t in rounds.items()}
        ratios = {name: median_ratio(rounds, name, FLOOR) for name in rounds}
        plain_ratios = {name: median_ratio(rounds, name, PLAIN_FLOOR) for name in rounds}
        del steps
        # Each layer's peak once (a fresh process each): the LSSL rows compare with S4's.
        mems = {name: peak_memory_mb("layers", name, H, N, L) for name in names}
        for name in names:
            mem = mems[name]
            target, verdict = "", ""
            if (name, (H, N, L)) in TARGETS:
                max_ratio, max_mb = TARGETS[name, (H, N, L)]
                target = f"<= {max_ratio:g}x, < {max_mb / 1024:.2g} GB"
                verdict = "met" if ratios[name] <= max_ratio and mem < max_mb else "MISSED"
            to_s4 = ""
            # Liquid-S4 against the S4 layer of its own backend.
            s4 = "S4 (numba)" if "numba" in name else "S4"
            if name.startswith("Liquid-S4") and s4 in ratios:
                ratio_to_s4 = median_ratio(rounds, name, s4)
                to_s4 = f"{ratio_to_s4:.2f}x {s4}"
                if int(re.search(r"P=(\d+)", name)[1]) <= 3:
                    target = f"<= {LIQUID_MAX_RATIO_TO_S4:g}x S4"
                    met = ratio_to_s4 <= LIQUID_MAX_RATIO_TO_S4
                    if (H, N, L) in LIQUID_OFFICIAL:
                        max_s, max_mb = LIQUID_OFFICIAL[H, N, L]
                        target += f", < {max_s:.3g} s, < {max_mb / 1024:.2g} GB"
                        met = met and times[name] < max_s and mem < max_mb
                    verdict = "met" if met else "MISSED"
            if name.startswith("LSSL (learned") and "S4" in ratios:
                ratio_to_s4 = median_ratio(rounds, name, "S4")
                to_s4 = f"{ratio_to_s4:.2f}x S4"
                if (H, N, L) in LSSL_MAX_RATIO_TO_S4:
                    max_ratio = LSSL_MAX_RATIO_TO_S4[H, N, L]
                    s4_mb = mems["S4"]
                    target = f"<= {max_ratio:g}x S4, <= S4's {s4_mb:.0f} MB"
                    verdict = "met" if ratio_to_s4 <= max_ratio and mem <= s4_mb else "MISSED"
            fault_mb = statistics.median(faults[name]) * PAGE / 2**20
            rows.append(
                f"| {name} | {H} | {N} | {L} | {times[name]:.3f} | {ratios[name]:.2f} | {plain_ratios[name]:.2f} | {to_s4} "
                f"| {mem:.0f} | {fault_mb:.0f} "
                f"| {target} | {verdict} |"
            )
            print(rows[-1], flush=True)
    step_rows = []
    # A single step runs the same torch code with either backend: no numba rows.
    for name in [name for name in args.layers if "numba" not in name]:
        layer = LAYERS[name](128, 64).eval()
        for batch in (1, 64):
            ssm_ms, layer_ms = step_latency_ms(layer, batch)
            target = STEP_TARGETS.get((name, batch))
            verdict = "" if target is None else ("met" if ssm_ms <= target else "MISSED")
            step_rows.append(
                f"| {name} | {batch} | {ssm_ms:.3f} | {layer_ms:.3f} | {'' if target is None else f'<= {target:g}'} | {verdict} |"
            )
            print(step_rows[-1], flush=True)
    write_table(
        [
            (
                f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, forward + backward at "
                f"batch {BATCH}, median of {args.repeats}."
            ),
            "",
            (
                "| layer | H | N | L | fwd+bwd (s) | ratio to floor | ratio to plain conv | ratio to S4 | peak MB "
                "| faulted MB | target | |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Recurrent step, H=128, N=64, inference mode, median of 1000 steps: the SSM recurrence",
            "(`layer.kernel.recurrence().step`, which the targets count) and the whole `layer.step`",
            "(input checks, D, activation, output mixing), timed in alternating blocks of 50 steps:",
            "",
            "| layer | batch | SSM step (ms) | layer step (ms) | target, SSM step (ms) | |",
            "|---|---|---|---|---|---|",
            *step_rows,
        ],
        args.out,
    )


if __name__ == "__main__":
    main()
