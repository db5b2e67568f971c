"""Drop-in replacements for ``torch.optim`` that step CPU tensors through fusedoptim's kernels.

``fusedoptim.torch.Adam(model.parameters(), lr=1e-3)`` is used exactly like ``torch.optim.Adam``:
same class names, arguments, defaults, param groups, ``closure``, ``zero_grad``,
``add_param_group``, LR schedulers, hooks, and the same ``state_dict`` layout (``step`` as a
float32 scalar tensor, ``exp_avg``, ``exp_avg_sq``, ``momentum_buffer``, ``sum``, ...), so a
checkpoint of a ``torch.optim`` optimizer loads into its ``fusedoptim.torch`` twin and back.

A step hands each param, its gradient and its state to the kernel as NumPy views of the same
memory, without copies; params with equal step counts and dtype go in one multi-tensor call.
Params whose ``.grad`` is None are skipped. A param stored in another dense layout (a transposed
weight, channels-last) is stepped in its memory order, still without copies; a param that is
not dense (a strided slice of a bigger tensor) is stepped on a contiguous copy that is then
written back. float32 and float64 CPU tensors with dense gradients are supported; anything else
raises TypeError / ValueError naming the param before anything is modified. ``capturable``,
``differentiable`` and ``fused=True`` (torch's own fused kernels) are rejected; ``foreach`` is
accepted and ignored.

A step is all or nothing: every group is checked before any param, state or ``step`` changes,
and a Ctrl-C during a step takes effect once it is complete. Where torch.optim accepts odd
input, so do we, with its results: one gradient tensor shared by several params is read by
each; params that share memory (overlapping views, in one group or several) are stepped one
after another in torch's order, each seeing the updates of those before it, as torch's
for-loop steps them. An expanded param (a dimension of stride 0, so that elements share
memory) is rejected, when it is added and before any step: torch.optim raises on it too, but
only after updating its state and ``step``.

Adding a rule: write its kernel and its ``_rules`` entry (which also says which states do not
start at zero and which per-param state lives on the host), then a subclass of
:class:`Optimizer` here whose ``__init__`` has exactly torch's signature and defaults and passes
every argument (flags included) on as ``defaults``. Set ``_rule`` to the rule's name and, where
needed, ``_fixed`` (plan arguments torch has no flag for), ``_step_count = False`` (torch keeps
no ``step``), ``_eager_state`` (torch creates the state at construction), ``_pinned`` (group
keys the class always holds, even after loading a checkpoint) and ``_unsupported`` (torch flags
that must stay off). Group keys named like the plan function's arguments are passed to it;
state names are the rule's.
"""

from __future__ import annotations

import inspect

import torch

from . import functional, reference
from ._backends import Call, check, deferred_interrupts, resolve, run
from ._rules import RULES
from ._validate import find_overlap
from .functional import _with_formula

_DTYPES = (torch.float32, torch.float64)


