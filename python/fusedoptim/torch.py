"""Drop-in replacements for ``torch.optim`` that step CPU tensors through fusedoptim's kernels.

``fusedoptim.torch.Adam(model.parameters(), lr=1e-3)`` is used exactly like ``torch.optim.Adam``:
same class names, arguments, defaults, param groups, ``closure``, ``zero_grad``,
``add_param_group``, LR schedulers, hooks, and the same ``state_dict`` layout (``step`` as a
float32 scalar tensor, ``exp_avg``, ``exp_avg_sq``, ``momentum_buffer``, ``sum``, ...), so a
checkpoint of a ``torch.optim`` optimizer loads into its ``fusedoptim.torch`` twin and back. The
``step`` tensors of a group are 0-d views of one tensor (one op reads their counts, one advances
them); those of a loaded checkpoint are copied into such views.

A step hands each param, its gradient and its state to the kernel as NumPy views of the same
memory, without copies; params with equal step counts and dtype go in one multi-tensor call.
Params whose ``.grad`` is None are skipped. A param stored in another dense layout (a transposed
weight, channels-last) is stepped in its memory order, still without copies; a param that is
not dense (a strided slice of a bigger tensor) is stepped on a contiguous copy that is then
written back. float64, float32, bfloat16 and float16 CPU tensors with dense gradients are
supported (states in each param's dtype, as torch keeps them, or in float32 with
``state_dtype="float32"``; a bfloat16 step computes in float32 and rounds each stored value once,
to nearest even), and complex64 and complex128 ones, stepped as pairs of reals as torch's
``view_as_real`` steps them (their states in their own dtype); anything else raises an error
naming the param before anything is modified. ``fused=True`` is accepted (that is what
fusedoptim is) and kept in the param groups; ``foreach`` is accepted and ignored; ``capturable``
and ``differentiable`` are rejected. A class with a ``torch.optim`` twin checks its arguments
with the twin's own constructor first, so it raises torch's errors, with torch's wording, for
anything torch rejects.

Params may be created on the meta device and materialized later (``model.to_empty``), as large
models are; they are stepped once they are CPU tensors. A DTensor (FSDP2's ``fully_shard``,
tensor parallelism) is stepped through its local shard; a two-pass rule's per-tensor sums (LAMB's
norms) are all-gathered over the mesh dims the tensor is sharded on and added in rank order, so
that every rank steps with the same bits. ``master_weights``, ``rounding`` and ``seed`` are
as in the NumPy classes (README, "Low precision"). ``torch.amp.GradScaler`` hands a step its
``grad_scale`` and ``found_inf`` (``_step_supports_amp_scaling``, as for torch's fused
optimizers): grads are unscaled inside the kernel and left as they are, and a step with an
Inf/NaN grad changes nothing.

A step is all or nothing: every group is checked before any param, state or ``step`` changes,
and a Ctrl-C during a step takes effect once it is complete. Where torch.optim accepts odd
input, so do we, with its results: one gradient tensor shared by several params is read by
each; params that share memory (overlapping views, in one group or several) are stepped one
after another in torch's order, each seeing the updates of those before it, as torch's
for-loop steps them. An expanded param (a dimension of stride 0, so that elements share
memory) is rejected, when it is added and before any step: torch.optim raises on it too, but
only after updating its state and ``step``.

Every class here is made from its entry in the rule registry (``_rules.OPTIMIZERS``); a class
with a ``torch.optim`` twin takes exactly the twin's arguments.
"""

from __future__ import annotations

import collections
import functools
import inspect
import operator
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.optim.optimizer import ParamsT, _get_scalar_dtype, _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from . import _api, _backends, _native, _rules, _storage
from ._backends import _bits
from ._memory import aligned_empty, continuing, packed_empty
from ._engine import Entry, State, Stateful
from ._rules import OPTIMIZERS

_REAL = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
_DTYPES = (*_REAL, torch.complex64, torch.complex128)
_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}
_FLAT = inspect.Parameter("flat", inspect.Parameter.KEYWORD_ONLY, default=False)
_OPTIONS = (*_api.LAYER_OPTIONS, _FLAT)
_LAYER_OPTIONS = tuple(p.name for p in _OPTIONS)  # Optimizer.__init__'s, in its order
_FLAT_DOC = ("With ``flat=True`` each group's params of a dtype are moved into one buffer fusedoptim owns (each "
             "``param.data`` becomes a view of it: the Parameter objects, and so the model, stay) and their states "
             "into one buffer per state, in whole huge pages, laid out alike; ``zero_grad(set_to_none=False)`` "
             "also makes their grads views of a third, zeroed in one pass, so that backward accumulates into it. "
             "A step over such params, grads and states runs as over one long array per operand.")
_HINTS = {"params": "ParamsT", "lr": "float | Tensor", "betas": "tuple[float | Tensor, float | Tensor]",
          "flat": "bool"}
_PLAIN = (torch.Tensor, torch.nn.Parameter)  # no DTensor is of these exact types
_grad = operator.attrgetter("grad")


