"""Synthetic long-range tasks for tests and quick studies: seeded, generated in memory, no cache.

Every target is per sequence (DataSpec's contract), so tasks whose classic form asks for one
output per step are posed as one question at the end of the sequence:

- copying: k symbols, a long blank gap, a delimiter, then an index token q; answer: symbol q.
- selective-copying: k symbols at random positions among blanks; answer: the q-th of them.
- adding: (value, marker) pairs; answer: the sum of the two marked values (regression).
- recall: key-value pairs, a long blank gap, a query key; answer: its value (associative recall
  with one query per sequence).
- parity: bits; answer: their parity (the last output of running parity).
- s5: permutations of 5 elements; answer: their composition (state tracking, 120 classes).
- lag-correlation: a stationary Gaussian AR(1) path; answer: the sign of its coefficient. Every
  sample is N(0, 1) in both classes, so the class shows only in products of samples at
  different times (a positive control for Liquid-S4's input-correlation terms).

Splits use independent random streams spawned from `seed`, so train, val and test never share
a generator state and each is reproducible on its own.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from .._checks import check_length
from ..errors import UserError
from .base import ArrayDataset, DataSpec

SOURCE = "generated (lssl.data.synthetic)"


def _rngs(seed: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        try:
            check_length(name, value)
        except ValueError as e:
            raise UserError(str(e)) from None


def _spec(name, make, sizes, seed, *, d_output, length, labels, task="classification", d_input=1,
          vocab_size=None, stands_in_for) -> DataSpec:
    splits = [make(rng, n) for rng, n in zip(_rngs(seed), sizes)]
    sets = [ArrayDataset(torch.from_numpy(x), torch.from_numpy(y)) for x, y in splits]
    return DataSpec(name, *sets, d_input=d_input, d_output=d_output, length=length, task=task, labels=labels,
                    vocab_size=vocab_size, source=SOURCE, real=False, stands_in_for=stands_in_for)


def _query_tokens(rng, n, k, first_index_token):
    q = rng.integers(0, k, n)
    return q, first_index_token + q


def _copying(name: str, selective: bool, length: int, n_symbols: int, n_memorize: int, sizes: tuple[int, int, int],
             seed: int, stands_in_for: str) -> DataSpec:
    """Copying (symbols first) or selective copying (symbols at random positions), one query each."""
    _check_sizes(length=length, n_symbols=n_symbols, n_memorize=n_memorize, n_train=sizes[0], n_val=sizes[1],
                 n_test=sizes[2])
    if length < n_memorize + 2:
        raise UserError(f"length must be >= n_memorize + 2 = {n_memorize + 2}, got {length}")
    delim = n_symbols + 1

    def make(rng, n):
        x = np.zeros((n, length), dtype=np.int64)
        if selective:
            pos = np.sort(np.argsort(rng.random((n, length - 2)), axis=1)[:, :n_memorize], axis=1)
        else:
            pos = np.broadcast_to(np.arange(n_memorize), (n, n_memorize))
        sym = rng.integers(1, n_symbols + 1, (n, n_memorize))
        np.put_along_axis(x, pos, sym, axis=1)
        x[:, -2] = delim
        q, x[:, -1] = _query_tokens(rng, n, n_memorize, delim + 1)
        return x, sym[np.arange(n), q] - 1

    return _spec(name, make, sizes, seed, d_output=n_symbols, length=length,
                 labels=tuple(str(i + 1) for i in range(n_symbols)), vocab_size=n_symbols + 2 + n_memorize,
                 stands_in_for=stands_in_for)


def copying(root=None, length: int = 200, n_symbols: int = 8, n_memorize: int = 4, n_train: int = 10000,
            n_val: int = 1000, n_test: int = 1000, seed: int = 0) -> DataSpec:
    """Copying memory task (Arjovsky et al. 2016) asked one symbol at a time. Tokens: 0 blank,
    1..n_symbols symbols, n_symbols+1 delimiter, then n_memorize index tokens; x int64 (length,)."""
    return _copying("copying", False, length, n_symbols, n_memorize, (n_train, n_val, n_test), seed,
                    "copying memory (long-range recall)")


def selective_copying(root=None, length: int = 200, n_symbols: int = 8, n_memorize: int = 4, n_train: int = 10000,
                      n_val: int = 1000, n_test: int = 1000, seed: int = 0) -> DataSpec:
    """Selective copying (Gu and Dao 2023) asked one symbol at a time: n_memorize symbols at random
    positions of the first length-2 steps; tokens as in `copying`; x int64 (length,)."""
    return _copying("selective-copying", True, length, n_symbols, n_memorize, (n_train, n_val, n_test), seed,
                    "selective copying (content-aware recall)")


def adding(root=None, length: int = 200, n_train: int = 10000, n_val: int = 1000, n_test: int = 1000,
           seed: int = 0) -> DataSpec:
    """Adding problem (Hochreiter and Schmidhuber 1997): x float32 (length, 2) = (value in [0, 1),
    marker); one marker in each half; y float32 (1,) = sum of the two marked values."""
    _check_sizes(length=length, n_train=n_train, n_val=n_val, n_test=n_test)
    if length < 2:
        raise UserError(f"length must be >= 2 for the adding problem, got {length}")
    half = length // 2

    def make(rng, n):
        x = np.zeros((n, length, 2), dtype=np.float32)
        x[..., 0] = rng.random((n, length))
        rows = np.arange(n)
        first, second = rng.integers(0, half, n), rng.integers(half, length, n)
        x[rows, first, 1] = x[rows, second, 1] = 1.0
        return x, (x[rows, first, 0] + x[rows, second, 0])[:, None]

    return _spec("adding", make, (n_train, n_val, n_test), seed, d_input=2, d_output=1, length=length,
                 labels=("sum",), task="regression", stands_in_for="adding problem (long-range regression)")


def recall(root=None, length: int = 256, n_keys: int = 32, n_values: int = 16, n_pairs: int = 8, n_train: int = 10000,
           n_val: int = 1000, n_test: int = 1000, seed: int = 0) -> DataSpec:
    """Associative recall (Zoology MQAR with one query per sequence): n_pairs distinct keys each
    followed by its value, blanks, then one of the keys. Tokens: 0 blank, 1..n_keys keys,
    n_keys+1..n_keys+n_values values; x int64 (length,); y: the value's index."""
    _check_sizes(length=length, n_keys=n_keys, n_values=n_values, n_pairs=n_pairs, n_train=n_train, n_val=n_val,
                 n_test=n_test)
    if n_pairs > n_keys or length < 2 * n_pairs + 1:
        raise UserError(f"need n_pairs <= n_keys and length >= 2 * n_pairs + 1, got n_pairs={n_pairs}, "
                        f"n_keys={n_keys}, length={length}")

    def make(rng, n):
        keys = np.argsort(rng.random((n, n_keys)), axis=1)[:, :n_pairs] + 1
        values = rng.integers(0, n_values, (n, n_pairs))
        x = np.zeros((n, length), dtype=np.int64)
        x[:, 0: 2 * n_pairs: 2], x[:, 1: 2 * n_pairs: 2] = keys, values + n_keys + 1
        q = rng.integers(0, n_pairs, n)
        x[:, -1] = keys[np.arange(n), q]
        return x, values[np.arange(n), q]

    return _spec("recall", make, (n_train, n_val, n_test), seed, d_output=n_values, length=length,
                 labels=tuple(str(i) for i in range(n_values)), vocab_size=1 + n_keys + n_values,
                 stands_in_for="multi-query associative recall (one query per sequence)")


