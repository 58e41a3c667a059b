"""Data-parallel training: 2 CPU processes under torchrun (gloo) equal 1 process at the same
global batch."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lssl import config
from lssl.train import checkpoint, fit, loop

from .helpers import rel_err, toy_spec

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
from tests.helpers import toy_spec
from lssl import config
from lssl.train import fit
fit(config.from_dict(json.loads(sys.argv[1])), data=toy_spec(n_train=32))
"""


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tmp_path):
    table = {
        "name": "one", "out": str(tmp_path), "seed": 5,
        "model": {"layer": "s4d", "d_model": 8, "n_layers": 2, "d_state": 8, "dropout": 0.0, "norm": "layer"},
        # float64 so that the different summation order of the all-reduce stays far below the check.
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-2, "dtype": "float64", "device": "cpu", "progress": False,
                  "scheduler": "cosine", "warmup_steps": 2},
    }
    fit(config.from_dict(table), data=toy_spec(n_train=32))
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
         json.dumps({**table, "name": "two"})],
        check=True, env=env, capture_output=True, timeout=120,
    )
    one, meta_one = checkpoint.read(tmp_path / "one/checkpoints/last.safetensors")
    two, meta_two = checkpoint.read(tmp_path / "two/checkpoints/last.safetensors")
    assert meta_two["progress"]["world"] == 2 and meta_one["progress"]["step"] == meta_two["progress"]["step"] == 8
    weights = [k for k in one if k.startswith("model.")]
    for k in weights:
        assert rel_err(two[k], one[k]) < 1e-10, k
    for row_one, row_two in zip(meta_one["history"], meta_two["history"]):
        assert row_two["train_loss"] == pytest.approx(row_one["train_loss"], rel=1e-10)
        assert row_two["val_loss"] == pytest.approx(row_one["val_loss"], rel=1e-10)
    assert not torch.equal(one["rng.torch.0"], two["rng.torch.1"])  # every process's RNG state is kept


@pytest.mark.parametrize("fails", [False, True])
def test_process_group_leaves_the_group_it_joined(monkeypatch, fails):
    """Under torchrun the group is joined for the run and left afterwards: after a finished run
    only once the wrapper is collected and every rank is past a barrier (a group left open, or
    destroyed under a live DDP wrapper, sometimes aborts the process at exit); after a failed
    run at once, with no barrier that the other ranks might never reach."""
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(loop.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(loop.dist, "init_process_group", lambda backend: calls.append(f"init {backend}"))
    monkeypatch.setattr(loop.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(loop.dist, "destroy_process_group", lambda: calls.append("destroy"))
    monkeypatch.setattr(loop.gc, "collect", lambda: calls.append("collect"))
    with pytest.raises(RuntimeError) if fails else contextlib.nullcontext():
        with loop.process_group("cpu") as procs:
            assert (procs.world, procs.rank) == (2, 1) and calls == ["init gloo"]
            if fails:
                raise RuntimeError("a failed run")
    assert calls == ["init gloo", "destroy"] if fails else ["init gloo", "collect", "barrier", "destroy"]


def test_process_group_leaves_an_existing_group_alone(monkeypatch):
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(loop.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(loop.dist, "destroy_process_group", lambda: calls.append("destroy"))
    with loop.process_group("cpu"):
        pass
    assert calls == []
