"""ListOps (Long Range Arena): evaluate nested MAX/MIN/MED/SM expressions over digits, 10 classes.

`listops` generates sequences with the LRA grammar (operators MAX, MIN, MED (median, rounded
down), SM (sum mod 10); values 0-9; depth <= 10; 2-10 arguments; a leaf with probability 0.75
at every node below the depth limit) and keeps those of 500-2000 tokens by rejection, as LRA
did. With `path=DIR` it reads the LRA TSV files `basic_{train,val,test}.tsv` instead.

Tokens follow the S4 tokenizer: parentheses dropped, so a sequence is operators, digits and `]`;
id 0 is padding. x int64 (L_i,), lengths vary.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .base import ArrayDataset, DataSpec, cached

VOCAB = ("<pad>", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "[MAX", "[MIN", "[MED", "[SM", "]")
IDS = {tok: i for i, tok in enumerate(VOCAB)}
OPERATORS = ("[MAX", "[MIN", "[MED", "[SM")
VERSION = "1"


def evaluate(op: str, args: list[int]) -> int:
    if op == "[MAX":
        return max(args)
    if op == "[MIN":
        return min(args)
    if op == "[MED":
        return int(np.median(args))
    return sum(args) % 10


class _TooLong(Exception):
    pass


def tree(rng: random.Random, out: list[str], max_length: int, depth: int = 1, max_depth: int = 10,
         max_args: int = 10) -> int:
    """Append one random expression (the LRA generator's rule) to `out` and return its value.

    Raises _TooLong as soon as `out` exceeds max_length, so rejected trees cost little.
    """
    if depth >= max_depth or rng.random() > 0.25:
        v = rng.randrange(10)
        out.append(str(v))
        return v
    out.append("")      # the operator is drawn after its arguments, as in LRA
    at = len(out) - 1
    values = [tree(rng, out, max_length, depth + 1, max_depth, max_args) for _ in range(rng.randint(2, max_args))]
    out[at] = op = rng.choice(OPERATORS)
    out.append("]")
    if len(out) > max_length:
        raise _TooLong
    return evaluate(op, values)


def parse(tokens: list[str]) -> int:
    """The value of a token sequence (a stack evaluator; checks the generator and user files)."""
    stack: list[list] = []
    value = None
    for tok in tokens:
        if tok in OPERATORS:
            stack.append([tok])
        elif tok == "]":
            op, *args = stack.pop()
            value = evaluate(op, args)
            if stack:
                stack[-1].append(value)
        else:
            value = int(tok)
            if stack:
                stack[-1].append(value)
    if stack or value is None:
        raise ValueError("unbalanced expression")
    return value


def generate(n: int, rng: random.Random, min_length: int, max_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.zeros((n, max_length), dtype=np.uint8)
    lengths, y = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    i = 0
    while i < n:
        tokens: list[str] = []
        try:
            value = tree(rng, tokens, max_length)
        except _TooLong:
            continue
        if min_length <= len(tokens):
            x[i, : len(tokens)] = [IDS[t] for t in tokens]
            lengths[i], y[i] = len(tokens), value
            i += 1
    return x, lengths, y


def tokenize(source: str) -> list[str]:
    return source.replace("(", " ").replace(")", " ").split()


def read_tsv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An LRA ListOps TSV (header `Source<TAB>Target`) as padded ids, lengths and labels."""
    if not path.exists():
        raise UserError(f"no such file: {path} (expected the LRA ListOps basic_{{train,val,test}}.tsv)")
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:] if line.strip()]
    seqs, y = [], []
    for number, row in enumerate(rows, start=2):
        tokens = tokenize(row[0])
        unknown = sorted(set(tokens) - set(IDS))
        if len(row) != 2 or unknown:
            raise UserError(f"{path} line {number}: expected `expression<TAB>label` over {VOCAB[1:]}, "
                            f"got unknown tokens {unknown}" if unknown else f"{path} line {number}: expected 2 columns")
        seqs.append([IDS[t] for t in tokens])
        y.append(int(row[1]))
    lengths = np.array([len(s) for s in seqs])
    x = np.zeros((len(seqs), int(lengths.max())), dtype=np.uint8)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
    return x, lengths, np.array(y)


class _Long:
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.long()


def listops(root=None, path: str | None = None, n_train: int = 96000, n_val: int = 2000, n_test: int = 2000,
            min_length: int = 500, max_length: int = 2000, seed: int = 0) -> DataSpec:
    """ListOps: x int64 (L_i,) token ids (vocab 16, 0 = padding), y: the expression's value (10 classes).

    Generated (LRA sizes 96k/2k/2k by default, cached) unless `path` names the LRA TSV folder.
    """
    if path is not None:
        folder = Path(path).expanduser()
        parts = [read_tsv(folder / f"basic_{s}.tsv") for s in ("train", "val", "test")]
        source, real = f"LRA ListOps TSV files in {folder}", True
    else:
        for k, v in {"n_train": n_train, "n_val": n_val, "n_test": n_test, "min_length": min_length}.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"{k} must be a positive int, got {v!r}")
        if not (isinstance(max_length, int) and max_length >= min_length):
            raise UserError(f"max_length must be an int >= min_length={min_length}, got {max_length!r}")
        sizes = {"train": n_train, "val": n_val, "test": n_test}

        def build():
            out = {}
            for k, (split, n) in enumerate(sizes.items()):
                out[f"{split}_x"], out[f"{split}_lengths"], out[f"{split}_y"] = generate(
                    n, random.Random(f"{seed}-{k}"), min_length, max_length)
            return out

        a = cached("listops", {**sizes, "min_length": min_length, "max_length": max_length, "seed": seed}, VERSION,
                   build, root)
        parts = [(a[f"{s}_x"], a[f"{s}_lengths"], a[f"{s}_y"]) for s in ("train", "val", "test")]
        source, real = "generated with the LRA grammar (lssl.data.listops)", False
    sets = [ArrayDataset(torch.from_numpy(x), torch.from_numpy(y).long(), torch.from_numpy(n), transform=_Long())
            for x, n, y in parts]
    length = max(int(p[1].max()) for p in parts)
    return DataSpec("listops", *sets, d_input=1, d_output=10, length=length, task="classification",
                    labels=tuple(str(i) for i in range(10)), vocab_size=len(VOCAB), source=source, real=real,
                    stands_in_for="LRA ListOps" + ("" if real else " (same generator; a fresh sample, not LRA's files)"))