def _graph_break(fn):
    """``fn`` as ``torch.compiler.disable(fn)`` runs it (a compiled caller breaks its graph there and runs
    it eagerly, no frame of it compiled), but eager callers skip disable's wrapper, which costs about
    0.5 µs a call: it is taken only while a frame callback of torch.compile is set."""
    disabled = torch.compiler.disable(fn)
    callback = getattr(getattr(torch._C, "_dynamo", None), "eval_frame", None)
    callback = getattr(callback, "get_eval_frame_callback", None)
    skip = getattr(getattr(torch._dynamo, "decorators", None), "skip", None)
    if callback is None or skip is None:  # (a torch that does not tell, or cannot skip the choice)
        return disabled

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return (fn if callback() is None else disabled)(*args, **kwargs)

    return skip(call)  # dynamo never traces the choice itself: a caller's graph breaks here


class Optimizer(Stateful, torch.optim.Optimizer):
    """Base class: a ``torch.optim.Optimizer`` whose step is one fusedoptim rule."""

    _unsupported = ("capturable", "differentiable")
    _shared_memory = True
    _stepless = False  # torch keeps no state["step"] (SGD: its first step is the one that finds no buffer)
    _eager = False  # torch creates the state at construction, not on the first step (Adagrad)
    # torch.amp.GradScaler hands a step its scale and inf flag (attributes grad_scale, found_inf)
    # instead of unscaling the grads and skipping the step itself, as for torch's fused optimizers.
    _step_supports_amp_scaling = True
    _flat = False
    _flats = ()  # the _Flat buffers of flat=True, of every group

    def __init__(self, params, defaults, state_dtype=None, master_weights=False, rounding="nearest", seed=0,
                 flat=False):
        self._flat = _flat_option(flat)
        self._set_state_dtype(state_dtype)
        self._set_precision(master_weights, rounding, seed)
        if self.spec.torch:  # torch's own checks of its arguments: torch's errors, types and wording
            twin = getattr(torch.optim, self.spec.name)
            known = inspect.signature(twin).parameters
            twin([torch.empty(0, requires_grad=True)], **{k: v for k, v in defaults.items() if k in known})
        torch.optim.Optimizer.__init__(self, params, defaults)
        self.state = _State(self.state)
        if self._eager:
            for group in self.param_groups:
                hyper = self._hyper(group)
                uses = self._plan(hyper).uses
                params = [p for p in group["params"] if not p.is_meta]  # a meta param's is made when it first steps
                columns = {s.name: self._new_states(params, self._initial_fill(s.name, hyper), s.name)
                           for s, used in zip(self.spec.rule.states, uses) if used}
                new = [{name: column[k] for name, column in columns.items()} for k in range(len(params))]
                self._record(params, None, new, 0, {})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a param group, as torch does, after checking its hyperparameters and params."""
        if isinstance(param_group, dict):
            self._plan(self._hyper({**self.defaults, **param_group}))
            params = param_group.get("params", ())
            for j, p in enumerate([params] if isinstance(params, torch.Tensor) else list(params)):
                p = p[1] if isinstance(p, tuple) else p  # torch accepts (name, param) pairs
                if isinstance(p, torch.Tensor):
                    _check_tensor(p, f"param {j} of the new group", "param", devices=("cpu", "meta"))
                    self._check_modes([str(p.dtype).removeprefix("torch.")], f"param {j} of the new group")
                    _check_not_expanded(_local(p), f"param {j} of the new group")
        torch.optim.Optimizer.add_param_group(self, param_group)
        if self._flat:
            self._flatten(self.param_groups[-1]["params"])

    def _flatten(self, params):
        """Moves ``params`` (a new group's) into flat buffers, one per dtype (``flat=True``): those that
        are plain CPU tensors sharing no memory with another param (moving one would part them)."""
        storages = collections.Counter(p.untyped_storage().data_ptr() for p in
                                       dict.fromkeys(p for group in self.param_groups for p in group["params"])
                                       if type(p) in _PLAIN and p.is_cpu)
        movable = {}
        for p in params:
            if type(p) in _PLAIN and p.is_cpu and storages[p.untyped_storage().data_ptr()] == 1:
                movable.setdefault(p.dtype, []).append(p)
        self._flats = [*self._flats, *map(_Flat, movable.values())]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch's. With ``flat=True`` and ``set_to_none=False``, each grad of a param in a flat
        buffer is (made) a view of its grad buffer, and the buffer zeroed in one pass, so that backward
        accumulates into it; the other params' grads are zeroed as torch zeroes them."""
        if set_to_none or not self._flats:  # (a grad set to None lets backward keep the one it makes: no copy)
            return torch.optim.Optimizer.zero_grad(self, set_to_none)
        held = set()
        for flat in self._flats:
            flat.zero_grads()
            held.update(map(id, flat.params))
        for group in self.param_groups:
            for p in group["params"]:
                grad = p.grad
                if grad is not None and id(p) not in held:  # as torch.optim's
                    grad.detach_() if grad.grad_fn is not None else grad.requires_grad_(False)
                    grad.zero_()
        return None

    def state_dict(self) -> dict[str, Any]:
        """As torch's, each param's state a plain dict (as ``torch.load(weights_only=True)`` loads)."""
        saved = torch.optim.Optimizer.state_dict(self)
        saved["state"] = {k: dict(v) if isinstance(v, Entry) else v for k, v in saved["state"].items()}
        return saved

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's; float32 states (``state_dtype="float32"``, master weights) are then float32
        copies of the saved ones (torch casts every state to its param's dtype, rounding float32
        state to bf16)."""
        torch.optim.Optimizer.load_state_dict(self, state_dict)
        # Each state is then copied into buffers of its group packed as new states are (_new_states),
        # from the saved value where it is kept in float32 (not torch's copy rounded to the param's dtype).
        names = [*(s.name for s in self.spec.rule.states), *self._mode_states()]
        saved = iter([i for group in state_dict["param_groups"] for i in group["params"]])
        for group in self.param_groups:
            columns = {}
            for param, i in zip(group["params"], saved):
                for key, value in state_dict["state"].get(i, {}).items():
                    if key in names and torch.is_tensor(value) and (value.is_floating_point() or value.is_complex()):
                        wide = self._state_dtype(_storage.bfloat16, key) == np.float32  # float32 even for a bf16 param
                        columns.setdefault(key, []).append((param, value if wide else self.state[param][key]))
            for key, column in columns.items():
                params = [param for param, _ in column]
                for (param, value), state in zip(column, self._new_states(params, 0.0, key)):
                    self.state[param][key] = state.copy_(value)

    def __getstate__(self):
        """torch's (defaults, state and param_groups) and this layer's options, which a copy keeps."""
        options = ("_float32_states", "_master_weights", "_rounding", "_seed", "_flat")
        return {**torch.optim.Optimizer.__getstate__(self),
                **{k: self.__dict__[k] for k in options if k in self.__dict__}}

    def __setstate__(self, state):
        super().__setstate__(state)  # load_state_dict ends here, with state cast to each param's dtype
        if self._flat and "_flats" not in self.__dict__:  # a copy, whose params are copies: moved anew
            for group in self.param_groups:
                self._flatten(group["params"])
        self.state = _State(self.state)
        self._forget_prepared()  # the old state is no longer needed
        self.__dict__.pop("_counts", None)
        defaults = {name: p.default for name, p in inspect.signature(type(self)).parameters.items()
                    if p.default is not inspect.Parameter.empty and name not in _LAYER_OPTIONS}
        for group in self.param_groups:
            for key, value in defaults.items():
                group.setdefault(key, value)  # checkpoints from torch versions before a flag existed
            group.update(self.spec.fixed)  # as torch's AdamW, whatever a loaded checkpoint says
        for s in self.state.values():
            if not isinstance(s, dict):  # a value a user or a hook keeps under its own key, loaded as torch loads it
                continue
            for name in ("step", *self.spec.rule.host_states):
                if name in s and not torch.is_tensor(s[name]):
                    s[name] = torch.tensor(float(s[name]), dtype=_get_scalar_dtype())
        for group in self.param_groups:  # each group's loaded (or copied) counts, as views of one tensor
            held = [self.state[p] for p in group["params"] if p in self.state]
            held = [s for s in held if isinstance(s, dict) and _Counts.can_hold(s.get("step"))]
            if held:
                self._hold_counts(held, [float(s["step"]) for s in held])

    def _hyper(self, group):
        """The plan's keyword arguments from a param group; rejects the torch flags we do not implement."""
        for flag in self._unsupported:
            if group.get(flag):
                raise ValueError(f"{type(self).__name__} does not support {flag}={group[flag]!r}")
        hyper = super()._hyper(group)
        for k, v in hyper.items():  # torch allows 1-element tensors as lr and betas; the plan takes their values
            if isinstance(v, torch.Tensor):
                hyper[k] = _value(k, v)
            elif type(v) is tuple and any(isinstance(x, torch.Tensor) for x in v):
                hyper[k] = tuple(_value(f"{k}[{i}]", x) if isinstance(x, torch.Tensor) else x for i, x in enumerate(v))
        return hyper

    @staticmethod
    def profile_hook_step(func):
        """torch's wrapper of ``step`` (its step hooks, and the profiler's record of the step), taken
        only while a hook is registered or a profiler runs: it costs about 25 µs a step, more than
        the whole step of a small model."""
        hooked = torch.optim.Optimizer.profile_hook_step(func)

        @functools.wraps(func)
        def step(self, *args, **kwargs):
            if (_global_optimizer_pre_hooks or _global_optimizer_post_hooks or self._optimizer_step_pre_hooks
                    or self._optimizer_step_post_hooks or torch._C._autograd._profiler_enabled()):
                return hooked(self, *args, **kwargs)
            return func(self, *args, **kwargs)

        return step

    @_graph_break  # the kernels are not ops torch.compile can trace: a compiled caller steps eagerly here
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Performs one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._step()
        return loss

    def _step(self):
        # A step checks every param and grad (_check_step), but only once it has failed: the checks cost
        # more than a small tensor's step, and all they reject also fails the step, which raises before it
        # changes anything; they word the error as torch users know it.
        self._counted = {}  # id(entries) -> (entries, their _Counts), of those whose counts _steps_taken read
        grad_scale, found_inf = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)
        try:
            # (The planned step makes no torch op that autograd could record: it runs in any grad mode.)
            if grad_scale is not None or found_inf is not None or not self._planned_step():
                grad_enabled = torch.is_grad_enabled()
                torch._C._set_grad_enabled(False)  # as under torch.no_grad(), whose decorator costs about 10 µs a call
                try:
                    self._take_step(self._grads(), grad_scale, found_inf)
                finally:
                    torch._C._set_grad_enabled(grad_enabled)
        except (TypeError, ValueError, RuntimeError) as error:
            failed = error
        else:
            return
        self._check_step()
        raise failed

    def _planned_step(self):
        """The usual step, through the extension's ``Plan`` of the groups the general path prepared
        (``Stateful._prepared_operands``): one native call checks that nothing but the grads' values
        changed since, reads the grads and steps every group. False, having changed nothing, where
        it does not apply; the general path then takes the step (and words any error). A plan that
        no longer holds is dropped, and made again once the general path has prepared anew."""
        prepared = self.__dict__.get("_prepared")
        if prepared is None:
            return False
        groups, state = self.param_groups, self.state
        planned = prepared.plan
        if planned is None:
            made_from = (tuple(prepared.get(g) for g in range(len(groups))), state, getattr(state, "edits", None))
            last = prepared.made_from
            if last is not None and len(last[0]) == len(groups) and all(map(operator.is_, last[0], made_from[0])) \
                    and last[1] is state and last[2] == made_from[2]:
                return False  # as when it was last dropped or could not be made
            prepared.made_from = made_from
            planned = prepared.plan = self._plan_groups(made_from[0])
            if planned is None:
                return False
        if len(groups) != len(planned.uses) or state is not planned.state or state.edits != planned.edits:
            prepared.plan = None
            return False
        parts = []  # per group, the plan of each count its params have taken (a rule without: any past the first)
        for index, (group, counts, uses) in enumerate(zip(groups, planned.counts, planned.uses)):
            group_parts = []
            for count in dict.fromkeys(counts.array.tolist()) if counts else (1,):
                plan = self._group_plan(index, group, int(count) + 1)
                if plan.uses != uses:
                    prepared.plan = None
                    return False
                group_parts.append((count, plan.scalars, _bits(plan.flags)))
            parts.append(group_parts)
        # (The native step advances the counts itself: no Ctrl-C can come between the kernels and them.)
        outcome = planned.native.step([group["params"] for group in groups], parts)
        if outcome == planned.native.STALE:
            prepared.plan = None
        return outcome == planned.native.STEPPED

    def _plan_groups(self, readies):
        """The ``_Planned`` of every group from its prepared operands (``_Ready``), when the plan can
        step them: plain CPU params that all had grads, their entries made by this optimizer's
        ``_State`` (whose count of edits then tells that they still hold the prepared states), no
        host state, no param mode, the C++ backend; else None."""
        kernels, rule, state = _native.module(), self.spec.rule, self.state
        if (kernels is None or rule.host_states or self._master_weights or self._rounding != "nearest"
                or type(state) is not _State or _backends.resolve(self.backend) != "cpp" or None in readies):
            return None
        groups, storages, all_counts, uses = [], [], [], []
        for group, ready in zip(self.param_groups, readies):
            params = group["params"]
            n = len(params)
            if len(ready.arrays) != n or ready.modes or not all(map(operator.is_, ready.held[:n], params)) \
                    or not all(type(p) in _PLAIN for p in params):
                return None
            used = [slot.name for slot, on in zip(rule.states, ready.uses) if on]
            own = [state.get(p) for p in params]
            if any(entry is None for entry in own):  # (SGD without momentum keeps none)
                if used or not self._stepless:
                    return None
                own = []
            if not state.owns(own) or any(entry[name] is not held for k, name in enumerate(used)
                                          for entry, held in zip(own, ready.held[(k + 1) * n:(k + 2) * n])):
                return None
            storages += list(zip(ready.held, ready.storage))
            counts = None
            if not self._stepless:
                counts = self._counts_of(own)
                if counts is None and own and self._made_counts(own):
                    # step tensors made at different steps (a param that first stepped late): one
                    # _Counts, so that one read gives every count (a user's own step tensor is left be)
                    self._hold_counts(own, [float(entry["step"]) for entry in own])
                    counts = self._counts_of(own)
                if counts is None:
                    return None
                storages += list(zip(counts.views, counts.pointers))
            all_counts.append(counts)
            uses.append(ready.uses)
            groups.append((list(params), list(ready.arrays), tuple(None if slot is None else list(slot)
                                                                   for slot in ready.states),
                           None if counts is None else counts.array))
        try:
            native = kernels.Plan(list(_rules.RULES).index(rule.name), groups, storages, torch.Tensor,
                                  torch._C._to_dlpack, torch.strided)
        except ValueError:  # params or states that share memory: the general path steps them one by one
            return None
        return _Planned(native, all_counts, uses, state, state.edits)

    def _grads(self):
        """Each group's hyperparameters, and its params that have a grad, with their grads."""
        dtensor = _dtensor_type()
        groups = []
        for index, group in enumerate(self.param_groups):
            params = group["params"]
            grads = list(map(_grad, params))
            kinds = {*map(type, params), *map(type, grads)}  # (not `None in grads`: == on tensors)
            if not kinds.issubset(_PLAIN):  # a None grad to skip, a DTensor to place
                stepped = [(j, p, grad) for j, (p, grad) in enumerate(zip(params, grads)) if grad is not None]
                params = [p for _, p, _ in stepped]
                grads = [_placed_like(grad, p, dtensor, self._where(index, j))
                         if dtensor is not None and (isinstance(p, dtensor) or isinstance(grad, dtensor)) else grad
                         for j, p, grad in stepped]
            groups.append((self._group_hyper(index, group), params, params, grads))
        return groups

    def _check_step(self):
        """Raises the error of the first param, grad or group that fusedoptim cannot step, if there is one,
        checking them in the order a step reads them."""
        dtensor = _dtensor_type()
        for index, group in enumerate(self.param_groups):
            for j, p in enumerate(group["params"]):
                grad = p.grad
                if grad is None:
                    continue
                if not (p.dtype in _DTYPES and p.is_cpu and grad.dtype == p.dtype and grad.is_cpu
                        and grad.layout == torch.strided and grad.shape == p.shape):
                    _check_tensor(p, self._where(index, j), "param", optimizer=type(self).__name__)
                    _check_tensor(grad, f"the gradient of {self._where(index, j)}", "gradient", like=p,
                                  optimizer=type(self).__name__)
                if dtensor is not None and (isinstance(p, dtensor) or isinstance(grad, dtensor)):
                    _check_placeable(grad, p, dtensor, self._where(index, j))
            self._hyper(group)

    def _where(self, g, j):
        """A param as torch users know it: by its name, or by its place in param_groups."""
        group = self.param_groups[g]
        return group["param_names"][j] if "param_names" in group else f"param_groups[{g}]['params'][{j}]"

    # --- How torch's tensors are stored and viewed (see Stateful) ---

    def _namer(self, params):
        """Names operand k of a call over ``params`` as torch users know it (see ``_where``)."""

        def name(arg, k):
            where = self._place(params[k])
            return where if arg == "params" else f"the gradient of {where}" if arg == "grads" else \
                f"state[{self._state_name(arg)!r}] of {where}"

        return name

    def _place(self, param):
        return next(self._where(g, j) for g, group in enumerate(self.param_groups)
                    for j, p in enumerate(group["params"]) if p is param)

    def _steps_taken(self, entries):
        if self._stepless:
            return [1 if entry and any(v is not None for v in entry.values()) else 0 for entry in entries]
        counts = self._counts_of(entries)
        count = counts and counts.common()
        if count is not None:
            self.__dict__.setdefault("_counted", {})[id(entries)] = entries, counts
            return [count] * len(entries)
        return [int(entry["step"]) if entry else 0 for entry in entries]

    def _counts_of(self, entries):
        """The ``_Counts`` whose views are exactly the step tensors of ``entries``, in order; else None."""
        try:
            steps = [entry["step"] for entry in entries]
        except (TypeError, KeyError):  # a param without state
            return None
        counts = steps and self.__dict__.get("_counts", {}).get(id(steps[0]))
        return counts if counts and counts.holds(steps) else None

    def _made_counts(self, entries):
        """Whether the step of every entry is a view of a ``_Counts`` of this optimizer, still viewing its element."""
        pointers = {id(view): pointer for counts in self.__dict__.get("_counts", {}).values()
                    for view, pointer in zip(counts.views, counts.pointers)}
        steps = [entry.get("step") for entry in entries]
        return all(id(step) in pointers and step.data_ptr() == pointers[id(step)] for step in steps)

    def _hold_counts(self, states, values):
        """Makes the ``step`` of each of ``states`` a view of one new ``_Counts`` holding ``values``."""
        counts = _Counts(values)
        for state, view in zip(states, counts.views):
            state["step"] = view
        known = self.__dict__.setdefault("_counts", {})
        live = {id(s.get("step")) for s in self.state.values() if isinstance(s, dict)}
        for key in [key for key in known if key not in live]:  # those of state since dropped or replaced
            del known[key]
        known[id(counts.views[0])] = counts

    def _host_values(self, entries, hyper):
        # torch keeps a host state in a 0-d tensor and updates it in the tensor's dtype (NAdam's
        # ``mu_product *= mu`` in float32): the plan takes it as a NumPy scalar of that dtype, and so
        # multiplies as torch does (a plan that computes with one in double, ASGD's eta, takes its value).
        host = self.spec.rule.host_states
        if not host:
            return [()] * len(entries)
        start = self._host_start(hyper)
        return [tuple(entry[name].numpy()[()] if entry and name in entry else value for name, value in zip(host, start))
                for entry in entries]

    def _new_states(self, params, fill, name=None):
        """States like ``torch.full_like(param, fill, memory_format=torch.preserve_format)`` (a copy of the
        param when ``fill`` is None: a master copy); those of plain CPU params views of one buffer
        placed as ``fusedoptim.zeros_like`` places it and packed as the params are
        (``_memory.packed_empty``): torch's allocator would give every state of a large param one
        offset in its page, and 4 KiB pages (README, "Memory placement")."""
        states = [None] * len(params)
        plain = []
        for k, param in enumerate(params):
            if param.is_complex():  # every real of the pair starts at fill, as torch's Adagrad starts its sum
                dtype, value = param.dtype, fill if fill is None else complex(fill, fill)
            else:
                wide = self._state_dtype(_storage.bfloat16, name) == np.float32
                dtype, value = torch.float32 if wide else param.dtype, fill
            if type(param) in _PLAIN and param.device.type == "cpu":
                plain.append((k, dtype, value))
            elif value is None:  # DTensor, meta
                states[k] = param.detach().to(dtype=dtype, memory_format=torch.preserve_format, copy=True)
            else:
                states[k] = torch.full_like(param, value, dtype=dtype, memory_format=torch.preserve_format)
        spans = [(p.data_ptr(), p.numel() * p.element_size(), p.dtype) for p in (params[k] for k, _, _ in plain)]
        raws = packed_empty([params[k].numel() * dtype.itemsize for k, dtype, _ in plain], continuing(spans))
        for (k, dtype, value), raw in zip(plain, raws):
            param = params[k]
            state = torch.from_numpy(raw).view(dtype).as_strided(param.shape, _strides_like(param, dtype))
            states[k] = state.copy_(param.detach()) if value is None else state.fill_(value)
        return states

    def _indices(self, keys):
        index = {id(p): i for i, p in enumerate(p for group in self.param_groups for p in group["params"])}
        return [index[id(key)] for key in keys]

    def _host_start(self, hyper):
        # A new one is torch's scalar dtype (float32 unless the default is float64), as torch keeps
        # it from the start (ASGD's eta = lr, rounded to float32), and steps with that value.
        new = _NUMPY[_get_scalar_dtype()]
        return tuple(new(value) for value in super()._host_start(hyper))

    def _order(self, param):
        param = _local(param)
        if param.is_contiguous():
            return None
        _check_not_expanded(param, self._place(param))
        return sorted(range(param.dim()), key=lambda d: -param.stride(d))

    def _writable(self, tensor, order, copies):
        view = _in_order(_local(tensor), order)
        if view.is_contiguous():
            return _array(view)
        copy = torch.empty_like(view, memory_format=torch.contiguous_format)
        array = _array(copy)
        copies.append((view, copy, array))
        return array

    def _memory(self, view):
        return _array(view)

    def _storage(self, tensors):
        return list(map(torch.Tensor.data_ptr, tensors))

    def _readable(self, grad, order):
        return _read(grad, order)

    def _grad_reader(self, params, orders):
        # (the grad of a real param is real, and a plain tensor's is plain: step() checks them)
        if any(orders) or not all(type(p) in _PLAIN and not p.is_complex() for p in params):
            return super()._grad_reader(params, orders)
        return _read_plain

    def _reduction(self, params):
        dtensor = _dtensor_type()
        if dtensor is None:
            return None
        groups = [tuple(p.device_mesh.get_group(d) for d, placement in enumerate(p.placements) if placement.is_shard())
                  if isinstance(p, dtensor) else () for p in params]
        return functools.partial(_total_over_shards, groups) if any(groups) else None

    def _record(self, keys, entries, created, count, host_states):
        counted = self.__dict__.get("_counted", {}).pop(id(entries), None)
        if counted and counted[0] is entries and not (host_states or any(created or ())):  # the usual step
            counted[1].array.fill(count)  # one op advances them all, each rounded once to its dtype as fill_ rounds
            return
        steps, fresh = [], []  # the step tensors to set to count; the states that have none yet
        for key, new in zip(keys, created or [None] * len(keys)):
            if self._stepless and not new:
                continue
            state = self.state[key]
            if new:
                state.update(new)
            if not self._stepless:
                if "step" in state:
                    steps.append(state["step"])
                else:
                    fresh.append(state)
            for name, value in host_states.items():
                if name in state:
                    state[name].fill_(value)
                else:
                    state[name] = torch.tensor(value, dtype=_get_scalar_dtype())
        # Many in one call: a fill_ each costs more than the kernel of a small tensor, but the call has
        # the fixed cost of ~10 fill_ (measured on Zen 3). The count is exact in float64, so each step
        # tensor gets it rounded once to its dtype, as fill_(count) does.
        if len(steps) > 16:
            torch._foreach_copy_(steps, [torch.scalar_tensor(count, dtype=torch.float64)] * len(steps))
        else:
            for step in steps:
                step.fill_(count)
        if fresh:
            self._hold_counts(fresh, [float(count)] * len(fresh))


