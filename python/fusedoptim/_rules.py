"""The rule registry: every fact about a rule, once.

A ``Rule`` is one kernel's host side. Its ``plan`` function is the one place its hyperparameters
are named, defaulted, checked and turned into per-step scalars: the plan's signature *is* the
rule's hyperparameters with their defaults (positional ones first, as torch.optim orders them),
and every public layer reads it (see ``_api``). ``states`` names the state buffers in the kernel's
slot order. A plan runs once per step in Python floats (double); the caller rounds the scalars
once to the compute dtype and hands the same values to every backend. The field order of each
``Scalars`` and ``Flags`` tuple is the order of the C++ rule's ``S`` enum and ``F`` bits
(``cpp/kernels/<rule>.hpp``); the extension's own account of them is checked at import.

An ``OptimizerSpec`` is a public optimizer over a rule: its class name (``Adam``), the rule, the
hyperparameters it pins (AdamW is Adam with ``decoupled_weight_decay=True``) or defaults
differently, whether ``torch.optim`` has a twin, and the words of its docstring.
"""

from __future__ import annotations

import inspect
import math
import numbers
from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple

import numpy as np


class Plan(NamedTuple):
    scalars: tuple  # the rule's Scalars, in double
    flags: tuple  # the rule's Flags, bools
    uses: tuple  # per state slot: whether this step reads and writes it
    host_states: Mapping = MappingProxyType({})  # per-param host-side state after this step, by name


class State(NamedTuple):
    name: str  # as torch.optim names it in a param's state
    argument: str = ""  # the functional's argument for a list of them (default: name + "s")
    initial: str = ""  # the hyperparameter holding its starting value (default: it starts at zero)
    optional: bool = False  # only some steps use it (the functional argument defaults to None)

    @property
    def arg(self):
        return self.argument or self.name + "s"


class Rule:
    """A kernel's host side: ``plan(step, *host_states, **hyperparameters) -> Plan``. ``sums`` names
    what a two-pass rule sums over each whole tensor between its passes (LAMB's norms).

    A rule that counts steps writes its plan as a ``schedule``: ``schedule(**hyperparameters)``
    checks them and returns ``at(step, *host_states) -> Plan``, which computes only what changes
    from step to step; the plan is ``schedule(**hyperparameters)(step, *host_states)``.

    ``host_states`` maps each per-param host-side state, in the plan's order, to its value before a
    param's first step: a number, or the name of the hyperparameter it starts at (ASGD's ``eta``
    starts at ``lr``), as ``State.initial`` names a buffer's."""

    def __init__(self, name, plan, states, host_states=MappingProxyType({}), sums=(), schedule=None):
        self.name, self.plan, self.states, self.host_states = name, plan, tuple(states), MappingProxyType(host_states)
        self.sums, self.schedule = tuple(sums), schedule
        parameters = inspect.signature(plan).parameters
        self.step = parameters.get("step")  # None: the rule does not count steps
        #: Hyperparameter name -> its inspect.Parameter (default, and whether torch takes it positionally).
        self.hyper = MappingProxyType({k: p for k, p in parameters.items() if k != "step" and k not in host_states})
        self.initial = MappingProxyType({s.name: s.initial for s in self.states if s.initial})

    def host_start(self, hyper):
        """The host states' values before a param's first step, in order, under hyperparameters
        ``hyper`` (the rule's defaults where it is silent)."""
        return tuple(hyper.get(start, self.hyper[start].default) if isinstance(start, str) else start
                     for start in self.host_states.values())

    def schedule_of(self, hyper):
        """``at(step, *host_states)``, the plan under hyperparameters ``hyper`` (the rule's defaults
        where it is silent), checked here, once; a rule that counts no steps has one plan: ``at()``."""
        if self.schedule is None:
            plan = self.plan(**hyper)
            return lambda: plan
        return self.schedule(**{name: hyper.get(name, p.default) for name, p in self.hyper.items()})

    def first_plan(self, **hyper):
        """The plan of a param's first step (the rule's defaults where ``hyper`` is silent; it may
        also give the step and host states)."""
        return self.plan(**{**({"step": 1} if self.step else {}), **dict(zip(self.host_states, self.host_start(hyper))),
                            **hyper})

    def __repr__(self):
        return f"Rule({self.name!r})"


