"""The one place a step's arrays are checked, before any memory is touched."""

from __future__ import annotations

import numpy as np

from . import _native, _storage
from ._rules import type_name

# A complex step is the step of the pairs of reals it stores, as torch steps complex params (view_as_real).
COMPLEX_DTYPES = {np.dtype(np.complex64): np.dtype(np.float32), np.dtype(np.complex128): np.dtype(np.float64)}

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


# The checks below take the operand's name as name(arg, i), and call it only to raise: a
# caller's names (the stateful optimizers') can cost more to make than the check itself.

def _as_array(value, name, arg, i):
    """What a step only reads (a grad): any array-like, as an ndarray (a copy if need be)."""
    if type(value) is np.ndarray:
        return value
    try:
        array = np.asarray(value)  # anything exposing the buffer or array protocol, without a copy
    except Exception as e:
        raise TypeError(f"{name(arg, i)} must be a NumPy array or expose the buffer protocol, "
                        f"got {type_name(value)}") from e
    if array.dtype == object:  # None, or a ragged list: np.asarray wraps the objects themselves
        raise TypeError(f"{name(arg, i)} must be a NumPy array or expose the buffer protocol, got {type_name(value)}")
    return array


def _in_place(value, name, arg, i):
    """What a step writes (a param, a state): the ndarray itself, or a view of the object's own
    memory (a writeable buffer such as array.array). np.asarray copies anything else (a list, a
    float, a NumPy scalar such as ``np.abs(x_0d)``), and the update would land in the copy."""
    if type(value) is np.ndarray:
        return value
    try:
        array = np.asarray(value)
    except Exception:
        array = None
    # Two conversions of a copied object are two fresh arrays; a view shares the object's memory.
    # (An empty view has no memory to share: it is still a view if it does not own its data.)
    if array is None or array.dtype == object or not array.flags.writeable or not (
            np.shares_memory(array, value) if array.size else not array.flags.owndata):
        raise TypeError(f"{name(arg, i)} must be a writeable NumPy array (it is updated in place), "
                        f"got {type_name(value)}")
    return array


