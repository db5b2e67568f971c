"""Storage dtypes: what a step's operands may be stored as, and what storing means.

Every rule computes in one dtype, the compute dtype: float64 for float64 params, else float32.
Each operand is stored as one of float64, float32, bfloat16 (``ml_dtypes.bfloat16``) or float16:

- a param as any of the four;
- a grad as its param's dtype or another of float32, bfloat16, float16;
- each state as its param's dtype or float32.

Loading an operand widens it to the compute dtype, exactly (every bfloat16, float16 and float32
value is a float32 and a float64 value). Storing rounds the computed value to the storage dtype
once, to nearest even: subnormals are kept, values past the largest finite one round to Inf (ties
to even there too: 65520 is float16's tie between 65504 and Inf), NaN stays NaN. ``widened`` and
``narrowed`` are the executable specification of these semantics, around the reference's math; the cpp kernels
(``cpp/kernels/common.hpp``, ``cpp/simd/``) and the numba ones (``_numba``) do the same, element
by element.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

float64, float32, float16 = np.dtype(np.float64), np.dtype(np.float32), np.dtype(np.float16)
bfloat16 = np.dtype(ml_dtypes.bfloat16)
PARAM_DTYPES = (float64, float32, bfloat16, float16)


def compute_dtype(param_dtype):
    """The dtype a step of ``param_dtype`` params computes in."""
    return float64 if param_dtype == float64 else float32


def grad_dtypes(param_dtype):
    """The dtypes a grad of a ``param_dtype`` param may have, the param's first."""
    return (param_dtype, *(d for d in (float32, bfloat16, float16) if d != param_dtype))


def state_dtypes(param_dtype):
    """The dtypes a state of a ``param_dtype`` param may have, the param's (the default) first."""
    return (param_dtype,) if param_dtype == float32 else (param_dtype, float32)


def kernel_grad_dtypes(param_dtype):
    """The grad dtypes the kernels read directly; any other is widened to the compute dtype first
    (exactly, so the step is the same)."""
    return (float64, float32) if param_dtype == float64 else (float32, bfloat16, float16)


def names(dtypes):
    return ", ".join(d.name for d in dtypes)


class _Widened(np.ndarray):
    """An operand widened to the compute dtype that knows what it is stored as (``storage``)."""

    storage = None


def stored(x):
    """``x`` as its storage holds it: the value a later read of the same memory returns.

    A rule's math reads the values it computed; only a rule that reads a state back after
    storing it in the same step (LAMB's second pass recomputes its update from the stored
    moments) sees the rounding, and says so by reading ``stored(state)``."""
    storage = getattr(x, "storage", None)
    if storage is None or storage == x.dtype:
        return x
    return widen(narrow(x.view(np.ndarray), storage), x.dtype)


def widen(array, dtype):
    """A copy of ``array`` in ``dtype``, a wider dtype: exact."""
    return array.astype(dtype)


def narrow(values, dtype):
    """``values`` rounded to ``dtype``: nearest even, Inf past the largest finite value."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(values).astype(dtype)


def widened(param, grad, states):
    """Copies of a tensor's operands widened to its compute dtype (exact), for the reference to
    step in place: ([param, *states], grad), unused states None. Each written copy knows its
    storage dtype (``stored``). ``narrowed`` rounds the results back."""
    compute = compute_dtype(param.dtype)

    def copy(array):
        if array is None:
            return None
        wide = widen(array, compute).view(_Widened)
        wide.storage = array.dtype
        return wide

    return [copy(param), *map(copy, states)], widen(grad, compute)


def narrowed(written):
    """The reference's results ``written`` (from ``widened``), each rounded once to its storage dtype."""
    return [None if new is None else narrow(new.view(np.ndarray), new.storage) for new in written]