class _Flat:
    """Params of one group and dtype in one buffer fusedoptim owns (``flat=True``), and room for their
    grads in another: each param's ``data`` and, from a ``zero_grad(set_to_none=False)`` on, its grad
    are views of them, in order, laid out as the param was (its memory order kept for a dense one), so
    the params' new states are packed alike (``_new_states``) and a step over all of them coalesces
    into one. The grad buffer takes memory only once used."""

    def __init__(self, params):
        self.params = params
        self.data, views = _flat_views(params)
        self.grads, self.grad_views = _flat_views(params)
        self.pointers = [view.data_ptr() for view in views]
        with torch.no_grad():
            for p, view, grad_view in zip(params, views, self.grad_views):
                view.copy_(p)
                p.data = view
                if p.grad is not None:
                    p.grad = grad_view.copy_(p.grad)

    def zero_grads(self):
        """Zeroes the grad buffer; a param's grad that is not its view (backward made it, after a
        ``p.grad = None``) is replaced by the view, while the param is still its view of the buffer."""
        self.grads.zero_()
        for p, view, pointer in zip(self.params, self.grad_views, self.pointers):
            grad = p.grad
            if grad is not None and grad is not view and p.data_ptr() == pointer:
                p.grad = view


def _flat_views(params):
    """One new buffer (placed as ``fusedoptim.zeros_like`` places it) and a view of it like each of
    ``params``, back to back in order."""
    dtype = params[0].dtype
    buffer = torch.from_numpy(aligned_empty(sum(p.numel() for p in params) * dtype.itemsize, np.uint8)).view(dtype)
    views, offset = [], 0
    for p in params:
        views.append(buffer.as_strided(p.shape, _strides_like(p, dtype), offset))
        offset += p.numel()
    return buffer, views


