"""Stream a trained checkpoint through onnxruntime, one sample at a time.

    python examples/stream_onnx.py runs/lssl-smnist/checkpoints/best.safetensors

Exports the checkpoint's recurrent view as ONNX (`lssl.export`: one step, every layer's state as
explicit inputs and outputs), then feeds one test sequence of its data set (for the main job: an
MNIST digit, pixel by pixel) through onnxruntime from zero states, printing the running
prediction, the latency per sample and the real-time factor for 16 kHz audio-sized steps (the
seconds of compute per second of a 16 kHz stream). --random streams noise instead, for
checkpoints whose data set is not at hand.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import lssl


def test_sequence(checkpoint: str, model: lssl.SequenceModel, random: bool) -> tuple[np.ndarray, object]:
    """One input sequence (L, d_input) or (L,) token ids, and its label (None for noise)."""
    if random:
        torch.manual_seed(0)
        x = torch.randint(0, model.vocab_size, (784,)) if model.vocab_size else torch.randn(784, model.d_input)
        return x.numpy(), None
    from lssl.train import checkpoint as ckpt
    from lssl.train import loop
    from lssl.config import from_dict

    _, meta = ckpt.read(checkpoint)
    spec = loop.load_data(from_dict(meta["config"]).data)
    x, y = spec.test[0]
    return np.asarray(x), y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--samples", type=int, default=None, help="stream only the first this many samples")
    parser.add_argument("--random", action="store_true", help="stream noise instead of a test sequence")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = parser.parse_args()

    model = lssl.load(args.checkpoint)
    x, label = test_sequence(args.checkpoint, model, args.random)
    x = x[: args.samples] if args.samples else x
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(lssl.export(model, str(Path(tmp) / "model.onnx")))
        spec = json.loads(path.with_suffix(".json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(path), options)
    names = [i["name"] for i in spec["inputs"]]
    print(f"exported {len(names) - 1} state tensors: " + ", ".join(
        f"{i['name']} {tuple(i['shape'])}" for i in spec["inputs"][1:]))
    states = [np.zeros([1, *i["shape"][1:]], dtype=i["dtype"]) for i in spec["inputs"][1:]]
    dtype = spec["inputs"][0]["dtype"]
    times = []
    every = max(1, len(x) // 8)
    for t in range(len(x)):
        start = time.perf_counter()
        y, *states = session.run(None, dict(zip(names, [x[t : t + 1].astype(dtype), *states])))
        times.append(time.perf_counter() - start)
        if (t + 1) % every == 0 and t + 1 < len(x):
            print(f"after {t + 1:5d} samples: prediction {describe(y[0])}")
    ms = 1e3 * np.array(times[1:] or times)
    print(f"prediction after {len(x)} samples: {describe(y[0])}" + ("" if label is None else f" (label {label})"))
    print(f"latency per sample: median {np.median(ms):.3f} ms, p99 {np.percentile(ms, 99):.3f} ms "
          f"(onnxruntime, {args.threads} thread(s), batch 1)")
    print(f"real-time factor at 16 kHz: {np.median(ms) * 1e-3 * 16000:.3f} (compute seconds per second of audio)")


def describe(y: np.ndarray) -> str:
    """The class and its probability for logits, the values for a regression output."""
    if y.shape[-1] > 1:
        p = np.exp(y - y.max())
        p /= p.sum()
        return f"class {int(p.argmax())} (p = {p.max():.2f})"
    return f"{float(y[0]):.4g}"


if __name__ == "__main__":
    main()
