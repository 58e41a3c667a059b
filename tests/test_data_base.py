"""lssl.data.base: collation, the DataSpec record, the cache with its integrity checks."""

import json
import logging

import numpy as np
import pytest
import torch

from lssl.data import DATASETS, DataSpec, load, pad_collate
from lssl.data.base import ArrayDataset, cache_dir, cached, entry_dir, split_indices
from lssl.errors import UserError


def test_pad_collate_float_right_zero_padding():
    items = [(torch.ones(3, 2), torch.tensor(1)), (2 * torch.ones(5, 2), torch.tensor(0))]
    b = pad_collate(items)
    assert b["x"].shape == (2, 5, 2) and b["x"].dtype == torch.float32
    assert torch.equal(b["lengths"], torch.tensor([3, 5]))
    assert torch.equal(b["y"], torch.tensor([1, 0]))
    assert (b["x"][0, 3:] == 0).all() and (b["x"][0, :3] == 1).all() and (b["x"][1] == 2).all()
    assert "dt_scale" not in b


def test_pad_collate_tokens_and_regression():
    items = [(torch.tensor([4, 5]), torch.tensor([0.5, 1.0])), (torch.tensor([7]), torch.tensor([2.0, 3.0]))]
    b = pad_collate(items)
    assert b["x"].dtype == torch.int64 and torch.equal(b["x"], torch.tensor([[4, 5], [7, 0]]))
    assert b["y"].shape == (2, 2) and b["y"].dtype == torch.float32


def test_pad_collate_time_gaps():
    items = [(torch.zeros(3, 1), torch.tensor(0), torch.tensor([0.0, 2.0, 3.0])),
             (torch.zeros(2, 1), torch.tensor(1), torch.tensor([1.0, 4.0]))]
    b = pad_collate(items)
    expected = torch.tensor([[1.0, 2.0, 1.0], [2.0, 3.0, 1.0]])
    assert torch.equal(b["dt_scale"], expected)


def test_dataspec_checks_fields():
    ds = ArrayDataset(torch.zeros(2, 3, 1), torch.zeros(2, dtype=torch.long))
    kw = dict(name="x", train=ds, val=ds, test=ds, d_input=1, length=3, source="s", real=False, stands_in_for="-")
    DataSpec(d_output=2, task="classification", labels=("a", "b"), **kw)
    with pytest.raises(ValueError, match="task"):
        DataSpec(d_output=2, task="segmentation", labels=("a", "b"), **kw)
    with pytest.raises(ValueError, match="labels"):
        DataSpec(d_output=3, task="classification", labels=("a", "b"), **kw)


def test_unknown_name_and_option_are_user_errors():
    with pytest.raises(UserError, match="smnist"):
        load("no-such-set")
    with pytest.raises(UserError, match="no option bogus"):
        load("smnist", bogus=1)


def test_every_builder_documents_its_size():
    for name, builder in DATASETS.items():
        assert builder.size, name
        assert builder.build.__doc__, name


def test_cache_dir_argument_then_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LSSL_DATA", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("LSSL_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "lssl"


class Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return {"a": np.arange(10, dtype=np.int16), "b": np.ones((2, 3), dtype=np.float32)}


def test_cache_builds_once_then_reads(tmp_path):
    build = Counter()
    first = cached("toy", {"seed": 1}, "1", build, root=tmp_path)
    second = cached("toy", {"seed": 1}, "1", build, root=tmp_path)
    assert build.calls == 1
    assert np.array_equal(first["a"], second["a"]) and second["a"].dtype == np.int16
    record = json.loads((entry_dir("toy", {"seed": 1}, tmp_path) / "record.json").read_text())
    assert record["version"] == "1" and set(record["files"]) == {"a", "b"} and len(record["files"]["a"]) == 64
    cached("toy", {"seed": 2}, "1", build, root=tmp_path)   # other options: other entry
    cached("toy", {"seed": 1}, "2", build, root=tmp_path)   # new generator version: rebuilt
    assert build.calls == 3


@pytest.mark.parametrize("damage", ["flip", "truncate", "no-record", "bad-record"])
def test_cache_detects_damage_and_rebuilds(tmp_path, caplog, damage):
    build = Counter()
    good = cached("toy", {}, "1", build, root=tmp_path)
    folder = entry_dir("toy", {}, tmp_path)
    path = folder / "a.npy"
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[-1] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif damage == "truncate":
        path.write_bytes(bytes(raw[: len(raw) // 2]))
    elif damage == "no-record":
        (folder / "record.json").unlink()
    else:
        (folder / "record.json").write_text("{not json")
    with caplog.at_level(logging.INFO, logger="lssl.data.base"):
        again = cached("toy", {}, "1", build, root=tmp_path)
    assert build.calls == 2
    assert np.array_equal(again["a"], good["a"])
    if damage in ("flip", "truncate"):
        assert "SHA-256" in caplog.text


def test_split_indices_partition():
    parts = split_indices(100, [0.7, 0.15, 0.15], seed=0)
    assert [len(p) for p in parts] == [70, 15, 15]
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    assert all(np.array_equal(a, b) for a, b in zip(parts, split_indices(100, [0.7, 0.15, 0.15], seed=0)))
