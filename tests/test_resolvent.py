"""LSSL's generating-function kernel for TriD transitions (`kernels/resolvent.py`): the pivoted
tridiagonal solve and the shifted TriD solve against dense solves (random and near-singular
points), the kernel against explicit powers (values and every parameter's gradient), the
compiled loops against the torch version, and the layer's views."""

import math

import pytest
import torch

import lssl
from lssl import hippo
from lssl.kernels import reference
from lssl.kernels.dplr import roots_of_unity
from lssl.kernels.krylov import KrylovKernel
from lssl.kernels.resolvent import ResolventKernel, generating_function, shifted_solve, transposed
from lssl.kernels.transition import TriD, trid_dense, trid_init
from lssl.ops.tridiagonal import gtsv, tridiagonal_matvec

from .helpers import BACKENDS, assert_close, grads, needs_numba, rel_err

F64, C128 = torch.float64, torch.complex128
MEASURES = ("legs", "legt", "lagt")


def _dense_tridiagonal(sub, diag, sup):
    """(..., N, N) from gtsv's rows-first diagonals (N-1, ...), (N, ...), (N-1, ...)."""
    return (torch.diag_embed(diag.movedim(0, -1)) + torch.diag_embed(sub.movedim(0, -1), -1)
            + torch.diag_embed(sup.movedim(0, -1), 1))


@pytest.mark.parametrize("N", [1, 2, 3, 7, 33])
@pytest.mark.parametrize("dtype", [F64, C128])
def test_gtsv_equals_dense_solve(N, dtype):
    batch = (4, 5)
    sub, sup = torch.randn(N - 1, *batch, dtype=dtype), torch.randn(N - 1, *batch, dtype=dtype)
    diag, rhs = torch.randn(N, *batch, dtype=dtype), torch.randn(N, *batch, dtype=dtype)
    x = gtsv(sub, diag, sup, rhs)
    dense = _dense_tridiagonal(sub, diag, sup)
    expected = torch.linalg.solve(dense, rhs.movedim(0, -1)[..., None])[..., 0].movedim(-1, 0)
    assert_close(x, expected, factor=100)
    assert_close(tridiagonal_matvec(sub, diag, sup, x), rhs, factor=100)


def test_gtsv_pivots_a_zero_diagonal():
    """Without row exchanges a zero pivot breaks the elimination; LegT's T has a zero interior
    diagonal (and so J when b = 0)."""
    N = 9
    sub, sup = torch.full((N - 1,), -0.5, dtype=F64), torch.full((N - 1,), 0.5, dtype=F64)
    diag = torch.zeros(N, dtype=F64)
    diag[0] = diag[-1] = 0.5
    rhs = torch.randn(N, dtype=F64)
    x = gtsv(sub, diag, sup, rhs)
    expected = torch.linalg.solve(_dense_tridiagonal(sub, diag, sup), rhs)
    assert_close(x, expected)


def _rows(p):
    return TriD(*(t.T[..., None] if t.dim() == 2 else t[:, None, None] for t in p))


def _perturbed(measure, N, H, scale, generator):
    """TriD parameters near the HiPPO init, (H, N) per feature (None: shared (N,))."""
    p = trid_init(measure, N)
    if H is None:
        return TriD(*(t + scale * torch.randn(t.shape, dtype=F64, generator=generator) for t in p))
    return TriD(*(t + scale * torch.randn(H, *t.shape, dtype=F64, generator=generator) for t in p))


def _dense_shifted(p, a, b, rhs):
    """x (H, K, N) of (a I + b M) x = rhs by a dense solve, rhs (H, N)."""
    S = _dense_matrix(p, a, b)
    return torch.linalg.solve(S, rhs[:, None, :, None].to(C128).expand(*S.shape[:-1], 1))[..., 0]


