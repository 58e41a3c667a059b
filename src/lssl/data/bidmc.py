"""BIDMC-shaped vital-sign regression: a synthetic generator and a reader for the original files.

Shape (spec D.4): 4000 steps = 32 s at 125 Hz, 2 channels (PPG, ECG), one raw-unit target per
set (HR or RR in beats/breaths per minute, SpO2 in %), MSE loss.

`bidmc` reads the Monash TSER files `BIDMC32{HR,RR,SpO2}_{TRAIN,TEST}.ts` from a folder the
user points to. With `reshuffle=True` (the S4 default) train and test are merged and re-split
70/15/15 with a seeded permutation (the same proportions as S4, not its exact sklearn split);
with `reshuffle=False` the Monash test split is kept and validation is a seeded 15 % of train.

`bidmc-synth` generates physiologically plausible windows: heart and breathing rates that
drift within the window, weak and randomly sized respiratory coupling (amplitude, baseline
and frequency modulation), pulse transit delay, pink (1/f) noise, baseline drift, white noise
and motion-artefact bursts. SpO2 is encoded only weakly (in the PPG pulse shape). The
coupling is weak on purpose: with strong coupling a spectral-peak picker solves RR; see
`spectral_peak_baseline` for the baseline whose RMSE the README reports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .base import ArrayDataset, DataSpec, cached, split_indices
from .ts import pad, read_ts

FS = 125.0
LENGTH = 4000
TARGETS = ("HR", "RR", "SpO2")
CHANNELS = ("PPG", "ECG")
VERSION = "1"
# ECG waves as (phase in rad relative to the R peak, amplitude, width in rad), after ECGSYN.
ECG_WAVES = ((-np.pi / 3, 0.15, 0.25), (-np.pi / 12, -0.15, 0.1), (0.0, 1.0, 0.1), (np.pi / 12, -0.25, 0.1),
             (np.pi / 2, 0.3, 0.4))


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise UserError(f"target must be one of {TARGETS}, got {target!r}")


def _bump(phase: np.ndarray, center: float, width: float) -> np.ndarray:
    """A Gaussian bump of `phase` (rad) around `center`, with circular distance."""
    d = np.mod(phase - center + np.pi, 2 * np.pi) - np.pi
    return np.exp(-0.5 * (d / width) ** 2)


def _pink(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    """Unit-variance 1/f noise (n, length) by shaping white noise in frequency."""
    spec = np.fft.rfft(rng.standard_normal((n, length)), axis=1)
    f = np.fft.rfftfreq(length)
    f[0] = f[1]
    x = np.fft.irfft(spec / np.sqrt(f), n=length, axis=1)
    return x / x.std(axis=1, keepdims=True)


def _walk(rng: np.random.Generator, n: int, length: int, knots: int = 9) -> np.ndarray:
    """A smooth zero-mean random curve (n, length) with values of order 1 (cubic-free: linear interpolation of knots)."""
    pts = rng.standard_normal((n, knots))
    grid = np.linspace(0, knots - 1, length)
    return np.stack([np.interp(grid, np.arange(knots), p) for p in pts]) - pts.mean(1, keepdims=True)


def synth_windows(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n synthetic windows: x float32 (n, 4000, 2) = (PPG, ECG), targets float32 (n, 3) = (HR, RR, SpO2).

    Targets are window means of the instantaneous rates (BIDMC labels are averages too).
    """
    t = np.arange(LENGTH) / FS
    hr0 = rng.uniform(55, 125, (n, 1))
    rr0 = rng.uniform(6, 30, (n, 1))
    spo2 = np.clip(100 - rng.gamma(1.6, 1.8, (n, 1)), 85, 100)
    # breathing: rate drifting +-15 % with irregular cycles
    f_r = rr0 / 60 * (1 + 0.15 * np.clip(_walk(rng, n, LENGTH), -2, 2) / 2)
    phi_r = 2 * np.pi * np.cumsum(f_r, axis=1) / FS + rng.uniform(0, 2 * np.pi, (n, 1))
    resp = np.sin(phi_r) + 0.3 * np.sin(2 * phi_r + rng.uniform(0, 2 * np.pi, (n, 1)))
    # heart: rate drifting +-15 %, weak respiratory sinus arrhythmia, beat-to-beat jitter
    c_fm = rng.uniform(0, 0.04, (n, 1))
    f_h = hr0 / 60 * (1 + 0.15 * np.clip(_walk(rng, n, LENGTH), -2, 2) / 2 + c_fm * np.sin(phi_r)
                      + 0.02 * _pink(rng, n, LENGTH))
    phi_h = 2 * np.pi * np.cumsum(f_h, axis=1) / FS + rng.uniform(0, 2 * np.pi, (n, 1))
    hr = 60 * f_h.mean(1)
    rr = 60 * f_r.mean(1)

    ecg = sum(a * _bump(phi_h, c, w) for c, a, w in ECG_WAVES)
    c_ecg = rng.uniform(0, 0.1, (n, 1))
    ecg = ecg * (1 + c_ecg * resp) + 0.1 * rng.uniform(0, 1, (n, 1)) * resp
    # PPG: systolic peak and diastolic wave after a transit delay; the diastolic ratio carries SpO2
    delay = 2 * np.pi * rng.uniform(0.15, 0.3, (n, 1)) * f_h.mean(1, keepdims=True)
    ratio = 0.45 + 0.02 * (spo2 - 96) + rng.normal(0, 0.04, (n, 1))
    ppg = _bump(phi_h, delay + 0.9, 0.5) + ratio * _bump(phi_h, delay + 2.4, 0.6)
    c_am, c_bw = rng.uniform(0, 0.08, (n, 1)), rng.uniform(0, 0.08, (n, 1))
    ppg = ppg * (1 + c_am * resp) + c_bw * resp

    # noise: drift, 1/f, white, motion bursts of 1-4 s with energy at 0.1-3 Hz
    for sig, level in ((ppg, 0.15), (ecg, 0.08)):
        sig += level * rng.uniform(0.3, 1.5, (n, 1)) * (_walk(rng, n, LENGTH, knots=5) + _pink(rng, n, LENGTH))
        sig += 0.03 * rng.standard_normal((n, LENGTH))
    for i in np.flatnonzero(rng.random(n) < 0.6):
        for _ in range(rng.integers(1, 4)):
            width = int(rng.uniform(1, 4) * FS)
            start = rng.integers(0, LENGTH - width)
            tt = t[:width]
            burst = sum(np.sin(2 * np.pi * rng.uniform(0.1, 3) * tt + rng.uniform(0, 2 * np.pi)) for _ in range(3))
            burst *= np.hanning(width) * rng.uniform(0.5, 2.5)
            ppg[i, start: start + width] += burst
            ecg[i, start: start + width] += 0.5 * burst
    x = np.stack([ppg, ecg], axis=-1).astype(np.float32)
    y = np.concatenate([hr[:, None], rr[:, None], spo2], axis=1).astype(np.float32)
    return x, y


