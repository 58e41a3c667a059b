"""Training that never loses work: stop signals write a checkpoint at the current step, a killed
run resumes from its last one, the run directory is locked against a second process, forks
into a new run directory, resumes with changed settings, and every NaN path ends in the
'diverged' message.

The fault-injection tests run real `lssl train` processes on a tiny parity config and stop them
at a random step (SIGINT, SIGTERM, SIGKILL), resume until the run is done, and compare the
final weights with an uninterrupted run bit for bit. CI runs one seed per signal; set
LSSL_FAULT_SEEDS=5 (or more) for the full set.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lssl import config
from lssl.errors import UserError
from lssl.train import Diverged, Interrupted, checkpoint, fit, loop

from .helpers import toy_spec
from .test_train import model_tensors, toy_config

FAULT_SEEDS = int(os.environ.get("LSSL_FAULT_SEEDS", "1"))

PARITY = """
name = "{name}"
out = "{out}"
seed = 1
[model]
layer = "s4d"
d_model = 8
n_layers = 1
d_state = 8
dropout = 0.1
[data]
name = "parity"
options = {{ length = 32, n_train = 512, n_val = 32, n_test = 32 }}
[train]
epochs = 3
batch_size = 8
lr = 0.01
scheduler = "cosine"
warmup_steps = 5
checkpoint_every = 7
progress = false
"""


def write_config(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(PARITY.format(name=name, out=tmp_path / "runs"))
    return path


def lssl(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "lssl", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def weights(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model_tensors(run / "checkpoints/last.safetensors").items() if k.startswith("model.")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The uninterrupted run's final weights."""
    tmp = tmp_path_factory.mktemp("reference")
    code, text = finish(lssl("train", str(write_config(tmp, "full"))))
    assert code == 0, text
    return weights(tmp / "runs/full")


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("seed", range(FAULT_SEEDS))
def test_a_run_stopped_at_a_random_step_resumes_to_the_same_weights(tmp_path, reference, sig, seed):
    cfg = write_config(tmp_path, "run")
    run = tmp_path / "runs/run"
    proc = lssl("train", str(cfg))
    # Wait for the first checkpoint (step 7), then stop somewhere in the remaining 185 steps.
    deadline = time.monotonic() + 120
    while not (run / "checkpoints/last.safetensors").exists():
        assert proc.poll() is None and time.monotonic() < deadline, finish(proc)[1]
        time.sleep(0.02)
    time.sleep(random.Random(seed).uniform(0.0, 1.0))
    proc.send_signal(getattr(signal, sig))
    code, text = finish(proc)
    if code == 0:
        pytest.skip("the run finished before the signal arrived")  # too fast a machine for this delay
    if sig == "SIGKILL":
        assert code == -signal.SIGKILL
    else:
        assert code == 130, text
        assert f"lssl: interrupted: {sig} at epoch" in text and "checkpoint written to" in text, text
        assert "Traceback" not in text
        _, meta = checkpoint.read(run / "checkpoints/last.safetensors")
        assert meta["progress"]["step"] > 7  # the step the signal came at, not the first checkpoint's
    code, text = finish(lssl("train", str(cfg), "--resume"))
    assert code == 0, text
    assert not list((run / "checkpoints").glob(".*.tmp-*"))  # a killed write's leftovers are gone
    got = weights(run)
    assert got.keys() == reference.keys()
    for k in got:
        assert torch.equal(got[k], reference[k]), k


@pytest.mark.slow
def test_a_second_run_into_the_same_directory_fails_at_once_naming_the_first(tmp_path):
    cfg = write_config(tmp_path, "run")
    first = lssl("train", str(cfg), "--train.epochs=50")
    lock = tmp_path / "runs/.run.lock"
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text().strip()):
        assert first.poll() is None and time.monotonic() < deadline, finish(first)[1]
        time.sleep(0.02)
    try:
        code, text = finish(lssl("train", str(cfg)), timeout=120)
        assert code == 2, text
        assert text.strip().splitlines()[-1] == (
            f"lssl: error: run directory {tmp_path / 'runs/run'} is in use by another lssl process "
            f"(pid {first.pid}); wait for it to finish or pick another --name"
        )
    finally:
        first.kill()
        first.communicate()
    # The dead holder's lock file does not block the next run.
    code, text = finish(lssl("train", str(cfg), "--resume", "--train.epochs=1"))
    assert code in (0, 2), text
    assert "in use by another" not in text


