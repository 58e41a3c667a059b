"""Keyword classification from raw audio: 1 s at 16 kHz = 16000 steps, 1 channel.

`speech10` / `speech35` synthesise a Speech-Commands-like set with espeak-ng (the 10 words
of SC10 or the 35 words of Speech Commands v2): English accents x voice variants, random
speed and pitch, random gain, band-limiting filter, short reverb, time shift within the second,
coloured noise at 5-30 dB SNR and dither (so no clip ends in exact digital zeros, a shortcut
feature). The test split uses accents and voice variants that never occur in train or val.
Clips are generated in parallel (`workers` concurrent espeak-ng processes), each from its own seed (so the result does not depend on the
number of workers), and cached as int16. Numbers on these sets are synthetic SC-like results,
not comparable to published Speech Commands results.

With `path=DIR` the same names read the real Speech Commands folder (`DIR/<word>/*.wav` with
`validation_list.txt` and `testing_list.txt`), keeping only the set's words; clips shorter
than 1 s are right-padded with zeros.

Scaling: int16 sample s becomes s / 32768. Extra split `test_8k`: the test clips decimated by
x[::2] (8000 steps) for the zero-shot evaluation at half the sampling rate, `rates["test_8k"] = 2`.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .base import ArrayDataset, DataSpec, ToFloat, cached

SR = 16000
VERSION = "1"
WORDS10 = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
WORDS35 = WORDS10 + ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "bed", "bird",
                     "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow", "backward", "forward", "follow",
                     "learn", "visual")
ACCENTS = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc", "en-gb-scotland", "en-029")
TEST_ACCENTS = ("en-gb-scotland", "en-029")
# espeak-ng 1.51 voice variants (voices/!v), minus the MBROLA-dependent ones.
VARIANTS = ("Alex", "Alicia", "Andrea", "Andy", "Annie", "AnxiousAndy", "Demonic", "Denis", "Diogo", "Gene", "Gene2",
            "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen", "RicishayMax",
            "RicishayMax2", "RicishayMax3", "Storm", "Tweaky", "UniRobot", "adam", "anika", "anikaRobot", "announcer",
            "antonio", "aunty", "belinda", "benjamin", "boris", "caleb", "croak", "david", "ed", "edward", "edward2",
            "f1", "f2", "f3", "f4", "f5", "fast", "grandma", "grandpa", "gustave", "iven", "iven2", "iven3", "iven4",
            "john", "kaukovalta", "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6", "linda", "m1", "m2", "m3",
            "m4", "m5", "m6", "m7", "m8", "marcelo", "max", "michel", "miguel", "norbert", "pablo", "paul", "pedro",
            "quincy", "rob", "robert", "robosoft", "robosoft2", "robosoft3", "robosoft4", "robosoft5", "robosoft6",
            "robosoft7", "robosoft8", "sandro", "shelby", "steph", "steph2", "steph3", "travis", "victor", "whisper",
            "whisperf", "zac")
TEST_VARIANTS = VARIANTS[2::5]   # every fifth variant is held out for test
INSTALL = "apt-get install -y espeak-ng"


def voices(split: str) -> list[tuple[str, str]]:
    """The (accent, variant) pairs a split draws from: test uses only held-out accents and variants."""
    held_out = split == "test"
    return [(a, v) for a in ACCENTS for v in VARIANTS
            if (a in TEST_ACCENTS) == held_out and (v in TEST_VARIANTS) == held_out]


def find_espeak(espeak: str) -> str:
    """The full path of the espeak-ng program, or a UserError saying how to install it."""
    found = shutil.which(espeak)
    if found is None:
        raise UserError(f"espeak-ng is needed to generate the speech sets but {espeak!r} was not found; "
                        f"install it with `{INSTALL}` (Debian/Ubuntu) or pass espeak=PATH")
    return found


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling by truncating (or zero-extending) the spectrum: (n,) -> (n * out / in,)."""
    m = int(round(len(x) * rate_out / rate_in))
    spectrum = np.fft.rfft(x)
    keep = np.zeros(m // 2 + 1, dtype=complex)
    k = min(len(keep), len(spectrum))
    keep[:k] = spectrum[:k]
    return np.fft.irfft(keep, n=m) * (m / len(x))


def synthesize(espeak: str, word: str, accent: str, variant: str, speed: int, pitch: int) -> np.ndarray:
    """One espeak-ng utterance as float64 in [-1, 1] at 16 kHz, silence trimmed."""
    done = subprocess.run([espeak, "-v", f"{accent}+{variant}", "-s", str(speed), "-p", str(pitch), "--stdout", word],
                          capture_output=True, check=True)
    with wave.open(io.BytesIO(done.stdout)) as w:   # the streamed header's length is a placeholder; read to EOF
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(1 << 30), dtype=np.int16) / 32768.0
    x = resample(x, rate, SR)
    loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max())
    return x[loud[0]: loud[-1] + 1] if len(loud) else x