class OptimizerSpec(NamedTuple):
    name: str  # the class name; the functional is name.lower() + "_"
    rule: Rule
    doc: str  # what it is, where from, and what its arguments mean beyond their names
    fixed: Mapping = MappingProxyType({})  # hyperparameters this optimizer pins
    defaults: Mapping = MappingProxyType({})  # hyperparameter defaults that differ from the rule's
    torch: bool = True  # torch.optim has a class of this name with the same semantics

    @property
    def functional(self):
        return self.name.lower() + "_"

    def hyper_defaults(self):
        """The hyperparameters a caller may set, with their defaults, in the plan's order."""
        return {k: self.defaults.get(k, p.default) for k, p in self.rule.hyper.items() if k not in self.fixed}


# What a hyperparameter's value may be to be remembered by its identity (a layer keeps the schedule of
# the values it saw last): one of a type whose values never change.
_ATOMS = frozenset({float, int, bool, str, type(None)})


def immutable(value):
    return type(value) in _ATOMS or (type(value) is tuple and all(type(v) in _ATOMS for v in value))


# --- hyperparameter checks, raising ValueError("Invalid <name>: ...") like torch.optim ---

def type_name(value):
    """The type of ``value`` as a user can look it up: ``list``, ``numpy.float32``, ``numpy.bool``
    (NumPy 2 calls its bool ``bool``, so the bare name would read "expected a bool, got bool")."""
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def real(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"Invalid {name}: expected a real number, got {type_name(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"Invalid {name}: {value} (must be finite)")
    return value


def at_least(name, value, low):
    if type(value) is float and low <= value < math.inf:  # the common case, in one comparison
        return value
    value = real(name, value)
    if value < low:
        raise ValueError(f"Invalid {name}: {value} (must be >= {low})")
    return value


def in_unit(name, value, closed=False):
    """In [0, 1), or [0, 1] when closed."""
    if type(value) is float and 0.0 <= value < 1.0:
        return value
    value = real(name, value)
    if not (0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0):
        raise ValueError(f"Invalid {name}: {value} (must be in [0, 1{']' if closed else ')'})")
    return value


def flag(name, value):
    if value is True or value is False:
        return value
    if not isinstance(value, (int, np.bool_)):  # a Python int reads as its truth value, as torch reads flags
        raise TypeError(f"Invalid {name}: expected a bool, got {type_name(value)}")
    return bool(value)


# The plan computes in double, where counts above 2**53 are no longer exact (and 10**400 is not a double).
_MAX_STEP = 2**53


def step_number(step):
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


def betas_pair(betas):
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"Invalid betas: expected a pair (beta1, beta2), got {betas!r}")
    return in_unit("beta1 (betas[0])", betas[0]), in_unit("beta2 (betas[1])", betas[1])


def weight_decay_forms(lr, weight_decay, decoupled):
    """torch's two forms of weight decay: L2 (``g += weight_decay * param``) or decoupled
    (``param *= 1 - lr * weight_decay``, AdamW). Returns (L2 on, decoupled on, 1 - lr * weight_decay)."""
    on = weight_decay != 0
    decoupled = flag("decoupled_weight_decay", decoupled)
    return on and not decoupled, on and decoupled, 1.0 - lr * weight_decay


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


def sgd_plan(step=None, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *, maximize=False):
    return sgd_schedule(lr, momentum, dampening, weight_decay, nesterov, maximize)(step)


