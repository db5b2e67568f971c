"""The rule registry is the one place a rule's facts live: every layer's signature and defaults,
the reference's and the kernels' state slots, and torch.optim's twins agree with it."""

import inspect

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import _api, _native, _numba, reference
from fusedoptim._rules import OPTIMIZERS, RULES

SPECS = list(OPTIMIZERS.values())
# torch flags that are not hyperparameters of the math: how torch runs a step, not what it computes.
TORCH_EXECUTION_FLAGS = {"foreach", "capturable", "differentiable", "fused"}


def defaults(signature, names):
    return {n: p.default for n, p in signature.parameters.items() if n in names}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_functional_signature_is_the_registrys(spec):
    rule, sig = spec.rule, inspect.signature(getattr(fo, spec.functional))
    initial = set(rule.initial.values())
    expected = {k: v for k, v in spec.hyper_defaults().items() if k not in initial}
    assert defaults(sig, rule.hyper) == expected
    names = list(sig.parameters)
    assert names[:2 + len(rule.states)] == ["params", "grads", *(s.arg for s in rule.states)]
    for s in rule.states:
        assert (sig.parameters[s.arg].default is None) == s.optional, s.name
    assert ("step" in sig.parameters) == (rule.step is not None)
    assert all(sig.parameters[h].default is inspect.Parameter.empty for h in rule.host_states)
    assert names[-1] == "backend" and not set(spec.fixed) & set(names)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_numpy_class_signature_is_the_registrys(spec):
    sig = inspect.signature(getattr(fo, spec.name))
    assert defaults(sig, spec.rule.hyper) == spec.hyper_defaults()
    options = [p.name for p in fo._api.NUMPY_OPTIONS]
    assert list(sig.parameters)[0] == "params" and list(sig.parameters)[-len(options):] == options
    assert all(sig.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY for name in options)
    opt = getattr(fo, spec.name)([np.zeros(3, np.float32)])
    assert {k: v for k, v in opt.defaults.items()} == {**spec.hyper_defaults(), **spec.fixed}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_torch_class_agrees_with_the_registry_and_its_twin(spec):
    torch = pytest.importorskip("torch")
    ft = pytest.importorskip("fusedoptim.torch")
    ours = inspect.signature(getattr(ft, spec.name))
    hyper = spec.hyper_defaults()
    shared = {k: v for k, v in defaults(ours, hyper).items()}
    if not spec.torch:
        assert shared == hyper
        return
    theirs = inspect.signature(getattr(torch.optim, spec.name))
    # Every hyperparameter torch has is one of the rule's, with the same default; the rule's others
    # (bias_correction) are fusedoptim's own, fixed at their default in the torch layer.
    torch_hyper = {n: p.default for n, p in theirs.parameters.items() if n not in TORCH_EXECUTION_FLAGS | {"params"}}
    assert set(torch_hyper) <= set(hyper), set(torch_hyper) - set(hyper)
    assert torch_hyper == {k: hyper[k] for k in torch_hyper}
    # torch's arguments, then the layer's own options (state_dtype, master_weights, rounding, seed, flat).
    layer = ["state_dtype", "master_weights", "rounding", "seed", "flat"]
    assert [(p.name, p.kind) for p in ours.parameters.values()] == \
           [(p.name, p.kind) for p in theirs.parameters.values()] + [(n, inspect.Parameter.KEYWORD_ONLY) for n in layer]
    params = [torch.zeros(3, requires_grad=True)]
    assert getattr(ft, spec.name)(params).defaults == getattr(torch.optim, spec.name)(params).defaults


@pytest.mark.parametrize("rule", RULES.values(), ids=repr)
def test_state_slots_are_the_registrys_everywhere(rule):
    """The reference, the numba kernel and the C++ table name or count the rule's states in its slot order."""
    names = [s.name for s in rule.states]
    assert list(inspect.signature(getattr(reference, rule.name)).parameters)[2:-2] == names
    numba_kernel = getattr(_numba, rule.name)
    numba_params = list(inspect.signature(getattr(numba_kernel, "py_func", numba_kernel)).parameters)
    assert numba_params[2:-2] == names
    plan = rule.first_plan()
    assert len(plan.uses) == len(rule.states)
    if _native.module() is not None:
        native = next(r for r in _native.module().RULES if r["name"] == rule.name)
        assert native["num_states"] == len(names) and native["num_planned"] == len(plan.scalars)
        assert native["num_flags"] == len(plan.flags)


