"""Functional, in-place optimizer steps on NumPy arrays.

Each function steps one array, or a list of arrays in one call, and updates the params and
their state buffers in place. Names, arguments and defaults follow ``torch.optim``; ``step``
is the 1-based count of the step being taken, owned by the caller. ``backend`` is "cpp",
"numba", "numpy" or None/"auto" (the fastest available, or $FUSEDOPTIM_BACKEND). The whole
step is validated before any memory is touched: bad input raises TypeError / ValueError
naming the argument and modifies nothing. Params and states are updated in place, so each
must be a writeable ndarray or expose its memory without a copy (array.array, a writeable
memoryview); a list or a NumPy scalar is a TypeError. Grads are only read: any array-like,
and one array may serve several params. A step is all or nothing on every backend, also
when interrupted: a KeyboardInterrupt (Ctrl-C) is raised before anything changed or once
everything has.
"""

from __future__ import annotations

from . import reference
from ._backends import resolve, step
from ._rules import (RULES, adadelta_plan, adagrad_plan, adam_plan, adamax_plan, lamb_plan, lion_plan, nadam_plan,
                     radam_plan, rmsprop_plan, sgd_plan)


def _step_rule(name, plan, params, grads, states, backend, operand_name=None):
    """One step of rule ``name``: ``plan`` is its plan function's result for this step's
    hyperparameters (called by each public function with positional arguments: forwarding
    ``**kwargs`` would cost more than a small step's kernel). ``operand_name(arg, i)`` names
    operands in errors, for callers stepping params of their own. Returns the plan."""
    step(resolve(backend), RULES[name], plan, params, grads, states, operand_name)
    return plan


def _with_formula(spec):
    """Appends the reference's formula, the one written statement of the math, to a docstring."""

    def attach(fn):
        fn.__doc__ = fn.__doc__.rstrip() + "\n\n    Update, per element:\n" + spec.__doc__.split("\n", 1)[1]
        return fn

    return attach


@_with_formula(reference.sgd)
def sgd_(params, grads, momentum_buffers=None, *, step=None, lr=1e-3, momentum=0.0, dampening=0.0,
         nesterov=False, weight_decay=0.0, maximize=False, backend=None):
    """SGD, heavy-ball momentum and Nesterov momentum (``torch.optim.SGD``).

    Defaults: lr=1e-3, momentum=0, dampening=0, nesterov=False, weight_decay=0, maximize=False.
    With momentum != 0, ``momentum_buffers`` and ``step`` are required; on step 1 the buffer
    is set to the gradient (undamped), as torch does.
    """
    _step_rule("sgd", sgd_plan(step, lr, momentum, dampening, nesterov, weight_decay, maximize),
               params, grads, {"momentum_buffers": momentum_buffers}, backend)


@_with_formula(reference.adagrad)
def adagrad_(params, grads, state_sums, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
             maximize=False, backend=None):
    """AdaGrad (Duchi et al., 2011; ``torch.optim.Adagrad``).

    Defaults: lr=1e-2, lr_decay=0, weight_decay=0, eps=1e-10, maximize=False. ``state_sums``
    start at ``initial_accumulator_value`` (0 by default).
    """
    _step_rule("adagrad", adagrad_plan(step, lr, lr_decay, weight_decay, eps, maximize),
               params, grads, {"state_sums": state_sums}, backend)


@_with_formula(reference.rmsprop)
def rmsprop_(params, grads, square_avgs, *, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
             centered=False, momentum_buffers=None, grad_avgs=None, maximize=False, backend=None):
    """RMSProp (Hinton, 2012; ``torch.optim.RMSprop``).

    Defaults: lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
    maximize=False. ``momentum_buffers`` are required when momentum > 0, ``grad_avgs`` when
    centered; all states start at zero.
    """
    _step_rule("rmsprop", rmsprop_plan(lr, alpha, eps, weight_decay, momentum, centered, maximize),
               params, grads, {"square_avgs": square_avgs, "momentum_buffers": momentum_buffers, "grad_avgs": grad_avgs},
               backend)


