"""Functional, in-place optimizer steps on NumPy arrays.

Each function steps one array, or a list of arrays in one call, and updates the params and
their state buffers in place. Names, arguments and defaults follow ``torch.optim``; ``step``
is the 1-based count of the step being taken, owned by the caller. ``backend`` is "cpp",
"numba", "numpy" or None/"auto" (the fastest available, or $FUSEDOPTIM_BACKEND). The whole
step is validated before any memory is touched: bad input raises TypeError / ValueError
naming the argument and modifies nothing. Params and states are updated in place, so each
must be a writeable ndarray or expose its memory without a copy (array.array, a writeable
memoryview); a list or a NumPy scalar is a TypeError. A complex array is stepped as the pairs of
reals it stores, as torch.optim steps complex params. Grads are only read: any array-like,
and one array may serve several params. A step is all or nothing on every backend, also
when interrupted: a KeyboardInterrupt (Ctrl-C) is raised before anything changed or once
everything has.

Every function here is made from its entry in the rule registry (``_rules.OPTIMIZERS``).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

from numpy.typing import ArrayLike

from . import _api, _backends
from ._rules import OPTIMIZERS, immutable
from ._storage import PLAIN, Precision, rounding_key
from ._validate import found_inf_value, grad_scale_value, rounding_mode, seed_value


def functional(spec):
    """The functional step of an optimizer: the plan of its rule, then one step of its kernel."""
    rule, signature = spec.rule, _api.functional_signature(spec)
    hyper = [name for name in signature.parameters if name in rule.hyper]
    at_args = "".join(f", {name}" for name in ("step", *rule.host_states) if name in signature.parameters)
    counted = "step" if rule.step else "0"
    body = (f"    plan = _plan(({''.join(name + ', ' for name in hyper)}){at_args})\n"
            f"    precision = _precision(params, {counted}, master_params, compensations, rounding, seed, grad_scale)\n"
            f"    skip = _found_inf(found_inf)\n"
            f"    _step(backend, _rule, plan, params, grads, ({''.join(s.arg + ', ' for s in rule.states)}), "
            f"precision=precision, found_inf=skip)\n")
    if rule.host_states:
        values = ", ".join(f"plan.host_states[{name!r}]" for name in rule.host_states)
        given = ", ".join(rule.host_states)
        body += f"    return ({given}) if skip else ({values})\n"  # a skipped step keeps them
    namespace = {"_plan": _planner(rule, hyper, spec.fixed), "_step": _backends.step, "_rule": rule,
                 "_precision": _precision,
                 "_found_inf": found_inf_value,
                 **{f"_fixed_{k}": v for k, v in spec.fixed.items()}}
    returns = f"\n\n    Returns the {', '.join(rule.host_states)} for the next step." if rule.host_states else ""
    return _api.compile_function(spec.functional, signature, body, namespace,
                                 _api.docstring(spec, signature, spec.doc + returns))


def _planner(rule, names, fixed):
    """``plan(values, step, *host_states)``: the rule's plan under the hyperparameters ``names``
    taking ``values`` (and ``fixed``), from the schedule (``Rule.schedule_of``) of the values of the
    last call while they are the very same objects (a loop of steps passes the same lr and betas):
    checking them costs more than a small step's kernel."""
    last = [((), None)]  # (values, their schedule), replaced whole: a thread reads one or the other

    def plan(values, *at):
        seen, schedule = last[0]
        if len(seen) != len(values) or not all(map(operator.is_, values, seen)):
            schedule = rule.schedule_of({**dict(zip(names, values)), **fixed})
            if all(map(immutable, values)):
                last[0] = values, schedule
        return schedule(*at)

    return plan


def _precision(params, step, master_params, compensations, rounding, seed, grad_scale):
    """The ``_storage.Precision`` of a functional call; stochastic rounding keys each param by its
    position in ``params``."""
    if (master_params is None and compensations is None and grad_scale is None and type(rounding) is str
            and rounding == "nearest" and type(seed) is int and 0 <= seed < 2**32):
        return PLAIN  # the usual call, as the checks below find it, without their cost
    rounding, seed, grad_scale = rounding_mode(rounding), seed_value(seed), grad_scale_value(grad_scale)
    keys = None
    if rounding == "stochastic":
        n = len(params) if isinstance(params, (list, tuple)) else 1
        keys = [rounding_key(seed, step or 0, i) for i in range(n)]  # a rule without a count: the seed alone
    return Precision(rounding, master_params, compensations, keys, grad_scale)


def unscale_and_check_(grads: ArrayLike | Sequence[ArrayLike], inv_scale: float, *, backend: str | None = None) -> bool:
    """Unscales gradients in place and reports Inf/NaN, in one pass (as torch's GradScaler.unscale_).

    ``grads``: an array or a list of writeable, C-contiguous float64, float32, bfloat16 or float16
    arrays. Each element is widened to its compute dtype (float64 for float64, else float32),
    multiplied by ``inv_scale`` (1 / the loss scale, rounded once to that dtype) and stored back,
    rounded to nearest even. Returns True when any stored element is Inf or NaN (then skip the
    step: ``found_inf=True``). Bad input raises before any grad changes."""
    return _backends.unscale_and_check(backend, grads, inv_scale)


sgd_ = functional(OPTIMIZERS["SGD"])
adagrad_ = functional(OPTIMIZERS["Adagrad"])
rmsprop_ = functional(OPTIMIZERS["RMSprop"])
adam_ = functional(OPTIMIZERS["Adam"])
adamw_ = functional(OPTIMIZERS["AdamW"])
adamax_ = functional(OPTIMIZERS["Adamax"])
adadelta_ = functional(OPTIMIZERS["Adadelta"])
radam_ = functional(OPTIMIZERS["RAdam"])
nadam_ = functional(OPTIMIZERS["NAdam"])
lion_ = functional(OPTIMIZERS["Lion"])
lamb_ = functional(OPTIMIZERS["Lamb"])
asgd_ = functional(OPTIMIZERS["ASGD"])
rprop_ = functional(OPTIMIZERS["Rprop"])
