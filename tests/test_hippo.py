import math

import numpy as np
import pytest
import torch

from lssl import hippo


def test_legs_closed_form_n4():
    A, B = hippo.transition("legs", 4)
    r3 = math.sqrt(3)
    assert torch.allclose(A[1], torch.tensor([-r3, -2.0, 0.0, 0.0], dtype=torch.float64), atol=1e-15)
    assert torch.allclose(B, torch.sqrt(torch.tensor([1.0, 3.0, 5.0, 7.0], dtype=torch.float64)))
    assert A.dtype == torch.float64 and B.dtype == torch.float64


@pytest.mark.parametrize("N", [1, 4, 16, 65])
def test_legs_eigenvalues(N):
    A, _ = hippo.transition("legs", N)
    eig = torch.linalg.eigvals(A).real.sort().values
    expected = -torch.arange(N, 0, -1, dtype=torch.float64)
    assert torch.allclose(eig, expected, atol=1e-10)


def _entrywise(measure, N):
    """The closed forms of spec A.2, written entry by entry."""
    A = np.zeros((N, N))
    B = np.zeros(N)
    R = lambda n: math.sqrt(2 * n + 1)  # noqa: E731
    for n in range(N):
        if measure == "legs":
            B[n] = R(n)
        elif measure == "legt":
            B[n] = 0.5 * R(n)
        elif measure == "lagt":
            B[n] = 1.0
        for k in range(N):
            if measure == "legs":
                A[n, k] = -R(n) * R(k) if n > k else (-(n + 1) if n == k else 0.0)
            elif measure == "legt":
                s = (-1.0) ** (n - k) if n < k else 1.0
                A[n, k] = -0.5 * R(n) * R(k) * s
            elif measure == "lagt":
                A[n, k] = -1.0 if n > k else (-0.5 if n == k else 0.0)
    if measure == "fout":
        for f in range(N // 2):
            A[2 * f, 2 * f + 1] = -math.pi * f
            A[2 * f + 1, 2 * f] = math.pi * f
            B[2 * f] = math.sqrt(2) if f else 1.0
        A -= np.outer(B, B)
    return A, B


@pytest.mark.parametrize("measure", list(hippo.MEASURES))
@pytest.mark.parametrize("N", [2, 6, 9])
def test_closed_forms(measure, N):
    if measure == "fout" and N % 2:
        with pytest.raises(ValueError, match="even"):
            hippo.transition(measure, N)
        return
    A, B = hippo.transition(measure, N)
    A_ref, B_ref = _entrywise(measure, N)
    np.testing.assert_allclose(A.numpy(), A_ref, atol=1e-12)
    np.testing.assert_allclose(B.numpy(), B_ref, atol=1e-12)


def test_legt_is_halved():
    # The S4 code's scaling; the LSSL paper's structured LegT is twice this.
    A, B = hippo.transition("legt", 3)
    assert A[0, 0] == -0.5 and B[0] == 0.5


def test_unknown_measure_lists_known():
    with pytest.raises(ValueError, match="unknown measure 'legx'.*'legs'.*'fout'"):
        hippo.transition("legx", 4)


@pytest.mark.parametrize("N", [0, -3, 2.5, True])
def test_bad_state_size(N):
    with pytest.raises(ValueError, match="N"):
        hippo.transition("legs", N)


@pytest.mark.parametrize("measure", list(hippo.MEASURES))
@pytest.mark.parametrize("N", [2, 8, 16, 64])
def test_nplr(measure, N):
    A, B = hippo.transition(measure, N)
    P = hippo.rank_correction(measure, N)
    S = A + P.T @ P
    c = -0.5 if measure == "legs" else 0.0
    # (a) the symmetric part of A + P^T P is c I
    assert torch.allclose((S + S.T) / 2, c * torch.eye(N, dtype=torch.float64), atol=1e-10)
    f = hippo.nplr(measure, N)
    assert f.Lambda.shape == (N // 2,) and f.B.shape == (N // 2,) and f.V.shape == (N, N // 2)
    assert f.P.shape == (P.shape[0], N // 2)
    # (b) the full V is unitary
    V = torch.cat([f.V, f.V.conj()], dim=1)
    assert torch.allclose(V.conj().T @ V, torch.eye(N, dtype=torch.complex128), atol=1e-10)
    # (c) A and B are rebuilt
    A2, B2 = hippo.dense_from_nplr(f)
    assert (A2 - A).abs().max() <= 1e-10 * A.abs().max()
    assert (B2 - B).abs().max() <= 1e-10 * B.abs().max()
    # (d) Re Lambda = c, and the kept half has Im <= 0
    assert torch.allclose(f.Lambda.real, torch.full((N // 2,), c, dtype=torch.float64), atol=1e-10)
    assert (f.Lambda.imag <= 1e-12).all()


def test_nplr_odd_n_raises():
    with pytest.raises(ValueError, match="N must be even .*got N=7; use N=6 or N=8"):
        hippo.nplr("legs", 7)


def test_legs_reconstruction():
    """Spec E5: integrate the time-varying LegS ODE x' = (A x + B u)/t and read u back."""
    N, h = 32, 1e-3
    A, B = hippo.transition("legs", N)
    u = lambda s: math.cos(3 * s) + s * s  # noqa: E731
    eye = torch.eye(N, dtype=torch.float64)
    x = torch.zeros(N, dtype=torch.float64)
    x[0] = u(0.0)
    steps = round(1 / h)
    for k in range(1, steps):
        t0, t1 = k * h, (k + 1) * h
        rhs = x + h / 2 * ((A @ x + B * u(t0)) / t0 + B * u(t1) / t1)
        x = torch.linalg.solve(eye - h / (2 * t1) * A, rhs)
    s = np.linspace(0, 1, 201)
    coef = x.numpy() * np.sqrt(2 * np.arange(N) + 1)
    recon = np.polynomial.legendre.legval(2 * s - 1, coef)
    err = np.abs(recon - np.array([u(v) for v in s])).max()
    assert err <= 1e-5, err
    # u == 1 has the fixed point e_0: A e_0 + B = 0.
    e0 = torch.zeros(N, dtype=torch.float64)
    e0[0] = 1
    assert torch.allclose(A @ e0 + B, torch.zeros(N, dtype=torch.float64), atol=1e-12)
