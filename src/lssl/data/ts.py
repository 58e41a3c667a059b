"""A reader for the `.ts` time-series format of the UEA/UCR and Monash TSER archives.

Header lines start with `@` (`@classLabel true a b c`, `@targetLabel true`, ...), comments with
`#`; after `@data` each line is one series: channels separated by `:`, values by `,`, `?` for a
missing value (NaN), and the class label or regression target last.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError


@dataclass(frozen=True)
class TsFile:
    """series: list of float32 (L_i, C); labels: list[str] (classification) or float64 (N,) (regression);
    classes: the declared class names (empty for regression); header: the lower-cased @ keys."""

    series: list[np.ndarray]
    labels: list[str] | np.ndarray
    classes: tuple[str, ...]
    header: dict[str, str]


def parse_ts(text: str, where: str = "<text>") -> TsFile:
    """Parse the text of a `.ts` file (`where` names it in errors)."""
    header: dict[str, str] = {}
    lines = text.splitlines()
    for start, line in enumerate(lines):
        line = line.strip()
        if line.lower() == "@data":
            break
        if line.startswith("@"):
            key, _, value = line[1:].partition(" ")
            header[key.lower()] = value.strip()
    else:
        raise UserError(f"{where} has no @data line: not a .ts file")
    if header.get("timestamps", "false").lower() == "true":
        raise UserError(f"{where} uses time-stamped values, which this reader does not support")
    class_decl = header.get("classlabel", "false").split()
    regression = header.get("targetlabel", "false").lower().startswith("true")
    if not regression and (not class_decl or class_decl[0].lower() != "true"):
        raise UserError(f"{where} declares neither @classLabel true nor @targetLabel true: no labels to read")
    series, labels = [], []
    for number, line in enumerate(lines[start + 1:], start=start + 2):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        *channels, label = line.split(":")
        try:
            values = [np.array([np.nan if v == "?" else float(v) for v in ch.split(",")]) for ch in channels]
        except ValueError as e:
            raise UserError(f"{where} line {number}: {e}") from None
        if not values or len({len(v) for v in values}) != 1:
            raise UserError(f"{where} line {number}: channels of unequal lengths {[len(v) for v in values]}")
        series.append(np.stack(values, axis=1).astype(np.float32))
        labels.append(label.strip())
    if not series:
        raise UserError(f"{where} has no series after @data")
    if len({s.shape[1] for s in series}) != 1:
        raise UserError(f"{where}: series have different channel counts")
    if regression:
        try:
            return TsFile(series, np.array([float(v) for v in labels]), (), header)
        except ValueError as e:
            raise UserError(f"{where}: regression target is not a number ({e})") from None
    classes = tuple(class_decl[1:])
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise UserError(f"{where}: labels {unknown[:5]} are not among the declared classes {classes}")
    return TsFile(series, labels, classes, header)


def read_ts(path: str | os.PathLike) -> TsFile:
    path = Path(path)
    if not path.exists():
        raise UserError(f"no such file: {path}")
    return parse_ts(path.read_text(), str(path))


def pad(series: list[np.ndarray], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-zero-pad series (L_i, C) to (N, L, C) float32, with their lengths (N,) int64."""
    lengths = np.array([len(s) for s in series], dtype=np.int64)
    out = np.zeros((len(series), length or int(lengths.max()), series[0].shape[1]), dtype=np.float32)
    for i, s in enumerate(series):
        out[i, : len(s)] = s
    return out, lengths
