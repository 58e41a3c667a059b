"""What the compiled (numba) loops share: how they are compiled, what they read, how many
threads they run on. Imported only by the numba modules (numba is optional, `ops.backend`)."""

from __future__ import annotations

import numba
import torch

Tensor = torch.Tensor

# Parallel over an outer prange, cached on disk (the first call compiles, about 15 s a module and
# dtype), no bounds checks, numpy's float semantics (division by zero gives inf, not an error).
LOOP_OPTIONS = {"parallel": True, "cache": True, "boundscheck": False, "error_model": "numpy"}
compile_loops = numba.njit(**LOOP_OPTIONS)
# A sum over a contiguous axis vectorises only when it may be reassociated (partial sums per
# SIMD lane); multiply-adds may fuse. NaN and inf keep their meaning.
compile_sums = numba.njit(**LOOP_OPTIONS, fastmath={"reassoc", "contract"})


def loop_input(x: Tensor) -> Tensor:
    """x detached and contiguous, in float32 or float64 (the dtypes the loops are compiled for;
    half precision is widened to float32, and results are cast back to x's dtype). The Functions
    save this tensor, so the backward reads the same memory without converting again."""
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    return x.detach().to(dtype).contiguous()


def match_threads() -> None:
    """Run numba's loops on as many threads as torch's (at most what numba was started with)."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def first_order_only() -> None:
    """Raise in a backward asked to build a graph (create_graph=True, for second derivatives):
    the compiled backward computes numbers, not torch operations, so its result would carry no
    dependence on the inputs and higher derivatives would come out silently wrong."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "backend='numba' computes first derivatives only (its backward is compiled); "
            "use backend='torch' for higher derivatives"
        )