def _dense_matrix(p, a, b):
    """S = a I + b M (H, K, N, N) complex."""
    A, _ = trid_dense(p)
    M = -A if A.dim() == 3 else -A[None]
    return a[None, :, None, None] * torch.eye(M.shape[-1], dtype=C128) + b[..., None, None] * M[:, None].to(C128)


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("N", [1, 2, 7, 64])
@pytest.mark.parametrize("H", [None, 3])
def test_shifted_solve_is_backward_stable_at_random_points(measure, N, H):
    """At random complex (a, b) and parameters off the init, S x = rhs holds to round-off
    relative to |S| |x| (a forward comparison with a dense solve would measure the conditioning of
    S, which random points make arbitrarily bad), and w = T^{-1} Q x."""
    gen = torch.Generator().manual_seed(N)
    p = _perturbed(measure, N, H, 0.1, gen)
    H_ = H or 2
    K = 6
    a = torch.randn(K, dtype=C128, generator=gen)
    b = torch.randn(H_, K, dtype=C128, generator=gen)
    B = torch.randn(H_, N, dtype=F64, generator=gen)
    x, w = shifted_solve(_rows(p), a, b, B.T[..., None])
    x, w = x.permute(1, 2, 0), w.permute(1, 2, 0)  # (H, K, N)
    S = _dense_matrix(p, a, b)
    residual = (S @ x[..., None])[..., 0] - B[:, None]
    scale = S.abs().amax((-2, -1)) * x.abs().amax(-1) + B.abs().amax(-1)[:, None]
    assert (residual.abs().amax(-1) / scale).max() < 1e-13
    T = _dense_tridiagonal(*(t.T if t.dim() == 2 else t[:, None].expand(-1, H_) for t in (p.dl, p.d, p.du)))
    pr = p.pr if p.pr.dim() == 2 else p.pr[None]
    tw = (T[:, None].to(C128) @ w[..., None])[..., 0]
    assert rel_err(tw, pr[:, None, :] * x) < 1e-12


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("N", [7, 64, 256])
def test_shifted_solve_equals_dense_solve_at_kernel_nodes(measure, N):
    """At the bilinear kernel's nodes (a = 1 - omega, b = beta dt, dt in [1e-3, 1e-1]) the
    systems are well conditioned: x equals a dense solve to round-off."""
    gen = torch.Generator().manual_seed(N)
    p = _perturbed(measure, N, 2, 0.01, gen)
    a, _ = roots_of_unity(64, C128)
    dt = torch.tensor([1e-3, 1e-1], dtype=F64)
    b = (1 - 0.5 * a) * dt[:, None]
    B = torch.randn(2, N, dtype=F64, generator=gen)
    x, _ = shifted_solve(_rows(p), a, b, B.T[..., None])
    S = _dense_matrix(p, a, b)
    expected = torch.linalg.solve(S, B[:, None, :, None].to(C128).expand(*S.shape[:-1], 1))[..., 0]
    assert rel_err(x.permute(1, 2, 0), expected) < 1e-10


@pytest.mark.parametrize("measure", MEASURES)
def test_shifted_solve_at_the_kernels_singular_points(measure):
    """The kernel's nodes: omega = 1 (a = 0, b = dt; LegS has c_0 = 0, so e_0 = 0 and x_0 comes
    from its w-row) and omega = -1 (the bilinear b = 0: S = 2 I), at the HiPPO init exactly, and
    e_n = 0 at an interior row (a chosen so that a + b p_n c_n q_n = 0 there)."""
    N, H = 16, 2
    p = trid_init(measure, N)
    a_nodes, _ = roots_of_unity(8, C128)
    dt = torch.tensor([0.1, 0.7], dtype=F64)
    b = (1 - 0.5 * a_nodes) * dt[:, None]
    B = torch.randn(H, N, dtype=F64)
    x, _ = shifted_solve(_rows(p), a_nodes, b, B.T[..., None])
    assert rel_err(x.permute(1, 2, 0), _dense_shifted(p, a_nodes, b, B)) < 1e-11
    n = 5
    p = p._replace(c=p.c + 0.3)
    pcq = (p.pl * p.c * p.pr)[n]
    b = torch.full((H, 1), 0.2 + 0.1j, dtype=C128)
    a = -(b[0] * pcq)
    x, _ = shifted_solve(_rows(p), a, b, B.T[..., None])
    assert rel_err(x.permute(1, 2, 0), _dense_shifted(p, a, b, B)) < 1e-11


