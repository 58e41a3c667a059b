"""lssl.data.speech: the espeak-ng set (held-out voices, 8 kHz split, determinism), the folder reader, clear errors."""

import shutil
import wave

import numpy as np
import pytest
import torch

from lssl.data import load
from lssl.data.speech import TEST_ACCENTS, TEST_VARIANTS, WORDS10, resample, speech_arrays, voices
from lssl.errors import UserError

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt-get install -y espeak-ng)")
SMALL = dict(n_train=12, n_val=4, n_test=6, workers=2)


def test_voice_pools_are_disjoint():
    train, val, test = voices("train"), voices("val"), voices("test")
    assert train == val and len(train) > 300 and len(test) > 15
    assert {a for a, _ in train}.isdisjoint(TEST_ACCENTS) and {v for _, v in train}.isdisjoint(TEST_VARIANTS)
    assert {a for a, _ in test} <= set(TEST_ACCENTS) and {v for _, v in test} <= set(TEST_VARIANTS)


def test_resample_keeps_a_tone():
    t = np.arange(22050) / 22050
    y = resample(np.sin(2 * np.pi * 440 * t), 22050, 16000)
    expected = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert len(y) == 16000 and np.abs(y - expected)[100:-100].max() < 1e-6


def test_missing_espeak_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="apt-get install -y espeak-ng"):
        load("speech10", root=tmp_path, espeak=str(tmp_path / "no-such-espeak"), **SMALL)


@needs_espeak
def test_generated_set(tmp_path):
    spec = load("speech10", root=tmp_path, **SMALL)
    assert (len(spec.train), len(spec.val), len(spec.test)) == (12, 4, 6)
    x, y = spec.train[3]
    assert x.shape == (16000, 1) and x.dtype == torch.float32 and int(y) == 3 and spec.labels == WORDS10
    assert 0.05 < x.abs().max() <= 1.0 and (x[-200:] != 0).any()    # dithered: no exact-zero tail
    assert spec.train.x.dtype == torch.int16
    # test_8k is x[::2] of the test clips, with its rate declared
    x8, y8 = spec.extra["test_8k"][2]
    assert x8.shape == (8000, 1) and torch.equal(x8, spec.test[2][0][::2]) and int(y8) == int(spec.test[2][1])
    assert spec.rates == {"test_8k": 2.0}
    # held-out voices: test clips come only from the test pool
    arrays = speech_arrays(WORDS10, root=tmp_path, **{k: v for k, v in SMALL.items() if k != "workers"})
    assert arrays["test_voice"].max() < len(voices("test"))
    # same seed, other worker count and fresh cache: identical clips
    again = load("speech10", root=tmp_path / "again", **{**SMALL, "workers": 1})
    assert torch.equal(again.train.x, spec.train.x) and torch.equal(again.test.x, spec.test.x)


def write_wav(path, samples):
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(np.asarray(samples, dtype=np.int16).tobytes())


def test_speech_commands_folder(tmp_path):
    folder = tmp_path / "sc"
    rng = np.random.default_rng(0)
    for word in WORDS10 + ("bed",):
        for k in range(3):
            write_wav(folder / word / f"spk{k}_nohash_0.wav", rng.integers(-1000, 1000, 16000 - 500 * k))
    (folder / "validation_list.txt").write_text("yes/spk1_nohash_0.wav\n")
    (folder / "testing_list.txt").write_text("yes/spk2_nohash_0.wav\nno/spk2_nohash_0.wav\n")
    spec = load("speech10", root=tmp_path / "cache", path=str(folder))
    assert spec.real and (len(spec.train), len(spec.val), len(spec.test)) == (27, 1, 2)   # "bed" is not an SC10 word
    assert sorted(spec.test.y.tolist()) == [0, 1]
    x, _ = spec.test[0]
    assert x.shape == (16000, 1) and (x[-1000:] == 0).all()          # 15000-sample clip padded at the end
    with wave.open(str(folder / "yes" / "spk2_nohash_0.wav")) as w:
        raw = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    assert torch.allclose(x[:15000, 0], torch.from_numpy(raw / 32768.0).float())
    with pytest.raises(UserError, match="'zero'"):
        load("speech35", root=tmp_path / "cache", path=str(folder))
    (folder / "testing_list.txt").unlink()
    with pytest.raises(UserError, match="testing_list.txt"):
        load("speech10", root=tmp_path / "cache2", path=str(folder))
