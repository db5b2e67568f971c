"""Numba backend: the reference's element sequence as JIT-compiled loops.

No fastmath (it would contract and reassociate), and every scalar arrives as a NumPy scalar
of the compute dtype: a Python float would be float64 and silently promote the arithmetic.
``np.sqrt`` (not ``math.sqrt``) keeps float32 in float32. States a step does not use arrive
as empty arrays. Arrays are 1-D views of the caller's memory, read and written only through
``_load`` and ``_store``, which widen to the compute dtype and round back (``_storage``): numba
cannot type ml_dtypes' bfloat16, and its float16 is not to be relied on, so bfloat16 arrays
arrive viewed as uint16 and float16 ones as int16 (``storage_view``), and are converted with
integer arithmetic, as the C++ scalar level converts them.
"""

import numpy as np
from numba import njit, types
from numba.extending import overload

from . import _storage
from .reference import BLOCK, LANES, _trust_ratio

# error_model="numpy": x/0 gives Inf or NaN as IEEE says, like the reference and the C++ kernels,
# where Python's model would raise ZeroDivisionError half-way through a step.
_jit = njit(cache=True, nogil=True, fastmath=False, error_model="numpy")

# The view each 16-bit storage dtype arrives as: its type tells the conversion.
_VIEWS = {_storage.bfloat16: np.dtype(np.uint16), _storage.float16: np.dtype(np.int16)}


def storage_view(array):
    """A 1-D view of ``array`` that the kernels here can take."""
    flat = array.reshape(-1)
    view = _VIEWS.get(flat.dtype)
    return flat if view is None else flat.view(view)


_U32 = np.uint32


@_jit
def _bf16_to_f32(h):
    return _U32(_U32(h) << _U32(16)).view(np.float32)


@_jit
def _f32_to_bf16(x):
    u = np.float32(x).view(np.uint32)
    if x != x:  # the rounding add could carry a NaN with a small payload into Inf
        return np.uint16(_U32(u >> _U32(16)) | _U32(0x40))
    return np.uint16(_U32(u + _U32(0x7FFF) + (_U32(u >> _U32(16)) & _U32(1))) >> _U32(16))


@_jit
def _f16_to_f32(h):
    bits = _U32(np.uint16(h))
    sign = _U32(bits & _U32(0x8000)) << _U32(16)
    exponent = _U32(bits >> _U32(10)) & _U32(0x1F)
    mantissa = bits & _U32(0x3FF)
    if exponent == 0x1F:
        return _U32(sign | _U32(0x7F800000) | _U32(mantissa << _U32(13))).view(np.float32)
    if exponent == 0:  # zero or subnormal: mantissa * 2^-24, exact in float32
        m = np.float32(mantissa) * np.float32(2.0**-24)
        return -m if sign else m
    return _U32(sign | _U32(_U32(exponent + _U32(112)) << _U32(23)) | _U32(mantissa << _U32(13))).view(np.float32)


@_jit
def _f32_to_f16(x):
    u = np.float32(x).view(np.uint32)
    sign = _U32(u >> _U32(16)) & _U32(0x8000)
    a = u & _U32(0x7FFFFFFF)
    if a > _U32(0x7F800000):
        return np.int16(np.uint16(sign | _U32(0x7E00) | (_U32(a >> _U32(13)) & _U32(0x3FF))))
    if a >= _U32(0x477FF000):  # from 65520 (a tie, to even) up
        return np.int16(np.uint16(sign | _U32(0x7C00)))
    if a >= _U32(0x38800000):  # normal in float16 (from 2^-14): rebias the exponent, round off 13 bits
        b = _U32(a - _U32(0x38000000))
        return np.int16(np.uint16(sign | _U32(_U32(b + _U32(0xFFF) + (_U32(b >> _U32(13)) & _U32(1))) >> _U32(13))))
    exponent = _U32(a >> _U32(23))  # a float16 subnormal: a count of 2^-24, rounded
    if exponent < _U32(102):  # below 2^-25, the tie between 0 and 2^-24
        return np.int16(np.uint16(sign))
    mantissa = _U32(a & _U32(0x7FFFFF)) | _U32(0x800000)
    shift = _U32(_U32(126) - exponent)
    q = _U32(mantissa >> shift)
    rest = mantissa & _U32(_U32(_U32(1) << shift) - _U32(1))
    half = _U32(_U32(1) << _U32(shift - _U32(1)))
    up = _U32(1) if rest > half or (rest == half and q & _U32(1)) else _U32(0)
    return np.int16(np.uint16(sign | _U32(q + up)))


