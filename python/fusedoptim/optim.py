"""Stateful optimizers over NumPy arrays, with torch.optim's param groups and state_dict layout.

An optimizer owns its state buffers (cache-line aligned) and the per-param step count.
``step(grads)`` takes the gradients in the order of the params across all groups (a single
array when there is one param); a ``None`` gradient skips its param, as torch skips a param
whose ``.grad`` is None. Each group is stepped in one multi-tensor call per dtype and step count.

A step is all or nothing. Every group and bucket is checked (hyperparameters, shapes, dtypes,
overlaps across the whole step) before any param, state or step count changes, and bad input
raises TypeError / ValueError naming the param by its position across all groups, as
``step(grads)`` takes it. A Ctrl-C during a step takes effect once the step is complete.
Params are checked when they are added: each must be a writeable float64, float32, bfloat16
(``ml_dtypes.bfloat16``) or float16 ndarray with memory of its own, dense in some order. Grads
may be in their param's dtype or another of float32, bfloat16, float16; states are kept in each
param's dtype, or in float32 with ``state_dtype="float32"``. A Fortran-ordered param (or any
transpose of a C-contiguous one) is stepped in its memory order, as its C-contiguous transpose,
with state buffers in the same layout; LAMB's norm of it then sums in that order. bfloat16 and
float16 params may keep a float32 master copy (``master_weights=True``) or round stochastically or
with Kahan compensation (``rounding=``, ``seed``); ``step(grads, grad_scale=, found_inf=)`` takes a
loss scale (``_storage``).

Beyond the rule's hyperparameters, every class takes the layer's options: ``state_dtype`` and
(``_api.NUMPY_OPTIONS``) ``backend`` and ``skip_nonfinite``. ``lr`` may be a schedule: a function
of the step number (see ``Stateful._plan``). ``clip_grad_norm_`` clips the grads before a step.

Every class here is made from its entry in the rule registry (``_rules.OPTIMIZERS``).
"""

from __future__ import annotations

import copy
import operator
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import _api, _backends
from ._engine import State, Stateful
from ._memory import continuing, packed_empty
from ._rules import OPTIMIZERS, flag
from ._validate import check_param, dense_order, find_overlap


class _Ready:
    """The usual step made ready: one group whose params all have a grad, their state and the same
    count, stepped plainly (no param modes, loss scale, skipping or host state) by one call that
    checks and steps it. Made after a step, from what it took; taken while nothing it holds has
    changed: the state (``State.edits``), the group and its params (by identity) and the layer's options.
    The hyperparameters are read from the group and planned at every step, so a change to them is
    seen as a fresh step sees it."""

    __slots__ = ("state", "edits", "group", "params", "held", "entries", "uses", "states", "name", "options")

    def __init__(self, **fields):
        for name, value in fields.items():
            setattr(self, name, value)
    # state: the optimizer's state object; edits: its edits when made; group, params: the group and its
    # list; held: a copy of the list (its items replaced in place are seen); entries: each param's
    # state entry (each holding the steps every param has taken); uses, states: the used state slots
    # and, per slot, the buffers (None: unused); name: the namer of errors; options: ``Optimizer._options``.