class Optimizer(torch.optim.Optimizer):
    """Base class: a ``torch.optim.Optimizer`` whose step is one fusedoptim rule."""

    _rule: str  # the fusedoptim rule this optimizer steps
    _fixed: dict = {}  # plan arguments torch has no flag for
    _step_count = True  # torch keeps state["step"], a float32 scalar tensor
    _eager_state = False  # torch creates the state at construction, not on the first step
    _pinned: dict = {}  # group keys set to these values whatever a loaded checkpoint says (AdamW's)
    _unsupported = ("capturable", "differentiable", "fused")  # torch flags that must be off

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "_rule" in cls.__dict__:
            # States that do not start at zero come from the rule (see _rules.Rule); host states
            # are kept, like step, as 0-d tensors of torch's default dtype.
            cls._initial, cls._host_states = RULES[cls._rule].initial, RULES[cls._rule].host_states
            plan = RULES[cls._rule].plan
            cls._plan_args = tuple(a for a in inspect.signature(plan).parameters
                                   if a != "step" and a not in cls._host_states)
            cls._takes_step = "step" in inspect.signature(plan).parameters
        cls._torch_defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                               if p.default is not inspect.Parameter.empty}

    def __init__(self, params, defaults):
        super().__init__(params, defaults)
        if self._eager_state:
            for group in self.param_groups:
                states = self._plan(self._hyper(group)).states
                for p in group["params"]:
                    self._init_state(p, states)

    def add_param_group(self, param_group):
        """Adds a param group, as torch does, after checking its hyperparameters and params."""
        if isinstance(param_group, dict):
            self._plan(self._hyper({**self.defaults, **param_group}))
            params = param_group.get("params", ())
            for j, p in enumerate([params] if isinstance(params, torch.Tensor) else list(params)):
                p = p[1] if isinstance(p, tuple) else p  # torch accepts (name, param) pairs
                if isinstance(p, torch.Tensor):
                    _check_tensor(p, f"param {j} of the new group", "param")
                    _check_not_expanded(p, f"param {j} of the new group")
        super().add_param_group(param_group)

    def __setstate__(self, state):
        super().__setstate__(state)  # load_state_dict ends here, with state cast to each param's dtype
        for group in self.param_groups:
            for key, value in self._torch_defaults.items():
                group.setdefault(key, value)  # checkpoints from torch versions before a flag existed
            group.update(self._pinned)
        for s in self.state.values():
            for name in ("step", *self._host_states):
                if name in s and not torch.is_tensor(s[name]):
                    s[name] = torch.tensor(float(s[name]))

    def _hyper(self, group):
        """The plan's keyword arguments from a param group; rejects the torch flags we do not implement."""
        for flag in self._unsupported:
            if group.get(flag):
                raise ValueError(f"{type(self).__name__} does not support {flag}={group[flag]!r}")
        hyper = {k: group[k] for k in self._plan_args if k in group}
        for k, v in hyper.items():
            if isinstance(v, torch.Tensor):  # torch allows a 1-element tensor lr
                hyper[k] = v.item()
        return {**hyper, **self._fixed}

    def _plan(self, hyper, args=None):
        """The plan of a step with these caller-owned arguments (by default, a first step's)."""
        return RULES[self._rule].plan(**hyper, **(self._step_args({})[1] if args is None else args))

    def _step_args(self, state):
        """A param's next step: its 1-based number and the plan's caller-owned arguments (step, host states)."""
        if self._step_count:
            count = int(state["step"]) + 1 if "step" in state else 1
        else:  # no counter (SGD): the first step is the one that finds no momentum buffer yet
            count = 2 if any(v is not None for v in state.values()) else 1
        args = {"step": count} if self._takes_step else {}
        return count, {**args, **{name: float(state[name]) if name in state else start
                                  for name, start in self._host_states.items()}}

    def _init_state(self, p, names):
        self.state[p].update(self._new_state(p, names, self.state[p]))

    def _new_state(self, p, names, state):
        """The entries ``state`` lacks for a step that updates ``names``: ``step``, host states, buffers."""
        new = {}
        if self._step_count and "step" not in state:
            new["step"] = torch.tensor(0.0)  # float32, on the CPU, as torch keeps it
        for name, start in self._host_states.items():
            if name not in state:
                new[name] = torch.tensor(start)
        for name in names:
            if state.get(name) is None:
                fill = self.defaults[self._initial[name]] if name in self._initial else 0.0
                new[name] = torch.full_like(p, fill, memory_format=torch.preserve_format)
        return new

    @torch.no_grad()
    def step(self, closure=None):
        """Performs one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Check every group before stepping any, so that bad input modifies nothing.
        buckets = [bucket for i in range(len(self.param_groups)) for bucket in self._gather(i)]
        if buckets:
            self._step(buckets)
        return loss

    def _where(self, g, j):
        group = self.param_groups[g]
        return group["param_names"][j] if "param_names" in group else f"param_groups[{g}]['params'][{j}]"

    def _gather(self, index):
        """A group's params with a gradient, in buckets of one dtype and the same step arguments:
        (step number, the step's plan, [(param, group index, position in the group)])."""
        group = self.param_groups[index]
        hyper = self._hyper(group)
        buckets = {}
        for j, p in enumerate(group["params"]):
            grad = p.grad
            if grad is None:
                continue
            if not (p.dtype in _DTYPES and p.is_cpu and grad.dtype == p.dtype and grad.is_cpu
                    and grad.layout == torch.strided and grad.shape == p.shape):
                _check_tensor(p, self._where(index, j), "param")
                _check_tensor(grad, f"the gradient of {self._where(index, j)}", "gradient", like=p)
            count, args = self._step_args(self.state.get(p, {}))
            buckets.setdefault((p.dtype, count, *args.items()), (count, args, []))[2].append((p, index, j))
        if not buckets:
            self._plan(hyper)  # still reject bad hyperparameters
        return [(count, self._plan(hyper, args), members) for count, args, members in buckets.values()]

    def _step(self, buckets):
        """Steps the gathered buckets as one step: all checked, then all run, then the states kept."""
        rule = RULES[self._rule]
        fresh, memory, calls = {}, [], []  # param -> entries this step creates; each param's memory
        for count, plan, members in buckets:
            operands = [self._operands(p, g, j, plan.states, fresh, memory) for p, g, j in members]
            calls.append((count, plan, members, operands))
        # Params sharing memory: torch's for-loop steps them one after another, and so do we.
        sequential = len(memory) > 1 and find_overlap(memory) is not None
        if sequential:
            calls = sorted(((count, plan, [member], [ops]) for count, plan, members, operands in calls
                            for member, ops in zip(members, operands)), key=lambda call: call[2][0][1:])
        steps = [Call(plan, [ops[0] for ops in operands], [ops[1] for ops in operands],
                      {name: [ops[2][name] for ops in operands] if name in plan.states else None
                       for name in rule.states}, self._namer(members))
                 for _, plan, members, operands in calls]
        copies = [[pair for ops in operands for pair in ops[3]] for _, _, _, operands in calls]
        with deferred_interrupts():  # a Ctrl-C cannot split the kernels, the write-backs and the counts
            if len(steps) == 1:  # the usual step: one native call checks it and steps it
                call = steps[0]
                _fill(copies[0])
                functional._step_rule(self._rule, call.plan, call.params, call.grads, call.states, None, call.name)
                _write_back(copies[0])
            else:
                backend = resolve(None)
                ready = check(backend, rule, steps, across=not sequential)
                for args, pairs in zip(ready, copies):
                    _fill(pairs)
                    run(backend, rule, *args)
                    _write_back(pairs)
            for p, new in fresh.items():
                self.state[p].update(new)
            for count, plan, members, _ in calls:
                for p, _, _ in members:
                    state = self.state[p]
                    if self._step_count:
                        state["step"].fill_(count)  # the old step + 1; fill_ is cheaper than += 1
                    for name, value in plan.host_states.items():
                        state[name].fill_(value)

    def _operands(self, p, g, j, names, fresh, memory):
        """A param's operands as NumPy arrays: (param, grad, {state name: array}, copies), where
        copies are (tensor, contiguous copy) pairs the kernel steps through. Appends the param's
        own memory to ``memory``; new state entries go to ``fresh``, kept once the step succeeds."""
        state = self.state.get(p, {})
        new = self._new_state(p, names, state)
        if new:
            fresh[p] = new
            state = {**state, **new}
        order = None
        if not p.is_contiguous():
            _check_not_expanded(p, self._where(g, j))
            order = _memory_order(p)
        copies = []
        array = _writable(p, order, copies)
        memory.append(array if order is None else _in_order(p, order).numpy())
        states = {name: _writable(state[name], order, copies) for name in names}
        return array, _in_order(p.grad, order).numpy(), states, copies

    def _namer(self, members):
        """Names operand k of a call over ``members`` (param, group, position) as torch users know it."""

        def name(arg, k):
            where = self._where(*members[k][1:])
            return where if arg == "params" else f"the gradient of {where}" if arg == "grads" else \
                f"state[{arg!r}] of {where}"

        return name


def _check_tensor(t, where, what, like=None):
    if t.layout != torch.strided:
        raise TypeError(f"{where}: {what} has layout {t.layout}; only dense (strided) tensors are supported")
    if not t.is_cpu:
        raise TypeError(f"{where}: {what} is on {t.device}; fusedoptim.torch steps CPU tensors")
    if t.dtype not in _DTYPES:
        raise TypeError(f"{where}: {what} has dtype {t.dtype}; supported: torch.float32, torch.float64")
    if like is not None:
        if t.dtype != like.dtype:
            raise TypeError(f"{where}: {what} is {t.dtype} but the param is {like.dtype}")
        if t.shape != like.shape:
            raise ValueError(f"{where}: {what} has shape {tuple(t.shape)} but the param {tuple(like.shape)}")


def _memory_order(t):
    """The dims of ``t`` from the largest stride to the smallest."""
    return sorted(range(t.dim()), key=lambda d: -t.stride(d))


def _in_order(t, order):
    """``t`` with its dims in ``order``: contiguous, a view of the same memory, when t is dense in that order."""
    if t.requires_grad:
        t = t.detach()
    return t if order is None else t.permute(order)


def _check_not_expanded(p, where):
    if any(stride == 0 and size > 1 for size, stride in zip(p.shape, p.stride())):
        raise ValueError(f"{where}: param is expanded (a dimension of stride 0), so its elements share memory and "
                         f"cannot be updated one by one (torch.optim fails on it too); step a copy (tensor.clone())")


def _writable(t, order, copies):
    """A NumPy view of ``t``'s memory in ``order``; or, where ``t`` is not dense, one of a
    contiguous copy, listed in ``copies`` to be filled before the kernel runs and written back after."""
    view = _in_order(t, order)
    if view.is_contiguous():
        return view.numpy()
    copy = torch.empty_like(view, memory_format=torch.contiguous_format)
    copies.append((view, copy))
    return copy.numpy()


def _fill(copies):
    for tensor, copy in copies:
        copy.copy_(tensor)


def _write_back(copies):
    for tensor, copy in copies:
        tensor.copy_(copy)


@_with_formula(reference.sgd)
class SGD(Optimizer):
    """``torch.optim.SGD`` on fusedoptim's kernel: SGD, heavy-ball momentum, Nesterov.

    Defaults: lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, maximize=False.
    State: ``momentum_buffer`` (with momentum), set to the first step's gradient as torch does.
    """

    _rule = "sgd"
    _step_count = False

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False, foreach=None, differentiable=False, fused=None):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize, foreach=foreach,
                                      differentiable=differentiable, fused=fused))


