import pytest
import torch

from lssl import hippo
from lssl.kernels import krylov, reference
from lssl.kernels.krylov import KrylovKernel
from lssl.kernels.transition import (
    TRANSITIONS,
    TRID_INITS,
    DenseTransition,
    TriD,
    TriDTransition,
    legt_lssl,
    trid_dense,
    trid_init,
    tridiagonal,
)
from lssl.layer import LSSL

from .helpers import assert_close, grads, rel_err

F64 = torch.float64
HINT = {"lr": 1e-4, "weight_decay": 0.0}
SIZES = [1, 2, 3, 8, 64, 200]



@pytest.mark.parametrize("N", SIZES)
@pytest.mark.parametrize("measure", list(TRID_INITS))
def test_trid_reproduces_hippo(measure, N):
    """Spec E6 (LegS, LagT, and our halved LegT): -P (Dg + T^{-1}) Q = A and P b = B exactly."""
    A_ref, B_ref = hippo.transition(measure, N)
    p = trid_init(measure, N)
    A, B = trid_dense(p)
    assert rel_err(A, A_ref) <= 1e-12
    assert rel_err(p.pl * p.b, B_ref) <= 1e-12
    assert rel_err(B, B_ref) <= 1e-12


@pytest.mark.parametrize("N", SIZES)
def test_lssl_paper_legt_is_twice_the_halved_legt(N):
    """Spec E6 as stated, and F29: the paper's LegT init (no noise) is P (Dg + T^{-1}) Q =
    -2 A_legt(halved), with B = P b = 2 B_legt."""
    A_ref, B_ref = hippo.transition("legt", N)
    p = legt_lssl(N)
    A, B = trid_dense(p)
    assert rel_err(-A, -2 * A_ref) <= 1e-12
    assert rel_err(p.pl * p.b, 2 * B_ref) <= 1e-12
    assert rel_err(B, 2 * B_ref) <= 1e-12


@pytest.mark.parametrize("measure", ["legs", "lagt"])
def test_legs_lagt_inverse_is_lower_triangular_ones(measure):
    p = trid_init(measure, 7)
    T_inv = torch.linalg.inv(tridiagonal(p.dl, p.d, p.du))
    assert torch.equal(T_inv, torch.tril(torch.ones(7, 7, dtype=F64)))


def test_transition_table_covers_every_measure():
    assert set(TRANSITIONS) == set(hippo.MEASURES)
    assert all(TRANSITIONS[m] is TriDTransition for m in TRID_INITS)
    assert TRANSITIONS["fout"] is DenseTransition


@pytest.mark.parametrize("measure", list(hippo.MEASURES))
@pytest.mark.parametrize("H", [None, 3])
def test_modules_start_at_hippo_with_shapes(f64, measure, H):
    N = 6
    t = TRANSITIONS[measure](N, measure, H=H)
    A, B = t.dense()
    batch = () if H is None else (H,)
    assert A.shape == (*batch, N, N) and B.shape == (*batch, N)
    A_ref, B_ref = hippo.transition(measure, N)
    assert_close(A, A_ref.expand_as(A))
    assert_close(B, B_ref.expand_as(B))
    if isinstance(t, TriDTransition):
        for name, p in t.params()._asdict().items():
            assert p.shape == (*batch, N - 1 if name in ("dl", "du") else N), name


@pytest.mark.parametrize("measure", list(TRID_INITS))
def test_per_feature_above_batched_solve_limit(measure):
    """N > 128 takes `linalg.solve`'s one-matrix-at-a-time path (torch's batched CPU LU is wrong
    there); the per-feature TriD transition must still be HiPPO exactly."""
    A, B = TriDTransition(130, measure, H=2).dense()
    A_ref, B_ref = hippo.transition(measure, 130)
    assert A.shape == (2, 130, 130)
    assert_close(A.double(), A_ref.expand(2, -1, -1), torch.float32)
    assert_close(B.double(), B_ref.expand(2, -1), torch.float32)


def test_float32_default_dtype_follows():
    t = TriDTransition(8, "legs", H=2)
    A, B = t.dense()
    assert A.dtype == torch.float32 and B.dtype == torch.float32
    assert_close(A[0], hippo.transition("legs", 8)[0].float(), torch.float32)


@pytest.mark.parametrize("measure", list(TRID_INITS))
def test_per_feature_parameters_are_independent(f64, measure):
    t = TriDTransition(5, measure, H=3)
    A0, _ = t.dense()
    with torch.no_grad():
        t.d[0, 2] += 0.3
    A1, _ = t.dense()
    assert (A1[0] - A0[0]).abs().max() > 1e-3
    assert torch.equal(A1[1:], A0[1:])