def sgd_schedule(lr, momentum, dampening, weight_decay, nesterov, maximize):
    lr = at_least("lr", lr, 0.0)
    momentum = at_least("momentum", momentum, 0.0)
    dampening = real("dampening", dampening)
    weight_decay = at_least("weight_decay", weight_decay, 0.0)
    nesterov = flag("nesterov", nesterov)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("Invalid nesterov: Nesterov momentum requires momentum > 0 and dampening == 0")
    has_momentum = momentum != 0
    scalars, maximize = SgdScalars(lr, momentum, 1.0 - dampening, weight_decay), flag("maximize", maximize)

    def at(step):
        first_step = has_momentum and step_number(step) == 1
        return Plan(scalars, SgdFlags(maximize, weight_decay != 0, has_momentum, nesterov, first_step), (has_momentum,))

    return at


# --- AdaGrad ---

class AdagradScalars(NamedTuple):
    clr: float
    eps: float
    weight_decay: float


class AdagradFlags(NamedTuple):
    maximize: bool
    weight_decay: bool


def adagrad_plan(step, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10, *,
                 maximize=False):
    return adagrad_schedule(lr, lr_decay, weight_decay, initial_accumulator_value, eps, maximize)(step)


def adagrad_schedule(lr, lr_decay, weight_decay, initial_accumulator_value, eps, maximize):
    lr = at_least("lr", lr, 0.0)
    lr_decay = at_least("lr_decay", lr_decay, 0.0)
    weight_decay = at_least("weight_decay", weight_decay, 0.0)
    at_least("initial_accumulator_value", initial_accumulator_value, 0.0)
    eps = at_least("eps", eps, 0.0)
    flags = AdagradFlags(flag("maximize", maximize), weight_decay != 0)

    def at(step):
        clr = lr / (1.0 + (step_number(step) - 1) * lr_decay)
        return Plan(AdagradScalars(clr, eps, weight_decay), flags, (True,))

    return at


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


