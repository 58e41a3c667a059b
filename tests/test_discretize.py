import math

import pytest
import scipy.linalg
import torch

from lssl import discretize, hippo
from lssl.kernels import reference

from .helpers import assert_close

F64 = torch.float64


def _system(N=6, H=None):
    A, B = hippo.transition("legs", N)
    return A, B


def test_forward_euler():
    A, B = _system()
    Ab, Bb = discretize.gbt(A, B, 0.1, alpha=0.0)
    assert_close(Ab, torch.eye(6, dtype=F64) + 0.1 * A)
    assert_close(Bb, 0.1 * B)


def test_backward_euler_and_bilinear_dense_formulas():
    A, B = _system()
    I = torch.eye(6, dtype=F64)
    Ab, Bb = discretize.gbt(A, B, 0.3, alpha=1.0)
    assert_close(Ab, torch.linalg.inv(I - 0.3 * A))
    assert_close(Bb, 0.3 * torch.linalg.inv(I - 0.3 * A) @ B)
    Ab, Bb = discretize.gbt(A, B, 0.3, alpha=0.5)
    M = torch.linalg.inv(I - 0.15 * A)
    assert_close(Ab, M @ (I + 0.15 * A))
    assert_close(Bb, 0.3 * M @ B)


@pytest.mark.parametrize("z", [-3.0, -0.2, 0.0, 1.7])
def test_lemma_3_1_gated_recurrence_is_backward_euler(z):
    """LSSL Lemma 3.1: x_t = (1 - sigmoid(z)) x_{t-1} + sigmoid(z) u_t is backward Euler on
    x' = -x + u with dt = exp(z)."""
    A = -torch.ones(1, 1, dtype=F64)
    B = torch.ones(1, dtype=F64)
    Ab, Bb = discretize.gbt(A, B, math.exp(z), alpha=1.0)
    g = torch.sigmoid(torch.tensor(z, dtype=F64))
    assert_close(Ab[0, 0], 1 - g)
    assert_close(Bb[0], g)
    u = torch.randn(2, 20, 1, dtype=F64)
    y, _ = reference.recurrence(Ab[None], Bb[None], torch.ones(1, 1, 1, dtype=F64), torch.zeros(1, 1, dtype=F64), u)
    x = torch.zeros(2, dtype=F64)
    for t in range(20):
        x = (1 - g) * x + g * u[:, t, 0]
        assert_close(y[:, t, 0, 0], x)


def test_zoh_is_matrix_exponential_solution():
    A, B = _system()
    dt = 0.37
    Ab, Bb = discretize.zoh(A, B, dt)
    E = torch.from_numpy(scipy.linalg.expm(dt * A.numpy()))
    assert_close(Ab, E)
    assert_close(Bb, torch.linalg.solve(A, (E - torch.eye(6, dtype=F64)) @ B))


def test_zoh_singular_a():
    # Nilpotent A: exp(dt A) = I + dt A and int_0^dt exp(sA) ds = dt I + dt^2/2 A.
    A = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=F64)
    B = torch.tensor([0.5, 2.0], dtype=F64)
    dt = 0.4
    Ab, Bb = discretize.zoh(A, B, dt)
    I = torch.eye(2, dtype=F64)
    assert_close(Ab, I + dt * A)
    assert_close(Bb, (dt * I + dt**2 / 2 * A) @ B)
    # And the diagonal version at lambda = 0 gives dt B.
    lam = torch.tensor([0.0 + 0.0j, -1e-9 + 2e-9j], dtype=torch.complex128)
    Bd = torch.tensor([1.0 + 1.0j, 3.0], dtype=torch.complex128)
    _, Bbd = discretize.zoh_diag(lam, Bd, dt)
    assert_close(Bbd, dt * Bd * torch.tensor([1.0, 1.0], dtype=torch.complex128), factor=10)


@pytest.mark.parametrize("name", list(discretize.DIAGONAL))
def test_diagonal_equals_dense(name):
    lam = torch.tensor([-0.5 - 3.0j, -2.0 + 0.5j, -1e-6 + 0j, -7.0 - 40.0j], dtype=torch.complex128)
    B = torch.randn(4, dtype=torch.complex128)
    dt = torch.tensor([0.01, 0.3, 2.0], dtype=F64)
    Ad, Bd = discretize.DIAGONAL[name](lam, B, dt)
    A, Bb = discretize.DENSE[name](torch.diag_embed(lam), B, dt)
    assert Ad.shape == (3, 4) and A.shape == (3, 4, 4)
    assert_close(torch.diag_embed(Ad), A)
    assert_close(Bd, Bb)


