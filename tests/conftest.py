"""Shared test vocabulary: the rules and their flag combinations, operand factories, bitwise equality."""

import inspect
import itertools

import numpy as np
import pytest

import fusedoptim as fo

DTYPES = (np.float32, np.float64)


def _grid(**axes):
    """Every combination of the given hyperparameter values."""
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def _sgd_grid():
    plain = _grid(momentum=[0.0], weight_decay=[0.0, 0.05], maximize=[False, True])
    heavy_ball = _grid(momentum=[0.9], dampening=[0.0, 0.3], weight_decay=[0.0, 0.05], maximize=[False, True])
    nesterov = _grid(momentum=[0.9], nesterov=[True], weight_decay=[0.0, 0.05], maximize=[False, True])
    return [dict(lr=0.05, **h) for h in plain + heavy_ball + nesterov]


# None, L2 and decoupled (AdamW-style), for the rules that have both forms of weight decay.
WEIGHT_DECAYS = [dict(weight_decay=0.0), dict(weight_decay=0.05), dict(weight_decay=0.05, decoupled_weight_decay=True)]


def _with_weight_decays(grid):
    return [{**h, **wd} for h in grid for wd in WEIGHT_DECAYS]


class Case:
    """A rule as the tests drive it: its functional, its state arguments, and flag combinations.

    ``states`` maps each functional state argument to (kernel state name, non-negative?):
    non-negative states (sums of squares) are initialised with magnitudes.
    """

    def __init__(self, name, functional, states, grid, takes_step=True, torch_name=None):
        self.name, self.functional, self.states, self.grid = name, functional, states, grid
        self.takes_step = takes_step
        self.torch_name = torch_name

    def used_states(self, hyper):
        rule = fo._rules.RULES[self.name]
        uses = dict(zip((s.name for s in rule.states), rule.first_plan(**hyper).uses))
        return {arg: nonneg for arg, (state, nonneg) in self.states.items() if uses[state]}

    def __repr__(self):
        return self.name


CASES = [
    Case("sgd", fo.sgd_, {"momentum_buffers": ("momentum_buffer", False)}, _sgd_grid(), torch_name="SGD"),
    Case("adagrad", fo.adagrad_, {"state_sums": ("sum", True)},
         [dict(lr=0.05, **h) for h in _grid(lr_decay=[0.0, 0.01], weight_decay=[0.0, 0.05], maximize=[False, True])],
         torch_name="Adagrad"),
    Case("rmsprop", fo.rmsprop_,
         {"square_avgs": ("square_avg", True), "momentum_buffers": ("momentum_buffer", False),
          "grad_avgs": ("grad_avg", False)},
         [dict(lr=0.01, **h) for h in _grid(momentum=[0.0, 0.9], centered=[False, True], weight_decay=[0.0, 0.05],
                                            maximize=[False, True])],
         takes_step=False, torch_name="RMSprop"),
    Case("adam", fo.adam_,
         {"exp_avgs": ("exp_avg", False), "exp_avg_sqs": ("exp_avg_sq", True),
          "max_exp_avg_sqs": ("max_exp_avg_sq", True)},
         _with_weight_decays(_grid(lr=[0.01], amsgrad=[False, True], maximize=[False, True],
                                   bias_correction=[True, False])),
         torch_name="Adam"),
    Case("adamax", fo.adamax_, {"exp_avgs": ("exp_avg", False), "exp_infs": ("exp_inf", True)},
         _grid(lr=[0.01], weight_decay=[0.0, 0.05], maximize=[False, True]), torch_name="Adamax"),
    Case("adadelta", fo.adadelta_, {"square_avgs": ("square_avg", True), "acc_deltas": ("acc_delta", True)},
         _grid(weight_decay=[0.0, 0.05], maximize=[False, True]), takes_step=False, torch_name="Adadelta"),
    # Steps 1-5 are unrectified, 6 on rectified (default betas): the full grid runs steps 1-6.
    Case("radam", fo.radam_, {"exp_avgs": ("exp_avg", False), "exp_avg_sqs": ("exp_avg_sq", True)},
         _with_weight_decays(_grid(lr=[0.01], maximize=[False, True])),
         torch_name="RAdam"),
    # mu_product is a per-call scalar like step; any value in (0, 1] exercises the kernels.
    Case("nadam", fo.nadam_, {"exp_avgs": ("exp_avg", False), "exp_avg_sqs": ("exp_avg_sq", True)},
         _with_weight_decays(_grid(lr=[0.01], mu_product=[0.3], maximize=[False, True])), torch_name="NAdam"),
    Case("lion", fo.lion_, {"exp_avgs": ("exp_avg", False)},
         [dict(lr=0.01, **h) for h in _grid(betas=[(0.9, 0.99), (0.0, 0.5)], weight_decay=[0.0, 0.1],
                                            maximize=[False, True])],
         takes_step=False),
    Case("lamb", fo.lamb_, {"exp_avgs": ("exp_avg", False), "exp_avg_sqs": ("exp_avg_sq", True)},
         [dict(lr=0.01, **h) for h in _grid(weight_decay=[0.0, 0.05], maximize=[False, True],
                                            bias_correction=[True, False])]),
]
CASE_BY_NAME = {c.name: c for c in CASES}


def supported_isas():
    return [name for name, ok in fo.isa_levels() if ok]


def assert_bitwise_equal(actual, expected, what=""):
    """Equal bit for bit (the sign of zero and of infinity count), with NaN exactly where the
    reference has NaN.

    A NaN's payload is not compared: when two different NaNs meet in one + or *, x86 returns
    the first operand's, and GCC and LLVM treat + and * as commutative and NaN bits as
    unspecified, so which one survives is the compiler's choice (see README, "The contract").
    """
    a, e = np.ravel(actual), np.ravel(expected)
    assert a.dtype == e.dtype and a.shape == e.shape, f"{what}: {a.dtype}{a.shape} vs {e.dtype}{e.shape}"
    differ = a.view(f"u{a.itemsize}") != e.view(f"u{e.itemsize}")
    bad = np.flatnonzero(differ & ~(np.isnan(a) & np.isnan(e)))
    assert bad.size == 0, (f"{what}: {bad.size} of {a.size} elements differ bitwise; "
                           f"first at {bad[0]}: {a[bad[0]]!r} != {e[bad[0]]!r}")


def placed(values, offset_bytes):
    """A copy of ``values`` whose data starts ``offset_bytes`` past a 64-byte boundary (a view into a bigger buffer)."""
    nbytes = values.nbytes
    raw = np.zeros(nbytes + offset_bytes + 128, dtype=np.uint8)
    start = -raw.ctypes.data % 64 + offset_bytes
    out = raw[start:start + nbytes].view(values.dtype)
    out[...] = values.ravel()
    return out.reshape(values.shape)


@pytest.fixture
def isa():
    """Restores the ISA level after a test that changes it."""
    if not fo.isa_levels():
        yield None
        return
    previous = fo._backends._kernels.isa()
    yield previous
    fo.set_isa(previous)