class Optimizer(Stateful):
    """Base class: a stateful optimizer over one rule, on NumPy arrays."""

    _viewed = False

    def __init__(self, params, defaults, backend=None, skip_nonfinite=False, state_dtype=None, master_weights=False,
                 rounding="nearest", seed=0):
        self.defaults = defaults
        _backends.resolve(backend)  # an unknown or unavailable backend could never step
        self.backend = backend
        self._set_state_dtype(state_dtype)
        self._set_precision(master_weights, rounding, seed)
        #: With True, a step whose grads hold inf or NaN changes nothing (params, state, step counts),
        #: as torch's GradScaler skips it, and ``step`` returns False.
        self.skip_nonfinite = flag("skip_nonfinite", skip_nonfinite)
        self.param_groups = []
        self.state = State()  # param index (position across all groups) -> {"step": int, state name: array}
        if isinstance(params, dict):  # list() would take its keys for params
            raise TypeError("params must be an array, or a list of arrays or of param groups, got dict (a lone "
                            "group goes in a list)")
        groups = [params] if isinstance(params, (np.ndarray, np.generic)) else list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Adds a dict with "params" (an array or a list of arrays) and overrides of the defaults."""
        if not isinstance(group, dict):
            raise TypeError(f"param group must be a dict, got {type(group).__name__}")
        params = group["params"]
        params = [params] if isinstance(params, (np.ndarray, np.generic)) else list(params)
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise ValueError(f"param group has unknown hyperparameters: {sorted(unknown)}")
        group = {**self.defaults, **group, "params": params}
        existing = self._params()
        seen = {id(p) for p in existing}
        for j, p in enumerate(params):
            check_param(p, f"params[{len(existing) + j}]")  # one that no step could update fails now
            self._check_modes([p.dtype.name], f"params[{len(existing) + j}]")
            if id(p) in seen:
                raise ValueError("some parameters appear in more than one parameter group")
            seen.add(id(p))
        clash = find_overlap(existing + params)
        if clash is not None:  # each would be stepped as if the other did not exist
            raise ValueError(f"params[{clash[0]}] and params[{clash[1]}] overlap in memory; each param must have "
                             f"memory of its own")
        self._check_group(self._hyper(group), {p.dtype for p in params})
        self.param_groups.append(group)
        if not all(p.flags.c_contiguous for p in params):
            self._viewed = True  # the kernel takes such params, their grads and states in memory order

    # --- How the arrays are stepped (see Stateful) ---

    def _new_states(self, params, fill, name=None):
        """State buffers on cache lines, packed as their params are (``_memory.packed_empty``), each
        laid out as its param is (its memory order), in the state dtype."""
        dtypes = [self._state_dtype(param.dtype, name) for param in params]
        raws = packed_empty([param.size * dtype.itemsize for param, dtype in zip(params, dtypes)],
                            continuing([(param.ctypes.data, param.nbytes, param.dtype) for param in params]))
        buffers = []
        for param, dtype, raw in zip(params, dtypes, raws):
            order = self._order(param)
            if order is None:
                buffer = raw.view(dtype).reshape(param.shape)
            else:
                buffer = raw.view(dtype).reshape([param.shape[d] for d in order]).transpose(np.argsort(order))
            buffer[...] = param if fill is None else fill
            buffers.append(buffer)
        return buffers

    def _order(self, param):
        return None if param.flags.c_contiguous else dense_order(param)

    def _writable(self, array, order, copies):
        return array if order is None else array.transpose(order)

    def _readable(self, grad, order):
        if order is None:
            return grad
        try:
            grad = np.asarray(grad)
        except Exception:  # the validator names what is wrong with it
            return grad
        return grad.transpose(order) if grad.ndim == len(order) else grad

    def _namer(self, indices):
        """Names operand k of a call over the params at ``indices`` as step()'s user knows it:
        by its position across all groups (``grads[3]``, ``state[3]['exp_avg']``)."""

        def name(arg, k):
            i = indices[k]
            label = f"{arg}[{i}]" if arg in ("params", "grads") else f"state[{i}][{self._state_name(arg)!r}]"
            if len(self.param_groups) > 1:
                g, j = next((g, i - ix.start) for g, (_, ix) in enumerate(self._indexed()) if i in ix)
                label += f" (param {j} of group {g})"
            if not self._params()[i].flags.c_contiguous:
                label += " (as the param's transpose, in its memory order)"  # the shapes an error shows
            return label

        return name

    def _indexed(self):
        """Each group with the range of its params' indices across all groups."""
        i = 0
        for group in self.param_groups:
            yield group, range(i, i + len(group["params"]))
            i += len(group["params"])

    def step(self, grads: ArrayLike | Sequence[ArrayLike | None], *, grad_scale: float | None = None,
             found_inf: bool = False) -> bool:
        """Takes one step for every param with a gradient (``grads`` in the order of the params across
        all groups; None skips a param). Loss scaling: every grad is divided by ``grad_scale`` inside
        the kernel; with ``found_inf`` true the step changes nothing (no param, state or step count),
        after checking its input as any step does. Returns False when the step was skipped
        (``found_inf``, ``skip_nonfinite``), else True."""
        grads = [grads] if isinstance(grads, np.ndarray) else list(grads)
        ready = self.__dict__.get("_ready")
        if ready is not None and grad_scale is None and found_inf is False and self._take_ready(ready, grads):
            return True
        indexed = list(self._indexed())
        n = indexed[-1][1].stop
        if len(grads) != n:
            raise ValueError(f"grads has {len(grads)} entries but the optimizer has {n} params")
        work = []
        for g, (group, indices) in enumerate(indexed):
            keys, params, group_grads = indices, group["params"], grads[indices.start:indices.stop]
            if type(None) in map(type, group_grads):  # not `None in`: == on arrays
                keys, params, group_grads = map(list, zip(*[(i, p, g) for i, p, g in zip(keys, params, group_grads)
                                                            if g is not None]) or ([], [], []))
            work.append((self._group_hyper(g, group), keys, params, group_grads))
        self.__dict__.pop("_ready", None)
        taken = self._take_step(work, grad_scale, found_inf)
        if taken and work[0][1] is indexed[0][1] and grad_scale is None and found_inf is False:
            self._make_ready(*work[0])
        return taken

    def __getstate__(self):
        """Without the ready step: a copy's state and params are its own (and the step's namer is a closure)."""
        return {k: v for k, v in self.__dict__.items() if k != "_ready"}

    def _options(self):
        """What a ``_Ready`` step assumes of the layer's options (any of them may be set after a step)."""
        return (self.backend, self.skip_nonfinite, self._rounding, self._master_weights, self._viewed,
                len(self.param_groups))

    def _make_ready(self, hyper, keys, params, grads):
        """Makes the step just taken by the only group (every param had a grad) ``_Ready``, if it was the usual step."""
        if (self._options()[1:] != (False, "nearest", False, False, 1) or self.spec.rule.host_states
                or type(self.state) is not State or len({p.dtype for p in params}) > 1):
            return
        entries = list(map(self.state.get, keys))
        if not entries or not self.state.owns(entries):
            return
        count = entries[0]["step"]
        if any(entry["step"] != count for entry in entries):
            return
        group = self.param_groups[0]
        self.__dict__["_ready"] = _Ready(state=self.state, edits=self.state.edits, group=group, params=group["params"],
                                         held=list(params), entries=entries, uses=None, states=None,
                                         name=self._namer(keys), options=self._options())

    def _take_ready(self, ready, grads):
        """Takes the ``_Ready`` step when nothing it holds has changed; False: the step is to be taken afresh."""
        group = ready.group
        params = group["params"]
        if (self.state is not ready.state or ready.edits != ready.state.edits or self.param_groups[0] is not group
                or params is not ready.params or len(params) != len(grads) or len(params) != len(ready.held)
                or not all(map(operator.is_, params, ready.held)) or type(None) in map(type, grads)
                or self._options() != ready.options):
            return False
        count = ready.entries[0]["step"] + 1  # (every entry's: one record sets them all)
        plan = self._group_plan(0, group, count)
        if plan.uses != ready.uses:  # the first step taken ready, or amsgrad switched
            names = [state.name if on else None for state, on in zip(self.spec.rule.states, plan.uses)]
            try:
                ready.states = tuple(None if name is None else [entry[name] for entry in ready.entries]
                                     for name in names)
            except KeyError:  # a state this step creates
                return False
            ready.uses = plan.uses
        # The counts recorded with the step, as dict.update sets them (entry["step"] = count would count as an edit).
        _backends.step(self.backend, self.spec.rule, plan, ready.held, grads, ready.states, ready.name,
                       record=(ready.entries, "step", count))
        return True

    def _params(self):
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self) -> dict[str, Any]:
        """{"state": {index: {"step": int, name: array copy}}, "param_groups": [{..., "params": [index]}]}."""
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": list(ix)} for g, ix in self._indexed()]
        state = {i: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
                 for i, s in self.state.items()}
        return {"state": state, "param_groups": copy.deepcopy(groups)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores hyperparameters and state; arrays are copied into buffers this optimizer owns."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for saved, (group, indices) in zip(groups, self._indexed()):
            if len(saved["params"]) != len(indices):
                raise ValueError("loaded state dict contains a parameter group that doesn't match the size of optimizer's group")
        host_states = self.spec.rule.host_states
        new_state = State()
        params = self._params()
        for saved, (group, indices) in zip(groups, self._indexed()):
            columns = {}  # state name -> [(index, saved array)]: each name's buffers made at once, packed
            for saved_index, i in zip(saved["params"], indices):
                entry = state_dict["state"].get(saved_index)
                if entry is None:
                    continue
                new_state[i] = new_state.entry()
                for k, v in entry.items():
                    if k == "step" or k in host_states:
                        new_state[i][k] = int(v) if k == "step" else float(v)
                        continue
                    v = np.asarray(v)
                    if v.shape != params[i].shape:
                        raise ValueError(f"state {k!r} of param {i} has shape {v.shape}, the param {params[i].shape}")
                    columns.setdefault(k, []).append((i, v))
            for k, column in columns.items():
                for (i, v), buf in zip(column, self._new_states([params[i] for i, _ in column], 0.0, k)):
                    with np.errstate(over="ignore"):
                        buf[...] = v  # rounded to nearest even, as a step stores
                    new_state[i][k] = buf
        for saved, group in zip(groups, self.param_groups):
            group.update({k: copy.deepcopy(v) for k, v in saved.items() if k != "params"})
        self.state = new_state

    def __repr__(self):
        """The class, the layer's options, and per group: its params, their steps and its hyperparameters."""
        backend = self.backend or f"auto: {_backends.resolve(None)}"
        lines = [f"{type(self).__name__}(backend={backend!r}, skip_nonfinite={self.skip_nonfinite}"]
        for g, (group, indices) in enumerate(self._indexed()):
            params = group["params"]
            dtypes = "/".join(sorted({p.dtype.name for p in params}))
            steps = sorted({self.state.get(i, {}).get("step", 0) for i in indices})
            taken = f"{steps[0]} to {steps[-1]}" if len(steps) > 1 else steps[0]
            lines.append(f"  group {g}: {len(params)} param{'s' * (len(params) != 1)}, "
                         f"{sum(p.size for p in params):,} {dtypes} elements, {taken} step{'s' * (steps != [1])} taken")
            hyper = ", ".join(f"{k}={v!r}" for k, v in group.items() if k != "params")
            lines += textwrap.wrap(hyper, 100, initial_indent="    ", subsequent_indent="    ")
        return "\n".join(lines) + ")"


def stateful(spec, base=Optimizer):
    """The NumPy optimizer class of an optimizer: its signature and defaults from the registry, then
    the layer's options."""
    signature = _api.class_signature(spec, _api.NUMPY_OPTIONS, hints={
        "params": "ArrayLike | Iterable[ArrayLike] | Iterable[dict[str, Any]]", "lr": "float | Callable[[int], float]"})
    hyper = [name for name in signature.parameters if name in spec.rule.hyper]
    defaults = ", ".join([f"{name}={name}" for name in hyper] + [f"{name}=_fixed_{name}" for name in spec.fixed])
    options = "".join(f", {p.name}={p.name}" for p in _api.NUMPY_OPTIONS)
    init = _api.compile_function("__init__", signature,
                                 f"    Optimizer.__init__(self, params, dict({defaults}), state_dtype=state_dtype{options}, "
                                 f"master_weights=master_weights, rounding=rounding, seed=seed)\n",
                                 {"Optimizer": Optimizer, **{f"_fixed_{k}": v for k, v in spec.fixed.items()}},
                                 None)
    doc = _api.docstring(spec, signature, f"Stateful :func:`fusedoptim.{spec.functional}`: {spec.doc}")
    return type(spec.name, (base,), {"__init__": init, "__doc__": doc, "spec": spec, "__module__": __name__})


SGD = stateful(OPTIMIZERS["SGD"])
Adagrad = stateful(OPTIMIZERS["Adagrad"])
RMSprop = stateful(OPTIMIZERS["RMSprop"])
Adam = stateful(OPTIMIZERS["Adam"])
AdamW = stateful(OPTIMIZERS["AdamW"], base=Adam)
Adamax = stateful(OPTIMIZERS["Adamax"])
Adadelta = stateful(OPTIMIZERS["Adadelta"])
RAdam = stateful(OPTIMIZERS["RAdam"])
NAdam = stateful(OPTIMIZERS["NAdam"])
Lion = stateful(OPTIMIZERS["Lion"])
Lamb = stateful(OPTIMIZERS["Lamb"])
ASGD = stateful(OPTIMIZERS["ASGD"])
Rprop = stateful(OPTIMIZERS["Rprop"])