def rmsprop_plan(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, *, maximize=False):
    lr = at_least("lr", lr, 0.0)
    alpha = in_unit("alpha", alpha, closed=True)
    eps = at_least("eps", eps, 0.0)
    weight_decay = at_least("weight_decay", weight_decay, 0.0)
    momentum = at_least("momentum", momentum, 0.0)
    centered = flag("centered", centered)
    has_momentum = momentum > 0
    return Plan(
        RMSpropScalars(lr, alpha, 1.0 - alpha, eps, momentum, weight_decay),
        RMSpropFlags(flag("maximize", maximize), weight_decay != 0, centered, has_momentum),
        (True, has_momentum, centered),
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


def adam_plan(step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *, maximize=False,
              bias_correction=True, decoupled_weight_decay=False):
    return adam_schedule(lr, betas, eps, weight_decay, amsgrad, maximize, bias_correction, decoupled_weight_decay)(step)


def adam_schedule(lr, betas, eps, weight_decay, amsgrad, maximize, bias_correction, decoupled_weight_decay):
    lr = at_least("lr", lr, 0.0)
    beta1, beta2 = betas_pair(betas)
    eps = at_least("eps", eps, 0.0)
    weight_decay = at_least("weight_decay", weight_decay, 0.0)
    amsgrad = flag("amsgrad", amsgrad)
    l2, decoupled, one_minus_lr_weight_decay = weight_decay_forms(lr, weight_decay, decoupled_weight_decay)
    corrected = flag("bias_correction", bias_correction)
    flags, uses = AdamFlags(flag("maximize", maximize), l2, amsgrad, decoupled), (True, True, amsgrad)

    def at(step):
        step = step_number(step)
        if corrected:
            step_size = lr / (1.0 - beta1**step)
            inv_bias_correction2_sqrt = 1.0 / math.sqrt(1.0 - beta2**step)
        else:
            step_size, inv_bias_correction2_sqrt = lr, 1.0
        return Plan(AdamScalars(beta1, 1.0 - beta1, beta2, 1.0 - beta2, step_size, inv_bias_correction2_sqrt, eps,
                                weight_decay, one_minus_lr_weight_decay), flags, uses)

    return at


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


def adamax_plan(step, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *, maximize=False):
    return adamax_schedule(lr, betas, eps, weight_decay, maximize)(step)


def adamax_schedule(lr, betas, eps, weight_decay, maximize):
    lr = at_least("lr", lr, 0.0)
    beta1, beta2 = betas_pair(betas)
    eps = at_least("eps", eps, 0.0)
    weight_decay = at_least("weight_decay", weight_decay, 0.0)
    flags = AdamaxFlags(flag("maximize", maximize), weight_decay != 0)

    def at(step):
        clr = lr / (1.0 - beta1**step_number(step))
        return Plan(AdamaxScalars(beta1, 1.0 - beta1, beta2, eps, clr, weight_decay), flags, (True, True))

    return at


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


def adadelta_plan(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, *, maximize=False):
    lr = at_least("lr", lr, 0.0)
    rho = in_unit("rho", rho, closed=True)
    eps = at_least("eps", eps, 0.0)
    weight_decay = at_least("weight_decay", weight_decay, 0.0)
    return Plan(
        AdadeltaScalars(lr, rho, 1.0 - rho, eps, weight_decay),
        AdadeltaFlags(flag("maximize", maximize), weight_decay != 0),
        (True, True),
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


def radam_plan(step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False, *,
               maximize=False):
    return radam_schedule(lr, betas, eps, weight_decay, decoupled_weight_decay, maximize)(step)


def radam_schedule(lr, betas, eps, weight_decay, decoupled_weight_decay, maximize):
    lr = at_least("lr", lr, 0.0)
    beta1, beta2 = betas_pair(betas)
    eps = at_least("eps", eps, 0.0)
    weight_decay = at_least("weight_decay", weight_decay, 0.0)
    l2, decoupled, one_minus_lr_weight_decay = weight_decay_forms(lr, weight_decay, decoupled_weight_decay)
    maximize = flag("maximize", maximize)

    def at(step):
        step = step_number(step)
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
            RAdamScalars(beta1, 1.0 - beta1, beta2, 1.0 - beta2, step_size, eps, weight_decay,
                         one_minus_lr_weight_decay),
            RAdamFlags(maximize, l2, decoupled, rectified),
            (True, True),
        )

    return at


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


def nadam_plan(step, mu_product, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3,
               decoupled_weight_decay=False, *, maximize=False):
    """``mu_product`` is mu_1 * ... * mu_{step-1} (1 before the first step); Plan.host_states
    carries the product through mu_step, for the next step. The product is taken in mu_product's
    own precision: a Python float's, double; a NumPy scalar's, its dtype's, as torch.optim takes
    it in the float32 tensor it keeps mu_product in (``mu_product *= mu``, mu rounded first)."""
    schedule = nadam_schedule(lr, betas, eps, weight_decay, momentum_decay, decoupled_weight_decay, maximize)
    return schedule(step, mu_product)


def nadam_schedule(lr, betas, eps, weight_decay, momentum_decay, decoupled_weight_decay, maximize):
    lr = at_least("lr", lr, 0.0)
    beta1, beta2 = betas_pair(betas)
    eps = at_least("eps", eps, 0.0)
    weight_decay = at_least("weight_decay", weight_decay, 0.0)
    momentum_decay = at_least("momentum_decay", momentum_decay, 0.0)
    l2, decoupled, one_minus_lr_weight_decay = weight_decay_forms(lr, weight_decay, decoupled_weight_decay)
    flags = NAdamFlags(flag("maximize", maximize), l2, decoupled)

    def at(step, mu_product):
        kept = mu_product.dtype.type if isinstance(mu_product, np.floating) else float
        mu_product = at_least("mu_product", mu_product, 0.0)
        if mu_product > 1.0:
            raise ValueError(f"Invalid mu_product: {mu_product} (must be in [0, 1]; 1 before the first step)")
        step = step_number(step)
        # The momentum schedule mu_t of Dozat (2016), with torch's 0.96 base.
        mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))
        mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * momentum_decay)))
        mu_product = float(kept(mu_product) * kept(mu))
        return Plan(
            NAdamScalars(beta1, 1.0 - beta1, beta2, 1.0 - beta2, 1.0 - beta2**step,
                         lr * (1.0 - mu) / (1.0 - mu_product), lr * mu_next / (1.0 - mu_product * mu_next), eps,
                         weight_decay, one_minus_lr_weight_decay),
            flags,
            (True, True),
            {"mu_product": mu_product},
        )

    return at


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


