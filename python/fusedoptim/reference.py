"""The executable specification: one plain NumPy function per rule, on one tensor, in place.

Every backend performs exactly these operations, in this order, each rounded to the compute
dtype (the arrays' dtype; the scalars ``s`` arrive already rounded to it), so that all
backends agree bit for bit. Operands stored in another dtype (bfloat16, float16, float32 states
of float64 params) arrive widened to the compute dtype and are stored back rounded, once per
step (``_storage.widened``, ``_storage.narrowed``). ``s`` and ``f`` are the rule's Scalars and Flags from
``fusedoptim._rules``; states a step does not use arrive as ``None``. Each function's docstring
is the rule's formula, which every public function and class of the rule repeats (``formula``).
"""

import math

import numpy as np

from ._storage import stored


def formula(rule):
    """The update of ``rule`` (a name in the registry) as its docstring here states it, without the summary line."""
    return globals()[rule].__doc__.split("\n", 1)[1]


def sgd(param, grad, momentum_buffer, s, f):
    """SGD with momentum (heavy ball) and Nesterov, PyTorch's form::

        g   = -grad if maximize else grad
        g   = g + weight_decay * param                        (if weight_decay != 0)
        buf = g                                               (first step)
        buf = momentum * buf + (1 - dampening) * g            (later steps)
        g   = g + momentum * buf   if nesterov   else   buf   (if momentum != 0)
        param = param - lr * g
    """
    g = -grad if f.maximize else grad
    if f.weight_decay:
        g = g + s.weight_decay * param
    if f.momentum:
        if f.first_step:
            momentum_buffer[...] = g
        else:
            momentum_buffer[...] = s.momentum * momentum_buffer + s.one_minus_dampening * g
        g = g + s.momentum * momentum_buffer if f.nesterov else momentum_buffer
    param[...] = param - s.lr * g


def adagrad(param, grad, sum, s, f):
    """AdaGrad::

        g     = -grad if maximize else grad
        g     = g + weight_decay * param                  (if weight_decay != 0)
        sum   = sum + g * g
        param = param - clr * (g / (sqrt(sum) + eps)),    clr = lr / (1 + (step - 1) * lr_decay)
    """
    g = -grad if f.maximize else grad
    if f.weight_decay:
        g = g + s.weight_decay * param
    sum[...] = sum + g * g
    std = np.sqrt(sum) + s.eps
    param[...] = param - s.clr * (g / std)


def rmsprop(param, grad, square_avg, momentum_buffer, grad_avg, s, f):
    """RMSProp, optionally centered and with momentum::

        g          = -grad if maximize else grad
        g          = g + weight_decay * param                       (if weight_decay != 0)
        square_avg = alpha * square_avg + (1 - alpha) * (g * g)
        grad_avg   = alpha * grad_avg + (1 - alpha) * g             (if centered)
        avg        = sqrt(square_avg - grad_avg * grad_avg) + eps   (centered)
                     sqrt(square_avg) + eps                         (otherwise)
        buf        = momentum * buf + g / avg;  param = param - lr * buf     (if momentum > 0)
        param      = param - lr * (g / avg)                                  (otherwise)
    """
    g = -grad if f.maximize else grad
    if f.weight_decay:
        g = g + s.weight_decay * param
    square_avg[...] = s.alpha * square_avg + s.one_minus_alpha * (g * g)
    if f.centered:
        grad_avg[...] = s.alpha * grad_avg + s.one_minus_alpha * g
        avg = np.sqrt(square_avg - grad_avg * grad_avg) + s.eps
    else:
        avg = np.sqrt(square_avg) + s.eps
    if f.momentum:
        momentum_buffer[...] = s.momentum * momentum_buffer + g / avg
        param[...] = param - s.lr * momentum_buffer
    else:
        param[...] = param - s.lr * (g / avg)


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, s, f):
    """Adam (Kingma & Ba, 2015) with AMSGrad and L2 or decoupled (AdamW) weight decay::

        g          = -grad if maximize else grad
        g          = g + weight_decay * param                          (if weight_decay != 0, L2)
        param      = param * (1 - lr * weight_decay)                   (if weight_decay != 0, decoupled)
        exp_avg    = beta1 * exp_avg + (1 - beta1) * g
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * (g * g)
        v          = max(max_exp_avg_sq, exp_avg_sq) if amsgrad else exp_avg_sq
        param      = param - step_size * (exp_avg / (sqrt(v) * inv_bias_correction2_sqrt + eps))

    with step_size = lr / (1 - beta1^step) and inv_bias_correction2_sqrt = 1 / sqrt(1 - beta2^step),
    or lr and 1 without bias correction.
    """
    g = -grad if f.maximize else grad
    if f.weight_decay:
        g = g + s.weight_decay * param
    p = param * s.one_minus_lr_weight_decay if f.decoupled_weight_decay else param
    exp_avg[...] = s.beta1 * exp_avg + s.one_minus_beta1 * g
    exp_avg_sq[...] = s.beta2 * exp_avg_sq + s.one_minus_beta2 * (g * g)
    v = exp_avg_sq
    if f.amsgrad:
        max_exp_avg_sq[...] = np.maximum(max_exp_avg_sq, exp_avg_sq)
        v = max_exp_avg_sq
    denom = np.sqrt(v) * s.inv_bias_correction2_sqrt + s.eps
    param[...] = p - s.step_size * (exp_avg / denom)


