"""Each rule's host-side math: hyperparameter checks and the per-step scalars.

A rule's ``plan`` function is the only place its scalars are computed. It runs once per step
in Python floats (double); the caller rounds them once to the compute dtype and hands the
same values to every backend. The field order of each ``Scalars`` and ``Flags`` tuple is the
order of the C++ rule's ``S`` enum and ``F`` bits (``cpp/kernels/<rule>.hpp``), and
``states`` is the order of its ``State`` enum.
"""

from __future__ import annotations

import math
import numbers
from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple

import numpy as np


class Plan(NamedTuple):
    scalars: tuple  # the rule's Scalars, in double
    flags: tuple  # the rule's Flags, bools
    states: tuple  # names of the state buffers this step reads and writes
    host_states: Mapping = MappingProxyType({})  # per-param host-side state after this step, by name


class Rule(NamedTuple):
    name: str
    states: tuple  # every state buffer, in kernel slot order
    plan: Callable[..., Plan]
    # A state that does not start at zero -> the hyperparameter holding its starting value.
    initial: Mapping = MappingProxyType({})
    # Per-param state kept on the host like the step count, which the plan takes and returns in
    # Plan.host_states (NAdam's mu_product) -> its value before the first step.
    host_states: Mapping = MappingProxyType({})


# --- hyperparameter checks, raising ValueError("Invalid <name>: ...") like torch.optim ---

def type_name(value):
    """The type of ``value`` as a user can look it up: ``list``, ``numpy.float32``, ``numpy.bool``
    (NumPy 2 calls its bool ``bool``, so the bare name would read "expected a bool, got bool")."""
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _real(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"Invalid {name}: expected a real number, got {type_name(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"Invalid {name}: {value} (must be finite)")
    return value


def _at_least(name, value, low):
    if type(value) is float and low <= value < math.inf:  # the common case, in one comparison
        return value
    value = _real(name, value)
    if value < low:
        raise ValueError(f"Invalid {name}: {value} (must be >= {low})")
    return value


def _in_unit(name, value):
    if type(value) is float and 0.0 <= value < 1.0:
        return value
    value = _real(name, value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"Invalid {name}: {value} (must be in [0, 1))")
    return value


def _flag(name, value):
    if value is True or value is False:
        return value
    if not isinstance(value, (int, np.bool_)):  # a Python int reads as its truth value, as torch reads flags
        raise TypeError(f"Invalid {name}: expected a bool, got {type_name(value)}")
    return bool(value)


# The plan computes in double, where counts above 2**53 are no longer exact (and 10**400 is not a double).
_MAX_STEP = 2**53


def _step(step):
    if type(step) is int and 1 <= step <= _MAX_STEP:
        return step
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral):
        raise TypeError(f"Invalid step: expected an int (1 for the first step), got {type_name(step)}")
    step = int(step)
    if step < 1:
        raise ValueError(f"Invalid step: {step} (must be >= 1; the first step is 1)")
    if step > _MAX_STEP:
        shown = step if step < 10**30 else f"a {step.bit_length()}-bit int"  # str() of a huge int can itself fail
        raise ValueError(f"Invalid step: {shown} (must be <= 2**53, the last count a double holds exactly)")
    return step


# --- SGD, momentum, Nesterov ---

class SgdScalars(NamedTuple):
    lr: float
    momentum: float
    one_minus_dampening: float
    weight_decay: float


class SgdFlags(NamedTuple):
    maximize: bool
    weight_decay: bool
    momentum: bool
    nesterov: bool
    first_step: bool


def sgd_plan(step, lr, momentum, dampening, nesterov, weight_decay, maximize):
    lr = _at_least("lr", lr, 0.0)
    momentum = _at_least("momentum", momentum, 0.0)
    dampening = _real("dampening", dampening)
    weight_decay = _at_least("weight_decay", weight_decay, 0.0)
    nesterov = _flag("nesterov", nesterov)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("Invalid nesterov: Nesterov momentum requires momentum > 0 and dampening == 0")
    has_momentum = momentum != 0
    first_step = has_momentum and _step(step) == 1
    return Plan(
        SgdScalars(lr, momentum, 1.0 - dampening, weight_decay),
        SgdFlags(_flag("maximize", maximize), weight_decay != 0, has_momentum, nesterov, first_step),
        ("momentum_buffer",) if has_momentum else (),
    )


