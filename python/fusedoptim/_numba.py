"""Numba backend: the reference's element sequence as JIT-compiled loops.

No fastmath (it would contract and reassociate), and every scalar arrives as a NumPy scalar
of the compute dtype: a Python float would be float64 and silently promote the arithmetic.
``np.sqrt`` (not ``math.sqrt``) keeps float32 in float32. States a step does not use arrive
as empty arrays. Arrays are 1-D views of the caller's memory.
"""

import numpy as np
from numba import njit

from .reference import BLOCK, LANES, _trust_ratio

# error_model="numpy": x/0 gives Inf or NaN as IEEE says, like the reference and the C++ kernels,
# where Python's model would raise ZeroDivisionError half-way through a step.
_jit = njit(cache=True, nogil=True, fastmath=False, error_model="numpy")


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
    m = s.beta1 * exp_avg[i] + s.one_minus_beta1 * g
    v = s.beta2 * exp_avg_sq[i] + s.one_minus_beta2 * (g * g)
    exp_avg[i] = m
    exp_avg_sq[i] = v
    return m, v


@_jit
def sgd(param, grad, momentum_buffer, s, f):
    for i in range(param.size):
        p = param[i]
        g = _l2_gradient(grad[i], p, s, f)
        if f.momentum:
            buf = g if f.first_step else s.momentum * momentum_buffer[i] + s.one_minus_dampening * g
            momentum_buffer[i] = buf
            g = g + s.momentum * buf if f.nesterov else buf
        param[i] = p - s.lr * g


@_jit
def adagrad(param, grad, sum, s, f):
    for i in range(param.size):
        p = param[i]
        g = _l2_gradient(grad[i], p, s, f)
        acc = sum[i] + g * g
        sum[i] = acc
        std = np.sqrt(acc) + s.eps
        param[i] = p - s.clr * (g / std)


@_jit
def rmsprop(param, grad, square_avg, momentum_buffer, grad_avg, s, f):
    for i in range(param.size):
        p = param[i]
        g = _l2_gradient(grad[i], p, s, f)
        sq = s.alpha * square_avg[i] + s.one_minus_alpha * (g * g)
        square_avg[i] = sq
        if f.centered:
            ga = s.alpha * grad_avg[i] + s.one_minus_alpha * g
            grad_avg[i] = ga
            avg = np.sqrt(sq - ga * ga) + s.eps
        else:
            avg = np.sqrt(sq) + s.eps
        if f.momentum:
            buf = s.momentum * momentum_buffer[i] + g / avg
            momentum_buffer[i] = buf
            param[i] = p - s.lr * buf
        else:
            param[i] = p - s.lr * (g / avg)


@_jit
def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, s, f):
    for i in range(param.size):
        p = param[i]
        g = _l2_gradient(grad[i], p, s, f)
        if f.decoupled_weight_decay:
            p = p * s.one_minus_lr_weight_decay
        m, v = _adam_moments(exp_avg, exp_avg_sq, i, g, s)
        if f.amsgrad:
            v = _maximum(max_exp_avg_sq[i], v)
            max_exp_avg_sq[i] = v
        denom = np.sqrt(v) * s.inv_bias_correction2_sqrt + s.eps
        param[i] = p - s.step_size * (m / denom)


@_jit
def adamax(param, grad, exp_avg, exp_inf, s, f):
    for i in range(param.size):
        p = param[i]
        g = _l2_gradient(grad[i], p, s, f)
        m = s.beta1 * exp_avg[i] + s.one_minus_beta1 * g
        u = _maximum(s.beta2 * exp_inf[i], np.abs(g) + s.eps)
        exp_avg[i] = m
        exp_inf[i] = u
        param[i] = p - s.clr * (m / u)


