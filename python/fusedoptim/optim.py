"""Stateful optimizers over NumPy arrays, with torch.optim's param groups and state_dict layout.

An optimizer owns its state buffers (cache-line aligned) and the per-param step count.
``step(grads)`` takes the gradients in the order of the params across all groups (a single
array when there is one param); a ``None`` gradient skips its param, as torch skips a param
whose ``.grad`` is None. Each group is stepped in one multi-tensor call per dtype and step count.
"""

from __future__ import annotations

import copy
import inspect

import numpy as np

from . import functional
from ._memory import aligned_full
from ._rules import RULES


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
        groups = list(params) if not isinstance(params, np.ndarray) else [params]
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
        params = [params] if isinstance(params, np.ndarray) else list(params)
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise ValueError(f"param group has unknown hyperparameters: {sorted(unknown)}")
        group = {**self.defaults, **group, "params": params}
        self._plan(**self._hyper(group), **self._step_args({}))  # rejects bad hyperparameters now
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for p in params:
            if not isinstance(p, np.ndarray):
                raise TypeError(f"params must be NumPy arrays, got {type(p).__name__}")
            if id(p) in seen:
                raise ValueError("some parameters appear in more than one parameter group")
            seen.add(id(p))
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
        for group, indices in self._indexed():
            group_grads = grads[indices.start:indices.stop]
            if not self._step_together(group, indices, group_grads):
                self._step_buckets(group, indices, group_grads)

    def _step_together(self, group, indices, grads):
        """The usual step, in one call: every param has a gradient and a state, and all share a
        dtype and the caller-owned step arguments. Returns False, touching nothing, otherwise."""
        params = group["params"]
        entries = list(map(self.state.get, indices))
        if not params or type(None) in set(map(type, grads)) or None in entries:  # not `None in grads`: == on arrays
            return False
        if len({entry["step"] for entry in entries}) != 1 or len({p.dtype for p in params}) != 1:
            return False
        if self._host_states and len({tuple(entry.get(k) for k in self._host_states) for entry in entries}) != 1:
            return False
        plan = self._plan(**self._hyper(group), **self._step_args(entries[0]))
        try:
            states = {name: [entry[name] for entry in entries] if name in plan.states else None
                      for name in RULES[self._rule].states}
        except KeyError:  # a state this step needs first (e.g. amsgrad switched on)
            return False
        functional._step_rule(self._rule, plan, params, grads, states, self.backend)
        self._advance(entries, plan)
        return True

    def _step_buckets(self, group, indices, grads):
        """Any step: params bucketed by dtype and step arguments, one call per bucket."""
        hyper = self._hyper(group)
        buckets = {}
        for i, param, grad in zip(indices, group["params"], grads):
            if grad is not None:
                args = tuple(self._step_args(self.state.get(i, {})).items())
                buckets.setdefault((param.dtype, args), []).append((i, param, grad))
        for (_, args), members in buckets.items():
            plan = self._plan(**hyper, **dict(args))
            for i, param, _ in members:
                self._init_state(i, param, group, plan.states)
            states = {name: [self.state[i][name] for i, _, _ in members] if name in plan.states else None
                      for name in RULES[self._rule].states}
            functional._step_rule(self._rule, plan, [p for _, p, _ in members], [g for _, _, g in members], states,
                                  self.backend)
            self._advance([self.state[i] for i, _, _ in members], plan)

    @staticmethod
    def _advance(entries, plan):
        for entry in entries:
            entry["step"] += 1
        if plan.host_states:
            for entry in entries:
                entry.update(plan.host_states)

    def _params(self):
        return [p for group in self.param_groups for p in group["params"]]

    def _init_state(self, index, param, group, names):
        state = self.state.setdefault(index, {"step": 0})
        for name in names:
            if name not in state:
                fill = group[self._initial[name]] if name in self._initial else 0.0
                state[name] = aligned_full(param.shape, param.dtype, fill)

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
        if not initial_accumulator_value >= 0.0:
            raise ValueError(f"Invalid initial_accumulator_value: {initial_accumulator_value} (must be >= 0)")
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