@_with_formula(reference.adam)
def adam_(params, grads, exp_avgs, exp_avg_sqs, *, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
          weight_decay=0.0, amsgrad=False, max_exp_avg_sqs=None, maximize=False, bias_correction=True,
          decoupled_weight_decay=False, backend=None):
    """Adam (Kingma & Ba, 2015; ``torch.optim.Adam``).

    Defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0 (L2, added to the
    gradient; decoupled from it, as AdamW, with ``decoupled_weight_decay=True``), amsgrad=False
    (Reddi et al., 2018), maximize=False, bias_correction=True. ``bias_correction=False`` is the
    lecture's Adam without the 1 - beta^t factors. ``max_exp_avg_sqs`` are required when
    amsgrad. States start at zero.
    """
    _step_rule("adam", adam_plan(step, lr, betas, eps, weight_decay, amsgrad, maximize, bias_correction,
                                 decoupled_weight_decay),
               params, grads, {"exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs, "max_exp_avg_sqs": max_exp_avg_sqs},
               backend)


@_with_formula(reference.adam)
def adamw_(params, grads, exp_avgs, exp_avg_sqs, *, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
           weight_decay=1e-2, amsgrad=False, max_exp_avg_sqs=None, maximize=False, bias_correction=True,
           backend=None):
    """AdamW (Loshchilov & Hutter, 2019; ``torch.optim.AdamW``): :func:`adam_` with decoupled
    weight decay, ``param *= 1 - lr * weight_decay`` before the Adam update.

    Defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
    maximize=False, bias_correction=True. States as for :func:`adam_`.
    """
    adam_(params, grads, exp_avgs, exp_avg_sqs, step=step, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
          amsgrad=amsgrad, max_exp_avg_sqs=max_exp_avg_sqs, maximize=maximize, bias_correction=bias_correction,
          decoupled_weight_decay=True, backend=backend)


@_with_formula(reference.adamax)
def adamax_(params, grads, exp_avgs, exp_infs, *, step, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
            maximize=False, backend=None):
    """Adamax (Kingma & Ba, 2015, section 7.1; ``torch.optim.Adamax``).

    Defaults: lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0 (L2), maximize=False.
    States start at zero.
    """
    _step_rule("adamax", adamax_plan(step, lr, betas, eps, weight_decay, maximize),
               params, grads, {"exp_avgs": exp_avgs, "exp_infs": exp_infs}, backend)


@_with_formula(reference.adadelta)
def adadelta_(params, grads, square_avgs, acc_deltas, *, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False,
              backend=None):
    """Adadelta (Zeiler, 2012; ``torch.optim.Adadelta``).

    Defaults: lr=1.0, rho=0.9, eps=1e-6, weight_decay=0 (L2), maximize=False. States start at
    zero.
    """
    _step_rule("adadelta", adadelta_plan(lr, rho, eps, weight_decay, maximize),
               params, grads, {"square_avgs": square_avgs, "acc_deltas": acc_deltas}, backend)


@_with_formula(reference.radam)
def radam_(params, grads, exp_avgs, exp_avg_sqs, *, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
           decoupled_weight_decay=False, maximize=False, backend=None):
    """RAdam, rectified Adam (Liu et al., 2020; ``torch.optim.RAdam``).

    Defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0 (L2; decoupled, as
    AdamW, with ``decoupled_weight_decay=True``), maximize=False. While the variance estimate
    is intractable (rho_t <= 5, the first 5 steps with the default betas) the step is SGD with
    momentum. States start at zero.
    """
    _step_rule("radam", radam_plan(step, lr, betas, eps, weight_decay, decoupled_weight_decay, maximize),
               params, grads, {"exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs}, backend)


@_with_formula(reference.nadam)
def nadam_(params, grads, exp_avgs, exp_avg_sqs, *, step, mu_product, lr=2e-3, betas=(0.9, 0.999), eps=1e-8,
           weight_decay=0.0, momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False, backend=None):
    """NAdam (Dozat, 2016; ``torch.optim.NAdam``). Returns the ``mu_product`` for the next step.

    Defaults: lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0 (L2; decoupled, as
    AdamW, with ``decoupled_weight_decay=True``), momentum_decay=4e-3, maximize=False.
    ``mu_product`` is owned by the caller like ``step``: 1.0 before the first step, then what
    the previous call returned (torch keeps it per param as ``state["mu_product"]``).
    States start at zero.
    """
    plan = _step_rule("nadam", nadam_plan(step, mu_product, lr, betas, eps, weight_decay, momentum_decay,
                                          decoupled_weight_decay, maximize),
                      params, grads, {"exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs}, backend)
    return plan.host_states["mu_product"]


@_with_formula(reference.lion)
def lion_(params, grads, exp_avgs, *, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False, backend=None):
    """Lion, EvoLved Sign Momentum (Chen et al., 2023, arXiv:2302.06675).

    Defaults: lr=1e-4, betas=(0.9, 0.99), weight_decay=0 (decoupled), maximize=False, as in the
    paper's published implementation. Every element moves by exactly lr (plus the decay), so lr
    is typically 3-10x smaller than AdamW's and weight_decay 3-10x larger. ``exp_avgs`` start at zero.
    """
    _step_rule("lion", lion_plan(lr, betas, weight_decay, maximize),
               params, grads, {"exp_avgs": exp_avgs}, backend)


@_with_formula(reference.lamb)
def lamb_(params, grads, exp_avgs, exp_avg_sqs, *, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0,
          maximize=False, bias_correction=True, backend=None):
    """LAMB, layer-wise adaptive moments (You et al., 2019, arXiv:1904.00962).

    Defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0 (decoupled, inside the
    update), maximize=False, bias_correction=True, as TensorFlow Addons' ``LAMB``. The trust
    ratio is per array: each of ``params`` is one layer. States start at zero.
    """
    _step_rule("lamb", lamb_plan(step, lr, betas, eps, weight_decay, maximize, bias_correction),
               params, grads, {"exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs}, backend)