def adamax(param, grad, exp_avg, exp_inf, s, f):
    """Adamax (Kingma & Ba, 2015, section 7.1), Adam with the infinity norm::

        g       = -grad if maximize else grad
        g       = g + weight_decay * param                 (if weight_decay != 0)
        exp_avg = beta1 * exp_avg + (1 - beta1) * g
        exp_inf = max(beta2 * exp_inf, |g| + eps)          (NaN if either is NaN)
        param   = param - clr * (exp_avg / exp_inf),       clr = lr / (1 - beta1^step)
    """
    g = -grad if f.maximize else grad
    if f.weight_decay:
        g = g + s.weight_decay * param
    exp_avg[...] = s.beta1 * exp_avg + s.one_minus_beta1 * g
    exp_inf[...] = np.maximum(s.beta2 * exp_inf, np.abs(g) + s.eps)
    param[...] = param - s.clr * (exp_avg / exp_inf)


def adadelta(param, grad, square_avg, acc_delta, s, f):
    """Adadelta (Zeiler, 2012)::

        g          = -grad if maximize else grad
        g          = g + weight_decay * param                          (if weight_decay != 0)
        square_avg = rho * square_avg + (1 - rho) * (g * g)
        delta      = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g
        acc_delta  = rho * acc_delta + (1 - rho) * (delta * delta)
        param      = param - lr * delta
    """
    g = -grad if f.maximize else grad
    if f.weight_decay:
        g = g + s.weight_decay * param
    square_avg[...] = s.rho * square_avg + s.one_minus_rho * (g * g)
    delta = np.sqrt(acc_delta + s.eps) / np.sqrt(square_avg + s.eps) * g
    acc_delta[...] = s.rho * acc_delta + s.one_minus_rho * (delta * delta)
    param[...] = param - s.lr * delta


