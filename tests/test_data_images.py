"""lssl.data.images, .listops, .pathfinder: original-format readers on written files and the generators."""

import pickle

import numpy as np
import pytest
import torch

from lssl.data import load
from lssl.data.listops import VOCAB, parse, tokenize
from lssl.errors import UserError
from tests.test_data_mnist import write_idx


def test_sfmnist_pads_to_32x32(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(1, 256, (6, 28, 28)), compress=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(6), compress=True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(1, 256, (2, 28, 28)), compress=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([9, 0]), compress=True)
    spec = load("sfmnist", path=str(tmp_path), n_val=2)
    x, y = spec.train[1]
    img = x[:, 0].reshape(32, 32)
    assert x.shape == (1024, 1) and int(y) == 1 and spec.length == 1024
    assert (img[:2] == 0).all() and (img[-2:] == 0).all() and (img[:, :2] == 0).all() and (img[:, -2:] == 0).all()
    assert (img[2:30, 2:30] > 0).all() and spec.labels[9] == "Ankle boot"


def test_sfmnist_missing_package_names_it(monkeypatch, tmp_path):
    monkeypatch.setattr("lssl.data.images.FASHION_DIR", str(tmp_path / "absent"))
    with pytest.raises(UserError, match="dataset-fashion-mnist"):
        load("sfmnist")


def test_scifar_from_pickles(tmp_path):
    rng = np.random.default_rng(0)
    batches = []
    for i in range(1, 6):
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        batch = {b"data": data, b"labels": [i % 10, 1, 2, 3]}
        (tmp_path / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
        batches.append(batch)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [4, 5, 6]}))
    names = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")]
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    spec = load("scifar", path=str(tmp_path), n_val=4)
    assert (len(spec.train), len(spec.val), len(spec.test)) == (16, 4, 3) and spec.d_input == 3
    x, y = spec.train[0]
    data = batches[0][b"data"][0]
    assert x.shape == (1024, 3) and int(y) == 1 and spec.labels[1] == "automobile"
    assert torch.equal(x[5], torch.tensor([data[5], data[1024 + 5], data[2048 + 5]]) / 255.0)
    assert [int(spec.val[i][1]) for i in range(4)] == [5, 1, 2, 3]
    (tmp_path / "test_batch").unlink()
    with pytest.raises(UserError, match="test_batch"):
        load("scifar", path=str(tmp_path))


def test_listops_generator(tmp_path):
    spec = load("listops", root=tmp_path, n_train=6, n_val=2, n_test=2, min_length=20, max_length=80)
    for i in range(len(spec.train)):
        x, y = spec.train[i]
        assert x.dtype == torch.int64 and 20 <= len(x) <= 80 and int(x.min()) > 0
        assert parse([VOCAB[t] for t in x.tolist()]) == int(y)
    again = load("listops", root=tmp_path / "b", n_train=6, n_val=2, n_test=2, min_length=20, max_length=80)
    assert torch.equal(again.train.x, spec.train.x) and spec.vocab_size == 16
    batch = spec.collate([spec.train[i] for i in range(3)])
    assert batch["x"].dtype == torch.int64 and batch["lengths"].tolist() == spec.train.lengths[:3].tolist()


def test_listops_parse_known_expressions():
    assert parse(tokenize("( ( [MAX 2 ) 9 ] )")) == 9
    assert parse(tokenize("[SM [MIN 4 7 ] 8 ]")) == 2
    assert parse(tokenize("[MED 1 5 2 9 ]")) == 3          # median 3.5 rounded down


def test_listops_tsv(tmp_path):
    rows = ["Source\tTarget", "( ( ( [MAX 2 ) 9 ) ] )\t9", "( ( [MIN 4 ) 7 ] )\t4"]
    for split in ("train", "val", "test"):
        (tmp_path / f"basic_{split}.tsv").write_text("\n".join(rows) + "\n")
    spec = load("listops", path=str(tmp_path))
    x, y = spec.train[0]
    assert [VOCAB[t] for t in x.tolist()] == ["[MAX", "2", "9", "]"] and int(y) == 9 and spec.real
    (tmp_path / "basic_val.tsv").write_text("Source\tTarget\n( [AVG 1 ] )\t1\n")
    with pytest.raises(UserError, match="AVG"):
        load("listops", path=str(tmp_path))


@pytest.mark.parametrize("name, res", [("pathfinder", 32), ("path-x", 128)])
def test_pathfinder(tmp_path, name, res):
    spec = load(name, root=tmp_path, n_train=8, n_val=2, n_test=2, seed=1)
    x, y = spec.train[0]
    assert x.shape == (res * res, 1) and spec.length == res * res and set(x.unique().tolist()) <= {0.0, 1.0}
    assert sorted(spec.train.y.tolist()) == [0] * 4 + [1] * 4
    again = load(name, root=tmp_path / "b", n_train=8, n_val=2, n_test=2, seed=1)
    assert torch.equal(again.train.x, spec.train.x)
