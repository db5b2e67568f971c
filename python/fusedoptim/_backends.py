"""Backend choice and the one door to the kernels: a step, checked, on a backend."""

from __future__ import annotations

import contextlib
import importlib.util
import threading
import warnings
from typing import Callable, NamedTuple

import numpy as np

# The signal module's own functions wrap every handler in an enum, at about 3 us a call: more
# than a small step costs. Its C half takes and returns the handlers as they are.
import _signal

from . import _fpenv, _native, _storage, reference
from ._rules import Plan
from ._rules import real
from ._validate import default_name, distinct, operands, unscale_operands

BACKENDS = ("cpp", "numba", "numpy")

_kernels = _native.module()

_HAVE_NUMBA = importlib.util.find_spec("numba") is not None
_AVAILABLE = tuple(b for b, ok in zip(BACKENDS, (_kernels is not None, _HAVE_NUMBA, True)) if ok)
_warned_fallback = False
from ._env import BACKEND as _env_backend  # validated at import (any case; empty = auto)


def available() -> tuple[str, ...]:
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


def step(backend, rule, plan, params, grads, states, name=None, reduce=None, precision=_storage.PLAIN,
         found_inf=False, record=None):
    """Validates and runs one step of ``rule`` on ``backend`` (a name, or None for the default).
    ``states`` holds the caller's argument for each of ``rule.states``, in that order; ``name``
    names operands in errors (see ``_validate.operands``). ``reduce`` (two-pass rules) is called
    between the passes with each tensor's sums, a float64 array (tensors x sums) it may change
    in place: a tensor sharded across processes takes the totals of all its shards.
    ``precision`` (``_storage.Precision``) sets the params' modes and the loss scale. With
    ``found_inf`` the step is checked, not run. ``record``, (dicts, key, value), is the caller's
    record of the step taken: the value is set in each dict as ``dict.update`` sets it, with no
    Ctrl-C between the step and it."""
    backend = resolve(backend)
    if backend == "cpp" and (precision is _storage.PLAIN or precision.plain()) and not found_inf:
        # The extension recognizes the common case itself, in microseconds for hundreds of
        # tensors, and steps it; anything else it declines untouched, for the validator to
        # judge (and word the error) below.
        # (Positional: pybind11 matches a keyword argument in about 0.5 us, a quarter of a small step.)
        if getattr(_kernels, rule.name)(params, grads, states, _used(plan), plan.scalars, _bits(plan.flags), False,
                                        False, reduce, None, record):
            return
    params, grads, slots, precision = operands(rule, plan, params, grads, states, name, precision)
    if not found_inf:
        with deferred_interrupts() if record else contextlib.nullcontext():
            run(backend, rule, plan, params, grads, slots, reduce, precision)
            if record:
                dicts, key, value = record
                for recorded in dicts:
                    dict.__setitem__(recorded, key, value)
    elif params:
        compute_scalars(rule, plan, params[0].dtype)  # checked as run checks it


class Call(NamedTuple):
    """One multi-tensor kernel call of a step of several (param groups, dtypes): ``step``'s
    arguments, with lists of operands."""

    plan: Plan
    params: list
    grads: list
    states: tuple
    name: Callable | None = None
    reduce: Callable | None = None
    precision: _storage.Precision = _storage.PLAIN


def check(backend, rule, calls, across=True):
    """Checks every call of a step, and with ``across`` the overlaps between calls, stepping
    nothing; returns each call as ``run``'s arguments (plan, params, grads, slots, reduce)."""
    ready = []
    for plan, params, grads, states, name, reduce, precision in calls:
        if backend == "cpp" and precision.plain() and getattr(_kernels, rule.name)(
                params, grads, states, _used(plan), plan.scalars, _bits(plan.flags), check_only=True):
            slots = [value if used else None for value, used in zip(states, plan.uses)]
            ready.append((plan, list(params), list(grads), slots, reduce, precision))  # as the fast path would step them
            continue
        params, grads, slots, precision = operands(rule, plan, params, grads, states, name, precision)
        if params:
            compute_scalars(rule, plan, params[0].dtype)  # raises for a scalar the dtype cannot hold
        ready.append((plan, params, grads, slots, reduce, precision))
    if across and len(ready) > 1:
        _distinct_calls(rule, calls, ready)
    return ready