@pytest.mark.parametrize("rule", list(RULES.values()), ids=lambda r: r.name)
@pytest.mark.parametrize("hyper", [{}, {"lr": 0.5, "weight_decay": 0.25, "betas": (0.5, 0.75), "momentum": 0.5,
                                        "bias_correction": False, "maximize": True}], ids=["defaults", "others"])
def test_a_schedule_is_its_plan(rule, hyper):
    """``schedule_of(hyper)(step, *host)``, the layers' plan at each step with the hyperparameters checked
    once, is ``plan(step, *host, **hyper)``, errors included."""
    hyper = {k: v for k, v in hyper.items() if k in rule.hyper}
    if rule.schedule is not None:
        assert list(inspect.signature(rule.schedule).parameters) == list(rule.hyper)
    at, host = rule.schedule_of(hyper), rule.host_start(hyper)
    for step in (1, 2, 3, 7, 1000) if rule.step else ():
        assert at(step, *host) == rule.plan(step, *host, **hyper), step
    if rule.step:  # (SGD without momentum reads no count)
        assert outcome(lambda: at(0, *host)) == outcome(lambda: rule.plan(0, *host, **hyper))
    else:
        assert at() == rule.plan(**hyper)
    with pytest.raises(ValueError, match="Invalid lr"):
        rule.schedule_of({**hyper, "lr": -1.0})


def outcome(call):
    try:
        return call()
    except (TypeError, ValueError) as error:
        return type(error), str(error)


def test_a_mismatched_extension_is_refused():
    """The import-time check sees a rule whose layout the extension does not share."""
    if _native.module() is None:
        pytest.skip("needs the C++ extension")

    class Stale:
        RULES = [dict(r, num_flags=r["num_flags"] + 1) if r["name"] == "adam" else r for r in _native.module().RULES]
        REDUCTION_BLOCK, REDUCTION_LANES = reference.BLOCK, reference.LANES

    found = _native._mismatches(Stale)
    assert len(found) == 1 and found[0].startswith("adam")
    assert not _native._mismatches(_native.module())


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_docstrings_show_the_formula_and_the_defaults(spec):
    """Every hyperparameter default of a signature, lr included, is shown as its signature has it.
    (A hyperparameter that only starts a state, such as Rprop's lr, is not the functional's.)"""
    functional, cls = getattr(fo, spec.functional), getattr(fo, spec.name)
    for obj in (functional, cls):
        doc = inspect.getdoc(obj)
        assert reference.formula(spec.rule.name).strip().splitlines()[0].strip() in doc
        shown = doc.split("Defaults: ", 1)[1].split("\n", 1)[0]
        hyper = defaults(inspect.signature(obj), spec.rule.hyper)
        assert "lr" in hyper or (obj is functional and "lr" in spec.rule.initial.values())
        assert all(f"{name}={value!r}" in shown for name, value in hyper.items()), (shown, hyper)


def test_signatures_are_compiled_not_wrapped():
    """A generated function's own code takes the arguments (no *args wrapper), with the registry's signature."""
    code = fo.adam_.__code__
    assert code.co_argcount == 5 and code.co_kwonlyargcount == len(inspect.signature(fo.adam_).parameters) - 5
    assert _api.functional_signature(OPTIMIZERS["Adam"]) == inspect.signature(fo.adam_)


# --- Type hints: every public function and class carries them, and they resolve ---

def public_callables(module, names):
    for name in names:
        obj = getattr(module, name)
        if isinstance(obj, type):
            # the base classes are made by the optimizers (their __init__ takes the group defaults)
            methods = ("step", "state_dict", "load_state_dict", "add_param_group") if name == "Optimizer" else \
                ("__init__",)
            yield from ((f"{name}.{m}", getattr(obj, m)) for m in methods if m in vars(obj))
        elif callable(obj):
            yield name, obj


def assert_fully_hinted(module, names):
    import typing

    for name, fn in public_callables(module, names):
        hints = typing.get_type_hints(fn)  # resolves every hint, or raises
        wanted = [p for p in inspect.signature(fn).parameters if p != "self"] + ["return"]
        assert [p for p in wanted if p not in hints] == [], name


def test_public_api_has_type_hints_and_the_package_is_marked_typed():
    from pathlib import Path

    assert (Path(fo.__file__).parent / "py.typed").exists()
    assert_fully_hinted(fo, [n for n in fo.__all__ if n not in ("reference",)])


def test_torch_layer_has_type_hints():
    ft = pytest.importorskip("fusedoptim.torch")
    assert_fully_hinted(ft, [name for name in OPTIMIZERS] + ["Optimizer"])