def lion_plan(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False):
    lr = at_least("lr", lr, 0.0)
    beta1, beta2 = betas_pair(betas)
    weight_decay = at_least("weight_decay", weight_decay, 0.0)
    return Plan(
        LionScalars(lr, beta1, 1.0 - beta1, beta2, 1.0 - beta2, 1.0 - lr * weight_decay),
        LionFlags(flag("maximize", maximize), weight_decay != 0),
        (True,),
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


def lamb_plan(step, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, *, maximize=False,
              bias_correction=True):
    return lamb_schedule(lr, betas, eps, weight_decay, maximize, bias_correction)(step)


def lamb_schedule(lr, betas, eps, weight_decay, maximize, bias_correction):
    lr = at_least("lr", lr, 0.0)
    beta1, beta2 = betas_pair(betas)
    eps = at_least("eps", eps, 0.0)
    weight_decay = at_least("weight_decay", weight_decay, 0.0)
    corrected = flag("bias_correction", bias_correction)
    flags = LambFlags(flag("maximize", maximize), weight_decay != 0)

    def at(step):
        step = step_number(step)
        if corrected:
            inv_bias_correction1 = 1.0 / (1.0 - beta1**step)
            inv_bias_correction2_sqrt = 1.0 / math.sqrt(1.0 - beta2**step)
        else:
            inv_bias_correction1, inv_bias_correction2_sqrt = 1.0, 1.0
        return Plan(LambScalars(beta1, 1.0 - beta1, beta2, 1.0 - beta2, inv_bias_correction1, inv_bias_correction2_sqrt,
                                eps, weight_decay, lr), flags, (True, True))

    return at


# --- ASGD ---

class AsgdScalars(NamedTuple):
    eta: float
    one_minus_lambd_eta: float
    mu: float
    weight_decay: float


class AsgdFlags(NamedTuple):
    maximize: bool
    weight_decay: bool
    averaging: bool  # mu != 1; with mu == 1, ax is a copy of param, as torch takes it


def asgd_plan(step, eta, mu, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0.0, *, maximize=False):
    """``eta`` and ``mu`` are this step's step size and averaging weight, computed after the
    param's previous step (lr and 1 before its first); Plan.host_states carries the next step's,
    as torch computes them after a step: eta = lr / (1 + lambd lr step)^alpha, mu = 1 / max(1, step - t0)."""
    return asgd_schedule(lr, lambd, alpha, t0, weight_decay, maximize)(step, eta, mu)


def asgd_schedule(lr, lambd, alpha, t0, weight_decay, maximize):
    lr = at_least("lr", lr, 0.0)
    # torch does not check lambd and alpha; negative ones can make (1 + lambd lr step)^alpha complex or 0.
    lambd = at_least("lambd", lambd, 0.0)
    alpha = at_least("alpha", alpha, 0.0)
    t0 = real("t0", t0)
    weight_decay = at_least("weight_decay", weight_decay, 0.0)
    maximize = flag("maximize", maximize)

    def at(step, eta, mu):
        eta = at_least("eta", eta, 0.0)
        mu = at_least("mu", mu, 0.0)
        if mu > 1.0:
            raise ValueError(f"Invalid mu: {mu} (must be in [0, 1]; 1 before the first step)")
        step = step_number(step)
        try:
            eta_next = lr / (1 + lambd * lr * step) ** alpha
        except OverflowError:  # the power is past the largest double: eta is lr / inf
            eta_next = 0.0
        return Plan(
            AsgdScalars(eta, 1.0 - lambd * eta, mu, weight_decay),
            AsgdFlags(maximize, weight_decay != 0, mu != 1.0),
            (True,),
            {"eta": eta_next, "mu": 1.0 / max(1.0, step - t0)},
        )

    return at


# --- Rprop ---

class RpropScalars(NamedTuple):
    etaminus: float
    etaplus: float
    step_size_min: float
    step_size_max: float


class RpropFlags(NamedTuple):
    maximize: bool


def rprop_plan(lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), *, maximize=False):
    """``lr`` is only where each element's step size starts (the ``step_size`` state's initial value)."""
    at_least("lr", lr, 0.0)
    if not isinstance(etas, (tuple, list)) or len(etas) != 2:
        raise TypeError(f"Invalid etas: expected a pair (etaminus, etaplus), got {etas!r}")
    etaminus, etaplus = real("etaminus (etas[0])", etas[0]), real("etaplus (etas[1])", etas[1])
    if not 0.0 < etaminus < 1.0 < etaplus:
        raise ValueError(f"Invalid etas: ({etaminus}, {etaplus}) (must be 0 < etaminus < 1 < etaplus)")
    if not isinstance(step_sizes, (tuple, list)) or len(step_sizes) != 2:
        raise TypeError(f"Invalid step_sizes: expected a pair (min, max), got {step_sizes!r}")
    step_size_min = real("step_size_min (step_sizes[0])", step_sizes[0])
    step_size_max = real("step_size_max (step_sizes[1])", step_sizes[1])
    return Plan(
        RpropScalars(etaminus, etaplus, step_size_min, step_size_max),
        RpropFlags(flag("maximize", maximize)),
        (True, True),
    )