@_with_formula(reference.adagrad)
class Adagrad(Optimizer):
    """``torch.optim.Adagrad`` on fusedoptim's kernel.

    Defaults: lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10,
    maximize=False. State: ``step``, ``sum`` (created at construction, filled with
    ``initial_accumulator_value``, as torch does).
    """

    _rule = "adagrad"
    _eager_state = True

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10,
                 foreach=None, *, maximize=False, differentiable=False, fused=None):
        if not initial_accumulator_value >= 0.0:
            raise ValueError(f"Invalid initial_accumulator_value: {initial_accumulator_value} (must be >= 0)")
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                                      maximize=maximize, differentiable=differentiable, fused=fused))


@_with_formula(reference.rmsprop)
class RMSprop(Optimizer):
    """``torch.optim.RMSprop`` on fusedoptim's kernel, optionally centered and with momentum.

    Defaults: lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
    maximize=False. State: ``step``, ``square_avg``, ``momentum_buffer`` (momentum > 0),
    ``grad_avg`` (centered).
    """

    _rule = "rmsprop"

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 capturable=False, foreach=None, maximize=False, differentiable=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                                      weight_decay=weight_decay, capturable=capturable, foreach=foreach,
                                      maximize=maximize, differentiable=differentiable))


@_with_formula(reference.adam)
class Adam(Optimizer):
    """``torch.optim.Adam`` on fusedoptim's kernel, with L2 or decoupled weight decay and AMSGrad.

    Defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0 (L2; decoupled, as AdamW,
    with ``decoupled_weight_decay=True``), amsgrad=False, maximize=False. State: ``step``,
    ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad).
    """

    _rule = "adam"
    _fixed = {"bias_correction": True}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize, foreach=foreach, capturable=capturable,
                                      differentiable=differentiable, fused=fused,
                                      decoupled_weight_decay=decoupled_weight_decay))