def radam(param, grad, exp_avg, exp_avg_sq, s, f):
    """RAdam, rectified Adam (Liu et al., 2020), with L2 or decoupled weight decay::

        g          = -grad if maximize else grad
        g          = g + weight_decay * param                        (if weight_decay != 0, L2)
        param      = param * (1 - lr * weight_decay)                 (if weight_decay != 0, decoupled)
        exp_avg    = beta1 * exp_avg + (1 - beta1) * g
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * (g * g)
        param      = param - step_size * (exp_avg / (sqrt(exp_avg_sq) + eps))    (if rho_t > 5)
        param      = param - step_size * exp_avg                                 (otherwise)

    with rho_inf = 2 / (1 - beta2) - 1, rho_t = rho_inf - 2 step beta2^step / (1 - beta2^step),
    r_t = sqrt((rho_t - 4) (rho_t - 2) rho_inf / ((rho_inf - 4) (rho_inf - 2) rho_t)), and
    step_size = lr r_t sqrt(1 - beta2^step) / (1 - beta1^step) if rho_t > 5, else lr / (1 - beta1^step).
    """
    g = -grad if f.maximize else grad
    if f.weight_decay:
        g = g + s.weight_decay * param
    p = param * s.one_minus_lr_weight_decay if f.decoupled_weight_decay else param
    exp_avg[...] = s.beta1 * exp_avg + s.one_minus_beta1 * g
    exp_avg_sq[...] = s.beta2 * exp_avg_sq + s.one_minus_beta2 * (g * g)
    if f.rectified:
        param[...] = p - s.step_size * (exp_avg / (np.sqrt(exp_avg_sq) + s.eps))
    else:
        param[...] = p - s.step_size * exp_avg


def nadam(param, grad, exp_avg, exp_avg_sq, s, f):
    """NAdam, Adam with Nesterov momentum (Dozat, 2016), with L2 or decoupled weight decay::

        g          = -grad if maximize else grad
        g          = g + weight_decay * param                        (if weight_decay != 0, L2)
        param      = param * (1 - lr * weight_decay)                 (if weight_decay != 0, decoupled)
        exp_avg    = beta1 * exp_avg + (1 - beta1) * g
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * (g * g)
        denom      = sqrt(exp_avg_sq / (1 - beta2^step)) + eps
        param      = param - grad_step * (g / denom)
        param      = param - exp_avg_step * (exp_avg / denom)

    with mu_t = beta1 (1 - 0.5 * 0.96^(t * momentum_decay)), mu_product = mu_1 ... mu_step,
    grad_step = lr (1 - mu_step) / (1 - mu_product) and
    exp_avg_step = lr mu_{step+1} / (1 - mu_product mu_{step+1}).
    """
    g = -grad if f.maximize else grad
    if f.weight_decay:
        g = g + s.weight_decay * param
    p = param * s.one_minus_lr_weight_decay if f.decoupled_weight_decay else param
    exp_avg[...] = s.beta1 * exp_avg + s.one_minus_beta1 * g
    exp_avg_sq[...] = s.beta2 * exp_avg_sq + s.one_minus_beta2 * (g * g)
    denom = np.sqrt(exp_avg_sq / s.bias_correction2) + s.eps
    p = p - s.grad_step * (g / denom)
    param[...] = p - s.exp_avg_step * (exp_avg / denom)


def lion(param, grad, exp_avg, s, f):
    """Lion (Chen et al., 2023), decoupled weight decay in the published implementation's order::

        g       = -grad if maximize else grad
        c       = beta1 * exp_avg + (1 - beta1) * g
        param   = param * decay_factor                 (if weight_decay != 0)
        param   = param - lr * sign(c)
        exp_avg = beta2 * exp_avg + (1 - beta2) * g

    with decay_factor = 1 - lr * weight_decay, so that param - lr * (sign(c) + weight_decay * param)
    holds up to rounding; sign is np.sign (+0.0 for either zero, NaN stays NaN).
    """
    g = -grad if f.maximize else grad
    c = s.beta1 * exp_avg + s.one_minus_beta1 * g
    if f.weight_decay:
        param[...] = param * s.decay_factor
    param[...] = param - s.lr * np.sign(c)
    exp_avg[...] = s.beta2 * exp_avg + s.one_minus_beta2 * g


BLOCK, LANES = 1024, 16  # cpp/reduction.hpp: kBlock, kLanes (checked against the extension at import)


