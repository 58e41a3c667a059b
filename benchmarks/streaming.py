"""Streaming latency: one sample through a whole layer (SSM step, D skip, activation, mix) per
call, B = 1 and B = 64, for each layer kind: eager PyTorch (`layer.step`), the frozen real
step (`lssl.deploy.LayerStep`) eager, the same compiled with torch.compile (inductor; batch 1
only), and its ONNX export run by onnxruntime; plus a 4-layer H = 64 model's real-time factor at 16 kHz
(seconds of compute per second of audio, one sample per call, batch 1).

Every variant runs in one process, one thread (torch and onnxruntime), interleaved: each round
times `--steps` calls of every variant in turn; the table has the median over rounds of the
time per call, and the ratio to the eager layer step in the same round.

    python benchmarks/streaming.py [--quick] [--out benchmarks/streaming.md]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import write_table

import lssl
from lssl.deploy import LayerStep, StreamingModel, real_state

KINDS = {
    "S4D": lambda H, N: lssl.S4D(H, N),
    "S4": lambda H, N: lssl.S4(H, N),
    "LSSL": lambda H, N: lssl.LSSL(H, N),
    "Liquid-S4 PB": lambda H, N: lssl.LiquidS4(H, N, liquid="pb", l_max=1024),
    "Liquid-S4 KB": lambda H, N: lssl.LiquidS4(H, N, liquid="kb", l_max=1024),
}


def onnx_session(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], tmp: Path):
    """An onnxruntime session (one thread) of `module` exported at the inputs' shapes."""
    import onnxruntime as ort

    path = tmp / f"m{id(module)}.onnx"
    with torch.no_grad():
        torch.onnx.export(module, inputs, dynamo=True, verbose=False).save(str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options)
    names = [i.name for i in session.get_inputs()]
    feed = {n: t.numpy() for n, t in zip(names, inputs)}
    return lambda: session.run(None, feed)


def variants(kind: str, H: int, N: int, batch: int, tmp: Path, compile_: bool) -> dict:
    """name -> a call that advances one sample."""
    torch.manual_seed(0)
    layer = KINDS[kind](H, N).eval()
    with torch.no_grad():
        layer(torch.randn(1, 64, H))  # kernels set up as after training
    x = torch.randn(batch, H)
    state = layer.default_state(batch)
    frozen = LayerStep(layer).eval()
    states = tuple(real_state(layer, state))

    def eager():
        with torch.no_grad():
            layer.step(x, state)

    def frozen_eager():
        with torch.no_grad():
            frozen(x, *states)

    calls = {"eager step": eager, "frozen step": frozen_eager}
    if compile_:
        compiled = torch.compile(frozen, fullgraph=True)

        def frozen_compiled():
            with torch.no_grad():
                compiled(x, *states)

        calls["compiled"] = frozen_compiled
    calls["onnxruntime"] = onnx_session(frozen, (x, *states), tmp)
    return calls


def per_call(calls: dict, steps: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each variant in every round (after a warm-up round)."""
    times = {name: [] for name in calls}
    for r in range(rounds + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(steps):
                call()
            if r:
                times[name].append((time.perf_counter() - start) / steps)
    return times


def real_time_factor(tmp: Path, steps: int, rounds: int) -> dict[str, float]:
    """Seconds of compute per second of 16 kHz audio for a 4-layer H = 64, N = 64 S4D model."""
    torch.manual_seed(0)
    model = lssl.SequenceModel(d_input=1, d_output=10, d_model=64, n_layers=4, layer="s4d", pooling="none",
                               layer_args={"d_state": 64}).eval()
    stream = StreamingModel(model)
    x = torch.randn(1, 1)
    states = tuple(stream.zero_states(1))
    model_states = model.default_state(1)

    def eager():
        with torch.no_grad():
            model.step(x, model_states)

    calls = {"eager step": eager, "onnxruntime": onnx_session(stream, (x, *states), tmp)}
    times = per_call(calls, steps, rounds)
    return {name: statistics.median(t) * 16000 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="H = N = 16, few steps, no torch.compile")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    H, N = (16, 16) if args.quick else (128, 64)
    steps, rounds = (20, 2) if args.quick else (200, 3)
    batches = (1,) if args.quick else (1, 64)
    lines = [
        f"One layer, H = {H}, N = {N}, one sample per call, one thread; median over {rounds} interleaved "
        f"rounds of {steps} calls; ms per call (ratio to the eager layer step of the same round).",
        "",
        "| layer | B | eager step | frozen step | compiled | onnxruntime |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            for batch in batches:
                # torch.compile at batch 1 only: the streaming case, and inductor's code
                # generation takes tens of seconds per graph on a small CPU.
                calls = variants(kind, H, N, batch, Path(tmp), compile_=not args.quick and batch == 1)
                times = per_call(calls, steps, rounds)
                base = times["eager step"]
                cells = []
                for name in ("eager step", "frozen step", "compiled", "onnxruntime"):
                    if name not in times:
                        cells.append("-")
                        continue
                    ratio = statistics.median(t / b for t, b in zip(times[name], base))
                    cells.append(f"{1e3 * statistics.median(times[name]):.3f} ({ratio:.2f}x)")
                lines.append(f"| {kind} | {batch} | " + " | ".join(cells) + " |")
                print(lines[-1], flush=True)
        rtf = real_time_factor(Path(tmp), steps, rounds)
    lines += ["", "Real-time factor at 16 kHz, 4-layer S4D model, H = N = 64, batch 1 (compute seconds per "
              "second of audio; < 1 keeps up): " + ", ".join(f"{k} {v:.3f}" for k, v in rtf.items())]
    print(lines[-1])
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