def _strides_like(param, dtype):
    """The strides of ``torch.empty_like(param, dtype=dtype, memory_format=torch.preserve_format)``:
    the param's memory order where it is dense, else C order."""
    return torch.empty_like(param, dtype=dtype, device="meta", memory_format=torch.preserve_format).stride()


def _flat_option(flat):
    if not isinstance(flat, (bool, np.bool_)):
        raise TypeError(f"Invalid flat: {flat!r} (True or False)")
    return bool(flat)


class _State(State):
    """torch's ``Optimizer.state`` (a ``defaultdict(dict)``: a param without an entry reads as a new
    one) whose changes count (``State``)."""

    def __missing__(self, key):
        entry = self[key] = self.entry()
        return entry


class _Planned(NamedTuple):
    """The extension's ``Plan`` of a step of every group, and what the layer keeps beside it."""

    native: Any
    counts: list  # per group, the _Counts of its step tensors (None: the rule keeps no count)
    uses: list  # per group, the state slots its plan uses
    state: dict  # the optimizer's state it was made with
    edits: int  # the state's count of edits then


class _Counts:
    """The step tensors of params that started (or were loaded) together: 0-d views of one tensor
    ``base``, in torch's scalar dtype on the CPU, as torch keeps each. A step reads all their counts
    with one op and advances them with another, where an ``int()`` or ``fill_`` each would cost more
    than the kernel of a small tensor; a step tensor that is not one of the views, or whose memory
    is no longer the view's (``step.data = x``), is read and written on its own."""

    def __init__(self, values):
        self.base = torch.tensor(values, dtype=_get_scalar_dtype())
        self.array = self.base.numpy()  # read and written through NumPy: a torch op's dispatch costs more
        self.views = list(self.base)  # each a 0-d view of its element
        self.pointers = [view.data_ptr() for view in self.views]

    @staticmethod
    def can_hold(step):
        """Whether ``step`` is a count a view can take the place of: as torch keeps a new one."""
        return type(step) is torch.Tensor and step.dtype == _get_scalar_dtype() and step.dim() == 0 and step.is_cpu

    def holds(self, steps):
        """Whether ``steps`` are the views, in order, each still viewing its element."""
        return (len(steps) == len(self.views) and all(map(operator.is_, steps, self.views))
                and list(map(torch.Tensor.data_ptr, steps)) == self.pointers)

    def common(self):
        """The step count of every view, when they are all equal (as ``int()`` of each reads it); else None."""
        values = self.array.tolist()
        return int(values[0]) if values.count(values[0]) == len(values) else None