@_jit
def adadelta(param, grad, square_avg, acc_delta, s, f):
    for i in range(param.size):
        p = param[i]
        g = _l2_gradient(grad[i], p, s, f)
        sq = s.rho * square_avg[i] + s.one_minus_rho * (g * g)
        square_avg[i] = sq
        acc = acc_delta[i]
        delta = np.sqrt(acc + s.eps) / np.sqrt(sq + s.eps) * g
        acc_delta[i] = s.rho * acc + s.one_minus_rho * (delta * delta)
        param[i] = p - s.lr * delta


@_jit
def radam(param, grad, exp_avg, exp_avg_sq, s, f):
    for i in range(param.size):
        p = param[i]
        g = _l2_gradient(grad[i], p, s, f)
        if f.decoupled_weight_decay:
            p = p * s.one_minus_lr_weight_decay
        m, v = _adam_moments(exp_avg, exp_avg_sq, i, g, s)
        if f.rectified:
            param[i] = p - s.step_size * (m / (np.sqrt(v) + s.eps))
        else:
            param[i] = p - s.step_size * m


@_jit
def nadam(param, grad, exp_avg, exp_avg_sq, s, f):
    for i in range(param.size):
        p = param[i]
        g = _l2_gradient(grad[i], p, s, f)
        if f.decoupled_weight_decay:
            p = p * s.one_minus_lr_weight_decay
        m, v = _adam_moments(exp_avg, exp_avg_sq, i, g, s)
        denom = np.sqrt(v / s.bias_correction2) + s.eps
        p = p - s.grad_step * (g / denom)
        param[i] = p - s.exp_avg_step * (m / denom)


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
    one = param.dtype.type(1)
    for i in range(param.size):
        p = param[i]
        g = -grad[i] if f.maximize else grad[i]
        m = exp_avg[i]
        c = s.beta1 * m + s.one_minus_beta1 * g
        if f.weight_decay:
            p = p * s.decay_factor
        param[i] = p - s.lr * _sign(c, one)
        exp_avg[i] = s.beta2 * m + s.one_minus_beta2 * g


@_jit
def _minimum(a, b):
    """np.minimum of two elements: a if smaller or NaN, else b (so min(-0, +0) is +0, the second)."""
    return a if (a < b or a != a) else b


@_jit
def asgd(param, grad, ax, s, f):
    for i in range(param.size):
        p = param[i]
        g = _l2_gradient(grad[i], p, s, f)
        p = p * s.one_minus_lambd_eta
        p = p - s.eta * g
        param[i] = p
        if f.averaging:
            a = ax[i]
            ax[i] = a + (p - a) * s.mu
        else:
            ax[i] = p


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
    one = param.dtype.type(1)
    for i in range(param.size):
        g = -grad[i] if f.maximize else grad[i]
        d = g * prev[i]
        factor = s.etaplus if d > 0 else s.etaminus if d < 0 else one
        size = _minimum(_maximum(step_size[i] * factor, s.step_size_min), s.step_size_max)
        step_size[i] = size
        if factor == s.etaminus:
            g = one - one
        prev[i] = g
        param[i] = param[i] - size * _torch_sign(g, one)


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
            p = param[i]
            g = -grad[i] if f.maximize else grad[i]
            m = s.beta1 * exp_avg[i] + s.one_minus_beta1 * g
            v = s.beta2 * exp_avg_sq[i] + s.one_minus_beta2 * (g * g)
            exp_avg[i] = m
            exp_avg_sq[i] = v
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
        p = param[i]
        param[i] = p - scale * _lamb_direction(p, exp_avg[i], exp_avg_sq[i], s, f)


def lamb(param, grad, exp_avg, exp_avg_sq, s, f):
    """Two jitted passes around the host-side trust ratio, as the C++ kernel runs them."""
    param_sq, update_sq = _lamb_first_pass(param, grad, exp_avg, exp_avg_sq, s, f)
    trust = param.dtype.type(_trust_ratio(param_sq, update_sq))
    _lamb_update(param, exp_avg, exp_avg_sq, trust, s, f)
