"""Each public layer's signature of an optimizer, read from the rule registry, and the one way
functions with those signatures are made.

A signature is built from the rule's plan (hyperparameters, defaults, which ones torch takes
positionally) and the optimizer's spec (pinned and re-defaulted hyperparameters), so a default
is written once, in the plan. Functions are compiled from a short source text with the exact
signature, as dataclasses does: a generic ``*args, **kwargs`` wrapper would cost a small step
more than its kernel, and would hide the arguments from ``help`` and editors.
"""

from __future__ import annotations

import __future__
from collections.abc import Callable, Iterable, Sequence
from inspect import Parameter, Signature
from typing import Any

from numpy.typing import ArrayLike, DTypeLike

from . import reference

P = Parameter


def hyper_parameters(spec, include_initial=True):
    """The optimizer's hyperparameters as Parameters, in the plan's order and kinds."""
    initial = set(spec.rule.initial.values())
    return [p.replace(default=spec.defaults.get(name, p.default)) for name, p in spec.rule.hyper.items()
            if name not in spec.fixed and (include_initial or name not in initial)]


def functional_signature(spec):
    """``(params, grads, <one list per state>, *, step, <host states>, <hyperparameters>, backend=None)``."""
    rule = spec.rule
    states = [P(s.arg, P.POSITIONAL_OR_KEYWORD, default=None if s.optional else P.empty) for s in rule.states]
    counted = [P("step", P.KEYWORD_ONLY, default=rule.step.default)] if rule.step else []
    host = [P(name, P.KEYWORD_ONLY) for name in rule.host_states]
    hyper = [p.replace(kind=P.KEYWORD_ONLY) for p in hyper_parameters(spec, include_initial=False)]
    returns = {0: "None", 1: "float"}.get(len(host), f"tuple[{', '.join('float' for _ in host)}]")  # the host states
    return _hinted(Signature([P("params", P.POSITIONAL_OR_KEYWORD), P("grads", P.POSITIONAL_OR_KEYWORD), *states,
                              *counted, *host, *hyper, P("backend", P.KEYWORD_ONLY, default=None)],
                             return_annotation=returns))


# The stateful layers' own options (not a rule's): keyword-only, after the hyperparameters.
STATE_DTYPE = P("state_dtype", P.KEYWORD_ONLY, default=None)
STATE_DTYPE_DOC = ("States are kept in each param's dtype (as torch keeps them), or in float32 with "
                   "``state_dtype=\"float32\"`` (for bfloat16 and float16 params: a more accurate state, 4 bytes "
                   "per element each).")
# The NumPy optimizer classes' options, after the rule's hyperparameters: one place, for every class.
NUMPY_OPTIONS = (P("backend", P.KEYWORD_ONLY, default=None), P("skip_nonfinite", P.KEYWORD_ONLY, default=False))


def class_signature(spec, extra=(), hints=None):
    """``(self, params, <hyperparameters, torch's positional ones first>, *, <the rest>, state_dtype, <extra>)``;
    ``hints`` gives a layer's own type hints by argument name (its params, say), over ``HINTS``."""
    return with_hints(Signature([P("self", P.POSITIONAL_OR_KEYWORD), P("params", P.POSITIONAL_OR_KEYWORD),
                                 *hyper_parameters(spec), STATE_DTYPE, *extra]), hints or {})


def with_hints(signature, hints):
    """An ``__init__`` signature with a layer's own type hints by argument name (over ``HINTS``)."""
    return _hinted(signature.replace(parameters=[p.replace(annotation=hints[p.name]) if p.name in hints else p
                                                 for p in signature.parameters.values()], return_annotation="None"))


# The generated functions' type hints, by argument; a hyperparameter not listed has its default's type.
_ARRAYS = "ArrayLike | Sequence[ArrayLike]"
HINTS = {"params": _ARRAYS, "grads": _ARRAYS, "step": "int", "backend": "str | None",
         "state_dtype": "DTypeLike | None", "skip_nonfinite": "bool"}


# What the hints name, for typing.get_type_hints (a layer adds its own: torch's ParamsT, Tensor).
_TYPES = {"Any": Any, "ArrayLike": ArrayLike, "Callable": Callable, "DTypeLike": DTypeLike, "Iterable": Iterable,
          "Sequence": Sequence}


def _hinted(signature):
    """``signature`` with a type hint on every argument but ``self``."""
    return signature.replace(parameters=[p if p.name == "self" else p.replace(annotation=_hint(p))
                                         for p in signature.parameters.values()])


def _hint(p):
    if p.annotation is not P.empty:
        return p.annotation
    if p.name in HINTS:
        return HINTS[p.name]
    default = p.default
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, (int, float)):
        return "float"
    if isinstance(default, tuple):
        return f"tuple[{', '.join('float' for _ in default)}]"
    if p.kind == P.POSITIONAL_OR_KEYWORD:  # a state argument of a functional step
        return _ARRAYS if default is P.empty else f"{_ARRAYS} | None"
    return "float" if default is P.empty else "bool | None"  # a host state; torch's foreach=None


def docstring(spec, signature, summary=None):
    """The optimizer's description, its defaults and states as ``signature`` shows them, and the rule's formula."""
    defaults = ", ".join(f"{p.name}={p.default!r}" for p in signature.parameters.values()
                         if p.default is not P.empty and p.default is not None)
    states = ", ".join(f"``{s.name}``" + (" (sometimes)" if s.optional else "") for s in spec.rule.states)
    host = "".join(f", ``{name}`` (a float, {start if isinstance(start, str) else repr(start)} before the first step)"
                   for name, start in spec.rule.host_states.items())
    dtype = f" {STATE_DTYPE_DOC}" if STATE_DTYPE.name in signature.parameters else ""
    return (f"{summary or spec.doc}\n\n    Defaults: {defaults}.\n    State: {states}{host}.{dtype}\n\n"
            f"    Update, per element:\n{reference.formula(spec.rule.name)}")


def compile_function(name, signature, body, namespace, doc):
    """A function called ``name`` with exactly ``signature`` whose body is ``body`` (indented source
    text that may use the parameters and ``namespace``). Defaults are bound by reference, not by repr."""
    defaults, params = {}, []
    for p in signature.parameters.values():
        if p.annotation is not P.empty:  # as written in the source, where they are never evaluated (PEP 563)
            p = p.replace(annotation=_Name(p.annotation))
        if p.default is not P.empty:
            defaults[f"_default_{p.name}"] = p.default
            p = p.replace(default=_Name(f"_default_{p.name}"))
        params.append(p)
    returns = signature.return_annotation
    returns = returns if returns is P.empty else _Name(returns)
    source = f"def {name}{signature.replace(parameters=params, return_annotation=returns)}:\n{body}"
    scope = {**_TYPES, **namespace, **defaults}
    exec(compile(source, f"<fusedoptim {name}>", "exec", flags=__future__.annotations.compiler_flag, dont_inherit=True),
         scope)
    fn = scope[name]
    fn.__doc__ = doc
    return fn


class _Name:
    """A default or type hint shown in the generated source as written: a name from its scope."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name