def spectral_peak_baseline(x: np.ndarray, target: str) -> np.ndarray:
    """A plain spectral-peak estimate of `target` from windows x (N, 4000, 2): (N,).

    HR: 60 x the frequency of the largest PPG spectrum peak in 0.7-3.5 Hz. RR: the same in
    0.1-0.6 Hz. SpO2 has no spectral cue; the caller should compare with the training mean.
    """
    _check_target(target)
    if target == "SpO2":
        raise UserError("SpO2 has no spectral-peak estimate; compare with predicting the training mean")
    lo, hi = (0.7, 3.5) if target == "HR" else (0.1, 0.6)
    ppg = x[..., 0] - x[..., 0].mean(axis=1, keepdims=True)
    spec = np.abs(np.fft.rfft(ppg * np.hanning(x.shape[1]), axis=1))
    f = np.fft.rfftfreq(x.shape[1], 1 / FS)
    band = (f >= lo) & (f <= hi)
    return 60 * f[band][np.argmax(spec[:, band], axis=1)]


def _spec(name, parts, target, source, real, stands_in_for) -> DataSpec:
    col = TARGETS.index(target) if parts[0][1].shape[1] == 3 else 0
    sets = [ArrayDataset(torch.from_numpy(x), torch.from_numpy(y[:, col: col + 1].astype(np.float32)),
                         transform=_Float32()) for x, y in parts]
    return DataSpec(name, *sets, d_input=2, d_output=1, length=LENGTH, task="regression", labels=(target,),
                    source=source, real=real, stands_in_for=stands_in_for)