def test_sigint_in_process_checkpoints_the_current_step_and_resumes_bit_exactly(tmp_path, monkeypatch):
    spec = toy_spec(n_train=32)  # 4 steps per epoch, 8 in all
    full = fit(toy_config(tmp_path, "full", scheduler="cosine", warmup_steps=2), data=spec)
    calls = {"n": 0}
    original = loop.forward

    def forward(model, batch, rate=1.0):
        calls["n"] += model.training
        if calls["n"] == 6 and model.training:  # the 6th training step
            os.kill(os.getpid(), signal.SIGINT)
        return original(model, batch, rate)

    monkeypatch.setattr(loop, "forward", forward)
    cfg = toy_config(tmp_path, "cut", scheduler="cosine", warmup_steps=2)
    with pytest.raises(Interrupted, match=r"SIGINT at epoch 2, batch 2 \(step 6\): checkpoint written to"):
        fit(cfg, data=spec)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    _, meta = checkpoint.read(tmp_path / "cut/checkpoints/last.safetensors")
    assert (meta["progress"]["epoch"], meta["progress"]["batch"], meta["progress"]["step"]) == (1, 2, 6)
    monkeypatch.setattr(loop, "forward", original)
    resumed = fit(cfg, data=spec, resume=True)
    assert resumed["test"] == full["test"]
    a, b = model_tensors(tmp_path / "full/checkpoints/last.safetensors"), model_tensors(
        tmp_path / "cut/checkpoints/last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    _, meta_a = checkpoint.read(tmp_path / "full/checkpoints/last.safetensors")
    _, meta_b = checkpoint.read(tmp_path / "cut/checkpoints/last.safetensors")
    assert meta_a["progress"]["steps"] == meta_b["progress"]["steps"] and len(meta_a["progress"]["steps"]) == 8


def test_a_timed_checkpoint_is_written_when_its_minutes_have_passed(tmp_path, monkeypatch):
    spec = toy_spec(n_train=32)
    clock = {"t": 0.0}

    def monotonic():
        clock["t"] += 30.0  # every call half a minute later
        return clock["t"]

    monkeypatch.setattr(loop.time, "monotonic", monotonic)
    saved = []
    original = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", lambda path, *a: (saved.append(Path(path).name), original(path, *a)))
    fit(toy_config(tmp_path, "timed", epochs=1, checkpoint_minutes=1.0), data=spec)
    # Steps 2..4 find a minute passed since the previous save; the epoch end writes last and best.
    assert saved.count("last.safetensors") >= 3
    saved.clear()
    fit(toy_config(tmp_path, "untimed", epochs=1, checkpoint_minutes=0.0), data=spec)
    assert saved == ["last.safetensors", "best.safetensors"]


def test_a_fork_continues_another_runs_checkpoint_in_a_new_directory(tmp_path):
    spec = toy_spec(n_train=32)
    full = fit(toy_config(tmp_path, "full"), data=spec)
    fit(toy_config(tmp_path, "source", max_steps=6), data=spec)  # epoch 1 done (best), stopped at step 6
    source = tmp_path / "source/checkpoints/last.safetensors"
    forked = fit(toy_config(tmp_path, "fork"), data=spec, resume=source)
    assert forked["test"] == full["test"] and forked["steps"] == 8
    assert (tmp_path / "fork/checkpoints/best.safetensors").is_file()
    entry = json.loads((tmp_path / "fork/resumes.jsonl").read_text())
    assert entry == {"checkpoint": str(source), "fork": True, "epoch": 1, "batch": 2, "step": 6,
                     "changes": {"train.max_steps": [6, 0]}}
    # Into a directory that holds a run, or from a run whose best checkpoint is gone: refused
    # before anything is written.
    with pytest.raises(UserError, match="already holds a run; fork"):
        fit(toy_config(tmp_path, "full"), data=spec, resume=source)
    (tmp_path / "source/checkpoints/best.safetensors").unlink()
    with pytest.raises(UserError, match="best checkpoint .* is missing"):
        fit(toy_config(tmp_path, "other"), data=spec, resume=source)
    assert not (tmp_path / "other").exists()


def test_resume_with_changed_settings_is_recorded_or_refused(tmp_path):
    spec = toy_spec(n_train=32)  # 4 steps per epoch
    fit(toy_config(tmp_path, "run", epochs=2, scheduler="cosine"), data=spec)
    with pytest.raises(UserError, match=r"changed train.lr \(0.01 -> 0.02\).*only train.epochs"):
        fit(toy_config(tmp_path, "run", epochs=4, scheduler="cosine", lr=0.02), data=spec, resume=True)
    longer = toy_config(tmp_path, "run", epochs=4, scheduler="cosine")
    results = fit(longer, data=spec, resume=True)
    assert results["epochs"] == 4 and results["steps"] == 16
    assert config.load(tmp_path / "run/config.toml").train.epochs == 4  # config.toml stays true
    entry = json.loads((tmp_path / "run/resumes.jsonl").read_text())
    assert entry["changes"] == {"train.epochs": [2, 4]} and entry["step"] == 8
    # The extended cosine follows the 4-epoch schedule from step 8 on: its middle, not 0.
    _, meta = checkpoint.read(tmp_path / "run/checkpoints/last.safetensors")
    lrs = [row["lr"] for row in meta["history"]]
    assert lrs[1] == 0.0 and 0 < lrs[2] < 0.01 and lrs[3] == 0.0


def test_nan_weights_end_in_the_diverged_message_not_a_layer_error(tmp_path, monkeypatch):
    spec = toy_spec(n_train=32)
    cfg = toy_config(tmp_path, "nan", epochs=2)
    original = torch.optim.AdamW.step

    def poisoned(self, *args, **kwargs):  # the 3rd optimizer step leaves NaN weights
        out = original(self, *args, **kwargs)
        poisoned.calls += 1
        if poisoned.calls == 3:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    poisoned.calls = 0
    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    with pytest.raises(Diverged, match=r"the weights became NaN or Inf at epoch 1, batch 4 \(step 4\); "
                                       r"no checkpoint was written yet"):
        fit(cfg, data=spec)


# ----------------------------------------------------------------------------- bad input

BAD_TOML = 'name = "x"\n[model\n'


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished toy run (its best checkpoint) for the eval and resume cases."""
    root = tmp_path_factory.mktemp("trained")
    fit(toy_config(root, "done", epochs=1), data=toy_spec())
    return root / "done/checkpoints/best.safetensors"


@pytest.fixture
def workdir(monkeypatch, tmp_path, trained):
    """A temp working directory with toy.toml (toy data), broken config files, a plain file where a
    directory is expected, ckpt.safetensors: the trained toy checkpoint, and the run runs/existing."""
    from .test_cli import CONFIG

    spec = toy_spec()
    monkeypatch.setattr(loop, "load_data", lambda data: spec)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy.toml").write_text(CONFIG)
    (tmp_path / "bad.toml").write_text(BAD_TOML)
    (tmp_path / "latin1.toml").write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    (tmp_path / "afile").write_text("not a directory")
    (tmp_path / "ckpt.safetensors").write_bytes(trained.read_bytes())
    (tmp_path / "runs/existing/checkpoints").mkdir(parents=True)
    (tmp_path / "runs/existing/checkpoints/last.safetensors").write_bytes(trained.read_bytes())
    return tmp_path


CLI_CASES = [
    # (arguments, exit code, part of the one line)
    ([], 2, "required: COMMAND"),
    (["train"], 2, "required: config"),
    (["fly"], 2, "invalid choice: 'fly'"),
    (["info", "--fast"], 2, "unrecognized arguments: --fast"),
    (["train", "toy.toml", "model.d_state=4"], 2, "--section.field=value"),
    (["train", "missing.toml"], 2, "config file 'missing.toml' not found"),
    (["train", "bad.toml"], 2, "is not valid TOML"),
    (["train", "latin1.toml"], 2, "is not UTF-8 text"),
    (["train", "toy.toml", "--model.d_stat=4"], 2, "did you mean 'model.d_state'"),
    (["train", "toy.toml", "--train.lr=-1"], 2, "train.lr must be > 0"),
    (["train", "toy.toml", "--train.lr=nan"], 2, "train.lr must be > 0"),
    (["train", "toy.toml", "--train.lr=inf"], 2, "must be finite"),
    (["train", "toy.toml", "--train.lr=fast"], 2, "train.lr"),
    (["train", "toy.toml", "--train.batch_size=0"], 2, "train.batch_size must be > 0"),
    (["train", "toy.toml", "--train.batch_size=-3"], 2, "train.batch_size must be > 0"),
    (["train", "toy.toml", "--train.epochs=0"], 2, "train.epochs must be > 0"),
    (["train", "toy.toml", "--train.weight_decay=-0.1"], 2, "train.weight_decay must be >= 0"),
    (["train", "toy.toml", "--train.checkpoint_minutes=-1"], 2, "train.checkpoint_minutes must be >= 0"),
    (["train", "toy.toml", "--train.checkpoint_minutes=inf"], 2, "must be finite"),
    (["train", "toy.toml", "--train.scheduler=\"wave\""], 2, "train.scheduler must be one of"),
    (["train", "toy.toml", "--train.device=\"tpu\""], 2, "train.device must be one of"),
    (["train", "toy.toml", "--train.amp=\"fp16\""], 2, "needs a CUDA device"),
    (["train", "toy.toml", "--train.scheduler=\"multistep\""], 2, "needs train.milestones"),
    (["train", "toy.toml", "--model.dropout=1.5"], 2, "model.dropout must be in [0, 1)"),
    (["train", "toy.toml", "--model.d_model=0"], 2, "model.d_model must be > 0"),
    (["train", "toy.toml", "--model.layer=\"s6\""], 2, "s6"),
    (["train", "toy.toml", "--model.layer_args={bogus = 1}"], 2, "model.layer_args"),
    (["train", "toy.toml", "--name=\"../x\""], 2, "name must be a plain directory name"),
    (["train", "toy.toml", "--resume"], 2, "runs/cli/checkpoints/last.safetensors' not found"),
    (["train", "toy.toml", "--resume", "nothing.safetensors"], 2, "checkpoint 'nothing.safetensors' not found"),
    (["train", "toy.toml", "--resume", "toy.toml"], 2, "is corrupt or not a safetensors file"),
    (["train", "toy.toml", "--name=\"existing\""], 2, "runs/existing already holds a run"),
    (["train", "toy.toml", "--out=\"afile\""], 1, "afile"),
    (["train", "toy.toml", "--out=\"afile/sub\""], 1, "Not a directory: afile"),
    (["eval", "nothing.safetensors"], 2, "checkpoint 'nothing.safetensors' not found"),
    (["eval", "toy.toml"], 2, "is corrupt or not a safetensors file"),
    (["eval", "ckpt.safetensors", "--rate", "nan"], 2, "argument --rate: expected a finite number > 0, got 'nan'"),
    (["eval", "ckpt.safetensors", "--rate", "inf"], 2, "argument --rate: expected a finite number > 0"),
    (["eval", "ckpt.safetensors", "--rate", "-2"], 2, "argument --rate: expected a finite number > 0"),
    (["eval", "ckpt.safetensors", "--rate", "0"], 2, "argument --rate: expected a finite number > 0"),
    (["eval", "ckpt.safetensors", "--rate", "1.5"], 2, "--rate must be a positive integer to decimate"),
    (["eval", "ckpt.safetensors", "--batch-size", "-3"], 2, "argument --batch-size: expected a positive integer"),
    (["eval", "ckpt.safetensors", "--batch-size", "0"], 2, "argument --batch-size: expected a positive integer"),
    (["eval", "ckpt.safetensors", "--batch-size", "two"], 2, "argument --batch-size: expected a positive integer"),
    (["eval", "ckpt.safetensors", "--device", "tpu"], 2, "argument --device: invalid choice"),
    (["eval", "ckpt.safetensors", "--split", "holdout"], 2, "unknown split 'holdout'"),
    (["compare", "missing.toml"], 2, "grid file 'missing.toml' not found"),
    (["compare", "bad.toml"], 2, "is not valid TOML"),
    (["compare", "toy.toml", "--seeds", "a,b"], 2, "expected comma-separated integers"),
    (["bench", "everything"], 2, "argument which: invalid choice"),
    (["data", "prepare", "nope"], 2, "unknown data set 'nope'"),
]


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    from lssl import cli

    try:
        code = cli.main(args)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args, code, message", CLI_CASES, ids=[" ".join(c[0]) or "(none)" for c in CLI_CASES])
def test_bad_input_is_one_line_with_the_right_exit_code(workdir, capsys, args, code, message):
    got, err = run_cli(args, capsys)
    assert got == code, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("lssl") and ": error: " in err and message in err, err


@pytest.mark.parametrize("error", [
    OSError(28, "No space left on device"),
    PermissionError(13, "Permission denied"),
    OSError(30, "Read-only file system"),
])
def test_environment_failures_while_writing_are_one_line_naming_the_path(workdir, capsys, monkeypatch, error):
    def fail(path, data):
        error.filename = str(path)
        raise error

    monkeypatch.setattr(checkpoint, "atomic_write", fail)
    code, err = run_cli(["train", "toy.toml", "--out=\"elsewhere\""], capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err == f"lssl: error: {error.strerror}: {error.filename}\n"
    assert error.filename.startswith("elsewhere/cli/checkpoints/")


def test_debug_shows_the_traceback(workdir, capsys):
    from lssl import cli

    with pytest.raises(UserError, match="not found"):
        cli.main(["--debug", "train", "missing.toml"])


# ----------------------------------------------------------------------------- smaller ones


def test_load_keeps_the_dtype_the_model_was_trained_in(tmp_path):
    import lssl

    fit(toy_config(tmp_path, "f64", epochs=1, dtype="float64"), data=toy_spec())
    model = lssl.load(str(tmp_path / "f64/checkpoints/best.safetensors"))
    assert {p.dtype for p in model.parameters()} == {torch.float64}


def test_a_one_epoch_report_has_a_per_step_curve_and_the_data_sets_own_stand_in(tmp_path, monkeypatch):
    from lssl.train import report

    spec = toy_spec(n_train=160)  # 20 steps of 8
    spec = type(spec)(**{**spec.__dict__, "stands_in_for": "nothing in particular"})
    drawn = {}
    original = report.plot_curves
    monkeypatch.setattr(report, "plot_curves", lambda path, history, metric, steps=(): (
        drawn.update(steps=steps), original(path, history, metric, steps)))
    cfg = toy_config(tmp_path, "one", epochs=1)
    cfg.stand_in = "a note the overrides made wrong"
    fit(cfg, data=spec)
    assert [s for s, _ in drawn["steps"]] == list(range(1, 21))  # every step of a 20-step epoch
    text = (tmp_path / "one/report.md").read_text()
    assert "nothing in particular" in text and "made wrong" not in text


def test_bench_output_is_unbuffered(monkeypatch):
    from lssl import cli

    seen = {}
    monkeypatch.setattr(cli.subprocess, "call", lambda command, cwd, env: seen.update(env=env) or 0)
    assert cli.main(["bench", "kernels", "--quick"]) == 0
    assert seen["env"]["PYTHONUNBUFFERED"] == "1"


def test_liquid_checkpoints_from_before_the_gain_default_load_and_resume_as_they_were(tmp_path):
    """A Liquid-S4 run saved when the plain term was the default (no 'liquid_gain' in its config
    or model arguments, no gain tensor) still loads, evaluates and resumes with the plain term."""
    import lssl
    from lssl.train import evaluate

    spec = toy_spec(n_train=32)
    table = {"name": "old", "out": str(tmp_path), "seed": 3,
             "model": {"layer": "liquid-s4", "d_model": 8, "n_layers": 1, "d_state": 8,
                       "layer_args": {"liquid_gain": "none", "l_max": 32}},
             "train": {"epochs": 1, "batch_size": 8, "lr": 1e-2, "progress": False}}
    fit(config.from_dict(table), data=spec)
    for name in ("last", "best"):  # rewrite both as the older version wrote them
        path = tmp_path / f"old/checkpoints/{name}.safetensors"
        tensors, meta = checkpoint.read(path)
        del meta["model_args"]["layer_args"]["liquid_gain"], meta["config"]["model"]["layer_args"]["liquid_gain"]
        checkpoint.save(path, tensors, meta)
    del table["model"]["layer_args"]["liquid_gain"]
    (tmp_path / "old/config.toml").write_text(config.dumps(config.from_dict(table)))
    model = lssl.load(str(tmp_path / "old/checkpoints/best.safetensors"))
    assert model.blocks[0].layer.liquid.gain is None
    assert evaluate(tmp_path / "old/checkpoints/best.safetensors", data=spec)["n"] == 16
    table["train"]["epochs"] = 2
    results = fit(config.load(tmp_path / "old/config.toml", ["train.epochs=2"]), data=spec, resume=True)
    assert results["epochs"] == 2
    assert config.load(tmp_path / "old/config.toml").model.layer_args["liquid_gain"] == "none"  # now explicit


def test_liquid_windows_follow_the_data_length_not_the_first_batch(tmp_path):
    """Sequences of 24-32 samples in a data set of length 40: the PB windows are set from 40, the
    data's length, whatever the first batch's padded length was, and kept in the checkpoint."""
    spec = toy_spec(n_train=32)
    spec = type(spec)(**{**spec.__dict__, "length": 40})
    table = {"name": "win", "out": str(tmp_path), "seed": 3,
             "model": {"layer": "liquid-s4", "d_model": 8, "n_layers": 1, "d_state": 8},
             "train": {"epochs": 1, "batch_size": 8, "lr": 1e-2, "progress": False}}
    fit(config.from_dict(table), data=spec)
    tensors, _ = checkpoint.read(tmp_path / "win/checkpoints/last.safetensors")
    assert int(tensors["model.blocks.0.layer.liquid.length"]) == 40