def _read_plain(grads):
    """The grads of contiguous real params, each as ``_readable`` reads it: through the extension's
    DLPack reader when it is built (``.numpy()`` would be most of a small tensor's step), else
    ``.numpy()``; one it cannot read (a grad that is not a CPU tensor of a float dtype), as
    ``_readable`` reads it."""
    kernels = _native.module()
    if kernels is not None:
        arrays = kernels.arrays_of(grads, torch._C._to_dlpack)
        return [_read(grad, None) if array is None else array
                for grad, array in zip(grads, arrays)] if type(None) in map(type, arrays) else arrays
    try:
        return list(map(torch.Tensor.numpy, grads))
    except (TypeError, RuntimeError):  # bfloat16, a grad that requires grad, ...
        return [_read(grad, None) for grad in grads]


def _read(grad, order):
    """An array of a grad's values in ``order`` (``_in_order``); a view with the negative bit, negated."""
    return _array(_in_order(_local(grad), order).resolve_neg())


def _array(t):
    """A NumPy array of ``t``'s memory: a complex tensor as the reals torch steps it as
    (``view_as_real``: a trailing pair); bfloat16 through int16, since ``.numpy()`` refuses it."""
    if t.is_complex():
        return torch.view_as_real(t).numpy()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_storage.bfloat16)
    return t.numpy()