def test_transposed_structure_is_the_transposed_matrix():
    p = _perturbed("legt", 6, None, 0.2, torch.Generator().manual_seed(0))
    A, _ = trid_dense(p)
    At, _ = trid_dense(transposed(p))
    assert_close(At, A.mT)


def _learned(measure, share_a, disc="bilinear", N=8, H=3, channels=2, **kwargs):
    """A resolvent kernel whose TriD parameters are moved off the HiPPO init (so that the
    gradients of every entry, including the zero ones of T, are exercised)."""
    k = ResolventKernel(H, N, channels=channels, measure=measure, disc=disc, learn_a=True, share_a=share_a,
                        dt_min=1e-2, dt_max=0.05 if disc == "forward_euler" else 0.5, **kwargs)
    with torch.no_grad():
        for param in k.transition.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return k


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("disc", ["forward_euler", "bilinear", "backward_euler"])
@pytest.mark.parametrize("share_a", [True, False])
@pytest.mark.parametrize("N", [1, 2, 7])
def test_kernel_equals_explicit_powers_values_and_grads(f64, measure, disc, share_a, N):
    """K = C A_bar^l B_bar with the plain C of `discrete`, and the gradient of every parameter
    (dl, d, du, pl, pr, c, b, C, dt) equal to the explicit-powers kernel's."""
    k = _learned(measure, share_a, disc, N=N)
    L = 37
    K = k(L)
    R = reference.kernel(*k.discrete(L), L)
    assert K.shape == (2, 3, L)
    assert_close(K, R)
    params = dict(k.named_parameters())
    assert set(params) == {"C", "log_dt"} | {f"transition.{n}" for n in TriD._fields}
    G = torch.randn(2, 3, L)
    g_fast, g_ref = grads((K * G).sum(), params), grads((R * G).sum(), params)
    for name in params:
        if g_ref[name].numel():  # dl, du are empty at N = 1
            assert g_ref[name].abs().max() > 0, name
            assert_close(g_fast[name], g_ref[name], factor=10)


def test_kernel_at_n64_values_and_grads(f64):
    k = _learned("legs", True, N=64, H=2, channels=1)
    L = 300
    K = k(L)
    R = reference.kernel(*k.discrete(L), L)
    assert_close(K, R, factor=10)
    params = dict(k.named_parameters())
    G = torch.randn(1, 2, L)
    g_fast, g_ref = grads((K * G).sum(), params), grads((R * G).sum(), params)
    for name in params:
        assert rel_err(g_fast[name], g_ref[name]) < 1e-7, name


@pytest.mark.parametrize("measure", MEASURES)
def test_fixed_transition_is_hippo_and_starts_equal_to_krylov(f64, measure):
    """learn_a=False: the fixed TriD form of the HiPPO pair (buffers); with C~ made from the same
    plain C, the kernel equals the Krylov kernel's, at rate 1 and 2."""
    krylov = KrylovKernel(3, 8, channels=2, measure=measure)
    k = ResolventKernel(3, 8, channels=2, measure=measure)
    assert set(dict(k.named_parameters())) == {"C", "log_dt"}
    A, B = k.transition.dense()
    A_ref, B_ref = hippo.transition(measure, 8)
    assert_close(A, A_ref)
    assert_close(B, B_ref)
    with torch.no_grad():
        k.C.copy_(krylov.C)
        k.log_dt.copy_(krylov.log_dt)
    assert_close(k(40), krylov(40))
    assert_close(k(40), krylov(40))  # C~ is made once and reused
    assert_close(k(20, rate=2.0), reference.kernel(*k.discrete(20, 2.0), 20))


def test_learned_starts_equal_to_fixed(f64):
    fixed = ResolventKernel(3, 8, measure="legt")
    learned = ResolventKernel(3, 8, measure="legt", learn_a=True, share_a=False)
    learned.load_state_dict({**fixed.state_dict(), **{f"transition.{n}": getattr(learned.transition, n)
                                                       for n in TriD._fields}})
    assert_close(learned(50), fixed(50))


