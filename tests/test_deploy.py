"""Streaming deployment: `StreamingModel` (the frozen real-arithmetic step) and its ONNX export
run by onnxruntime equal `SequenceModel.forward` on the whole sequence, for every layer kind, at
batch 1 and 8 (one exported file: the batch dimension is dynamic); `lssl export` and the
example script on a tiny checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lssl
from lssl.deploy import StreamingModel

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

L = 24
KINDS = {
    "s4d": ("s4d", {}),
    "s4": ("s4", {}),
    "lssl": ("lssl", {}),
    "lssl-resolvent": ("lssl", {"kernel": "resolvent"}),
    "liquid-pb": ("liquid-s4", {"liquid": "pb", "l_max": L, "liquid_gain": "none"}),
    "liquid-kb": ("liquid-s4", {"liquid": "kb", "degree": 3, "l_max": L, "liquid_gain": "none"}),
    "liquid-pb-gain": ("liquid-s4", {"liquid": "pb", "l_max": L}),  # the default gain, set away from 0 below
}


def make_model(kind: str, pooling: str = "none", vocab: bool = False) -> lssl.SequenceModel:
    layer, args = KINDS[kind]
    torch.manual_seed(0)
    inputs = {"d_input": None, "vocab_size": 11} if vocab else {"d_input": 2}
    model = lssl.SequenceModel(**inputs, d_output=3, d_model=8, n_layers=2, layer=layer, pooling=pooling,
                               layer_args={"d_state": 8, **args}).eval()
    with torch.no_grad():
        for block in model.blocks:
            gain = getattr(getattr(block.layer, "liquid", None), "gain", None)
            if gain is not None:
                gain.normal_()  # a trained gain: the liquid term at work
    return model


def stream_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    """Feed x (B, L, ...) sample by sample through the ONNX step from zero states; (B, L, d_out)."""
    sess = ort.InferenceSession(str(path))
    spec = json.loads(path.with_suffix(".json").read_text())
    names = [i["name"] for i in spec["inputs"]]
    assert names == [i.name for i in sess.get_inputs()]
    B = x.shape[0]
    states = [np.zeros([B, *i["shape"][1:]], dtype=i["dtype"]) for i in spec["inputs"][1:]]
    ys = []
    for t in range(x.shape[1]):
        y, *states = sess.run(None, dict(zip(names, [x[:, t], *states])))
        ys.append(y)
    return np.stack(ys, 1)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_the_onnx_step_streams_what_forward_computes(tmp_path, kind):
    model = make_model(kind)
    with torch.no_grad():
        model(torch.randn(1, L, 2))  # S4's first call turns its C into C~, as training does
    path = lssl.export(model, str(tmp_path / "model.onnx"))
    for batch in (1, 8):
        x = torch.randn(batch, L, 2)
        with torch.no_grad():
            ref = model(x).numpy()
        np.testing.assert_allclose(stream_onnx(Path(path), x.numpy()), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_mean_pooled_token_model_streams_its_running_prediction(tmp_path):
    model = make_model("s4", pooling="mean", vocab=True)
    with torch.no_grad():
        model(torch.randint(0, 11, (1, L)))
    path = lssl.export(model, str(tmp_path / "tokens.onnx"), rate=1.0)
    x = torch.randint(0, 11, (3, L))
    ys = stream_onnx(Path(path), x.numpy())
    with torch.no_grad():
        for t in (0, L // 2, L - 1):  # the prediction after t + 1 tokens is the model on that prefix
            np.testing.assert_allclose(ys[:, t], model(x[:, : t + 1]).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_frozen_step_equals_forward_and_the_layers_own_step(kind):
    model = make_model(kind)
    x = torch.randn(2, L, 2)
    with torch.no_grad():
        ref = model(x, rate=2.0)  # S4's first call turns its C into C~, as training does
    stream = StreamingModel(model, rate=2.0)
    with torch.no_grad():
        states = stream.zero_states(2)
        layer_states = model.default_state(2)
        for t in range(L):
            y, *states = stream(x[:, t], *states)
            y_ref, layer_states = model.step(x[:, t], layer_states, rate=2.0)
            torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(y, ref[:, t], rtol=1e-5, atol=1e-5)
    assert all(not t.is_complex() for t in states)
    names = [name for name, _ in stream.state_spec(2)]
    assert names[0] == "block0.state" and (("block0.memory" in names) == kind.startswith("liquid"))


def test_export_refuses_what_has_no_recurrent_view(tmp_path):
    model = lssl.SequenceModel(d_input=1, d_output=2, d_model=8, n_layers=1, layer="s4", layer_args={"bidirectional": True})
    with pytest.raises(ValueError, match="bidirectional layer has no recurrent view"):
        StreamingModel(model)
    official = lssl.SequenceModel(d_input=1, d_output=2, d_model=8, n_layers=1, layer="liquid-s4",
                                  layer_args={"liquid_compat": "official"})
    with pytest.raises(ValueError, match="no recurrent view or state"):
        StreamingModel(official)


@pytest.mark.slow
def test_the_cli_and_the_example_stream_a_checkpoint(tmp_path):
    from lssl.train import fit

    from .helpers import toy_spec
    from .test_train import toy_config

    cfg = toy_config(tmp_path, "toy", epochs=1)
    cfg.model.pooling = "mean"
    fit(cfg, data=toy_spec())
    ckpt = tmp_path / "toy/checkpoints/best.safetensors"
    done = subprocess.run([sys.executable, "-m", "lssl", "export", str(ckpt), "-o", str(tmp_path / "toy.onnx")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "toy.onnx").is_file() and (tmp_path / "toy.json").is_file()
    example = Path(__file__).parents[1] / "examples/stream_onnx.py"
    done = subprocess.run([sys.executable, str(example), str(ckpt), "--samples", "20", "--random"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "per sample" in out and "real-time factor at 16 kHz" in out and "prediction after 20 samples" in out


@pytest.mark.slow
def test_the_streaming_benchmark_runs_quick(tmp_path):
    root = Path(__file__).parents[1]
    done = subprocess.run([sys.executable, "streaming.py", "--quick", "--out", str(tmp_path / "s.md")],
                          cwd=root / "benchmarks", capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    table = (tmp_path / "s.md").read_text()
    assert "| Liquid-S4 KB | 1 |" in table and "Real-time factor at 16 kHz" in table


FORWARD_KINDS = {**KINDS, "s4d-bidirectional": ("s4d", {"bidirectional": True})}


@pytest.mark.slow
@pytest.mark.parametrize("kind, pooling", [(kind, "none") for kind in FORWARD_KINDS]
                         + [("s4", "mean"), ("liquid-pb", "mean")])  # pooling is the model's: two cover it
def test_the_onnx_forward_equals_forward_on_whole_sequences(tmp_path, kind, pooling):
    layer, args = FORWARD_KINDS[kind]
    torch.manual_seed(0)
    model = lssl.SequenceModel(d_input=2, d_output=3, d_model=8, n_layers=2, layer=layer, pooling=pooling,
                               layer_args={"d_state": 8, **args}).eval()
    with torch.no_grad():
        for block in model.blocks:
            gain = getattr(getattr(block.layer, "liquid", None), "gain", None)
            if gain is not None:
                gain.normal_()
    path = Path(lssl.export(model, str(tmp_path / "f.onnx"), mode="forward", length=L))
    sess = ort.InferenceSession(str(path))
    for batch in (1, 5):
        x = torch.randn(batch, L, 2)
        with torch.no_grad():
            ref = model(x).numpy()
        np.testing.assert_allclose(sess.run(None, {"x": x.numpy()})[0], ref, rtol=1e-5, atol=1e-5)
    assert json.loads(path.with_suffix(".json").read_text())["length"] == L


def test_forward_mode_needs_a_length():
    with pytest.raises(ValueError, match="mode='forward' needs length"):
        lssl.export(make_model("s4d"), "x.onnx", mode="forward")