@pytest.mark.parametrize("learn", [True, False])
@pytest.mark.parametrize("H", [None, 2])
def test_optimizer_hints_or_buffers(learn, H):
    for cls, measure in [(TriDTransition, "legt"), (DenseTransition, "fout")]:
        t = cls(4, measure, H=H, learn=learn, lr=3e-4)
        params = dict(t.named_parameters())
        if learn:
            assert set(params) == (set(TriD._fields) if cls is TriDTransition else {"A", "B"})
            assert all(p._optim == {"lr": 3e-4, "weight_decay": 0.0} for p in params.values())
        else:
            assert not params and len(list(t.buffers())) == (7 if cls is TriDTransition else 2)


@pytest.mark.parametrize("share_a", [True, False])
def test_kernel_hints_on_every_transition_parameter(share_a):
    k = KrylovKernel(4, 8, measure="legs", learn_a=True, share_a=share_a)
    params = dict(k.named_parameters())
    names = {f"transition.{f}" for f in TriD._fields}
    assert set(params) == names | {"C", "log_dt"}
    for name in names:
        assert params[name]._optim == HINT, name
        assert params[name].dim() == (1 if share_a else 2), name
    assert params["log_dt"]._optim == {"lr": 1e-3, "weight_decay": 0.0}


def test_fixed_mode_has_no_transition_parameters(f64):
    for share_a in (True, False):
        k = KrylovKernel(4, 8, measure="legt", learn_a=False, share_a=share_a)
        assert set(dict(k.named_parameters())) == {"C", "log_dt"}
        assert isinstance(k.transition, DenseTransition)
        A, B = k.transition.dense()
        A_ref, B_ref = hippo.transition("legt", 8)
        assert torch.equal(A, A_ref) and torch.equal(B, B_ref)


@pytest.mark.parametrize("measure", list(hippo.MEASURES))
@pytest.mark.parametrize("share_a", [True, False])
@pytest.mark.parametrize("disc", ["bilinear", "zoh"])
def test_learned_kernel_starts_equal_to_fixed(f64, measure, share_a, disc):
    learned = KrylovKernel(3, 8, channels=2, measure=measure, disc=disc, learn_a=True, share_a=share_a)
    fixed = KrylovKernel(3, 8, channels=2, measure=measure, disc=disc, learn_a=False)
    fixed.load_state_dict({"log_dt": learned.log_dt, "C": learned.C, **dict(fixed.named_buffers())})
    assert_close(learned(64), fixed(64))
    for a, b in zip(learned.discrete(64), fixed.discrete(64)):
        assert_close(a, b.expand_as(a))


@pytest.mark.parametrize("measure", list(hippo.MEASURES))
@pytest.mark.parametrize("share_a", [True, False])
def test_transition_gradients_fast_equal_reference(f64, measure, share_a):
    k = KrylovKernel(3, 8, channels=2, measure=measure, learn_a=True, share_a=share_a, dt_min=1e-2, dt_max=0.5)
    L = 40
    G = torch.randn(2, 3, L)
    params = {n: p for n, p in k.named_parameters() if n.startswith("transition.")}
    assert set(params) == {f"transition.{f}" for f in (TriD._fields if measure != "fout" else ("A", "B"))}
    K = k(L)
    R = reference.kernel(*k.discrete(L), L)
    assert_close(K, R)
    g_fast = grads((K * G).sum(), params)
    g_ref = grads((R * G).sum(), params)
    for name in params:
        assert torch.isfinite(g_fast[name]).all(), name
        assert g_ref[name].abs().max() > 0, name
        assert_close(g_fast[name], g_ref[name])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: trid_init("legx", 4), "unknown measure 'legx'; known: 'legs', 'legt', 'lagt'"),
        (lambda: TriDTransition(4, "fout"), "unknown measure 'fout'"),
        (lambda: DenseTransition(4, "legx"), "unknown measure"),
        (lambda: KrylovKernel(4, 8, measure="legx", learn_a=True), "unknown measure 'legx'; known: .*'fout'"),
        (lambda: TriDTransition(0, "legs"), "N must be a positive int"),
        (lambda: TriDTransition(4, "legs", H=0), "H must be a positive int"),
        (lambda: DenseTransition(4, "legs", H=2.0), "H must be a positive int"),
        (lambda: DenseTransition(5, "fout"), "N must be even"),
    ],
)
def test_bad_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def _count(monkeypatch, name):
    calls = []

    def counted(*args):
        calls.append(1)
        return real(*args)

    real = getattr(krylov, name)
    monkeypatch.setattr(krylov, name, counted)
    return calls


def _count_kernels(monkeypatch):
    """Count kernel computations: each ends in one contraction of the Krylov basis with C."""
    return _count(monkeypatch, "krylov_contract")