@pytest.mark.parametrize("rate", [0.5, 2.0, 3.0])
def test_rate_uses_dt_times_rate_and_explicit_powers(f64, rate):
    k = _learned("lagt", False)
    L = 40
    K = k(L, rate)
    A_bar, B_bar, C = k.discrete(L, rate)
    from lssl import discretize

    A, B = k.transition.dense()
    A_ref, B_ref = discretize.gbt(A, B, k.dt * rate)
    assert_close(A_bar, A_ref)
    assert_close(B_bar, B_ref)
    R = reference.kernel(A_bar, B_bar, C, L)
    assert_close(K, R)
    params = dict(k.named_parameters())
    G = torch.randn(*K.shape)
    g_fast, g_ref = grads((K * G).sum(), params), grads((R * G).sum(), params)
    for name in params:
        assert_close(g_fast[name], g_ref[name], factor=10)


def test_length_change_doubles_c_tilde_and_keeps_the_kernel(f64):
    """A longer call doubles l_kernel (C~ <- C~ + (A_bar^L)^T C~): the kernel's first L values stay
    those of the same plain C, and explicit powers agree at the new length."""
    k = _learned("legs", True)
    K_short = k(30)
    C_plain = k.discrete(30).C
    K_long = k(100)
    assert int(k.l_kernel) == 120
    assert_close(k.discrete(100).C, C_plain)
    assert_close(K_long[..., :30], K_short)
    assert_close(K_long, reference.kernel(*k.discrete(100), 100))


