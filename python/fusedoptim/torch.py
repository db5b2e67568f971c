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
from .functional import _with_formula
from ._rules import RULES

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
        state = self.state[p]
        if self._step_count and "step" not in state:
            state["step"] = torch.tensor(0.0)  # float32, on the CPU, as torch keeps it
        for name, start in self._host_states.items():
            state.setdefault(name, torch.tensor(start))
        for name in names:
            if state.get(name) is None:
                fill = self.defaults[self._initial[name]] if name in self._initial else 0.0
                state[name] = torch.full_like(p, fill, memory_format=torch.preserve_format)

    @torch.no_grad()
    def step(self, closure=None):
        """Performs one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Check every group before stepping any, so that bad input modifies nothing.
        work = [self._gather(i) for i in range(len(self.param_groups))]
        for buckets in work:
            for count, plan, params in buckets:
                self._step_bucket(count, plan, params)
        return loss

    def _gather(self, index):
        """A group's params with a gradient, in buckets of one dtype and the same step arguments:
        (step number, the step's plan, params)."""
        group = self.param_groups[index]
        hyper = self._hyper(group)
        buckets = {}
        for j, p in enumerate(group["params"]):
            grad = p.grad
            if grad is None:
                continue
            if not (p.dtype in _DTYPES and p.is_cpu and grad.dtype == p.dtype and grad.is_cpu
                    and grad.layout == torch.strided and grad.shape == p.shape):
                where = group["param_names"][j] if "param_names" in group else f"param_groups[{index}]['params'][{j}]"
                _check_tensor(p, where, "param")
                _check_tensor(grad, f"the gradient of {where}", "gradient", like=p)
            count, args = self._step_args(self.state.get(p, {}))
            buckets.setdefault((p.dtype, count, *args.items()), (count, args, []))[2].append(p)
        if not buckets:
            self._plan(hyper)  # still reject bad hyperparameters
        return [(count, self._plan(hyper, args), members) for count, args, members in buckets.values()]

    def _step_bucket(self, count, plan, params):
        names = plan.states
        arrays, grads, write_back, stepped = [], [], [], []
        states = {name: [] if name in names else None for name in RULES[self._rule].states}
        for p in params:
            state = self.state[p]
            stepped.append(state)
            if any(state.get(name) is None for name in names):
                self._init_state(p, names)
            order = None if p.is_contiguous() else _memory_order(p)
            arrays.append(_writable(p, order, write_back))
            grads.append(_in_order(p.grad, order).numpy())
            for name in names:
                states[name].append(_writable(state[name], order, write_back))
        functional._step_rule(self._rule, plan, arrays, grads, states, None)
        for tensor, copy in write_back:
            tensor.copy_(copy)
        for state in stepped:
            if self._step_count:
                state["step"].fill_(count)  # the old step + 1; fill_ is cheaper than += 1
            for name, value in plan.host_states.items():
                state[name].fill_(value)


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


def _writable(t, order, write_back):
    """A NumPy view of ``t``'s memory in ``order``, or of a contiguous copy to be written back after the step."""
    view = _in_order(t, order)
    if view.is_contiguous():
        return view.numpy()
    copy = view.contiguous()
    write_back.append((view, copy))
    return copy.numpy()


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