def make_clip(args: tuple) -> tuple[np.ndarray, int]:
    """Clip `index` of a split as int16 (16000,) and its voice index into voices(split)."""
    espeak, words, split, seed, index = args
    rng = np.random.default_rng([seed, ("train", "val", "test").index(split), index])
    pool = voices(split)
    voice = int(rng.integers(len(pool)))
    accent, variant = pool[voice]
    x = synthesize(espeak, words[index % len(words)], accent, variant, int(rng.integers(110, 231)),
                   int(rng.integers(20, 81)))[:SR]
    if rng.random() < 0.5:      # band-limiting: first-order low-pass at 2-7 kHz, applied in frequency
        f = np.fft.rfftfreq(len(x), 1 / SR)
        x = np.fft.irfft(np.fft.rfft(x) / (1 + 1j * f / rng.uniform(2000, 7000)), n=len(x))
    if rng.random() < 0.5:      # short room reverb: direct path plus exponentially decaying noise, 20-80 ms
        n = int(rng.uniform(0.02, 0.08) * SR)
        tail = rng.standard_normal(n) * np.exp(-np.arange(n) / (n / 4))
        ir = np.concatenate([[1.0], tail * rng.uniform(0.05, 0.3) / np.abs(tail).max()])
        x = np.convolve(x, ir)[:SR]
    clip = np.zeros(SR)
    start = int(rng.integers(0, SR - len(x) + 1))
    clip[start: start + len(x)] = x / (np.abs(x).max() + 1e-9) * rng.uniform(0.1, 0.9)
    noise = np.cumsum(rng.standard_normal(SR)) * rng.uniform(0, 0.05) + rng.standard_normal(SR)  # red + white
    noise -= noise.mean()
    snr_db = rng.uniform(5, 30)
    clip += noise * np.sqrt(np.mean(clip ** 2) / np.mean(noise ** 2) / 10 ** (snr_db / 10))
    clip = clip * 32767 + rng.triangular(-1, 0, 1, SR)     # TPDF dither of one LSB
    return np.clip(np.rint(clip), -32768, 32767).astype(np.int16), voice


def generate(words: tuple[str, ...], sizes: dict[str, int], seed: int, espeak: str, workers: int | None
             ) -> dict[str, np.ndarray]:
    """All splits: {split}_x int16 (n, 16000), {split}_y (n,), {split}_voice (n,) index into voices(split)."""
    espeak = find_espeak(espeak)
    jobs = {split: [(espeak, words, split, seed, i) for i in range(n)] for split, n in sizes.items()}
    out = {}
    # Threads suffice: synthesis, two thirds of the cost, runs in espeak-ng child processes, and
    # numpy's FFTs release the GIL; no worker has to re-import the package.
    with ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        for split, args in jobs.items():
            clips = list(pool.map(make_clip, args))
            out[f"{split}_x"] = np.stack([c for c, _ in clips])
            out[f"{split}_y"] = np.arange(len(args)) % len(words)
            out[f"{split}_voice"] = np.array([v for _, v in clips])
    return out