class _Float32:
    """Stored float16 (synthetic) or float32 windows -> float32 (L, 2)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32)


def bidmc_synth(root=None, target: str = "RR", n_train: int = 5565, n_val: int = 1192, n_test: int = 1192,
                seed: int = 0) -> DataSpec:
    """Synthetic BIDMC-like windows: x float32 (4000, 2) = (PPG, ECG), y float32 (1,) = `target` in
    raw units. Default sizes are BIDMC's 7949 windows split 70/15/15. Cached as float16 (all three
    targets share one cache entry)."""
    _check_target(target)
    sizes = {"n_train": n_train, "n_val": n_val, "n_test": n_test}
    for k, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"{k} must be a positive int, got {v!r}")

    def build():
        out = {}
        for (split, n), ss in zip(sizes.items(), np.random.SeedSequence(seed).spawn(3)):
            rng = np.random.default_rng(ss)
            xs, ys = zip(*(synth_windows(rng, min(256, n - i)) for i in range(0, n, 256)))
            out[f"{split[2:]}_x"] = np.concatenate(xs).astype(np.float16)
            out[f"{split[2:]}_y"] = np.concatenate(ys)
        return out

    a = cached("bidmc-synth", {**sizes, "seed": seed}, VERSION, build, root)
    parts = [(a[f"{s}_x"], a[f"{s}_y"]) for s in ("train", "val", "test")]
    return _spec("bidmc-synth", parts, target, "generated (lssl.data.bidmc)", False,
                 "BIDMC vital signs (not comparable to published numbers)")


def _find(folder: Path, target: str, split: str) -> Path:
    stem = f"BIDMC32{target}_{split}.ts"
    for p in (folder / stem, folder / f"BIDMC32{target}" / stem):
        if p.exists():
            return p
    raise UserError(f"{folder} has no {stem} (looked in it and in its BIDMC32{target}/ subfolder)")


def bidmc(root=None, path: str | None = None, target: str = "RR", reshuffle: bool = True, seed: int = 0) -> DataSpec:
    """The original BIDMC32 Monash TSER files in folder `path`: x float32 (4000, 2) = (PPG, ECG), y (1,) raw units."""
    _check_target(target)
    if path is None:
        raise UserError("bidmc needs path=DIR, a folder holding BIDMC32{HR,RR,SpO2}_{TRAIN,TEST}.ts "
                        "(Monash TSER archive); no package registry ships them")
    folder = Path(path).expanduser()
    files = [read_ts(_find(folder, target, s)) for s in ("TRAIN", "TEST")]
    for f in files:
        if not isinstance(f.labels, np.ndarray):
            raise UserError(f"{folder}: BIDMC32{target} files must declare @targetLabel true (regression)")
        if f.series[0].shape[1] != 2:
            raise UserError(f"{folder}: BIDMC32{target} series have {f.series[0].shape[1]} channels, expected 2 (PPG, ECG)")
    (x_tr, _), (x_te, _) = (pad(f.series, LENGTH) for f in files)
    y_tr, y_te = (f.labels.astype(np.float32)[:, None] for f in files)
    if reshuffle:
        x, y = np.concatenate([x_tr, x_te]), np.concatenate([y_tr, y_te])
        parts = [(x[i], y[i]) for i in split_indices(len(x), [0.7, 0.15, 0.15], seed)]
    else:
        tr, va = split_indices(len(x_tr), [0.85, 0.15], seed)
        parts = [(x_tr[tr], y_tr[tr]), (x_tr[va], y_tr[va]), (x_te, y_te)]
    return _spec("bidmc", parts, target, f"BIDMC32 Monash TSER files in {folder}", True, "BIDMC vital signs")