def parity(root=None, length: int = 256, n_train: int = 10000, n_val: int = 1000, n_test: int = 1000,
           seed: int = 0) -> DataSpec:
    """Parity of a bit string (the last output of running parity): x int64 (length,) in {0, 1}."""
    _check_sizes(length=length, n_train=n_train, n_val=n_val, n_test=n_test)

    def make(rng, n):
        x = rng.integers(0, 2, (n, length))
        return x, x.sum(1) % 2

    return _spec("parity", make, (n_train, n_val, n_test), seed, d_output=2, length=length, labels=("even", "odd"),
                 vocab_size=2, stands_in_for="running parity (state tracking)")


PERMUTATIONS_5 = np.array(list(itertools.permutations(range(5))), dtype=np.int64)  # (120, 5), lexicographic


def compose_table() -> np.ndarray:
    """table[a, b] = index of the permutation "apply a, then b": (p_b ∘ p_a)(i) = p_b[p_a[i]]."""
    index = {tuple(p): i for i, p in enumerate(PERMUTATIONS_5.tolist())}
    return np.array([[index[tuple(pb[pa])] for pb in PERMUTATIONS_5] for pa in PERMUTATIONS_5], dtype=np.int64)


def s5(root=None, length: int = 32, n_train: int = 10000, n_val: int = 1000, n_test: int = 1000,
       seed: int = 0) -> DataSpec:
    """S5 permutation composition (Merrill et al. 2024): x int64 (length,) indexes the 120
    permutations of 5 (lexicographic order); y: the index of g_1 then g_2 ... then g_L."""
    _check_sizes(length=length, n_train=n_train, n_val=n_val, n_test=n_test)
    table = compose_table()

    def make(rng, n):
        x = rng.integers(0, 120, (n, length))
        state = x[:, 0]
        for t in range(1, length):
            state = table[state, x[:, t]]
        return x, state

    return _spec("s5", make, (n_train, n_val, n_test), seed, d_output=120, length=length,
                 labels=tuple("".join(map(str, p)) for p in PERMUTATIONS_5.tolist()), vocab_size=120,
                 stands_in_for="S5 word problem (state tracking)")