@_with_formula(reference.adam)
class AdamW(Adam):
    """``torch.optim.AdamW``: :class:`Adam` with decoupled weight decay (Loshchilov & Hutter, 2019).

    Defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
    maximize=False. State: ``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad).
    """

    _pinned = {"decoupled_weight_decay": True}  # as torch's AdamW, whatever a loaded checkpoint says

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True)


@_with_formula(reference.adamax)
class Adamax(Optimizer):
    """``torch.optim.Adamax`` on fusedoptim's kernel: Adam with the infinity norm.

    Defaults: lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, maximize=False.
    State: ``step``, ``exp_avg``, ``exp_inf``.
    """

    _rule = "adamax"

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, foreach=None, *,
                 maximize=False, differentiable=False, capturable=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach,
                                      maximize=maximize, differentiable=differentiable, capturable=capturable))


@_with_formula(reference.nadam)
class NAdam(Optimizer):
    """``torch.optim.NAdam`` on fusedoptim's kernel: Adam with Nesterov momentum.

    Defaults: lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0 (L2; decoupled with
    ``decoupled_weight_decay=True``), momentum_decay=4e-3, maximize=False. State: ``step``,
    ``mu_product`` (a 0-d tensor like ``step``, 1.0 before the first step), ``exp_avg``, ``exp_avg_sq``.
    """

    _rule = "nadam"

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, momentum_decay=4e-3,
                 decoupled_weight_decay=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize, foreach=foreach, capturable=capturable,
                                      differentiable=differentiable))