def test_frozen_kernel_is_cached_and_invalidated(f64, monkeypatch):
    """Spec F5: a memoised kernel never outlives an in-place change of any SSM tensor."""
    calls = _count_kernels(monkeypatch)
    k = KrylovKernel(3, 8, channels=2, measure="legs")
    L = 32

    def fresh():
        return reference.kernel(*k.discrete(L), L)

    with torch.no_grad():
        K1 = k(L)
        K1[:] = 0  # the caller owns its copy: the memo is untouched
        assert_close(k(L), fresh())
        assert len(calls) == 1
        k(L, rate=2.0)
        k(L + 1)
        assert len(calls) == 3
        before = k(L)
        assert len(calls) == 4
        for name, change in [
            ("log_dt", lambda: k.log_dt.add_(0.1)),
            ("C", lambda: k.C.mul_(1.5)),
            ("A", lambda: k.transition.A.mul_(0.9)),
            ("B", lambda: k.transition.B.add_(1.0)),
        ]:
            change()
            after = k(L)
            assert (after - before).abs().max() > 1e-6, name
            assert_close(after, fresh())
            before = after
        k.load_state_dict(KrylovKernel(3, 8, channels=2, measure="legs").state_dict())
        assert_close(k(L), fresh())
    k.float()
    with torch.no_grad():
        assert k(L).dtype == torch.float32


def test_cache_only_when_frozen(f64, monkeypatch):
    calls = _count_kernels(monkeypatch)
    k = KrylovKernel(3, 8, measure="lagt", learn_a=True, share_a=False)
    L = 16
    # Training: parameters require grad, so every call builds a fresh graph.
    assert k(L).requires_grad and k(L).requires_grad
    assert len(calls) == 2 and k._cache is None
    # Inference over a learned transition: cached, and a TriD update invalidates it.
    with torch.no_grad():
        K = k(L)
        k(L)
        assert len(calls) == 3
        k.transition.d[1, 0] += 0.2
        K2 = k(L)
        assert len(calls) == 4
    assert (K2 - K).abs().max() > 1e-6
    assert_close(K2, reference.kernel(*k.discrete(L), L).detach())
    # Grad enabled but nothing trainable (LSSL-fixed with frozen C and dt): cached as well.
    fixed = KrylovKernel(3, 8, learn_dt=False)
    fixed.C.requires_grad_(False)
    K = fixed(L)
    assert not K.requires_grad and torch.equal(fixed(L), K)
    assert len(calls) == 5
    # C trainable (LSSL-fixed during training): recomputed, with a graph to C.
    fixed.C.requires_grad_(True)
    assert fixed(L).requires_grad
    assert len(calls) == 6


def test_frozen_basis_is_cached_while_only_c_trains(f64, monkeypatch):
    """LSSL-fixed with frozen dt: the C-independent Krylov basis is built once across training
    steps, the kernel and its gradient w.r.t. C stay exact, and any change of A, B or dt
    rebuilds it."""
    bases = _count(monkeypatch, "krylov_basis")
    k = KrylovKernel(3, 8, channels=2, measure="legs", learn_dt=False)
    L = 40
    with torch.inference_mode():
        k(L)  # not memoised: inference tensors could not serve the training steps below
    bases.clear()
    G = torch.randn(2, 3, L)
    for _ in range(3):
        K = k(L)
        grad_C, = torch.autograd.grad((K * G).sum(), k.C)
        A_bar, B_bar, C = k.discrete(L)
        C_ref = C.detach().clone().requires_grad_(True)
        K_ref = reference.kernel(A_bar, B_bar, C_ref, L)
        grad_ref, = torch.autograd.grad((K_ref * G).sum(), C_ref)
        assert_close(K, K_ref)
        assert_close(grad_C, grad_ref)
        with torch.no_grad():
            k.C.add_(0.1 * torch.randn_like(k.C))  # an optimizer step on C keeps the basis
    assert len(bases) == 1
    for change in (lambda: k.log_dt.add_(0.1), lambda: k.transition.A.mul_(0.9)):
        with torch.no_grad():
            change()
        assert_close(k(L), reference.kernel(*k.discrete(L), L))
    assert len(bases) == 3
    # A trainable dt needs the basis in the graph: built afresh at every step.
    k.log_dt.requires_grad_(True)
    k(L)
    k(L)
    assert len(bases) == 5


def test_kernel_memoised_in_inference_mode_is_usable_by_autograd(monkeypatch):
    calls = _count_kernels(monkeypatch)
    k = KrylovKernel(2, 4, learn_dt=False)
    k.C.requires_grad_(False)
    with torch.inference_mode():
        K_inf = k(8)
    K = k(8)
    assert len(calls) == 1
    assert K_inf.is_inference() and not K.is_inference()
    u = torch.randn(2, 8, requires_grad=True)
    (u * K[0]).sum().backward()
    assert_close(u.grad, K[0])


def test_lssl_learned_large_smoke():
    """LSSL with learned A (the layer's default, one TriD transition shared) at H = N = 256
    builds and runs forward."""
    layer = LSSL(256, 256, learn_a=True)
    with torch.no_grad():
        y = layer(torch.randn(1, 64, 256))
    assert y.shape == (1, 64, 256) and torch.isfinite(y).all()
