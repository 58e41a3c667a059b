"""Pathfinder and Path-X (Long Range Arena) style images: are the two discs joined by one path?

Each image (resolution x resolution, grayscale) holds dashed curvy "snakes" (random walks with
smoothly varying heading, reflected at the border) and two end discs. Positive: the discs sit on
the two ends of one snake. Negative: they sit on ends of two different snakes. Further snakes
without discs are distractors, so neither the disc positions nor the amount of ink gives the
label away. Read in raster order: x float32 (resolution^2, 1) with ink in [0, 1]; 1024 steps at
32x32, 16384 for Path-X (128x128). Generated, seeded and cached as uint8; not LRA's images.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from .base import ArrayDataset, DataSpec, ToFloat, cached

VERSION = "1"


def snake(rng: np.random.Generator, res: int, n_steps: int) -> np.ndarray:
    """Points (n_steps + 1, 2) of a smooth random walk with unit steps, reflected at the border."""
    pts = np.empty((n_steps + 1, 2))
    pts[0] = rng.uniform(2, res - 3, 2)
    heading, turn = rng.uniform(0, 2 * np.pi), 0.0
    for i in range(n_steps):
        turn = 0.7 * turn + rng.normal(0, 0.25)
        heading += turn
        step = np.array([np.cos(heading), np.sin(heading)])
        nxt = pts[i] + step
        for d in range(2):              # reflect at the border
            if not 1 <= nxt[d] <= res - 2:
                step[d] = -step[d]
                heading = np.arctan2(step[1], step[0])
                turn = 0.0
        pts[i + 1] = pts[i] + step
    return pts


def draw(img: np.ndarray, pts: np.ndarray, dash: int, gap: int) -> None:
    """Ink the dashed polyline through `pts` (unit steps) into img (res, res), in place."""
    on = (np.arange(len(pts) - 1) % (dash + gap)) < dash
    for (a, b) in zip(pts[:-1][on], pts[1:][on]):
        for s in (0.0, 0.5):
            r, c = np.rint(a + s * (b - a)).astype(int)
            img[r, c] = 255


def disc(img: np.ndarray, center: np.ndarray, radius: float) -> None:
    r, c = np.ogrid[: img.shape[0], : img.shape[1]]
    img[(r - center[0]) ** 2 + (c - center[1]) ** 2 <= radius ** 2] = 255


def image(rng: np.random.Generator, res: int, positive: bool, n_distractors: int) -> np.ndarray:
    """One uint8 (res, res) image; snake length, dash and disc size scale with the resolution."""
    scale = res / 32
    n_steps, dash, gap, radius = int(30 * scale), max(2, int(2 * scale)), max(1, int(scale)), 1.5 * scale
    img = np.zeros((res, res), dtype=np.uint8)
    snakes = [snake(rng, res, n_steps) for _ in range(2 + n_distractors)]
    for s in snakes:
        draw(img, s, dash, gap)
    ends = (snakes[0][0], snakes[0][-1]) if positive else (snakes[0][0], snakes[1][-1])
    for e in ends:
        disc(img, e, radius)
    return img


def generate(n: int, rng: np.random.Generator, res: int, n_distractors: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.arange(n) % 2
    rng.shuffle(y)
    x = np.stack([image(rng, res, bool(label), n_distractors).reshape(-1) for label in y])
    return x, y


def _build(name, root, resolution, n_train, n_val, n_test, n_distractors, seed, stands_in_for) -> DataSpec:
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    for k, v in {**{f"n_{s}": n for s, n in sizes.items()}, "n_distractors": n_distractors + 1}.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"{k} must be a positive int, got {v!r}" if k != "n_distractors"
                            else f"n_distractors must be an int >= 0, got {n_distractors!r}")

    def build():
        out = {}
        for (split, n), ss in zip(sizes.items(), np.random.SeedSequence(seed).spawn(3)):
            out[f"{split}_x"], out[f"{split}_y"] = generate(n, np.random.default_rng(ss), resolution, n_distractors)
        return out

    a = cached(name, {**sizes, "n_distractors": n_distractors, "seed": seed}, VERSION, build, root)
    sets = [ArrayDataset(torch.from_numpy(a[f"{s}_x"]), torch.from_numpy(a[f"{s}_y"]).long(), transform=ToFloat(255.0))
            for s in sizes]
    return DataSpec(name, *sets, d_input=1, d_output=2, length=resolution ** 2, task="classification",
                    labels=("disconnected", "connected"), source="generated (lssl.data.pathfinder)", real=False,
                    stands_in_for=stands_in_for)


def pathfinder(root=None, n_train: int = 160000, n_val: int = 20000, n_test: int = 20000, n_distractors: int = 2,
               seed: int = 0) -> DataSpec:
    """Pathfinder at 32x32: x float32 (1024, 1), 2 classes (LRA sizes 160k/20k/20k by default)."""
    return _build("pathfinder", root, 32, n_train, n_val, n_test, n_distractors, seed,
                  "LRA Pathfinder (not comparable to published numbers)")


def path_x(root=None, n_train: int = 160000, n_val: int = 20000, n_test: int = 20000, n_distractors: int = 2,
           seed: int = 0) -> DataSpec:
    """Path-X at 128x128: x float32 (16384, 1), 2 classes (LRA sizes by default)."""
    return _build("path-x", root, 128, n_train, n_val, n_test, n_distractors, seed,
                  "LRA Path-X (not comparable to published numbers)")