@_with_formula(reference.radam)
class RAdam(Optimizer):
    """``torch.optim.RAdam`` on fusedoptim's kernel: Adam with a rectified variance estimate.

    Defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0 (L2; decoupled with
    ``decoupled_weight_decay=True``), maximize=False. State: ``step``, ``exp_avg``, ``exp_avg_sq``.
    """

    _rule = "radam"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, decoupled_weight_decay=False,
                 *, foreach=None, maximize=False, capturable=False, differentiable=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize,
                                      foreach=foreach, capturable=capturable, decoupled_weight_decay=decoupled_weight_decay,
                                      differentiable=differentiable))


@_with_formula(reference.adadelta)
class Adadelta(Optimizer):
    """``torch.optim.Adadelta`` on fusedoptim's kernel.

    Defaults: lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, maximize=False.
    State: ``step``, ``square_avg``, ``acc_delta``.
    """

    _rule = "adadelta"

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, foreach=None, *, capturable=False,
                 maximize=False, differentiable=False):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, foreach=foreach,
                                      capturable=capturable, maximize=maximize, differentiable=differentiable))


@_with_formula(reference.lion)
class Lion(Optimizer):
    """Lion (Chen et al., 2023) as a ``torch.optim.Optimizer``; torch has no Lion of its own.

    Defaults: lr=1e-4, betas=(0.9, 0.99), weight_decay=0 (decoupled), maximize=False.
    State: ``step``, ``exp_avg``, as :class:`fusedoptim.Lion`.
    """

    _rule = "lion"

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize))


@_with_formula(reference.lamb)
class Lamb(Optimizer):
    """LAMB (You et al., 2019) as a ``torch.optim.Optimizer``; torch has no LAMB of its own.

    Defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0 (decoupled, inside the update),
    maximize=False, bias_correction=True. The trust ratio is per param tensor. State: ``step``,
    ``exp_avg``, ``exp_avg_sq``, as :class:`fusedoptim.Lamb`.
    """

    _rule = "lamb"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, *, maximize=False,
                 bias_correction=True):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize,
                                      bias_correction=bias_correction))