def ar1(phi: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Stationary Gaussian AR(1) paths u_t = φ u_{t−1} + √(1 − φ²) e_t, u_0 = e_0, for phi (n,) in
    (−1, 1) and standard normal noise e (n, L): every u_t is N(0, 1) and corr(u_t, u_{t−d}) = φ^d.
    Returns u (n, L) float64."""
    u = np.empty(noise.shape)
    u[:, 0] = noise[:, 0]
    gain = np.sqrt(1.0 - phi**2)
    for t in range(1, noise.shape[1]):
        u[:, t] = phi * u[:, t - 1] + gain * noise[:, t]
    return u


def lag_correlation(root=None, length: int = 128, phi_min: float = 0.2, phi_max: float = 0.9, n_train: int = 10000,
                    n_val: int = 1000, n_test: int = 1000, seed: int = 0) -> DataSpec:
    """Sign of an AR(1) coefficient, a positive control for input-correlation terms: x float32
    (length, 1) is a stationary Gaussian AR(1) path (`ar1`) with |φ| uniform in [phi_min, phi_max];
    y = 1 if φ > 0 else 0, each class exactly half of a split (one more 0 if the size is odd).

    Every u_t is N(0, 1) in both classes, so a sum of functions of single samples has the same
    mean in both; the class is in the products u_t u_{t−d} (mean φ^d), and the lag-1 sum
    Σ u_t u_{t−1} separates the classes almost perfectly at the defaults.
    """
    _check_sizes(length=length, n_train=n_train, n_val=n_val, n_test=n_test)
    if length < 2:
        raise UserError(f"length must be >= 2 for lag-correlation (products of samples at two times), got {length}")
    if not 0.0 < phi_min <= phi_max < 1.0:
        raise UserError(f"need 0 < phi_min <= phi_max < 1, got phi_min={phi_min!r}, phi_max={phi_max!r}")

    def make(rng, n):
        y = rng.permutation(np.arange(n) % 2)
        phi = rng.uniform(phi_min, phi_max, n) * (2 * y - 1)
        u = ar1(phi, rng.standard_normal((n, length)))
        return u[..., None].astype(np.float32), y

    return _spec("lag-correlation", make, (n_train, n_val, n_test), seed, d_output=2, length=length,
                 labels=("negative", "positive"),
                 stands_in_for="positive control for input-correlation (liquid) terms")
