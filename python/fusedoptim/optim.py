"""Stateful optimizers over NumPy arrays, with torch.optim's param groups and state_dict layout.

An optimizer owns its state buffers (cache-line aligned) and the per-param step count.
``step(grads)`` takes the gradients in the order of the params across all groups (a single
array when there is one param); a ``None`` gradient skips its param, as torch skips a param
whose ``.grad`` is None. Each group is stepped in one multi-tensor call per dtype and step count.

A step is all or nothing. Every group and bucket is checked (hyperparameters, shapes, dtypes,
overlaps across the whole step) before any param, state or step count changes, and bad input
raises TypeError / ValueError naming the param by its position across all groups, as
``step(grads)`` takes it. A Ctrl-C during a step takes effect once the step is complete.
Params are checked when they are added: each must be a writeable, C-contiguous float32 or
float64 ndarray with memory of its own.
"""

from __future__ import annotations

import copy
import inspect

import numpy as np

from ._backends import Call, compute_scalars, deferred_interrupts, resolve, step_all
from ._memory import aligned_full
from ._rules import RULES, _at_least
from ._validate import check_param, find_overlap


class Optimizer:
    _rule: str  # the functional rule this optimizer steps

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if hasattr(cls, "_rule"):  # the rule's own description of the states that do not start at zero
            cls._initial, cls._host_states = RULES[cls._rule].initial, RULES[cls._rule].host_states

    def __init__(self, params, defaults, backend=None):
        self.defaults = defaults
        self.backend = backend
        self._takes_step = "step" in inspect.signature(self._plan).parameters
        self.param_groups = []
        self.state = {}  # param index (position across all groups) -> {"step": int, state name: array}
        groups = [params] if isinstance(params, (np.ndarray, np.generic)) else list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    @property
    def _plan(self):
        return RULES[self._rule].plan

    def _hyper(self, group):
        return {k: group[k] for k in self.defaults if k not in self._initial.values()}

    def add_param_group(self, group):
        """Adds a dict with "params" (an array or a list of arrays) and overrides of the defaults."""
        if not isinstance(group, dict):
            raise TypeError(f"param group must be a dict, got {type(group).__name__}")
        params = group["params"]
        params = [params] if isinstance(params, (np.ndarray, np.generic)) else list(params)
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise ValueError(f"param group has unknown hyperparameters: {sorted(unknown)}")
        group = {**self.defaults, **group, "params": params}
        plan = self._plan(**self._hyper(group), **self._step_args({}))  # rejects bad hyperparameters now
        existing = self._params()
        seen = {id(p) for p in existing}
        for j, p in enumerate(params):
            check_param(p, f"params[{len(existing) + j}]")  # one that no step could update fails now
            if id(p) in seen:
                raise ValueError("some parameters appear in more than one parameter group")
            seen.add(id(p))
        clash = find_overlap(existing + params)
        if clash is not None:  # each would be stepped as if the other did not exist
            raise ValueError(f"params[{clash[0]}] and params[{clash[1]}] overlap in memory; each param must have "
                             f"memory of its own")
        for dtype in {p.dtype for p in params}:
            compute_scalars(RULES[self._rule], plan, dtype)  # lr=1e300 cannot step float32 params
            for name in self._initial.values():  # a state's starting value (Adagrad's sum: >= 0, as torch asks)
                start = _at_least(name, group[name], 0.0)
                with np.errstate(over="ignore"):
                    if not np.isfinite(dtype.type(start)):
                        raise ValueError(f"Invalid {name}: {start:g} is not finite in {dtype.name}, the dtype of "
                                         f"the state it starts")
        self.param_groups.append(group)

    def _step_args(self, state):
        """The caller-owned arguments of the next step of a param with this state."""
        args = {"step": state.get("step", 0) + 1} if self._takes_step else {}
        return {**args, **{name: state.get(name, start) for name, start in self._host_states.items()}}

    def _indexed(self):
        i = 0
        for group in self.param_groups:
            yield group, range(i, i + len(group["params"]))
            i += len(group["params"])

    def step(self, grads):
        """Takes one step for every param with a gradient."""
        n = sum(len(g["params"]) for g in self.param_groups)
        grads = [grads] if isinstance(grads, np.ndarray) else list(grads)
        if len(grads) != n:
            raise ValueError(f"grads has {len(grads)} entries but the optimizer has {n} params")
        calls, fresh = [], {}  # (Call, param indices); param index -> the states this step creates
        for group, indices in self._indexed():
            group_grads = grads[indices.start:indices.stop]
            together = self._together(group, indices, group_grads)
            calls += [together] if together else self._buckets(group, indices, group_grads, fresh)
        backend = resolve(self.backend)
        with deferred_interrupts():  # a Ctrl-C cannot come between the kernels and the step counts
            step_all(backend, RULES[self._rule], [call for call, _ in calls])  # checks every call first
            for i, states in fresh.items():
                self.state.setdefault(i, {"step": 0}).update(states)
            for call, members in calls:
                self._advance([self.state[i] for i in members], call.plan)

    def _together(self, group, indices, grads):
        """The usual step, in one call: every param has a gradient and a state, and all share a
        dtype and the caller-owned step arguments. Returns (Call, indices), or None."""
        params = group["params"]
        entries = list(map(self.state.get, indices))
        if not params or type(None) in set(map(type, grads)) or None in entries:  # not `None in grads`: == on arrays
            return None
        if len({entry["step"] for entry in entries}) != 1 or len({p.dtype for p in params}) != 1:
            return None
        if self._host_states and len({tuple(entry.get(k) for k in self._host_states) for entry in entries}) != 1:
            return None
        plan = self._plan(**self._hyper(group), **self._step_args(entries[0]))
        try:
            states = {name: [entry[name] for entry in entries] if name in plan.states else None
                      for name in RULES[self._rule].states}
        except KeyError:  # a state this step needs first (e.g. amsgrad switched on)
            return None
        return Call(plan, params, grads, states, self._namer(indices)), indices

    def _buckets(self, group, indices, grads, fresh):
        """Any step: params bucketed by dtype and step arguments, one call per bucket. States a
        param lacks are made in ``fresh`` (an entry for each param stepped), for step() to keep
        once the step has succeeded."""
        hyper = self._hyper(group)
        buckets = {}
        for i, param, grad in zip(indices, group["params"], grads):
            if grad is not None:
                args = tuple(self._step_args(self.state.get(i, {})).items())
                buckets.setdefault((param.dtype, args), []).append((i, param, grad))
        calls = []
        for (_, args), members in buckets.items():
            plan = self._plan(**hyper, **dict(args))
            states = {name: [] if name in plan.states else None for name in RULES[self._rule].states}
            for i, param, _ in members:
                held, made = self.state.get(i, {}), fresh.setdefault(i, {})
                for name in plan.states:
                    if name not in held:
                        fill = group[self._initial[name]] if name in self._initial else 0.0
                        made[name] = aligned_full(param.shape, param.dtype, fill)
                    states[name].append(held[name] if name in held else made[name])
            members_indices = [i for i, _, _ in members]
            calls.append((Call(plan, [p for _, p, _ in members], [g for _, _, g in members], states,
                               self._namer(members_indices)), members_indices))
        return calls

    def _namer(self, indices):
        """Names operand k of a call over the params at ``indices`` as step()'s user knows it:
        by its position across all groups (``grads[3]``, ``state[3]['exp_avg']``)."""

        def name(arg, k):
            i = indices[k]
            label = f"{arg}[{i}]" if arg in ("params", "grads") else f"state[{i}][{arg!r}]"
            if len(self.param_groups) > 1:
                g, j = next((g, i - ix.start) for g, (_, ix) in enumerate(self._indexed()) if i in ix)
                label += f" (param {j} of group {g})"
            return label

        return name

    @staticmethod
    def _advance(entries, plan):
        for entry in entries:
            entry["step"] += 1
        if plan.host_states:
            for entry in entries:
                entry.update(plan.host_states)

    def _params(self):
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self):
        """{"state": {index: {"step": int, name: array copy}}, "param_groups": [{..., "params": [index]}]}."""
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": list(ix)} for g, ix in self._indexed()]
        state = {i: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
                 for i, s in self.state.items()}
        return {"state": state, "param_groups": copy.deepcopy(groups)}

    def load_state_dict(self, state_dict):
        """Restores hyperparameters and state; arrays are copied into buffers this optimizer owns."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for saved, (group, indices) in zip(groups, self._indexed()):
            if len(saved["params"]) != len(indices):
                raise ValueError("loaded state dict contains a parameter group that doesn't match the size of optimizer's group")
        new_state = {}
        params = self._params()
        for saved, (group, indices) in zip(groups, self._indexed()):
            for saved_index, i in zip(saved["params"], indices):
                entry = state_dict["state"].get(saved_index)
                if entry is None:
                    continue
                param = params[i]
                new_state[i] = {}
                for k, v in entry.items():
                    if k == "step" or k in self._host_states:
                        new_state[i][k] = int(v) if k == "step" else float(v)
                        continue
                    v = np.asarray(v)
                    if v.shape != param.shape:
                        raise ValueError(f"state {k!r} of param {i} has shape {v.shape}, the param {param.shape}")
                    buf = aligned_full(param.shape, param.dtype)
                    buf[...] = v
                    new_state[i][k] = buf
        for saved, group in zip(groups, self.param_groups):
            group.update({k: copy.deepcopy(v) for k, v in saved.items() if k != "params"})
        self.state = new_state


class SGD(Optimizer):
    """Stateful :func:`fusedoptim.sgd_`. Defaults: lr=1e-3, momentum=0, dampening=0,
    weight_decay=0, nesterov=False, maximize=False. State: ``momentum_buffer`` (with momentum)."""

    _rule = "sgd"

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 maximize=False, backend=None):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize), backend)


class Adagrad(Optimizer):
    """Stateful :func:`fusedoptim.adagrad_`. Defaults: lr=1e-2, lr_decay=0, weight_decay=0,
    initial_accumulator_value=0, eps=1e-10, maximize=False. State: ``sum``."""

    _rule = "adagrad"

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
                 *, maximize=False, backend=None):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps,
                                      maximize=maximize), backend)


class RMSprop(Optimizer):
    """Stateful :func:`fusedoptim.rmsprop_`. Defaults: lr=1e-2, alpha=0.99, eps=1e-8,
    weight_decay=0, momentum=0, centered=False, maximize=False. State: ``square_avg``,
    ``momentum_buffer`` (momentum > 0), ``grad_avg`` (centered)."""

    _rule = "rmsprop"

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, *,
                 maximize=False, backend=None):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, maximize=maximize), backend)


class Adam(Optimizer):
    """Stateful :func:`fusedoptim.adam_`. Defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0, amsgrad=False, maximize=False, bias_correction=True,
    decoupled_weight_decay=False. State: ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad)."""

    _rule = "adam"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 maximize=False, bias_correction=True, decoupled_weight_decay=False, backend=None):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize, bias_correction=bias_correction,
                                      decoupled_weight_decay=decoupled_weight_decay), backend)


class AdamW(Adam):
    """Stateful :func:`fusedoptim.adamw_`: :class:`Adam` with decoupled weight decay. Defaults:
    lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False,
    bias_correction=True. State: ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, bias_correction=True, backend=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         bias_correction=bias_correction, decoupled_weight_decay=True, backend=backend)