def _load(a, i, s):
    """a[i] widened to the compute dtype (that of the scalars ``s``)."""


def _store(a, i, v):
    """a[i] = v rounded to a's storage dtype."""


def _one(s):
    """1 in the compute dtype."""


@overload(_one)
def _one_typed(s):
    if s.dtype == types.float64:
        return lambda s: np.float64(1.0)
    return lambda s: np.float32(1.0)


@overload(_load, jit_options={"error_model": "numpy"})
def _load_typed(a, i, s):
    if a.dtype == types.uint16:
        return lambda a, i, s: _bf16_to_f32(a[i])
    if a.dtype == types.int16:
        return lambda a, i, s: _f16_to_f32(a[i])
    if s.dtype == types.float64 and a.dtype != types.float64:
        return lambda a, i, s: np.float64(a[i])
    return lambda a, i, s: a[i]


@overload(_store, jit_options={"error_model": "numpy"})
def _store_typed(a, i, v):
    if a.dtype == types.uint16:
        def store_bf16(a, i, v):
            a[i] = _f32_to_bf16(v)
        return store_bf16
    if a.dtype == types.int16:
        def store_f16(a, i, v):
            a[i] = _f32_to_f16(v)
        return store_f16

    def store(a, i, v):  # float64 to float32 rounds to nearest even, as the cast does
        a[i] = v
    return store


@_jit
def _maximum(a, b):
    """np.maximum of two elements: a if greater or NaN, else b (so max(-0, +0) is +0, the second)."""
    return a if (a > b or a != a) else b



@_jit
def _l2_gradient(grad, param, s, f):
    """The gradient a rule with L2 weight decay steps on (cpp/kernels/rule.hpp's l2_gradient)."""
    g = -grad if f.maximize else grad
    if f.weight_decay:
        g = g + s.weight_decay * param
    return g


@_jit
def _adam_moments(exp_avg, exp_avg_sq, i, g, s):
    """Adam's moment updates at element i, stored and returned (cpp/kernels/rule.hpp's adam_moments)."""
    m = s.beta1 * _load(exp_avg, i, s) + s.one_minus_beta1 * g
    v = s.beta2 * _load(exp_avg_sq, i, s) + s.one_minus_beta2 * (g * g)
    _store(exp_avg, i, m)
    _store(exp_avg_sq, i, v)
    return m, v


@_jit
def sgd(param, grad, momentum_buffer, s, f):
    for i in range(param.size):
        p = _load(param, i, s)
        g = _l2_gradient(_load(grad, i, s), p, s, f)
        if f.momentum:
            buf = g if f.first_step else s.momentum * _load(momentum_buffer, i, s) + s.one_minus_dampening * g
            _store(momentum_buffer, i, buf)
            g = g + s.momentum * buf if f.nesterov else buf
        _store(param, i, p - s.lr * g)


@_jit
def adagrad(param, grad, sum, s, f):
    for i in range(param.size):
        p = _load(param, i, s)
        g = _l2_gradient(_load(grad, i, s), p, s, f)
        acc = _load(sum, i, s) + g * g
        _store(sum, i, acc)
        std = np.sqrt(acc) + s.eps
        _store(param, i, p - s.clr * (g / std))


@_jit
def rmsprop(param, grad, square_avg, momentum_buffer, grad_avg, s, f):
    for i in range(param.size):
        p = _load(param, i, s)
        g = _l2_gradient(_load(grad, i, s), p, s, f)
        sq = s.alpha * _load(square_avg, i, s) + s.one_minus_alpha * (g * g)
        _store(square_avg, i, sq)
        if f.centered:
            ga = s.alpha * _load(grad_avg, i, s) + s.one_minus_alpha * g
            _store(grad_avg, i, ga)
            avg = np.sqrt(sq - ga * ga) + s.eps
        else:
            avg = np.sqrt(sq) + s.eps
        if f.momentum:
            buf = s.momentum * _load(momentum_buffer, i, s) + g / avg
            _store(momentum_buffer, i, buf)
            _store(param, i, p - s.lr * buf)
        else:
            _store(param, i, p - s.lr * (g / avg))


@_jit
def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, s, f):
    for i in range(param.size):
        p = _load(param, i, s)
        g = _l2_gradient(_load(grad, i, s), p, s, f)
        if f.decoupled_weight_decay:
            p = p * s.one_minus_lr_weight_decay
        m, v = _adam_moments(exp_avg, exp_avg_sq, i, g, s)
        if f.amsgrad:
            v = _maximum(_load(max_exp_avg_sq, i, s), v)
            _store(max_exp_avg_sq, i, v)
        denom = np.sqrt(v) * s.inv_bias_correction2_sqrt + s.eps
        _store(param, i, p - s.step_size * (m / denom))


