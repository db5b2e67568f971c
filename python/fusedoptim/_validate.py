"""The one place a step's arrays are checked, before any memory is touched."""

from __future__ import annotations

import numpy as np

from . import _native

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_byte_bounds = getattr(np.lib, "array_utils", np).byte_bounds  # moved in NumPy 2

_find_overlap_native = getattr(_native.module(), "find_overlap", None)


def _find_overlap_python(arrays):
    """Same contract as the native ``find_overlap``: the indices of two overlapping arrays, or None."""
    spans = sorted(
        (*_byte_bounds(a), i) for i, a in enumerate(arrays) if a.size
    )
    reach, owner = 0, -1
    for low, high, i in spans:
        if owner >= 0 and low < reach:
            return owner, i
        if high > reach:
            reach, owner = high, i
    return None


find_overlap = _find_overlap_native or _find_overlap_python


def _as_array(value, name):
    if type(value) is np.ndarray:
        return value
    try:
        return np.asarray(value)  # anything exposing the buffer or array protocol, without a copy
    except Exception as e:
        raise TypeError(f"{name} must be a NumPy array or expose the buffer protocol, got {type(value).__name__}") from e


def _as_list(value, name, single):
    if single:
        return [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of arrays when params is a list, got {type(value).__name__}")
    return value


def operands(rule, plan, params, grads, states):
    """Checks a whole step; returns (params, grads, slots) as lists of arrays.

    ``states`` holds what the caller passed for each of ``rule.states``, in that (kernel slot)
    order: a list, a single array, or None. ``slots`` has a list of arrays for each state the
    step uses and None for the others. Raises TypeError / ValueError naming the argument (the
    functional's name for it: ``State.arg``).
    """
    single = not isinstance(params, (list, tuple))
    params = [_as_array(p, "params") for p in _as_list(params, "params", single)]
    n = len(params)

    def listed(value, name):
        value = _as_list(value, name, single)
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} arrays but params has {n}")
        return value

    grads = listed(grads, "grads")
    args = [state.arg for state in rule.states]
    slots = []
    for state, arg, value, used in zip(rule.states, args, states, plan.uses):
        if not used:
            slots.append(None)
        elif value is None:
            raise ValueError(f"{arg} is required: this step updates {state.name}")
        else:
            slots.append(listed(value, arg))

    checked_grads, checked_slots = [], [[] if s is not None else None for s in slots]
    dtype = params[0].dtype if n else None
    for i, param in enumerate(params):
        where = f"[{i}]" if not single else ""
        if param.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"params{where} has dtype {param.dtype}; supported: float32, float64")
        if param.dtype != dtype:
            raise TypeError(f"params{where} is {param.dtype} but params[0] is {dtype}: one call steps one dtype")
        _check_writable(param, f"params{where}")
        grad = _as_array(grads[i], "grads")
        _check_like(grad, param, f"grads{where}", where)
        if not grad.flags.c_contiguous:
            grad = np.ascontiguousarray(grad)  # read only, so a contiguous copy is as good
        checked_grads.append(grad)
        for arg, given, slot in zip(args, slots, checked_slots):
            if slot is None:
                continue
            arg += where
            buf = _as_array(given[i], arg)
            _check_like(buf, param, arg, where)
            _check_writable(buf, arg)
            slot.append(buf)

    everything = params + checked_grads + [b for slot in checked_slots if slot for b in slot]
    clash = find_overlap(everything) if len(everything) > 1 else None
    if clash is not None:
        names = _operand_names(n, args, checked_slots, single)
        raise ValueError(f"{names[clash[0]]} and {names[clash[1]]} overlap in memory; every operand must be distinct")
    return params, checked_grads, checked_slots


def _check_like(array, param, name, where):
    if array.shape != param.shape:
        raise ValueError(f"{name} has shape {array.shape} but params{where} has shape {param.shape}")
    if array.dtype != param.dtype:
        raise TypeError(f"{name} is {array.dtype} but params{where} is {param.dtype}")


def _check_writable(array, name):
    if not array.flags.writeable:
        raise ValueError(f"{name} is read-only; it is updated in place")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name} is not C-contiguous; it is updated in place, so it cannot be copied")


def _operand_names(n, args, slots, single):
    def at(i):
        return "" if single else f"[{i}]"

    names = [f"params{at(i)}" for i in range(n)] + [f"grads{at(i)}" for i in range(n)]
    for arg, slot in zip(args, slots):
        if slot is not None:
            names += [f"{arg}{at(i)}" for i in range(n)]
    return names