def test_per_feature_dt_broadcast():
    A, B = _system()
    dt = torch.tensor([0.01, 0.1, 1.0], dtype=F64)
    for fn in (discretize.gbt, discretize.zoh):
        Ab, Bb = fn(A, B, dt)
        assert Ab.shape == (3, 6, 6) and Bb.shape == (3, 6)
        for h in range(3):
            Ah, Bh = fn(A, B, dt[h].item())
            assert_close(Ab[h], Ah)
            assert_close(Bb[h], Bh)
    # Per-feature A with per-feature dt.
    Ab, _ = discretize.gbt(A.expand(3, 6, 6), B.expand(3, 6), dt)
    assert_close(Ab[2], discretize.gbt(A, B, 1.0)[0])


def test_bilinear_converges_to_zoh_second_order():
    A, B = _system()
    errs = []
    for dt in (1e-2, 1e-3, 1e-4):
        a1, _ = discretize.gbt(A, B, dt)
        a2, _ = discretize.zoh(A, B, dt)
        errs.append((a1 - a2).abs().max().item())
    # One step of the bilinear transform is exact to third order in dt.
    assert errs[1] < errs[0] / 500 and errs[2] < errs[1] / 500


@pytest.mark.parametrize("dt", [0.0, -1.0, float("nan"), float("inf"), torch.tensor([0.1, -0.1])])
def test_bad_dt(dt):
    A, B = _system()
    for fn in (discretize.gbt, discretize.zoh):
        with pytest.raises(ValueError, match="dt must be finite and > 0"):
            fn(A, B, dt)
    lam = torch.tensor([-1.0 + 0j])
    with pytest.raises(ValueError, match="dt must be finite and > 0"):
        discretize.zoh_diag(lam, lam, dt)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), "half"])
def test_bad_alpha(alpha):
    A, B = _system()
    with pytest.raises(ValueError, match="alpha must be a number in"):
        discretize.gbt(A, B, 0.1, alpha=alpha)
    with pytest.raises(ValueError, match="alpha must be a number in"):
        discretize.gbt_diag(A[0].to(torch.complex128), B.to(torch.complex128), 0.1, alpha=alpha)


def test_batched_bilinear_solve_at_n256_matches_float64_single_solves():
    """torch on CPU has returned wrong results for batched solves above ~130x130
    (pytorch#142815); our per-feature discretisation relies on them."""
    N, H = 256, 16
    A, B = hippo.transition("legs", N)
    dt = torch.logspace(-3, 0, H, dtype=F64)
    Ab, Bb = discretize.gbt(A.float(), B.float(), dt.float())
    I = torch.eye(N, dtype=F64)
    for h in range(H):
        lhs = I - dt[h] / 2 * A
        ref_A = torch.linalg.solve(lhs, I + dt[h] / 2 * A)
        ref_B = torch.linalg.solve(lhs, dt[h] * B)
        assert_close(Ab[h], ref_A, torch.float32, factor=5)
        assert_close(Bb[h], ref_B, torch.float32, factor=5)


@pytest.mark.parametrize("H, N", [(8, 129), (64, 200), (256, 256)])
def test_safe_solve_large_batched(H, N):
    from lssl.ops.linalg import solve

    A = torch.randn(H, N, N) / N**0.5 + 3 * torch.eye(N)
    B = torch.randn(H, N, N + 1)
    out = solve(A, B)
    ref = torch.stack([torch.linalg.solve(A[h].double(), B[h].double()) for h in range(H)])
    assert_close(out, ref, torch.float32)
    # Broadcasting one matrix over a batch of right-hand sides, and gradients.
    A1 = A[0].double().requires_grad_()
    B2 = B[:3].double()
    out = solve(A1.expand(3, N, N), B2)
    assert_close(out, torch.linalg.solve(A1.detach(), B2))
    out.sum().backward()
    assert torch.isfinite(A1.grad).all()
