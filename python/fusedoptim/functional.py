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

from . import _api, _backends
from ._rules import OPTIMIZERS


def functional(spec):
    """The functional step of an optimizer: the plan of its rule, then one step of its kernel."""
    rule, signature = spec.rule, _api.functional_signature(spec)
    given = [name for name in signature.parameters if name in rule.hyper or name in rule.host_states or name == "step"]
    plan_args = ", ".join([f"{name}={name}" for name in given] + [f"{name}=_fixed_{name}" for name in spec.fixed])
    body = (f"    plan = _plan({plan_args})\n"
            f"    _step(backend, _rule, plan, params, grads, ({''.join(s.arg + ', ' for s in rule.states)}))\n")
    if rule.host_states:
        values = ", ".join(f"plan.host_states[{name!r}]" for name in rule.host_states)
        body += f"    return {values}\n"
    namespace = {"_plan": rule.plan, "_step": _backends.step, "_rule": rule,
                 **{f"_fixed_{k}": v for k, v in spec.fixed.items()}}
    returns = f"\n\n    Returns the {', '.join(rule.host_states)} for the next step." if rule.host_states else ""
    return _api.compile_function(spec.functional, signature, body, namespace,
                                 _api.docstring(spec, signature, spec.doc + returns))


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