def _as_list(value, name, single):
    if single:
        return [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of arrays when params is a list, got {type_name(value)}")
    return value


def default_name(single):
    """How the validator names operand i of argument ``arg``: as the caller passed it."""
    return (lambda arg, i: arg) if single else (lambda arg, i: f"{arg}[{i}]")


def operands(rule, plan, params, grads, states, name=None):
    """Checks a whole step; returns (params, grads, slots) as lists of arrays (of reals: a complex
    operand as the pairs of reals it stores).

    ``states`` holds what the caller passed for each of ``rule.states``, in that (kernel slot)
    order: a list, a single array, or None. ``slots`` has a list of arrays for each state the
    step uses and None for the others. Raises TypeError / ValueError naming the argument:
    ``name(arg, i)`` names the i-th operand of argument ``arg`` ("params", "grads" or a state's
    functional argument, ``State.arg``), by default ``arg[i]`` as passed.
    """
    single = not isinstance(params, (list, tuple))
    name = name or default_name(single)
    params = _as_list(params, "params", single)
    n = len(params)

    def listed(value, arg):
        value = _as_list(value, arg, single)
        if len(value) != n:
            raise ValueError(f"{arg} has {len(value)} arrays but params has {n}")
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

    checked_params, checked_grads, checked_slots = [], [], [[] if s is not None else None for s in slots]
    for i in range(n):
        param = _in_place(params[i], name, "params", i)
        _check_param(param, name, "params", i)
        if i and _reals(param).dtype != checked_params[0].dtype:
            raise TypeError(f"{name('params', i)} is {param.dtype} but {name('params', 0)} is "
                            f"{params[0].dtype}: one call steps one precision")
        checked_params.append(_reals(param))
        grad = _as_array(grads[i], name, "grads", i)
        _check_like(grad, param, name, "grads", i, _storage.grad_dtypes(param.dtype))
        if not grad.flags.c_contiguous:
            grad = np.ascontiguousarray(grad)  # read only, so a contiguous copy is as good
        checked_grads.append(_reals(grad))
        for arg, given, slot in zip(args, slots, checked_slots):
            if slot is not None:
                buf = _in_place(given[i], name, arg, i)
                _check_like(buf, param, name, arg, i, _storage.state_dtypes(param.dtype))
                if i and _reals(buf).dtype != slot[0].dtype:
                    raise TypeError(f"{name(arg, i)} is {buf.dtype} but {name(arg, 0)} is {given[0].dtype}: one call "
                                    f"keeps each state in one dtype")
                _check_writable(buf, name, arg, i)
                slot.append(_reals(buf))
    if n:
        checked_grads = _kernel_grads(checked_grads, checked_params[0].dtype)

    written = checked_params + [b for slot in checked_slots if slot for b in slot]
    order = ["params"] + [arg for arg, slot in zip(args, checked_slots) if slot is not None] + ["grads"]
    checked_grads = distinct(written, checked_grads, lambda k: name(order[k // n], k % n) if n else "")
    return checked_params, checked_grads, checked_slots


def distinct(written, read, name):
    """Checks that no array of ``written`` shares memory with any other operand, and returns
    ``read`` with a copy of each array that overlaps an earlier one of ``read``: reading one
    buffer twice is harmless (torch.optim takes one grad tensor for two params), and the copy
    keeps every operand of a kernel call distinct. ``name(k)`` names operand k of written + read."""
    arrays = written + read
    while len(arrays) > 1 and (clash := find_overlap(arrays)) is not None:
        if min(clash) < len(written):
            raise ValueError(f"{name(clash[0])} and {name(clash[1])} overlap in memory; every operand must be distinct")
        later = max(clash)
        arrays[later] = arrays[later].copy()
    return arrays[len(written):]


def check_param(value, label):
    """A param an optimizer keeps (fusedoptim.Adam(params)): one that every step can update, in its
    memory order (see ``dense_order``)."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{label} must be a writeable NumPy array (it is updated in place), got {type_name(value)}")
    if value.dtype in COMPLEX_DTYPES:
        raise TypeError(f"{label} has dtype {value.dtype}; the stateful optimizers step float32 and float64 arrays "
                        f"(the functional API and fusedoptim.torch step complex ones, as pairs of reals)")
    _check_param(value, lambda arg, i: label, "params", 0, any_order=True)


def in_place_arrays(values, arg):
    """What is scaled in place (``clip_grad_norm_``'s grads): an array or a list of them, each a
    writeable float32 or float64 array dense in some order, none sharing memory with another (it
    would be scaled twice). Returns them as C-contiguous views, each in its memory order."""
    single = not isinstance(values, (list, tuple))
    name = default_name(single)
    arrays = []
    for i, value in enumerate(_as_list(values, arg, single)):
        array = _in_place(value, name, arg, i)
        if array.dtype not in (_storage.float32, _storage.float64):
            raise TypeError(f"{name(arg, i)} has dtype {array.dtype}; supported: float32, float64")
        _check_writable(array, name, arg, i, any_order=True)
        arrays.append(array.transpose(dense_order(array)))
    clash = find_overlap(arrays)
    if clash is not None:
        raise ValueError(f"{name(arg, clash[0])} and {name(arg, clash[1])} overlap in memory; each would be scaled "
                         f"twice")
    return arrays


def dense_order(array):
    """The axes of ``array`` from the slowest to the fastest in memory when its elements fill one
    block of memory (C-contiguous, Fortran-ordered, any transpose of those), so that
    ``array.transpose(axes)`` is a C-contiguous view of the same memory; None when no order is (a
    strided slice, a reversed or broadcast view)."""
    if array.flags.c_contiguous:
        return tuple(range(array.ndim))
    axes = tuple(sorted(range(array.ndim), key=lambda d: -array.strides[d]))
    return axes if array.transpose(axes).flags.c_contiguous else None


def _check_param(param, name, arg, i, any_order=False):
    if param.dtype not in _storage.PARAM_DTYPES and param.dtype not in COMPLEX_DTYPES:
        raise TypeError(f"{name(arg, i)} has dtype {param.dtype}; supported: {_storage.names(_storage.PARAM_DTYPES)}, "
                        f"and complex64 and complex128 as pairs of reals")
    _check_writable(param, name, arg, i, any_order)


def _reals(array):
    """A C-contiguous complex array as the pairs of reals it stores (a trailing axis of 2, as torch's
    view_as_real); a real array as it is."""
    real = COMPLEX_DTYPES.get(array.dtype)
    return array if real is None else array.reshape(-1).view(real).reshape(*array.shape, 2)


def _check_like(array, param, name, arg, i, dtypes):
    """Shaped like ``param`` and of one of ``dtypes`` (those an operand of ``param``'s dtype may have;
    a complex param's operands are of its own dtype)."""
    if param.dtype in COMPLEX_DTYPES:
        dtypes = (param.dtype,)
    if array.shape != param.shape:
        raise ValueError(f"{name(arg, i)} has shape {array.shape} but {name('params', i)} has shape {param.shape}")
    if array.dtype not in dtypes:
        raise TypeError(f"{name(arg, i)} is {array.dtype} but {name('params', i)} is {param.dtype}; with "
                        f"{param.dtype} params, {arg} may be {_storage.names(dtypes)}")


def _kernel_grads(grads, param_dtype):
    """The grads as the kernels take them: a call reads grads of one dtype, which the kernels read
    directly; otherwise they are widened to the compute dtype (read-only copies, exactly the values)."""
    dtype = grads[0].dtype
    if dtype in _storage.kernel_grad_dtypes(param_dtype) and all(g.dtype == dtype for g in grads):
        return grads
    compute = _storage.compute_dtype(param_dtype)
    return [g.astype(compute) for g in grads]


def _check_writable(array, name, arg, i, any_order=False):
    """Writeable, and C-contiguous (or, ``any_order``, dense in some order: ``dense_order``)."""
    if not array.flags.writeable:
        raise ValueError(f"{name(arg, i)} is read-only; it is updated in place")
    if any_order and dense_order(array) is None:
        raise ValueError(f"{name(arg, i)} is not dense in memory (a strided or reversed view); it is updated in "
                         f"place, so it cannot be copied")
    if not any_order and not array.flags.c_contiguous:
        raise ValueError(f"{name(arg, i)} is not C-contiguous; it is updated in place, so it cannot be copied")