def _check_tensor(t, where, what, like=None, optimizer=None, devices=("cpu",)):
    """``optimizer`` (its class name) when stepping, None when a param is added."""
    if t.layout != torch.strided:
        if optimizer and what == "gradient":  # torch's error, and its wording
            raise RuntimeError(f"{where}: {optimizer} does not support sparse gradients (the gradient has layout "
                               f"{t.layout}); fusedoptim.torch steps dense tensors")
        raise TypeError(f"{where}: {what} has layout {t.layout}; only dense (strided) tensors are supported")
    if t.device.type not in devices:
        if optimizer:  # as torch's fused optimizers word it
            raise RuntimeError(f"{where}: {what} is on {t.device}; `fused=True` requires all the params to be floating "
                               f"point Tensors of supported devices: ['cpu'] (a param made on meta steps once "
                               f"materialized, e.g. by model.to_empty(device='cpu'))")
        raise TypeError(f"{where}: {what} is on {t.device}; fusedoptim.torch steps CPU tensors")
    if t.dtype not in _DTYPES:
        raise TypeError(f"{where}: {what} has dtype {t.dtype}; supported: {', '.join(map(str, _DTYPES))}")
    if like is not None:
        # a real param's: its own, float32, bf16, fp16; a complex param's: its own
        allowed = [like.dtype, *(d for d in _REAL[1:] if d != like.dtype and not like.is_complex())]
        if t.dtype not in allowed:
            raise TypeError(f"{where}: {what} is {t.dtype} but the param is {like.dtype}; the gradient of a "
                            f"{like.dtype} param may be {', '.join(map(str, allowed))}")
        if t.shape != like.shape:
            raise ValueError(f"{where}: {what} has shape {tuple(t.shape)} but the param {tuple(like.shape)}")


