"""Backend choice and the hand-off of one validated step to a backend."""

from __future__ import annotations

import importlib.util
import os
import warnings

import numpy as np

from . import reference
from ._validate import operands

BACKENDS = ("cpp", "numba", "numpy")

try:
    from . import _kernels
except ImportError as e:  # a source checkout without a build, or a platform without a wheel
    _kernels, _kernels_error = None, e
else:
    _kernels_error = None

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
                f"fusedoptim: the C++ extension could not be imported ({_kernels_error}); "
                f"using the slower {name} backend",
                RuntimeWarning,
                stacklevel=4,
            )
        return name
    if name not in BACKENDS:
        raise ValueError(f"Invalid backend: {name!r} (choose from 'auto', {', '.join(map(repr, BACKENDS))})")
    if name not in available():
        why = f": {_kernels_error}" if name == "cpp" else " (numba is not installed)"
        raise RuntimeError(f"backend {name!r} is not available{why}")
    return name


def step(backend, rule, plan, params, grads, states):
    """Validates and runs one step. ``states`` maps the caller's argument for each of
    ``rule.states``, in that order, to what it passed (see ``_validate.operands``)."""
    if backend == "cpp":
        # The extension recognizes the common case itself, in microseconds for hundreds of
        # tensors, and steps it; anything else it declines untouched, for the validator to
        # judge (and word the error) below.
        kernel = getattr(_kernels, rule.name)
        if kernel(params, grads, tuple(states.values()), _used(rule, plan), plan.scalars, _bits(plan.flags)):
            return
    params, grads, slots = operands(rule, plan, params, grads, states)
    run(backend, rule, plan, params, grads, slots)


def run(backend, rule, plan, params, grads, slots):
    """Runs one validated step. ``slots`` follows ``rule.states``, None where unused."""
    if not params:
        return
    if backend == "cpp":
        # The kernels round each double scalar to the compute dtype once, exactly as
        # np.float32(x) does for the other backends.
        if not getattr(_kernels, rule.name)(params, grads, tuple(slots), _used(rule, plan), plan.scalars,
                                            _bits(plan.flags)):
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


def _used(rule, plan):
    """Bit k set when the step updates ``rule.states[k]``."""
    key = (rule.states, plan.states)
    bits = _used_bits.get(key)
    if bits is None:
        bits = _used_bits[key] = sum(1 << k for k, name in enumerate(rule.states) if name in plan.states)
    return bits