class Adamax(Optimizer):
    """Stateful :func:`fusedoptim.adamax_`. Defaults: lr=2e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0, maximize=False. State: ``exp_avg``, ``exp_inf``."""

    _rule = "adamax"

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *, maximize=False,
                 backend=None):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize),
                         backend)


class Adadelta(Optimizer):
    """Stateful :func:`fusedoptim.adadelta_`. Defaults: lr=1.0, rho=0.9, eps=1e-6,
    weight_decay=0, maximize=False. State: ``square_avg``, ``acc_delta``."""

    _rule = "adadelta"

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, *, maximize=False, backend=None):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize), backend)


class RAdam(Optimizer):
    """Stateful :func:`fusedoptim.radam_`. Defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0, decoupled_weight_decay=False, maximize=False. State: ``exp_avg``, ``exp_avg_sq``."""

    _rule = "radam"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
                 *, maximize=False, backend=None):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay, maximize=maximize), backend)


class NAdam(Optimizer):
    """Stateful :func:`fusedoptim.nadam_`. Defaults: lr=2e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0, momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False. State:
    ``mu_product`` (a float, 1.0 before the first step), ``exp_avg``, ``exp_avg_sq``."""

    _rule = "nadam"

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3,
                 decoupled_weight_decay=False, *, maximize=False, backend=None):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize), backend)


class Lion(Optimizer):
    """Stateful :func:`fusedoptim.lion_`. Defaults: lr=1e-4, betas=(0.9, 0.99), weight_decay=0,
    maximize=False. State: ``exp_avg``."""

    _rule = "lion"

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False, backend=None):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize), backend)


class Lamb(Optimizer):
    """Stateful :func:`fusedoptim.lamb_`. Defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-6,
    weight_decay=0, maximize=False, bias_correction=True. State: ``exp_avg``, ``exp_avg_sq``."""

    _rule = "lamb"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, *, maximize=False,
                 bias_correction=True, backend=None):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize,
                                      bias_correction=bias_correction), backend)