def _check_not_expanded(p, where):
    if any(stride == 0 and size > 1 for size, stride in zip(p.shape, p.stride())):
        raise ValueError(f"{where}: param is expanded (a dimension of stride 0), so its elements share memory and "
                         f"cannot be updated one by one (torch.optim fails on it too); step a copy (tensor.clone())")


def _value(name, t):
    """A tensor hyperparameter's value, as torch takes it."""
    if t.numel() != 1:
        raise ValueError(f"Tensor {name} must be 1-element")
    return t.item()


def _dtensor_type():
    """DTensor, when torch.distributed.tensor has been imported (as it is wherever there are DTensors);
    importing it here would cost every ``import fusedoptim.torch`` over a second."""
    module = sys.modules.get("torch.distributed.tensor")
    return module.DTensor if module is not None else None


def _local(t):
    """The tensor a step updates: a DTensor's local shard, any other tensor itself."""
    if type(t) in _PLAIN:  # most are, and need no look for DTensor
        return t
    dtensor = _dtensor_type()
    return t.to_local() if dtensor is not None and isinstance(t, dtensor) else t


def _placed_like(grad, param, dtensor, where):
    """A DTensor param's gradient with the param's placements, so that their local shards correspond."""
    _check_placeable(grad, param, dtensor, where)
    return grad if grad.placements == param.placements else grad.redistribute(param.device_mesh, param.placements)


