"""lssl.data.ts, .uea, .bidmc: the .ts reader, irregular sampling, BIDMC files and the synthetic set."""

import numpy as np
import pytest
import torch

from lssl.data import load
from lssl.data.bidmc import spectral_peak_baseline, synth_windows
from lssl.data.fetch import DownloadError
from lssl.data.ts import parse_ts, read_ts
from lssl.data.uea import drop_points
from lssl.errors import UserError

CLASSIFICATION = """# a comment
@problemName Toy
@univariate false
@dimensions 2
@equalLength false
@classLabel true walk run
@data
1,2,3:4,5,6:run
7,?:8,9:walk
"""


def test_parse_classification_variable_length_and_missing():
    ts = parse_ts(CLASSIFICATION)
    assert ts.classes == ("walk", "run") and ts.labels == ["run", "walk"]
    assert ts.series[0].shape == (3, 2) and ts.series[1].shape == (2, 2)
    assert ts.series[0][:, 1].tolist() == [4, 5, 6]
    assert np.isnan(ts.series[1][1, 0]) and ts.series[1][1, 1] == 9


@pytest.mark.parametrize("text, match", [
    ("@classLabel true a\n1,2:a\n", "no @data"),
    ("@classLabel true a\n@data\n1,2:b\n", "declared classes"),
    ("@classLabel true a\n@data\n1,2:3:a\n", "unequal"),
    ("@classLabel true a\n@data\n1,x:a\n", "line 3"),
    ("@data\n1,2:a\n", "neither"),
    ("@targetLabel true\n@data\n1,2:high\n", "not a number"),
])
def test_parse_errors(text, match):
    with pytest.raises(UserError, match=match):
        parse_ts(text)


def test_read_ts_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_ts(tmp_path / "nope.ts")


def test_drop_points_keeps_ordered_subset():
    rng = np.random.default_rng(0)
    lengths = np.array([10, 7, 1])
    x = np.zeros((3, 10, 2), dtype=np.float32)
    for i, n in enumerate(lengths):
        x[i, :n, 0] = np.arange(n)             # channel 0 holds the step index
        x[i, :n, 1] = 100 + i
    out, keep, t = drop_points(x, lengths, 0.3, rng)
    assert keep.tolist() == [7, 5, 1]
    for i, m in enumerate(keep):
        stamps = t[i, :m]
        assert np.all(np.diff(stamps) > 0) and stamps.max() < lengths[i]
        assert np.array_equal(out[i, :m, 0], stamps) and np.all(out[i, :m, 1] == 100 + i)


def write_bidmc(folder, target, rng, n_train=6, n_test=4):
    folder.mkdir(exist_ok=True)
    targets = {}
    for split, n in (("TRAIN", n_train), ("TEST", n_test)):
        y = rng.uniform(10, 30, n).round(2)
        lines = ["@problemName BIDMC32" + target, "@dimensions 2", "@equalLength true", "@seriesLength 4000",
                 "@targetLabel true", "@data"]
        for i in range(n):
            chans = [",".join(f"{v:.3f}" for v in rng.standard_normal(4000)) for _ in range(2)]
            lines.append(":".join(chans) + f":{y[i]}")
        (folder / f"BIDMC32{target}_{split}.ts").write_text("\n".join(lines) + "\n")
        targets[split] = y
    return targets


def test_bidmc_reader(tmp_path):
    targets = write_bidmc(tmp_path, "RR", np.random.default_rng(0))
    spec = load("bidmc", path=str(tmp_path), target="RR")
    assert (len(spec.train), len(spec.val), len(spec.test)) == (7, 2, 1)      # 70/15/15 of 10
    x, y = spec.train[0]
    assert x.shape == (4000, 2) and x.dtype == torch.float32 and y.shape == (1,)
    got = sorted(float(s[i][1]) for s in (spec.train, spec.val, spec.test) for i in range(len(s)))
    assert np.allclose(got, sorted(np.concatenate(list(targets.values()))), atol=1e-4)
    kept = load("bidmc", path=str(tmp_path), target="RR", reshuffle=False)
    assert len(kept.test) == 4 and np.allclose(kept.test.y[:, 0].numpy(), targets["TEST"], atol=1e-4)
    with pytest.raises(UserError, match="BIDMC32HR_TRAIN.ts"):
        load("bidmc", path=str(tmp_path), target="HR")
    with pytest.raises(UserError, match="path=DIR"):
        load("bidmc")


def test_bidmc_synth_shapes_determinism_and_shared_cache(tmp_path):
    kw = dict(n_train=3, n_val=2, n_test=2, seed=1)
    rr = load("bidmc-synth", root=tmp_path, target="RR", **kw)
    hr = load("bidmc-synth", root=tmp_path, target="HR", **kw)
    assert len(list(tmp_path.glob("bidmc-synth/*"))) == 1        # one entry for all targets
    x, y = rr.train[0]
    assert x.shape == (4000, 2) and x.dtype == torch.float32 and y.shape == (1,) and rr.labels == ("RR",)
    assert torch.isfinite(x).all()
    assert 5 < float(y) < 40 and 40 < float(hr.train[0][1]) < 160
    fresh = load("bidmc-synth", root=tmp_path / "other", target="RR", **kw)
    assert torch.equal(fresh.train.x, rr.train.x) and torch.equal(fresh.test.y, rr.test.y)
    assert not rr.real


def test_spectral_peak_baseline_does_not_solve_synthetic():
    x, y = synth_windows(np.random.default_rng(0), 96)
    for col, target in enumerate(("HR", "RR")):
        err = spectral_peak_baseline(x, target) - y[:, col]
        assert np.sqrt(np.mean(err ** 2)) > 3.0, target
        assert np.mean(np.abs(err) < 2) > 0.2, target              # yet the rhythm is in the signal
    # and on clean signals the same baseline is accurate, so the baseline itself is sound
    t = np.arange(4000) / 125
    clean = np.stack([np.sin(2 * np.pi * 1.2 * t) + 0.3 * np.sin(2 * np.pi * 0.25 * t), np.zeros(4000)], -1)[None]
    assert abs(spectral_peak_baseline(clean, "HR")[0] - 72) < 1 and abs(spectral_peak_baseline(clean, "RR")[0] - 15) < 1


@pytest.mark.network
@pytest.mark.parametrize("name, sizes, d_input, n_classes, lengths", [
    ("japanese-vowels", (216, 54, 370), 12, 9, (7, 29)),
    ("basic-motions", (32, 8, 40), 6, 4, (100, 100)),
])
def test_uea_from_registry(name, sizes, d_input, n_classes, lengths):
    try:
        spec = load(name)
    except DownloadError as e:
        pytest.skip(f"package registry unreachable: {e}")
    assert (len(spec.train), len(spec.val), len(spec.test)) == sizes
    assert spec.d_input == d_input and spec.d_output == n_classes and spec.length == lengths[1]
    all_lengths = torch.cat([spec.train.lengths, spec.val.lengths, spec.test.lengths])
    assert (int(all_lengths.min()), int(all_lengths.max())) == lengths
    assert len(torch.unique(spec.test.y)) == n_classes
    dropped = load(name, drop=0.5, seed=0)
    x, y, t = dropped.train[0]
    n = int(spec.train.lengths[0])
    assert x.shape == (round(0.5 * n), d_input) and t.shape == (round(0.5 * n),) and int(y) == int(spec.train[0][1])
    assert torch.equal(x, spec.train[0][0][t.long()])
    batch = dropped.collate([dropped.train[i] for i in range(4)])
    assert batch["dt_scale"].shape == batch["x"].shape[:2] and (batch["dt_scale"] >= 1).all()
