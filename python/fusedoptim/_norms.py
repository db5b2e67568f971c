"""Global-norm gradient clipping (``clip_grad_norm_``) and the finiteness test of a step's grads
(the stateful optimizers' ``skip_nonfinite``), on every backend.

The norm sums squares in float64 in the one order of LAMB's norms (``reference._sum_of_squares``,
``cpp/reduction.hpp``), so it is bitwise the same on every backend, ISA level and thread count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from . import _backends, _fpenv, reference
from ._rules import at_least, flag
from ._validate import in_place_arrays


def sum_of_squares(arrays, backend):
    """``reference._global_sum_of_squares`` of C-contiguous float arrays, on ``backend`` (a name)."""
    if backend == "cpp":
        return _backends._kernels.sum_of_squares(arrays)
    with _fpenv.contract():
        if backend == "numba":
            from . import _numba

            return _numba.global_sum_of_squares(arrays)
        return reference._global_sum_of_squares(arrays)


def _scale(arrays, factor, backend):
    if backend == "cpp":
        _backends._kernels.scale_(arrays, factor)
        return
    with _fpenv.contract():
        if backend == "numba":
            from . import _numba

            _numba.scale(arrays, factor)
            return
        for array in arrays:
            reference._scale(array, factor)


def all_finite(arrays, backend):
    """Whether no element of these C-contiguous float arrays is inf or NaN. On cpp, one native read of
    them all: their sum of squares is finite exactly when they are, unless the squares of float64
    values above 1e154 overflow it, which the exact test then settles."""
    if backend == "cpp" and math.isfinite(sum_of_squares(arrays, backend)):
        return True
    return all(np.isfinite(array).all() for array in arrays)


def clip_grad_norm_(grads: ArrayLike | Sequence[ArrayLike], max_norm: float, *, error_if_nonfinite: bool = False,
                    backend: str | None = None) -> float:
    """Scales ``grads`` in place so that their global 2-norm is at most ``max_norm``, as
    ``torch.nn.utils.clip_grad_norm_`` does; returns the norm before clipping (a float).

    ``grads`` is one array or a list of them: writeable float32 or float64 arrays, each dense in
    memory (C-contiguous, Fortran-ordered, or any transpose of those) and taken in its memory order,
    none sharing memory with another. One read of every grad gives the norm (one native call on the
    cpp backend, on its threads); a second pass scales them, only when coef (below) is under 1.
    The squares are summed in float64 in one fixed order, so the norm and the clipped grads are
    bitwise the same on every backend, ISA level and thread count (float64 grads above about 1e154
    overflow the sum to inf). With ``error_if_nonfinite``, an inf or NaN norm raises RuntimeError
    before anything changes; otherwise it scales as torch does (every grad by NaN, or by 0).

    The math, from ``reference.clip_factor``:
    """
    backend = _backends.resolve(backend)
    max_norm = at_least("max_norm", max_norm, 0.0)
    error_if_nonfinite = flag("error_if_nonfinite", error_if_nonfinite)
    arrays = in_place_arrays(grads, "grads")
    total_norm = math.sqrt(sum_of_squares(arrays, backend))
    if error_if_nonfinite and not math.isfinite(total_norm):
        raise RuntimeError(f"The total norm of the gradients is {total_norm}, so they cannot be clipped "
                           f"(error_if_nonfinite=True)")
    factor = reference.clip_factor(max_norm, total_norm)
    if factor is not None:
        _scale(arrays, factor, backend)
    return total_norm


clip_grad_norm_.__doc__ += reference.formula("clip_factor")