def _check_placeable(grad, param, dtensor, where):
    if not (isinstance(grad, dtensor) and isinstance(param, dtensor)):
        raise TypeError(f"the gradient of {where}: the param is {'a' if isinstance(param, dtensor) else 'not a'} "
                        f"DTensor but its gradient is {'a' if isinstance(grad, dtensor) else 'not a'} DTensor")
    if grad.device_mesh != param.device_mesh:
        raise ValueError(f"the gradient of {where} is on another device mesh than the param")


def _total_over_shards(groups, sums):
    """``reduce`` of a two-pass call (see ``_backends.step``): the sums of a tensor sharded over the
    process groups ``groups[i]`` (one per mesh dim it is sharded on) become its totals over all its
    shards. They are all-gathered and added in rank order, one mesh dim after another, so that every
    rank gets the same bits whatever the order the messages arrive in."""
    import torch.distributed as dist

    for over in dict.fromkeys(g for g in groups if g):
        rows = [i for i, g in enumerate(groups) if g == over]
        block = torch.from_numpy(sums[rows])
        for group in over:
            parts = [torch.empty_like(block) for _ in range(dist.get_world_size(group))]
            dist.all_gather(parts, block, group=group)
            block = functools.reduce(torch.add, parts)
        sums[rows] = block.numpy()


def _in_order(t, order):
    """``t`` with its dims in ``order``: contiguous, a view of the same memory, when t is dense in that order."""
    if t.requires_grad:
        t = t.detach()
    return t if order is None else t.permute(order)


def twin(spec, base=Optimizer, **layout):
    """The ``torch.optim.Optimizer`` class of an optimizer. With a twin in torch.optim, it takes
    exactly the twin's arguments (defaults read from the registry, which a test holds equal to
    torch's); without one, the NumPy class's. ``layout`` sets how torch keeps its state
    (``_stepless``, ``_eager``)."""
    if spec.torch:
        ours = {p.name: p.default for p in _api.hyper_parameters(spec)}
        theirs = inspect.signature(getattr(torch.optim, spec.name)).parameters.values()
        signature = _api.with_hints(inspect.Signature(
            [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)] +
            [p.replace(annotation=inspect.Parameter.empty, default=ours.get(p.name, p.default)) for p in theirs] +
            list(_OPTIONS)), _HINTS)
        summary = f"``torch.optim.{spec.name}`` on fusedoptim's kernel: {spec.doc}"
    else:
        signature = _api.class_signature(spec, (_FLAT,), hints=_HINTS)
        summary = f"{spec.doc}\n\n    A ``torch.optim.Optimizer``; torch has no {spec.name} of its own."
    names = [name for name in signature.parameters if name not in ("self", "params", *_LAYER_OPTIONS)]
    defaults = ", ".join([f"{name}={name}" for name in names] + [f"{name}=_fixed_{name}" for name in spec.fixed])
    options = ", ".join(_LAYER_OPTIONS)
    init = _api.compile_function("__init__", signature,
                                 f"    _base.__init__(self, params, dict({defaults}), {options})\n",
                                 {"_base": Optimizer, "ParamsT": ParamsT, "Tensor": torch.Tensor,
                                  **{f"_fixed_{k}": v for k, v in spec.fixed.items()}}, None)
    attributes = {"__init__": init, "__doc__": _api.docstring(spec, signature, f"{summary}\n\n    {_FLAT_DOC}"),
                  "spec": spec, "__module__": __name__, **{f"_{k}": v for k, v in layout.items()}}
    return type(spec.name, (base,), attributes)


SGD = twin(OPTIMIZERS["SGD"], stepless=True)
Adagrad = twin(OPTIMIZERS["Adagrad"], eager=True)
RMSprop = twin(OPTIMIZERS["RMSprop"])
Adam = twin(OPTIMIZERS["Adam"])
AdamW = twin(OPTIMIZERS["AdamW"], base=Adam)
Adamax = twin(OPTIMIZERS["Adamax"])
Adadelta = twin(OPTIMIZERS["Adadelta"])
RAdam = twin(OPTIMIZERS["RAdam"])
NAdam = twin(OPTIMIZERS["NAdam"])
Lion = twin(OPTIMIZERS["Lion"])
Lamb = twin(OPTIMIZERS["Lamb"])
ASGD = twin(OPTIMIZERS["ASGD"])
Rprop = twin(OPTIMIZERS["Rprop"])