def read_wav(path: Path) -> np.ndarray:
    """A 16-bit mono 16 kHz WAV as int16 (16000,), right-padded with zeros (or cut) to 1 s."""
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1 or w.getframerate() != SR:
            raise UserError(f"{path}: expected 16-bit mono {SR} Hz, got {8 * w.getsampwidth()}-bit, "
                            f"{w.getnchannels()} channel(s), {w.getframerate()} Hz")
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)[:SR]
    return np.pad(x, (0, SR - len(x)))


def read_folder(folder: Path, words: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The Speech Commands folder's clips of `words`, split by its validation and testing lists."""
    lists = {}
    for split, name in (("val", "validation_list.txt"), ("test", "testing_list.txt")):
        if not (folder / name).exists():
            raise UserError(f"{folder} has no {name}: not a Speech Commands folder")
        lists[split] = set((folder / name).read_text().split())
    parts: dict[str, tuple[list, list]] = {s: ([], []) for s in ("train", "val", "test")}
    for label, word in enumerate(words):
        files = sorted((folder / word).glob("*.wav"))
        if not files:
            raise UserError(f"{folder} has no clips for the word {word!r} ({folder / word}/*.wav)")
        for f in files:
            rel = f"{word}/{f.name}"
            split = "val" if rel in lists["val"] else "test" if rel in lists["test"] else "train"
            parts[split][0].append(read_wav(f))
            parts[split][1].append(label)
    out = {}
    for split, (xs, ys) in parts.items():
        if not xs:
            raise UserError(f"{folder}: no {split} clips among the words {words}")
        out[f"{split}_x"], out[f"{split}_y"] = np.stack(xs), np.array(ys)
    return out


def speech_arrays(words, root=None, path=None, n_train=0, n_val=0, n_test=0, seed=0, espeak="espeak-ng",
                  workers=None) -> dict[str, np.ndarray]:
    """The cached int16 arrays of a speech set (generated, or read from the folder `path`)."""
    if path is not None:
        folder = Path(path).expanduser().resolve()
        return cached(f"speech-commands{len(words)}", {"path": str(folder), "words": words}, VERSION,
                      lambda: read_folder(folder, words), root)
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    for k, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"n_{k} must be a positive int, got {v!r}")
    return cached(f"speech{len(words)}", {"words": words, "sizes": sizes, "seed": seed}, VERSION,
                  lambda: generate(words, sizes, seed, espeak, workers), root)


def _spec(name, words, root, path, n_train, n_val, n_test, seed, espeak, workers) -> DataSpec:
    a = speech_arrays(words, root, path, n_train, n_val, n_test, seed, espeak, workers)
    sets = [ArrayDataset(torch.from_numpy(a[f"{s}_x"]), torch.from_numpy(a[f"{s}_y"]).long(), transform=ToFloat(32768.0))
            for s in ("train", "val", "test")]
    test_8k = ArrayDataset(torch.from_numpy(a["test_x"]), sets[2].y, transform=ToFloat(32768.0, step=2))
    real = path is not None
    source = f"Speech Commands files in {path}" if real else "generated with espeak-ng (lssl.data.speech)"
    stands = f"Speech Commands ({len(words)} words)" + ("" if real else "; not comparable to published numbers")
    return DataSpec(name, *sets, d_input=1, d_output=len(words), length=SR, task="classification", labels=words,
                    source=source, real=real, stands_in_for=stands, extra={"test_8k": test_8k}, rates={"test_8k": 2.0})


def speech10(root=None, path: str | None = None, n_train: int = 20000, n_val: int = 2000, n_test: int = 2000,
             seed: int = 0, espeak: str = "espeak-ng", workers: int | None = None) -> DataSpec:
    """SC10-like keywords (yes no up down left right on off stop go): x float32 (16000, 1), 10 classes."""
    return _spec("speech10", WORDS10, root, path, n_train, n_val, n_test, seed, espeak, workers)


def speech35(root=None, path: str | None = None, n_train: int = 35000, n_val: int = 3500, n_test: int = 3500,
             seed: int = 0, espeak: str = "espeak-ng", workers: int | None = None) -> DataSpec:
    """All 35 Speech Commands v2 words: x float32 (16000, 1), 35 classes."""
    return _spec("speech35", WORDS35, root, path, n_train, n_val, n_test, seed, espeak, workers)