@_jit
def adamax(param, grad, exp_avg, exp_inf, s, f):
    for i in range(param.size):
        p = _load(param, i, s)
        g = _l2_gradient(_load(grad, i, s), p, s, f)
        m = s.beta1 * _load(exp_avg, i, s) + s.one_minus_beta1 * g
        u = _maximum(s.beta2 * _load(exp_inf, i, s), np.abs(g) + s.eps)
        _store(exp_avg, i, m)
        _store(exp_inf, i, u)
        _store(param, i, p - s.clr * (m / u))


@_jit
def adadelta(param, grad, square_avg, acc_delta, s, f):
    for i in range(param.size):
        p = _load(param, i, s)
        g = _l2_gradient(_load(grad, i, s), p, s, f)
        sq = s.rho * _load(square_avg, i, s) + s.one_minus_rho * (g * g)
        _store(square_avg, i, sq)
        acc = _load(acc_delta, i, s)
        delta = np.sqrt(acc + s.eps) / np.sqrt(sq + s.eps) * g
        _store(acc_delta, i, s.rho * acc + s.one_minus_rho * (delta * delta))
        _store(param, i, p - s.lr * delta)


@_jit
def radam(param, grad, exp_avg, exp_avg_sq, s, f):
    for i in range(param.size):
        p = _load(param, i, s)
        g = _l2_gradient(_load(grad, i, s), p, s, f)
        if f.decoupled_weight_decay:
            p = p * s.one_minus_lr_weight_decay
        m, v = _adam_moments(exp_avg, exp_avg_sq, i, g, s)
        if f.rectified:
            _store(param, i, p - s.step_size * (m / (np.sqrt(v) + s.eps)))
        else:
            _store(param, i, p - s.step_size * m)


@_jit
def nadam(param, grad, exp_avg, exp_avg_sq, s, f):
    for i in range(param.size):
        p = _load(param, i, s)
        g = _l2_gradient(_load(grad, i, s), p, s, f)
        if f.decoupled_weight_decay:
            p = p * s.one_minus_lr_weight_decay
        m, v = _adam_moments(exp_avg, exp_avg_sq, i, g, s)
        denom = np.sqrt(v / s.bias_correction2) + s.eps
        p = p - s.grad_step * (g / denom)
        _store(param, i, p - s.exp_avg_step * (m / denom))


@_jit
def _sign(x, one):
    """np.sign exactly, in x's dtype (numba's own np.sign keeps the sign of -0.0)."""
    if x > 0:
        return one
    if x < 0:
        return -one
    if x == 0:
        return one - one
    return x


@_jit
def lion(param, grad, exp_avg, s, f):
    one = _one(s)
    for i in range(param.size):
        p = _load(param, i, s)
        g = -_load(grad, i, s) if f.maximize else _load(grad, i, s)
        m = _load(exp_avg, i, s)
        c = s.beta1 * m + s.one_minus_beta1 * g
        if f.weight_decay:
            p = p * s.decay_factor
        _store(param, i, p - s.lr * _sign(c, one))
        _store(exp_avg, i, s.beta2 * m + s.one_minus_beta2 * g)


@_jit
def _minimum(a, b):
    """np.minimum of two elements: a if smaller or NaN, else b (so min(-0, +0) is +0, the second)."""
    return a if (a < b or a != a) else b


@_jit
def asgd(param, grad, ax, s, f):
    for i in range(param.size):
        p = _load(param, i, s)
        g = _l2_gradient(_load(grad, i, s), p, s, f)
        p = p * s.one_minus_lambd_eta
        p = p - s.eta * g
        _store(param, i, p)
        if f.averaging:
            a = _load(ax, i, s)
            _store(ax, i, a + (p - a) * s.mu)
        else:
            _store(ax, i, p)


@_jit
def _torch_sign(x, one):
    """torch.sign: 1, -1, or 0 for either zero and for NaN."""
    if x > 0:
        return one
    if x < 0:
        return -one
    return one - one