def _distinct_calls(rule, calls, ready):
    """``_validate.distinct`` over the operands of every call, read-only grads last."""
    written, read, blocks = [], [], []  # blocks: (first index in written + read, call, argument)
    for c, (_, params, grads, slots, _, precision) in enumerate(ready):
        used = [(state.arg, slot) for state, slot in zip(rule.states, slots) if slot is not None]
        modes = [(arg, arrays) for arg, arrays in [("master_params", precision.masters),
                                                   ("compensations", precision.compensations)] if arrays is not None]
        for arg, arrays in [("params", params), *used, *modes]:
            blocks.append((len(written), c, arg))
            written += arrays
    for c, (_, _, grads, *_) in enumerate(ready):
        blocks.append((len(written) + len(read), c, "grads"))
        read += grads

    def name(k):
        start, c, arg = [block for block in blocks if block[0] <= k][-1]
        return (calls[c].name or default_name(False))(arg, k - start)

    read = iter(distinct(written, read, name))
    for _, _, grads, *_ in ready:
        grads[:] = [next(read) for _ in grads]  # with any copies distinct() made


def run(backend, rule, plan, params, grads, slots, reduce=None, precision=_storage.PLAIN):
    """Runs one validated step. ``slots`` follows ``rule.states``, None where unused; ``reduce`` and
    ``precision`` as in ``step``."""
    if not params:
        return
    with _fpenv.contract():  # the caller's MXCSR (flush-to-zero, say) must not change a result
        scalars = compute_scalars(rule, plan, params[0].dtype)
        # Rounded once to the compute dtype, as the scalars; a scale that overflows it (1e300 on
        # float32) is Inf, and every grad divided by it is zero or NaN, as the reference divides.
        with np.errstate(over="ignore"):
            grad_scale = float(scalars[0].dtype.type(precision.grad_scale))
        if backend == "cpp":
            # The kernels round each double scalar to the compute dtype once, exactly as
            # compute_scalars does, under the same environment.
            modes = None if precision.plain() else (
                precision.masters, precision.compensations, precision.keys,
                _storage.ROUNDINGS.index(precision.rounding), grad_scale)
            if not getattr(_kernels, rule.name)(params, grads, tuple(slots), _used(plan), plan.scalars,
                                                _bits(plan.flags), validated=True, reduce_sums=reduce, modes=modes):
                raise AssertionError(f"the cpp backend declined a validated {rule.name} step")
            return
        if backend == "numpy":
            kernel = getattr(reference, rule.name)
            # Each tensor steps on copies (widened to the compute dtype, _storage.widened), whose
            # results are copied back once all are done, with Ctrl-C deferred: an exception part way
            # (MemoryError, KeyboardInterrupt) leaves every operand as it was, as the cpp backend's
            # one native call does. The copies cost memory, not bits.
            states_of = [[s[i] if s is not None else None for s in slots] for i in range(len(params))]
            staged = [_storage.widened(param, grad, states, *precision.of(i)[:2], grad_scale)
                      for i, (param, grad, states) in enumerate(zip(params, grads, states_of))]
            operands = [wide for wide, _ in staged]
            wide_grads = [grad for _, grad in staged]
            if reduce is not None:
                _two_passes(reference, rule, operands, wide_grads, scalars, plan.flags, reduce)
            else:
                for (param, *states), grad in zip(operands, wide_grads):
                    kernel(param, grad, *states, scalars, plan.flags)
            results = [_storage.narrowed(wide, param, states, *precision.of(i), precision.rounding)
                       for i, (wide, param, states) in enumerate(zip(operands, params, states_of))]
            with deferred_interrupts():
                for written in results:
                    for array, new in written:
                        np.copyto(array, new)
            return
        from . import _numba  # compiles on first use, so importing fusedoptim stays fast

        kernel = getattr(_numba, rule.name)
        unused = np.empty(0, scalars[0].dtype)
        view = _numba.storage_view
        with deferred_interrupts():  # one jitted call per tensor: a Ctrl-C between two waits for the rest
            flat = [[view(param), *(view(s[i]) if s is not None else unused for s in slots)]
                    for i, param in enumerate(params)]
            grads = [view(grad) for grad in grads]
            modes = not precision.plain()
            if modes:  # the param and grad the rule steps, staged as _storage.widened says
                for i, operands in enumerate(flat):
                    operands[0], grads[i] = _numba.stage_in(operands[0], grads[i], scalars, *precision.of(i)[:2],
                                                            grad_scale)
            if reduce is not None:
                _two_passes(_numba, rule, flat, grads, scalars, plan.flags, reduce)
            else:
                for (param, *states), grad in zip(flat, grads):
                    kernel(param, grad, *states, scalars, plan.flags)
            if modes:
                for i, (param, operands) in enumerate(zip(params, flat)):
                    _numba.stage_out(operands[0], view(param), scalars, *precision.of(i)[1:], precision.rounding)