def _sum_of_squares(x):
    """sum(x**2) in float64, in the one order every backend and thread count uses:

    element i (of x flattened) adds its square to lane i % LANES of block i // BLOCK, in index
    order; a block's lanes fold in halves (lane j += lane j + 8, then + 4, + 2, + 1); block results
    combine pairwise in rounds, (b0 + b1), (b2 + b3), ..., an odd last one carried, until one is left.
    """
    wide = np.ravel(x).astype(np.float64)
    squares = wide * wide
    blocks = -(-squares.size // BLOCK)
    # Zero padding changes no sum: s + 0.0 == s for every s >= +0, Inf and NaN.
    rows = np.zeros(blocks * BLOCK)
    rows[:squares.size] = squares
    rows = rows.reshape(blocks, BLOCK // LANES, LANES)
    lanes = np.zeros((blocks, LANES))
    for r in range(BLOCK // LANES):
        lanes = lanes + rows[:, r]
    while lanes.shape[1] > 1:
        half = lanes.shape[1] // 2
        lanes = lanes[:, :half] + lanes[:, half:]
    return _combine_pairwise(lanes[:, 0])


def _combine_pairwise(sums):
    """Sums combined pairwise in rounds, (x0 + x1), (x2 + x3), ..., an odd last one carried to the
    next round, until one is left (0.0 when there are none): a tensor's blocks, and a list's tensors."""
    results = np.asarray(sums, dtype=np.float64)
    while results.size > 1:
        paired = results.size // 2 * 2
        results = np.concatenate([results[0:paired:2] + results[1:paired:2], results[paired:]])
    return float(results[0]) if results.size else 0.0


def _global_sum_of_squares(arrays):
    """sum(x**2) over every element of every array, in float64: each array's sum in
    ``_sum_of_squares``'s order, then the arrays' sums combined pairwise, in list order."""
    return _combine_pairwise([_sum_of_squares(a) for a in arrays])


def clip_factor(max_norm, total_norm):
    """Global-norm gradient clipping, as ``torch.nn.utils.clip_grad_norm_``::

        total_norm = sqrt(sum of grad * grad over every element of every grad)
        coef       = max_norm / (total_norm + 1e-6)
        grad       = grad * coef            (every grad; only if coef < 1, or NaN)

    in float64 (the squares summed in ``_global_sum_of_squares``'s order) but the last line, whose
    coef is rounded once to the grad's dtype. Returns coef, or None when the grads stay as they are.
    """
    coef = max_norm / (total_norm + 1e-6)
    return None if coef >= 1.0 else coef


def _scale(array, factor):
    """``clip_factor``'s last line, in place."""
    array[...] = array * array.dtype.type(factor)


def _trust_ratio(param_sq, update_sq):
    """||param|| / ||u|| from the sums of squares, in double; 1 if either norm is 0."""
    param_norm, update_norm = math.sqrt(param_sq), math.sqrt(update_sq)
    return param_norm / update_norm if param_norm != 0 and update_norm != 0 else 1.0


def lamb(param, grad, exp_avg, exp_avg_sq, s, f):
    """LAMB (You et al., 2019): Adam's direction and weight decay, scaled per tensor by a trust ratio::

        g          = -grad if maximize else grad
        exp_avg    = beta1 * exp_avg + (1 - beta1) * g
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * (g * g)
        u          = inv_bias_correction1 * (exp_avg / (sqrt(exp_avg_sq) * inv_bias_correction2_sqrt + eps))
        u          = u + weight_decay * param                      (if weight_decay != 0)
        trust      = ||param|| / ||u||, or 1 if either norm is 0   (whole tensor, float64, rounded once)
        param      = param - (lr * trust) * u

    with inv_bias_correction1 = 1 / (1 - beta1^step) and inv_bias_correction2_sqrt =
    1 / sqrt(1 - beta2^step), or 1 and 1 without bias correction. Two passes: the first computes
    the moments and trust; the second recomputes u from the moments as stored (rounded to their
    storage dtype, when that is narrower than the compute dtype) to step param. The norms are of
    param before the step; their sums of squares follow ``_sum_of_squares``'s order. NaN or Inf anywhere in
    param or u makes trust NaN or Inf, and so the whole tensor's step.
    """
    lamb_update(param, exp_avg, exp_avg_sq, lamb_sums(param, grad, exp_avg, exp_avg_sq, s, f), s, f)


# LAMB's two passes, apart: a tensor sharded across processes sums its shard's squares, the
# processes add their sums, and each steps its shard with the whole tensor's trust ratio.

def _lamb_direction(param, exp_avg, exp_avg_sq, s, f):
    u = s.inv_bias_correction1 * (exp_avg / (np.sqrt(exp_avg_sq) * s.inv_bias_correction2_sqrt + s.eps))
    return u + s.weight_decay * param if f.weight_decay else u


def lamb_sums(param, grad, exp_avg, exp_avg_sq, s, f):
    """LAMB's first pass: updates the moments; returns the sums of squares of param and u."""
    g = -grad if f.maximize else grad
    exp_avg[...] = s.beta1 * exp_avg + s.one_minus_beta1 * g
    exp_avg_sq[...] = s.beta2 * exp_avg_sq + s.one_minus_beta2 * (g * g)
    return _sum_of_squares(param), _sum_of_squares(_lamb_direction(param, exp_avg, exp_avg_sq, s, f))


def lamb_update(param, exp_avg, exp_avg_sq, sums, s, f):
    """LAMB's second pass: the trust ratio from the (param, u) sums of squares, and the step. It
    reads the moments back as stored, which in a dtype narrower than the compute dtype is not
    quite as computed."""
    trust = param.dtype.type(_trust_ratio(*sums))
    param[...] = param - (s.lr * trust) * _lamb_direction(param, stored(exp_avg), stored(exp_avg_sq), s, f)


def asgd(param, grad, ax, s, f):
    """ASGD, averaged SGD (Polyak & Juditsky, 1992), torch's form::

        g     = -grad if maximize else grad
        g     = g + weight_decay * param                  (if weight_decay != 0)
        param = param * (1 - lambd * eta)
        param = param - eta * g
        ax    = ax + (param - ax) * mu                    (if mu != 1)
        ax    = param                                     (otherwise)

    with eta and mu kept per param on the host, from the param's previous step (lr and 1 before
    its first): after step t, eta = lr / (1 + lambd * lr * t)^alpha and mu = 1 / max(1, t - t0).
    """
    g = -grad if f.maximize else grad
    if f.weight_decay:
        g = g + s.weight_decay * param
    p = param * s.one_minus_lambd_eta
    param[...] = p - s.eta * g
    if f.averaging:
        ax[...] = ax + (param - ax) * s.mu
    else:
        ax[...] = param


def rprop(param, grad, prev, step_size, s, f):
    """Rprop, resilient backpropagation (Riedmiller & Braun, 1993), torch's form::

        g         = -grad if maximize else grad
        factor    = etaplus    where g * prev > 0
                    etaminus   where g * prev < 0
                    1          elsewhere (0, or NaN: torch's sign of NaN is 0)
        step_size = min(max(step_size * factor, step_size_min), step_size_max)   (NaN stays NaN)
        g         = 0 where factor == etaminus               (the sign flipped: no step, and no flip next time)
        prev      = g
        param     = param - step_size * sign(g)              (sign(NaN) = 0, as torch's)

    step_size starts at lr.
    """
    g = -grad if f.maximize else grad
    d = g * prev
    one, zero = param.dtype.type(1), param.dtype.type(0)
    factor = np.where(d > 0, s.etaplus, np.where(d < 0, s.etaminus, one))
    step_size[...] = np.minimum(np.maximum(step_size * factor, s.step_size_min), s.step_size_max)
    g = np.where(factor == s.etaminus, zero, g)
    prev[...] = g
    param[...] = param - step_size * np.where(g > 0, one, np.where(g < 0, -one, zero))