@_jit
def rprop(param, grad, prev, step_size, s, f):
    one = _one(s)
    for i in range(param.size):
        g = -_load(grad, i, s) if f.maximize else _load(grad, i, s)
        d = g * _load(prev, i, s)
        factor = s.etaplus if d > 0 else s.etaminus if d < 0 else one
        size = _minimum(_maximum(_load(step_size, i, s) * factor, s.step_size_min), s.step_size_max)
        _store(step_size, i, size)
        if factor == s.etaminus:
            g = one - one
        _store(prev, i, g)
        _store(param, i, _load(param, i, s) - size * _torch_sign(g, one))


@_jit
def _fold_lanes(lanes):
    half = LANES // 2
    while half > 0:
        for j in range(half):
            lanes[j] = lanes[j] + lanes[j + half]
        half //= 2
    return lanes[0]


@_jit
def _combine_blocks(x):
    n = x.size
    if n == 0:
        return 0.0
    while n > 1:
        for j in range(n // 2):
            x[j] = x[2 * j] + x[2 * j + 1]
        if n % 2:
            x[n // 2] = x[n - 1]
        n = (n + 1) // 2
    return x[0]


@_jit
def _lamb_direction(p, m, v, s, f):
    u = s.inv_bias_correction1 * (m / (np.sqrt(v) * s.inv_bias_correction2_sqrt + s.eps))
    if f.weight_decay:
        u = u + s.weight_decay * p
    return u


@_jit
def _lamb_first_pass(param, grad, exp_avg, exp_avg_sq, s, f):
    """Updates the moments; returns the sums of squares of param and u in reference._sum_of_squares's order."""
    n = param.size
    blocks = (n + BLOCK - 1) // BLOCK
    param_sq, update_sq = np.empty(blocks), np.empty(blocks)
    lanes = np.empty((2, LANES))
    for b in range(blocks):
        lanes[:] = 0.0
        for i in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            p = _load(param, i, s)
            g = -_load(grad, i, s) if f.maximize else _load(grad, i, s)
            m = s.beta1 * _load(exp_avg, i, s) + s.one_minus_beta1 * g
            v = s.beta2 * _load(exp_avg_sq, i, s) + s.one_minus_beta2 * (g * g)
            _store(exp_avg, i, m)
            _store(exp_avg_sq, i, v)
            u = _lamb_direction(p, m, v, s, f)
            wide_p, wide_u = np.float64(p), np.float64(u)
            lanes[0, i % LANES] += wide_p * wide_p
            lanes[1, i % LANES] += wide_u * wide_u
        param_sq[b] = _fold_lanes(lanes[0])
        update_sq[b] = _fold_lanes(lanes[1])
    return _combine_blocks(param_sq), _combine_blocks(update_sq)


@_jit
def _lamb_update(param, exp_avg, exp_avg_sq, trust, s, f):
    scale = s.lr * trust
    for i in range(param.size):
        p = _load(param, i, s)
        _store(param, i, p - scale * _lamb_direction(p, _load(exp_avg, i, s), _load(exp_avg_sq, i, s), s, f))


def lamb(param, grad, exp_avg, exp_avg_sq, s, f):
    """Two jitted passes around the host-side trust ratio, as the C++ kernel runs them."""
    lamb_update(param, exp_avg, exp_avg_sq, lamb_sums(param, grad, exp_avg, exp_avg_sq, s, f), s, f)


lamb_sums = _lamb_first_pass


def lamb_update(param, exp_avg, exp_avg_sq, sums, s, f):
    _lamb_update(param, exp_avg, exp_avg_sq, type(s[0])(_trust_ratio(*sums)), s, f)  # rounded once to the compute dtype


# --- clip_grad_norm_ (reference.clip_factor) ---

@_jit
def _sum_of_squares(x):
    """reference._sum_of_squares of a 1-D array."""
    n = x.size
    blocks = (n + BLOCK - 1) // BLOCK
    sums = np.empty(blocks)
    lanes = np.empty(LANES)
    for b in range(blocks):
        lanes[:] = 0.0
        for i in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            wide = np.float64(x[i])
            lanes[i % LANES] += wide * wide
        sums[b] = _fold_lanes(lanes)
    return _combine_blocks(sums)


def global_sum_of_squares(arrays):
    """reference._global_sum_of_squares of a list of C-contiguous arrays."""
    return _combine_blocks(np.array([_sum_of_squares(a.reshape(-1)) for a in arrays], dtype=np.float64))


@_jit
def _scale(x, factor):
    for i in range(x.size):
        x[i] = x[i] * factor


def scale(arrays, factor):
    """reference._scale of each of a list of C-contiguous arrays."""
    for a in arrays:
        _scale(a.reshape(-1), a.dtype.type(factor))
