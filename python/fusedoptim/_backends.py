"""Backend choice and the one door to the kernels: a step, checked, on a backend."""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings

import numpy as np

from . import _native, reference
from ._validate import operands

BACKENDS = ("cpp", "numba", "numpy")

_kernels = _native.module()
_HAVE_NUMBA = importlib.util.find_spec("numba") is not None
_AVAILABLE = tuple(b for b, ok in zip(BACKENDS, (_kernels is not None, _HAVE_NUMBA, True)) if ok)
_warned_fallback = False
# Read once, like $FUSEDOPTIM_ISA and $FUSEDOPTIM_NUM_THREADS: os.environ costs a
# microsecond, more than a small step's whole kernel.
_env_backend = os.environ.get("FUSEDOPTIM_BACKEND", "auto")


def available():
    """The backends this installation can run, fastest first."""
    return _AVAILABLE


def resolve(backend):
    """Maps None / "auto" / a name (or $FUSEDOPTIM_BACKEND, read at import) to an available backend name."""
    global _warned_fallback
    name = backend if backend is not None else _env_backend
    if name == "cpp" and _kernels is not None:
        return name
    if name == "auto":
        name = _AVAILABLE[0]
        if name != "cpp" and not _warned_fallback:
            _warned_fallback = True
            warnings.warn(
                f"fusedoptim: the C++ extension could not be imported ({_native.error}); "
                f"using the slower {name} backend",
                RuntimeWarning,
                stacklevel=4,
            )
        return name
    if name not in BACKENDS:
        raise ValueError(f"Invalid backend: {name!r} (choose from 'auto', {', '.join(map(repr, BACKENDS))})")
    if name not in available():
        why = f": {_native.error}" if name == "cpp" else " (numba is not installed)"
        raise RuntimeError(f"backend {name!r} is not available{why}")
    return name


def step(backend, rule, plan, params, grads, states):
    """Validates and runs one step of ``rule`` on ``backend`` (a name, or None for the default).
    ``states`` holds the caller's argument for each of ``rule.states``, in that order (see
    ``_validate.operands``)."""
    backend = resolve(backend)
    if backend == "cpp":
        # The extension recognizes the common case itself, in microseconds for hundreds of
        # tensors, and steps it; anything else it declines untouched, for the validator to
        # judge (and word the error) below.
        if getattr(_kernels, rule.name)(params, grads, states, _used(plan), plan.scalars, _bits(plan.flags)):
            return
    params, grads, slots = operands(rule, plan, params, grads, states)
    run(backend, rule, plan, params, grads, slots)


def prepare(backend, rule, plan, params, grads, states):
    """Checks one step as ``step`` does, without taking it; returns the function that takes it."""
    backend = resolve(backend)
    if backend == "cpp":
        kernel = getattr(_kernels, rule.name)
        args = (params, grads, states, _used(plan), plan.scalars, _bits(plan.flags))
        if kernel(*args, run=False):
            return functools.partial(kernel, *args)
    return functools.partial(run, backend, rule, plan, *operands(rule, plan, params, grads, states))


def run(backend, rule, plan, params, grads, slots):
    """Runs one validated step. ``slots`` follows ``rule.states``, None where unused."""
    if not params:
        return
    if backend == "cpp":
        # The kernels round each double scalar to the compute dtype once, exactly as
        # np.float32(x) does for the other backends.
        if not getattr(_kernels, rule.name)(params, grads, tuple(slots), _used(plan), plan.scalars, _bits(plan.flags)):
            raise AssertionError(f"the cpp backend declined a validated {rule.name} step")
        return
    dtype = params[0].dtype
    scalars = type(plan.scalars)(*np.array(plan.scalars, dtype=dtype))
    if backend == "numpy":
        kernel = getattr(reference, rule.name)
        for i, (param, grad) in enumerate(zip(params, grads)):
            kernel(param, grad, *(s[i] if s is not None else None for s in slots), scalars, plan.flags)
        return
    from . import _numba  # compiles on first use, so importing fusedoptim stays fast

    kernel = getattr(_numba, rule.name)
    unused = np.empty(0, dtype)
    for i, (param, grad) in enumerate(zip(params, grads)):
        states = (s[i].reshape(-1) if s is not None else unused for s in slots)
        kernel(param.reshape(-1), grad.reshape(-1), *states, scalars, plan.flags)


# Memoized: a rule has a handful of flag combinations, and this runs on every step.
_flag_bits = {}
_used_bits = {}


def _bits(flags):
    bits = _flag_bits.get(flags)
    if bits is None:
        bits = _flag_bits[flags] = sum(1 << k for k, on in enumerate(flags) if on)
    return bits


def _used(plan):
    """Bit k set when the step updates state slot k."""
    bits = _used_bits.get(plan.uses)
    if bits is None:
        bits = _used_bits[plan.uses] = sum(1 << k for k, on in enumerate(plan.uses) if on)
    return bits