# --- AdaGrad ---

class AdagradScalars(NamedTuple):
    clr: float
    eps: float
    weight_decay: float


class AdagradFlags(NamedTuple):
    maximize: bool
    weight_decay: bool


def adagrad_plan(step, lr, lr_decay, weight_decay, eps, maximize):
    lr = _at_least("lr", lr, 0.0)
    lr_decay = _at_least("lr_decay", lr_decay, 0.0)
    weight_decay = _at_least("weight_decay", weight_decay, 0.0)
    eps = _at_least("eps", eps, 0.0)
    clr = lr / (1.0 + (_step(step) - 1) * lr_decay)
    return Plan(
        AdagradScalars(clr, eps, weight_decay),
        AdagradFlags(_flag("maximize", maximize), weight_decay != 0),
        ("sum",),
    )


# --- RMSProp ---

class RMSpropScalars(NamedTuple):
    lr: float
    alpha: float
    one_minus_alpha: float
    eps: float
    momentum: float
    weight_decay: float


class RMSpropFlags(NamedTuple):
    maximize: bool
    weight_decay: bool
    centered: bool
    momentum: bool


def rmsprop_plan(lr, alpha, eps, weight_decay, momentum, centered, maximize):
    lr = _at_least("lr", lr, 0.0)
    alpha = _at_least("alpha", alpha, 0.0)
    if alpha > 1.0:
        raise ValueError(f"Invalid alpha: {alpha} (must be in [0, 1])")
    eps = _at_least("eps", eps, 0.0)
    weight_decay = _at_least("weight_decay", weight_decay, 0.0)
    momentum = _at_least("momentum", momentum, 0.0)
    centered = _flag("centered", centered)
    has_momentum = momentum > 0
    return Plan(
        RMSpropScalars(lr, alpha, 1.0 - alpha, eps, momentum, weight_decay),
        RMSpropFlags(_flag("maximize", maximize), weight_decay != 0, centered, has_momentum),
        ("square_avg",) + (("momentum_buffer",) if has_momentum else ()) + (("grad_avg",) if centered else ()),
    )


# --- Adam ---

class AdamScalars(NamedTuple):
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    step_size: float
    inv_bias_correction2_sqrt: float
    eps: float
    weight_decay: float
    one_minus_lr_weight_decay: float


class AdamFlags(NamedTuple):
    maximize: bool
    weight_decay: bool
    amsgrad: bool
    decoupled_weight_decay: bool


def _betas(betas):
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"Invalid betas: expected a pair (beta1, beta2), got {betas!r}")
    return _in_unit("beta1 (betas[0])", betas[0]), _in_unit("beta2 (betas[1])", betas[1])


def _weight_decay(lr, weight_decay, decoupled):
    """torch's two forms of weight decay: L2 (``g += weight_decay * param``) or decoupled
    (``param *= 1 - lr * weight_decay``, AdamW). Returns (L2 on, decoupled on, 1 - lr * weight_decay)."""
    on = weight_decay != 0
    decoupled = _flag("decoupled_weight_decay", decoupled)
    return on and not decoupled, on and decoupled, 1.0 - lr * weight_decay


def adam_plan(step, lr, betas, eps, weight_decay, amsgrad, maximize, bias_correction, decoupled_weight_decay):
    lr = _at_least("lr", lr, 0.0)
    beta1, beta2 = _betas(betas)
    eps = _at_least("eps", eps, 0.0)
    weight_decay = _at_least("weight_decay", weight_decay, 0.0)
    step = _step(step)
    amsgrad = _flag("amsgrad", amsgrad)
    l2, decoupled, one_minus_lr_weight_decay = _weight_decay(lr, weight_decay, decoupled_weight_decay)
    if _flag("bias_correction", bias_correction):
        step_size = lr / (1.0 - beta1**step)
        inv_bias_correction2_sqrt = 1.0 / math.sqrt(1.0 - beta2**step)
    else:
        step_size, inv_bias_correction2_sqrt = lr, 1.0
    return Plan(
        AdamScalars(beta1, 1.0 - beta1, beta2, 1.0 - beta2, step_size, inv_bias_correction2_sqrt, eps, weight_decay,
                    one_minus_lr_weight_decay),
        AdamFlags(_flag("maximize", maximize), l2, amsgrad, decoupled),
        ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ()),
    )