def _two_passes(module, rule, operands, grads, scalars, flags, reduce):
    """A two-pass rule's step on the NumPy or numba kernels of ``module``, with ``reduce`` between
    the passes: ``operands`` holds each tensor's [param, *states] (unused states included)."""
    first, second = getattr(module, rule.name + "_sums"), getattr(module, rule.name + "_update")
    sums = np.array([first(param, grad, *states, scalars, flags) for (param, *states), grad in zip(operands, grads)],
                    dtype=np.float64)
    reduce(sums)
    for (param, *states), row in zip(operands, sums):
        second(param, *states, tuple(row), scalars, flags)


def unscale_and_check(backend, grads, inv_scale):
    """Validates, then multiplies every grad by ``inv_scale`` in place (_storage.unscale); returns
    whether any result is Inf or NaN."""
    backend = resolve(backend)
    grads = unscale_operands(grads)
    inv_scale = real("inv_scale", inv_scale)
    if not grads:
        return False
    with _fpenv.contract(), deferred_interrupts():
        if backend == "cpp":
            return _kernels.unscale_and_check(grads, inv_scale)
        found = False
        for grad in grads:
            compute = _storage.compute_dtype(grad.dtype)
            if backend == "numpy":
                new, bad = _storage.unscale(grad, inv_scale)
                np.copyto(grad, new)
            else:
                from . import _numba

                bad = _numba.unscale(_numba.storage_view(grad), compute.type(inv_scale), np.empty(0, compute))
            found |= bool(bad)
        return found


def compute_scalars(rule, plan, param_dtype):
    """The plan's scalars rounded once to the compute dtype of ``param_dtype`` params, as every
    backend computes with them (the cpp kernels round each double exactly so, and the fast path
    declines what this rejects). Raises ValueError for a scalar finite in double but not in the
    compute dtype (lr=1e300 on float32, or a step_size that outgrows float32)."""
    dtype = _storage.compute_dtype(param_dtype)
    with np.errstate(over="ignore"):
        rounded = np.array(plan.scalars, dtype=dtype)
    if not np.isfinite(rounded).all():
        k = int(np.flatnonzero(~np.isfinite(rounded))[0])
        field, value = plan.scalars._fields[k], plan.scalars[k]
        derived = "" if field in rule.hyper else \
            f" ({rule.name}'s {field} is computed from this step's hyperparameters)"
        raise ValueError(f"Invalid {field}: {value:g} is not finite in {dtype.name}, the compute dtype of "
                         f"{np.dtype(param_dtype).name} params{derived}")
    return type(plan.scalars)(*rounded)


class deferred_interrupts:
    """A block that Ctrl-C cannot split: SIGINT received inside is delivered when it exits.

    Python runs signal handlers in the main thread only, between bytecodes; elsewhere there is
    nothing to defer. A handler Python did not install (None) cannot be restored, and SIG_IGN
    and SIG_DFL are not run between bytecodes: those are left as they are.
    """

    __slots__ = ("_previous", "_caught")

    def __enter__(self):
        self._previous, self._caught = None, False
        if threading.current_thread() is threading.main_thread():
            previous = _signal.getsignal(_signal.SIGINT)
            if callable(previous):
                self._previous = previous
                _signal.signal(_signal.SIGINT, self._record)
        return self

    def _record(self, signum, frame):
        self._caught = True

    def __exit__(self, *exc):
        if self._previous is not None:
            _signal.signal(_signal.SIGINT, self._previous)
            if self._caught:
                _signal.raise_signal(_signal.SIGINT)  # the caller's handler runs now (KeyboardInterrupt)


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