# The order is the C++ dispatch tables' order (cpp/kernels/rules.hpp).
RULES: Mapping[str, Rule] = MappingProxyType({rule.name: rule for rule in (
    Rule("sgd", sgd_plan, [State("momentum_buffer", optional=True)], schedule=sgd_schedule),
    Rule("adagrad", adagrad_plan, [State("sum", "state_sums", initial="initial_accumulator_value")],
         schedule=adagrad_schedule),
    Rule("rmsprop", rmsprop_plan,
         [State("square_avg"), State("momentum_buffer", optional=True), State("grad_avg", optional=True)]),
    Rule("adam", adam_plan, [State("exp_avg"), State("exp_avg_sq"), State("max_exp_avg_sq", optional=True)],
         schedule=adam_schedule),
    Rule("adamax", adamax_plan, [State("exp_avg"), State("exp_inf")], schedule=adamax_schedule),
    Rule("adadelta", adadelta_plan, [State("square_avg"), State("acc_delta")]),
    Rule("radam", radam_plan, [State("exp_avg"), State("exp_avg_sq")], schedule=radam_schedule),
    Rule("nadam", nadam_plan, [State("exp_avg"), State("exp_avg_sq")], host_states={"mu_product": 1.0},
         schedule=nadam_schedule),
    Rule("lion", lion_plan, [State("exp_avg")]),
    Rule("lamb", lamb_plan, [State("exp_avg"), State("exp_avg_sq")], sums=("param_sq", "update_sq"),
         schedule=lamb_schedule),
    Rule("asgd", asgd_plan, [State("ax")], host_states={"eta": "lr", "mu": 1.0}, schedule=asgd_schedule),
    Rule("rprop", rprop_plan, [State("prev"), State("step_size", "state_step_sizes", initial="lr")]),
)})

_L2 = "weight_decay is L2 (added to the gradient)"
_EITHER = _L2 + "; decoupled, as AdamW, with ``decoupled_weight_decay=True``"