# --- Adamax ---

class AdamaxScalars(NamedTuple):
    beta1: float
    one_minus_beta1: float
    beta2: float
    eps: float
    clr: float
    weight_decay: float


class AdamaxFlags(NamedTuple):
    maximize: bool
    weight_decay: bool


def adamax_plan(step, lr, betas, eps, weight_decay, maximize):
    lr = _at_least("lr", lr, 0.0)
    beta1, beta2 = _betas(betas)
    eps = _at_least("eps", eps, 0.0)
    weight_decay = _at_least("weight_decay", weight_decay, 0.0)
    clr = lr / (1.0 - beta1**_step(step))
    return Plan(
        AdamaxScalars(beta1, 1.0 - beta1, beta2, eps, clr, weight_decay),
        AdamaxFlags(_flag("maximize", maximize), weight_decay != 0),
        ("exp_avg", "exp_inf"),
    )


# --- Adadelta ---

class AdadeltaScalars(NamedTuple):
    lr: float
    rho: float
    one_minus_rho: float
    eps: float
    weight_decay: float


class AdadeltaFlags(NamedTuple):
    maximize: bool
    weight_decay: bool


def adadelta_plan(lr, rho, eps, weight_decay, maximize):
    lr = _at_least("lr", lr, 0.0)
    rho = _at_least("rho", rho, 0.0)
    if rho > 1.0:
        raise ValueError(f"Invalid rho: {rho} (must be in [0, 1])")
    eps = _at_least("eps", eps, 0.0)
    weight_decay = _at_least("weight_decay", weight_decay, 0.0)
    return Plan(
        AdadeltaScalars(lr, rho, 1.0 - rho, eps, weight_decay),
        AdadeltaFlags(_flag("maximize", maximize), weight_decay != 0),
        ("square_avg", "acc_delta"),
    )


# --- RAdam ---

class RAdamScalars(NamedTuple):
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    step_size: float
    eps: float
    weight_decay: float
    one_minus_lr_weight_decay: float


class RAdamFlags(NamedTuple):
    maximize: bool
    weight_decay: bool
    decoupled_weight_decay: bool
    rectified: bool


def radam_plan(step, lr, betas, eps, weight_decay, decoupled_weight_decay, maximize):
    lr = _at_least("lr", lr, 0.0)
    beta1, beta2 = _betas(betas)
    eps = _at_least("eps", eps, 0.0)
    weight_decay = _at_least("weight_decay", weight_decay, 0.0)
    step = _step(step)
    l2, decoupled, one_minus_lr_weight_decay = _weight_decay(lr, weight_decay, decoupled_weight_decay)
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    # The length of the approximated simple moving average, as torch computes it.
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2**step) / bias_correction2
    rectified = rho_t > 5.0
    if rectified:
        rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        step_size = lr * rect * math.sqrt(bias_correction2) / bias_correction1
    else:
        step_size = lr / bias_correction1
    return Plan(
        RAdamScalars(beta1, 1.0 - beta1, beta2, 1.0 - beta2, step_size, eps, weight_decay, one_minus_lr_weight_decay),
        RAdamFlags(_flag("maximize", maximize), l2, decoupled, rectified),
        ("exp_avg", "exp_avg_sq"),
    )


# --- NAdam ---

class NAdamScalars(NamedTuple):
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    bias_correction2: float
    grad_step: float
    exp_avg_step: float
    eps: float
    weight_decay: float
    one_minus_lr_weight_decay: float


class NAdamFlags(NamedTuple):
    maximize: bool
    weight_decay: bool
    decoupled_weight_decay: bool


