"""Numba backend: the reference's element sequence as JIT-compiled loops.

No fastmath (it would contract and reassociate), and every scalar arrives as a NumPy scalar
of the compute dtype: a Python float would be float64 and silently promote the arithmetic.
``np.sqrt`` (not ``math.sqrt``) keeps float32 in float32. States a step does not use arrive
as empty arrays. Arrays are 1-D views of the caller's memory.
"""

import numpy as np
from numba import njit

_jit = njit(cache=True, nogil=True, fastmath=False)


@_jit
def _maximum(a, b):
    """np.maximum of two elements: a if greater or NaN, else b (so max(-0, +0) is +0, the second)."""
    return a if (a > b or a != a) else b


@_jit
def sgd(param, grad, momentum_buffer, s, f):
    for i in range(param.size):
        p = param[i]
        g = -grad[i] if f.maximize else grad[i]
        if f.weight_decay:
            g = g + s.weight_decay * p
        if f.momentum:
            buf = g if f.first_step else s.momentum * momentum_buffer[i] + s.one_minus_dampening * g
            momentum_buffer[i] = buf
            g = g + s.momentum * buf if f.nesterov else buf
        param[i] = p - s.lr * g


@_jit
def adagrad(param, grad, sum, s, f):
    for i in range(param.size):
        p = param[i]
        g = -grad[i] if f.maximize else grad[i]
        if f.weight_decay:
            g = g + s.weight_decay * p
        acc = sum[i] + g * g
        sum[i] = acc
        std = np.sqrt(acc) + s.eps
        param[i] = p - s.clr * (g / std)


@_jit
def rmsprop(param, grad, square_avg, momentum_buffer, grad_avg, s, f):
    for i in range(param.size):
        p = param[i]
        g = -grad[i] if f.maximize else grad[i]
        if f.weight_decay:
            g = g + s.weight_decay * p
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
        g = -grad[i] if f.maximize else grad[i]
        if f.weight_decay:
            g = g + s.weight_decay * p
        if f.decoupled_weight_decay:
            p = p * s.one_minus_lr_weight_decay
        m = s.beta1 * exp_avg[i] + s.one_minus_beta1 * g
        v = s.beta2 * exp_avg_sq[i] + s.one_minus_beta2 * (g * g)
        exp_avg[i] = m
        exp_avg_sq[i] = v
        if f.amsgrad:
            v = _maximum(max_exp_avg_sq[i], v)
            max_exp_avg_sq[i] = v
        denom = np.sqrt(v) * s.inv_bias_correction2_sqrt + s.eps
        param[i] = p - s.step_size * (m / denom)


@_jit
def adamax(param, grad, exp_avg, exp_inf, s, f):
    for i in range(param.size):
        p = param[i]
        g = -grad[i] if f.maximize else grad[i]
        if f.weight_decay:
            g = g + s.weight_decay * p
        m = s.beta1 * exp_avg[i] + s.one_minus_beta1 * g
        u = _maximum(s.beta2 * exp_inf[i], np.abs(g) + s.eps)
        exp_avg[i] = m
        exp_inf[i] = u
        param[i] = p - s.clr * (m / u)


@_jit
def adadelta(param, grad, square_avg, acc_delta, s, f):
    for i in range(param.size):
        p = param[i]
        g = -grad[i] if f.maximize else grad[i]
        if f.weight_decay:
            g = g + s.weight_decay * p
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
        g = -grad[i] if f.maximize else grad[i]
        if f.weight_decay:
            g = g + s.weight_decay * p
        if f.decoupled_weight_decay:
            p = p * s.one_minus_lr_weight_decay
        m = s.beta1 * exp_avg[i] + s.one_minus_beta1 * g
        v = s.beta2 * exp_avg_sq[i] + s.one_minus_beta2 * (g * g)
        exp_avg[i] = m
        exp_avg_sq[i] = v
        if f.rectified:
            param[i] = p - s.step_size * (m / (np.sqrt(v) + s.eps))
        else:
            param[i] = p - s.step_size * m


@_jit
def nadam(param, grad, exp_avg, exp_avg_sq, s, f):
    for i in range(param.size):
        p = param[i]
        g = -grad[i] if f.maximize else grad[i]
        if f.weight_decay:
            g = g + s.weight_decay * p
        if f.decoupled_weight_decay:
            p = p * s.one_minus_lr_weight_decay
        m = s.beta1 * exp_avg[i] + s.one_minus_beta1 * g
        v = s.beta2 * exp_avg_sq[i] + s.one_minus_beta2 * (g * g)
        exp_avg[i] = m
        exp_avg_sq[i] = v
        denom = np.sqrt(v / s.bias_correction2) + s.eps
        p = p - s.grad_step * (g / denom)
        param[i] = p - s.exp_avg_step * (m / denom)