def test_float32_matches_float64():
    k = ResolventKernel(4, 64, measure="legs", learn_a=True, dt_min=1e-3, dt_max=1e-1)
    K32 = k(1024)
    K64 = k.double()(1024)
    assert_close(K32, K64, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_views_agree(f64, backend):
    """Convolution = steps, chunks with state = whole, rate 2 = explicit powers at dt * 2, for the
    layer with kernel='resolvent'."""
    H = 4
    layer = lssl.LSSL(H, d_state=8, channels=2, kernel="resolvent", backend=backend, dt_min=1e-2, dt_max=0.3)
    x = torch.randn(2, 40, H)
    y = layer(x)
    state = layer.default_state(2)
    ys = []
    for t in range(40):
        y_t, state = layer.step(x[:, t], state)
        ys.append(y_t)
    assert_close(torch.stack(ys, 1), y)
    y1, s = layer(x[:, :17], return_state=True)
    y2, _ = layer(x[:, 17:], state=s, return_state=True)
    assert_close(torch.cat([y1, y2], 1), y)
    y_irregular = layer(x, dt_scale=torch.ones(2, 40))
    assert_close(y_irregular, y)


def test_layer_same_parameters_as_krylov_kernel_and_trains(f64):
    H = 4
    resolvent = lssl.LSSL(H, d_state=8, kernel="resolvent")
    krylov = lssl.LSSL(H, d_state=8)
    assert set(dict(resolvent.named_parameters())) == set(dict(krylov.named_parameters()))
    # The state dicts differ by l_kernel: a checkpoint of one kind does not load into the other.
    with pytest.raises(RuntimeError, match="l_kernel"):
        krylov.load_state_dict(resolvent.state_dict())
    x = torch.randn(2, 30, H)
    opt = torch.optim.Adam(resolvent.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = resolvent(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@needs_numba
@pytest.mark.parametrize("share_a", [True, False])
@pytest.mark.parametrize("N, L", [(1, 10), (2, 64), (7, 100), (40, 70)])
def test_numba_equals_torch_values_and_grads(f64, share_a, N, L):
    """Blocks of 16 nodes with a short last one; every input's gradient."""
    gen = torch.Generator().manual_seed(N)
    H = 3
    p = _perturbed("legt", N, None if share_a else H, 0.1, gen)
    p = TriD(*(t.requires_grad_() for t in p))
    dt = (0.05 + torch.rand(H, dtype=F64, generator=gen)).requires_grad_()
    Ct = torch.randn(2, H, N, dtype=F64, generator=gen).requires_grad_()
    g = torch.randn(2, H, L // 2 + 1, dtype=C128, generator=gen)
    inputs = [*p, dt, Ct]
    out = {}
    for backend in ("torch", "numba"):
        y = generating_function(p, dt, Ct, L, 0.5, backend)
        out[backend] = (y, torch.autograd.grad((y * g.conj()).real.sum(), inputs))
    assert_close(out["numba"][0], out["torch"][0])
    for got, expected in zip(out["numba"][1], out["torch"][1]):
        if expected.numel():
            assert_close(got, expected)


@needs_numba
def test_numba_float32_and_first_order_only():
    k = ResolventKernel(3, 16, learn_a=True, backend="numba")
    reference_kernel = ResolventKernel(3, 16, learn_a=True)
    reference_kernel.load_state_dict(k.state_dict())
    K = k(64)
    assert K.dtype == torch.float32
    assert_close(K, reference_kernel(64).double(), torch.float32)
    with pytest.raises(RuntimeError, match="first derivatives"):
        torch.autograd.grad(k(64).pow(2).sum(), k.C, create_graph=True)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(measure="fout"), "needs a TriD transition"),
        (dict(disc="zoh"), "needs a GBT discretisation"),
        (dict(backend="cuda"), "unknown backend"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResolventKernel(4, 8, **kwargs)


def test_layer_bad_kernel_choice():
    with pytest.raises(ValueError, match="unknown kernel"):
        lssl.LSSL(4, 8, kernel="cauchy")
    with pytest.raises(ValueError, match="use kernel='resolvent'"):
        lssl.LSSL(4, 8, backend="numba")


def test_roots_of_unity_beta_is_exact_at_nyquist():
    """beta = 1 - (1 - alpha) a vanishes at omega = -1 for the bilinear rule (b = 0, S = 2 I)."""
    a, _ = roots_of_unity(8, C128)
    beta = 1 - 0.5 * a
    assert beta[-1].abs() < 1e-15 and math.isclose(a[-1].real, 2.0)


@pytest.mark.parametrize("share_a", [True, False])
def test_conversion_in_feature_blocks(f64, share_a):
    """C~ is made FEATURE_BLOCK features at a time: more features than one block (and a short last
    block) give the kernel of explicit powers for every feature, after a length doubling too."""
    k = _learned("legt", share_a, N=4, H=70, channels=1)
    for L in (20, 50):
        assert_close(k(L), reference.kernel(*k.discrete(L), L))


def test_bidirectional_layer_equals_krylov_layer_with_the_same_system(f64):
    """A bidirectional resolvent layer (two kernel channels per feature, the second one run
    backwards) equals the Krylov layer given the plain C its C~ stands for."""
    H = 3
    resolvent = lssl.LSSL(H, d_state=6, channels=2, bidirectional=True, kernel="resolvent", learn_a=True)
    krylov = lssl.LSSL(H, d_state=6, channels=2, bidirectional=True, learn_a=True)
    x = torch.randn(2, 25, H)
    y = resolvent(x)
    state = {k: v for k, v in resolvent.state_dict().items() if k != "kernel.l_kernel"}
    state["kernel.C"] = resolvent.kernel.discrete(25).C
    krylov.load_state_dict(state)
    assert_close(krylov(x), y)


@pytest.mark.gpu
def test_torch_backend_on_cuda_equals_cpu(f64):
    """The torch solves run on any device: on CUDA the kernel and its gradients equal the CPU
    ones; the compiled loops refuse CUDA tensors with a clear error."""
    k = _learned("legs", False, N=16, H=4)
    K = k(128)
    g_cpu = grads(K.pow(2).sum(), dict(k.named_parameters()))
    k_cuda = _learned("legs", False, N=16, H=4).cuda()
    k_cuda.load_state_dict(k.state_dict())
    K_cuda = k_cuda(128)
    assert_close(K_cuda.cpu(), K)
    g_cuda = grads(K_cuda.pow(2).sum(), dict(k_cuda.named_parameters()))
    for name, g in g_cpu.items():
        assert_close(g_cuda[name].cpu(), g)
    with pytest.raises(ValueError, match="CPU tensors"):
        ResolventKernel(4, 8, learn_a=True, backend="numba").cuda()(16)