def nadam_plan(step, mu_product, lr, betas, eps, weight_decay, momentum_decay, decoupled_weight_decay, maximize):
    """``mu_product`` is mu_1 * ... * mu_{step-1} (1 before the first step); Plan.host_states
    carries the product through mu_step, for the next step."""
    lr = _at_least("lr", lr, 0.0)
    beta1, beta2 = _betas(betas)
    eps = _at_least("eps", eps, 0.0)
    weight_decay = _at_least("weight_decay", weight_decay, 0.0)
    momentum_decay = _at_least("momentum_decay", momentum_decay, 0.0)
    mu_product = _at_least("mu_product", mu_product, 0.0)
    if mu_product > 1.0:
        raise ValueError(f"Invalid mu_product: {mu_product} (must be in [0, 1]; 1 before the first step)")
    step = _step(step)
    l2, decoupled, one_minus_lr_weight_decay = _weight_decay(lr, weight_decay, decoupled_weight_decay)
    # The momentum schedule mu_t of Dozat (2016), with torch's 0.96 base.
    mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))
    mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * momentum_decay)))
    mu_product *= mu
    return Plan(
        NAdamScalars(beta1, 1.0 - beta1, beta2, 1.0 - beta2, 1.0 - beta2**step, lr * (1.0 - mu) / (1.0 - mu_product),
                     lr * mu_next / (1.0 - mu_product * mu_next), eps, weight_decay, one_minus_lr_weight_decay),
        NAdamFlags(_flag("maximize", maximize), l2, decoupled),
        ("exp_avg", "exp_avg_sq"),
        {"mu_product": mu_product},
    )



# --- Lion ---

class LionScalars(NamedTuple):
    lr: float
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    decay_factor: float  # 1 - lr * weight_decay


class LionFlags(NamedTuple):
    maximize: bool
    weight_decay: bool


def lion_plan(lr, betas, weight_decay, maximize):
    lr = _at_least("lr", lr, 0.0)
    beta1, beta2 = _betas(betas)
    weight_decay = _at_least("weight_decay", weight_decay, 0.0)
    return Plan(
        LionScalars(lr, beta1, 1.0 - beta1, beta2, 1.0 - beta2, 1.0 - lr * weight_decay),
        LionFlags(_flag("maximize", maximize), weight_decay != 0),
        ("exp_avg",),
    )


# --- LAMB ---

class LambScalars(NamedTuple):
    """The planned scalars; the kernel appends the per-tensor trust ratio after ``lr``."""

    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    inv_bias_correction1: float
    inv_bias_correction2_sqrt: float
    eps: float
    weight_decay: float
    lr: float


class LambFlags(NamedTuple):
    maximize: bool
    weight_decay: bool


def lamb_plan(step, lr, betas, eps, weight_decay, maximize, bias_correction):
    lr = _at_least("lr", lr, 0.0)
    beta1, beta2 = _betas(betas)
    eps = _at_least("eps", eps, 0.0)
    weight_decay = _at_least("weight_decay", weight_decay, 0.0)
    step = _step(step)
    if _flag("bias_correction", bias_correction):
        inv_bias_correction1 = 1.0 / (1.0 - beta1**step)
        inv_bias_correction2_sqrt = 1.0 / math.sqrt(1.0 - beta2**step)
    else:
        inv_bias_correction1, inv_bias_correction2_sqrt = 1.0, 1.0
    return Plan(
        LambScalars(beta1, 1.0 - beta1, beta2, 1.0 - beta2, inv_bias_correction1, inv_bias_correction2_sqrt, eps,
                    weight_decay, lr),
        LambFlags(_flag("maximize", maximize), weight_decay != 0),
        ("exp_avg", "exp_avg_sq"),
    )


RULES = {
    rule.name: rule
    for rule in (
        Rule("sgd", ("momentum_buffer",), sgd_plan),
        Rule("adagrad", ("sum",), adagrad_plan, initial=MappingProxyType({"sum": "initial_accumulator_value"})),
        Rule("rmsprop", ("square_avg", "momentum_buffer", "grad_avg"), rmsprop_plan),
        Rule("adam", ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), adam_plan),
        Rule("adamax", ("exp_avg", "exp_inf"), adamax_plan),
        Rule("adadelta", ("square_avg", "acc_delta"), adadelta_plan),
        Rule("radam", ("exp_avg", "exp_avg_sq"), radam_plan),
        Rule("nadam", ("exp_avg", "exp_avg_sq"), nadam_plan, host_states=MappingProxyType({"mu_product": 1.0})),
        Rule("lion", ("exp_avg",), lion_plan),
        Rule("lamb", ("exp_avg", "exp_avg_sq"), lamb_plan),
    )
}
