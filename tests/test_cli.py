"""The `lssl` command line: help, info, train and eval on a toy data set, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lssl import cli
from lssl.train import loop

from .helpers import toy_spec

CONFIG = """
name = "cli"
paper = "none"
row = "none"
stand_in = "toy"
[model]
layer = "s4d"
d_model = 8
n_layers = 1
d_state = 8
[data]
name = "toy"
[train]
epochs = 1
batch_size = 8
lr = 0.01
progress = false
"""


@pytest.fixture
def toy(monkeypatch, tmp_path):
    """A config file in a temp dir whose data set is the toy one."""
    spec = toy_spec()
    monkeypatch.setattr(loop, "load_data", lambda data: spec)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy.toml").write_text(CONFIG)
    return tmp_path


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["eval", "--help"], ["bench", "--help"],
                                  ["info", "--help"]])
def test_help(args, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    assert e.value.code == 0 and "usage: lssl" in capsys.readouterr().out


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"torch {torch.__version__}" in out and "threads: torch" in out and "cuda:" in out


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "lssl", "--help"], capture_output=True, text=True, check=True).stdout
    assert "train" in out and "eval" in out and "bench" in out and "info" in out


def test_train_one_epoch_then_eval_at_rate_2(toy, capsys):
    assert cli.main(["train", "toy.toml", "--out=runs", "--train.epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "run directory: runs/cli (1 epochs" in out and "test: rate 1.0" in out and "test_half: rate 2.0" in out
    run = toy / "runs" / "cli"
    assert {p.name for p in run.iterdir()} >= {"config.toml", "metrics.csv", "report.md", "results.json", "checkpoints"}
    assert (run / "checkpoints" / "last.safetensors").is_file()
    ckpt = str(run / "checkpoints" / "best.safetensors")
    assert cli.main(["eval", ckpt, "--rate", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "test" and result["rate"] == 2.0 and result["n"] == 16
    assert cli.main(["eval", ckpt, "--split", "test_half", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(result["loss"], rel=1e-6)
    # Continuing the finished run for one more epoch.
    assert cli.main(["train", "toy.toml", "--out=runs", "--train.epochs=2", "--resume"]) == 0
    assert "(2 epochs" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["train", "missing.toml"], "config file 'missing.toml' not found"),
    (["train", "toy.toml", "--model.d_stat=4"], "did you mean 'model.d_state'"),
    (["train", "toy.toml", "--train.lr=-1"], "train.lr must be > 0"),
    (["eval", "nothing.safetensors"], "checkpoint 'nothing.safetensors' not found"),
    (["eval", "toy.toml"], "is corrupt or not a safetensors file"),
])
def test_user_errors_are_one_line(toy, capsys, args, message):
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lssl: error: ") and message in err and err.count("\n") == 1


def test_malformed_overrides_and_unknown_options_are_usage_errors(toy, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "toy.toml", "model.d_state=4"])
    assert e.value.code == 2 and "--section.field=value" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["info", "--fast"])
    assert e.value.code == 2 and "unrecognized arguments: --fast" in capsys.readouterr().err


def test_bench_finds_the_benchmark_scripts_of_the_checkout():
    root = cli.benchmark_dir()
    assert all((root / f"{name}.py").is_file() for name in cli.BENCHMARKS)
