"""Functional, in-place optimizer steps on NumPy arrays.

Each function steps one array, or a list of arrays in one call, and updates the params and
their state buffers in place. Names, arguments and defaults follow ``torch.optim``; ``step``
is the 1-based count of the step being taken, owned by the caller. ``backend`` is "cpp",
"numba", "numpy" or None/"auto" (the fastest available, or $FUSEDOPTIM_BACKEND). The whole
step is validated before any memory is touched: bad input raises TypeError / ValueError
naming the argument and modifies nothing.
"""

from __future__ import annotations

from . import reference
from ._backends import resolve, step
from ._rules import RULES, adagrad_plan, adam_plan, rmsprop_plan, sgd_plan


def _step_rule(name, plan, params, grads, states, backend):
    """One step of rule ``name``: ``plan`` is its plan function's result for this step's
    hyperparameters (called by each public function with positional arguments: forwarding
    ``**kwargs`` would cost more than a small step's kernel)."""
    step(resolve(backend), RULES[name], plan, params, grads, states)


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
          backend=None):
    """Adam (Kingma & Ba, 2015; ``torch.optim.Adam``).

    Defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0 (L2, added to the
    gradient), amsgrad=False, maximize=False, bias_correction=True. ``bias_correction=False``
    is the lecture's Adam without the 1 - beta^t factors. ``max_exp_avg_sqs`` are required when
    amsgrad. States start at zero.
    """
    _step_rule("adam", adam_plan(step, lr, betas, eps, weight_decay, amsgrad, maximize, bias_correction),
               params, grads, {"exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs, "max_exp_avg_sqs": max_exp_avg_sqs},
               backend)
