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

Beyond its dtype, a step may store its params in one of these ways (``Precision``), each
defined by ``reference_step`` and the same on every backend, ISA level and thread count:

- ``rounding="nearest"``: as above.
- ``rounding="stochastic"`` (bfloat16 params): a param is stored rounded up in magnitude with
  probability (the part bfloat16 cannot hold) / (its last place), so that small updates survive
  on average. The random bits are a hash, not a generator: 16 bits ``stochastic_bits(key, i)``
  for element ``i`` of a param keyed ``rounding_key(seed, step, param index)``, added below the
  last place and cut off. NaN stays NaN; values past the largest finite one may round to Inf.
- ``rounding="kahan"`` (bfloat16 and float16 params): each param has a compensation buffer of its
  dtype holding what the param could not. The rule steps ``x = param + compensation`` (widened,
  added in float32), then stores ``param = round(x)`` and ``compensation = round(x - param)``,
  both to nearest even (x - param is exact: the rounding error of x).
- master weights (bfloat16 and float16 params): each param has a float32 master copy; the rule
  steps the master in place, and the param is stored as the new master rounded to nearest even.
  (The param's old value is not read.)

Loss scaling: with ``grad_scale`` each grad is widened, then divided by ``grad_scale`` (rounded
once to the compute dtype), before the rule reads it. ``unscale`` defines unscale_and_check_.
"""

from __future__ import annotations

from typing import NamedTuple

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


ROUNDINGS = ("nearest", "stochastic", "kahan")


class Precision(NamedTuple):
    """How one call stores its params beyond their dtype, and its loss scale (see above). The
    lists hold one entry per param; ``keys`` are ``rounding_key``s."""

    rounding: str = "nearest"
    masters: list | None = None  # float32 arrays like the params (master weights)
    compensations: list | None = None  # arrays of the params' dtype (rounding="kahan")
    keys: list | None = None  # ints (rounding="stochastic")
    grad_scale: float = 1.0  # already rounded to the compute dtype

    def plain(self):
        return (self.rounding == "nearest" and self.masters is None and self.compensations is None
                and self.grad_scale == 1.0)

    def of(self, i):
        """Param i's (master, compensation, key)."""
        return (None if self.masters is None else self.masters[i],
                None if self.compensations is None else self.compensations[i],
                None if self.keys is None else self.keys[i])


PLAIN = Precision()

# --- The counter-based hash of stochastic rounding, in uint32 arithmetic (Python ints or uint32 arrays) ---

_M32 = 0xFFFFFFFF
_WEYL = 0x9E3779B9  # 2^32 / golden ratio: consecutive elements' inputs are far apart


def mix32(h):
    """murmur3's 32-bit finalizer: a bijection of uint32 whose output bits each depend on every input bit."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def rounding_key(seed, step, index):
    """The key of param ``index``'s stochastic rounding at ``step`` (each taken modulo 2^32)."""
    key = mix32((seed + _WEYL) & _M32)
    key = mix32(key ^ (step & _M32))
    return mix32(key ^ (index & _M32))


def stochastic_bits(key, first, n):
    """The 16 random bits of elements first .. first + n - 1 of a param keyed ``key`` (uint32):
    mix32(element key + low half of i * _WEYL) >> 16, where the element key mixes in i's high half."""
    i = np.arange(first, first + n, dtype=np.uint64)
    element_key = np.uint32(key) ^ mix32((i >> np.uint64(32)).astype(np.uint32))
    return mix32(element_key + i.astype(np.uint32) * np.uint32(_WEYL)) >> np.uint32(16)


def narrow_stochastic(values, key):
    """float32 ``values`` (a whole param, element 0 first) stochastically rounded to bfloat16."""
    u = np.ascontiguousarray(values, np.float32).reshape(-1).view(np.uint32)
    rounded = (u + stochastic_bits(key, 0, u.size)) >> np.uint32(16)
    rounded = np.where(np.isnan(values.reshape(-1)), (u >> np.uint32(16)) | np.uint32(0x40), rounded)
    return rounded.astype(np.uint16).view(bfloat16).reshape(values.shape)


def widened(param, grad, states, master=None, compensation=None, grad_scale=1.0):
    """Copies of a tensor's operands widened to its compute dtype (exact), for the reference to
    step in place: ([param, *states], grad), unused states None. Each written copy knows its
    storage dtype (``stored``). With the modes above, the param's copy is its master's, or the
    param plus its compensation (added in the compute dtype); the grad is divided by
    ``grad_scale`` (a float already rounded to the compute dtype). ``narrowed`` stores the results."""
    compute = compute_dtype(param.dtype)

    def copy(array):
        if array is None:
            return None
        wide = widen(array, compute).view(_Widened)
        wide.storage = array.dtype
        return wide

    x = copy(master if master is not None else param)
    if compensation is not None:
        x[...] = x + widen(compensation, compute)
    g = widen(grad, compute)
    if grad_scale != 1.0:
        g = g / compute.type(grad_scale)
    return [x, *map(copy, states)], g


def narrowed(written, param, states, master=None, compensation=None, key=None, rounding="nearest"):
    """[(operand, its new value)] for every operand of a step of the reference on ``written`` (from
    ``widened``): each state rounded once to its storage dtype, and the param stored as its mode says."""
    x, *wide_states = (None if w is None else w.view(np.ndarray) for w in written)
    out = [(state, narrow(new, state.dtype)) for state, new in zip(states, wide_states) if state is not None]
    if master is not None:
        return [(master, x), (param, narrow(x, param.dtype)), *out]
    if compensation is not None:
        rounded = narrow(x, param.dtype)
        return [(param, rounded), (compensation, narrow(x - widen(rounded, x.dtype), param.dtype)), *out]
    if rounding == "stochastic":
        return [(param, narrow_stochastic(x, key)), *out]
    return [(param, narrow(x, param.dtype)), *out]


def unscale(grad, inv_scale):
    """unscale_and_check_ of one grad: (its new value, whether any new element is Inf or NaN). The
    grad is widened to its compute dtype, multiplied by ``inv_scale`` (rounded once to that dtype),
    stored back to nearest even; the stored values are checked."""
    compute = compute_dtype(grad.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        new = narrow(widen(grad, compute) * compute.type(inv_scale), grad.dtype)
    return new, not np.isfinite(widen(new, compute)).all()