OPTIMIZERS: Mapping[str, OptimizerSpec] = MappingProxyType({spec.name: spec for spec in (
    OptimizerSpec("SGD", RULES["sgd"], """SGD, heavy-ball momentum and Nesterov momentum (``torch.optim.SGD``).

    With momentum != 0 the step count matters: on the first step the buffer is set to the
    gradient (undamped), as torch does."""),
    OptimizerSpec("Adagrad", RULES["adagrad"], f"""AdaGrad (Duchi et al., 2011; ``torch.optim.Adagrad``).

    {_L2}. ``sum`` starts at ``initial_accumulator_value``."""),
    OptimizerSpec("RMSprop", RULES["rmsprop"], f"""RMSProp (Hinton, 2012; ``torch.optim.RMSprop``), optionally centered
    and with momentum.

    {_L2}. ``momentum_buffer`` is used when momentum > 0, ``grad_avg`` when centered."""),
    OptimizerSpec("Adam", RULES["adam"], f"""Adam (Kingma & Ba, 2015; ``torch.optim.Adam``), with AMSGrad (Reddi et
    al., 2018).

    {_EITHER}. ``max_exp_avg_sq`` is used with amsgrad. ``bias_correction=False`` is the
    lecture's Adam without the 1 - beta^t factors."""),
    OptimizerSpec("AdamW", RULES["adam"], """AdamW (Loshchilov & Hutter, 2019; ``torch.optim.AdamW``): Adam with
    decoupled weight decay, ``param *= 1 - lr * weight_decay`` before the Adam update.

    ``max_exp_avg_sq`` is used with amsgrad.""",
                  fixed={"decoupled_weight_decay": True}, defaults={"weight_decay": 1e-2}),
    OptimizerSpec("Adamax", RULES["adamax"], f"""Adamax (Kingma & Ba, 2015, section 7.1; ``torch.optim.Adamax``), Adam
    with the infinity norm.

    {_L2}."""),
    OptimizerSpec("Adadelta", RULES["adadelta"], f"""Adadelta (Zeiler, 2012; ``torch.optim.Adadelta``).

    {_L2}."""),
    OptimizerSpec("RAdam", RULES["radam"], f"""RAdam, rectified Adam (Liu et al., 2020; ``torch.optim.RAdam``).

    {_EITHER}. While the variance estimate is intractable (rho_t <= 5, the first 5 steps with the
    default betas) the step is SGD with momentum."""),
    OptimizerSpec("NAdam", RULES["nadam"], f"""NAdam, Adam with Nesterov momentum (Dozat, 2016; ``torch.optim.NAdam``).

    {_EITHER}. ``mu_product``, the product of the momentum schedule so far, is per-param state
    kept on the host like the step count: 1.0 before the first step (torch keeps it as
    ``state["mu_product"]``); the functional takes it and returns the next one."""),
    OptimizerSpec("Lion", RULES["lion"], """Lion, EvoLved Sign Momentum (Chen et al., 2023, arXiv:2302.06675).

    Defaults as in the paper's published implementation; weight_decay is decoupled. Every element
    moves by exactly lr (plus the decay), so lr is typically 3-10x smaller than AdamW's and
    weight_decay 3-10x larger.""", torch=False),
    OptimizerSpec("Lamb", RULES["lamb"], """LAMB, layer-wise adaptive moments (You et al., 2019, arXiv:1904.00962).

    Defaults as TensorFlow Addons' ``LAMB``; weight_decay is decoupled, inside the update. The
    trust ratio is per tensor: each param is one layer.""", torch=False),
    OptimizerSpec("ASGD", RULES["asgd"], f"""ASGD, averaged SGD (Polyak & Juditsky, 1992; ``torch.optim.ASGD``).

    {_L2}. ``ax`` is the average of the params: a copy
    of them while mu is 1 (until step t0 + 2), their running average after. ``eta`` (the step
    size) and ``mu`` (the averaging weight) are per-param state kept on the host like the step
    count, as torch keeps them in ``state``: the functional takes this step's and returns the
    next step's."""),
    OptimizerSpec("Rprop", RULES["rprop"], """Rprop, resilient backpropagation (Riedmiller & Braun, 1993;
    ``torch.optim.Rprop``).

    Each element has its own step size (``step_size``, starting at lr), grown by etaplus while
    the gradient keeps its sign and shrunk by etaminus when it flips, within step_sizes; the
    param moves by its step size against the gradient's sign. Where the sign flipped, the
    gradient counts as 0, and ``prev`` keeps it so."""),
)})
