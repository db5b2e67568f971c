"""Shared test vocabulary: the rules and their flag combinations, operand factories, bitwise equality,
the contract's runs of every backend against the reference, and distances to an fp64 ground truth.
(Test modules import from here, never from each other.)"""

import contextlib
import inspect
import itertools
import os

import os
import subprocess
import sys

from typing import NamedTuple

import ml_dtypes
import numpy as np
import pytest

import fusedoptim as fo

DTYPES = (np.float32, np.float64)
BF16, F16 = np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)
F32, F64 = np.dtype(np.float32), np.dtype(np.float64)


class Storage(NamedTuple):
    """What a step's operands are stored as: the params, the grads, and the states (``states`` is
    cycled over a rule's state arguments, so (bf16, f32) alternates them)."""

    param: np.dtype
    grad: np.dtype
    states: tuple

    def state(self, k):
        return self.states[k % len(self.states)]

    def __repr__(self):
        return "/".join(np.dtype(d).name for d in (self.param, self.grad, *self.states))


def _storages():
    """Every storage combination the kernels take: each param dtype with each grad dtype it allows,
    its states all in its dtype, all in float32, or alternating (one call's state arguments may
    differ; each one is uniform)."""
    out = []
    for param in (F64, F32, BF16, F16):
        grads = (param, *(d for d in (F32, BF16, F16) if d != param))
        states = [(param,)] if param == F32 else [(param,), (F32,), (param, F32), (F32, param)]
        out += [Storage(param, grad, state) for grad in grads for state in states]
    return out


STORAGES = _storages()
# The ones a user gets from one dtype: every operand in the param's dtype.
PLAIN_STORAGES = [Storage(d, d, (d,)) for d in (F64, F32, BF16, F16)]


def as_storage(dtype):
    """A Storage for a dtype (every operand in it), or the Storage itself."""
    return dtype if isinstance(dtype, Storage) else Storage(np.dtype(dtype), np.dtype(dtype), (np.dtype(dtype),))


def compute_dtype(storage):
    return F64 if as_storage(storage).param == F64 else F32


# Input values that exercise the conversions, in the compute dtype (each is then stored as its operand's
# dtype, so one that a format cannot hold arrives as that format rounds it): NaN, Inf, signed zeros;
# subnormals of each format (float16's smallest 2^-24 and largest 2^-14 - 2^-24; bfloat16's are
# float32's, down to 2^-149); ties between neighbours (1 + 2^-8 in bfloat16, 1 + 2^-11 in float16);
# the largest finite values and those that round to Inf (65520 in float16, float32's max in bfloat16).
_SPECIALS = [np.nan, np.inf, -np.inf, 0.0, -0.0, 2.0**-24, -3 * 2.0**-24, 2.0**-14 - 2.0**-24, 2.0**-133, -1e-40,
             2.0**-149, 1 + 2.0**-8, -(1 + 3 * 2.0**-8), 1 + 2.0**-11, -3 * (1 + 2.0**-11), 65504.0, -65520.0, 65519.0,
             3.3895313892515355e38, -3.4028234663852886e38]
# float64 params' float32 states round float64 values: a float32 tie, and the one above float32's max
# that rounds to Inf (itself a tie).
_SPECIALS_F64 = _SPECIALS + [1 + 2.0**-24, -(2.0**-150), 3.4028235677973366e38]


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
    # eta and mu are per-call scalars like step: mu = 1 copies param into ax, mu < 1 averages. t0 = 5
    # makes torch's runs (which keep eta and mu themselves) average from step 8 on.
    Case("asgd", fo.asgd_, {"axs": ("ax", False)},
         [dict(lr=0.01, lambd=0.01, t0=5.0, eta=0.05, **h)
          for h in _grid(mu=[1.0, 0.25], weight_decay=[0.0, 0.05], maximize=[False, True])],
         torch_name="ASGD"),
    # Normal-sized step sizes and bounds inside their range make both clamps bite.
    Case("rprop", fo.rprop_, {"prevs": ("prev", False), "state_step_sizes": ("step_size", True)},
         _grid(etas=[(0.5, 1.2), (0.3, 1.5)], step_sizes=[(1e-6, 50), (0.05, 0.8)], maximize=[False, True]),
         takes_step=False, torch_name="Rprop"),
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


# --- The contract: every backend and ISA level against the NumPy reference, bit for bit ---

def backends():
    """(label, backend, isa) for every configuration that must match the reference."""
    configs = [("numba", "numba", None)] if "numba" in fo.available_backends() else []
    return configs + [(f"cpp/{isa}", "cpp", isa) for isa in supported_isas()]


def make_problem(case, hyper, dtype, sizes, steps, seed, specials):
    """Initial params and states and one gradient per step, as plain arrays. ``dtype`` is a dtype
    for every operand or a Storage; values are drawn in the compute dtype and stored as their
    operand's dtype, with a few of the special values above in each array when ``specials``."""
    storage = as_storage(dtype)
    rng = np.random.default_rng(seed)
    pool = np.array(_SPECIALS_F64 if compute_dtype(storage) == F64 else _SPECIALS, dtype=compute_dtype(storage))

    def values(n, dtype, nonneg=False):
        x = rng.standard_normal(n).astype(compute_dtype(storage))
        if specials and n:
            where = rng.integers(0, n, size=max(1, n // 50))
            x[where] = rng.choice(pool, size=where.size)
        with np.errstate(over="ignore"):
            return (np.abs(x) if nonneg else x).astype(dtype)

    params = [values(n, storage.param) for n in sizes]
    used = case.used_states(hyper).items()
    states = {arg: [values(n, storage.state(k), nonneg) for n in sizes] for k, (arg, nonneg) in enumerate(used)}
    grads = [[values(n, storage.grad) for n in sizes] for _ in range(steps)]
    return params, states, grads


def run(case, hyper, problem, first_step, offsets, backend, isa, packed=()):
    """Steps copies of ``problem`` placed at ``offsets`` bytes; returns the final params and states.
    Each list named in ``packed`` ("params", "grads", a state's argument) is instead consecutive
    views of one buffer placed at the next offset, as a flat arena's are."""
    if isa is not None:
        fo.set_isa(isa)
    initial_params, initial_states, grad_steps = problem
    place = iter(offsets)

    def place_all(name, arrays):
        if name not in packed:
            return [placed(a, next(place)) for a in arrays]
        whole = placed(np.concatenate([a.ravel() for a in arrays]), next(place))
        return [part.reshape(a.shape) for part, a in zip(np.split(whole, np.cumsum([a.size for a in arrays])), arrays)]

    params = place_all("params", initial_params)
    states = {arg: place_all(arg, arrays) for arg, arrays in initial_states.items()}
    with np.errstate(all="ignore"):  # NaN and Inf are part of what must match
        for k, grads in enumerate(grad_steps):
            step = {"step": first_step + k} if case.takes_step else {}
            case.functional(params, place_all("grads", grads), **states, **hyper, **step, backend=backend)
    return params, states


def assert_matches_reference(case, hyper, problem, first_step, offsets):
    expected = run(case, hyper, problem, first_step, offsets, "numpy", None)
    for label, backend, isa in backends():
        params, states = run(case, hyper, problem, first_step, offsets, backend, isa)
        for i, (p, e) in enumerate(zip(params, expected[0])):
            assert_bitwise_equal(p, e, f"{case.name} {hyper} {label}: params[{i}]")
        for arg in states:
            for i, (s, e) in enumerate(zip(states[arg], expected[1][arg])):
                assert_bitwise_equal(s, e, f"{case.name} {hyper} {label}: {arg}[{i}]")


# --- Distance to an fp64 ground truth ---
#
# Where fusedoptim's op order differs from another implementation of the same math (torch.optim, a
# textbook form, a published step), the two cannot agree bitwise. Both are then compared with the
# truth: the other implementation (the peer) run in float64 on the same inputs (float32 values
# upcast), whose own rounding is 2^-29 of float32's. A tensor's distance from the truth is the
# largest |x - truth| over its elements (an elementwise relative error means nothing where a value
# cancels to almost zero), and a run is judged by the largest distance it reached after any step:
# one step's distance is one draw of the roundings and can come out small by luck; a whole run's
# worst rarely does.

FACTOR = 2
"""How many times the peer's float32 distance from the truth ours may be.

Both distances are sums of the same kind of terms: roundings of the same intermediate values,
carried by the same recursions. Ours rounds every op (the contract) where the peer often fuses a
multiply and an add into one rounding (torch's FMA in add with alpha, addcmul, addcdiv, lerp): at
most about twice as many roundings per step (an average x = b x + (1 - b) g rounds three times
where lerp rounds twice; a scaled add, twice where an FMA rounds once), of values of the same size.
If they all add up, that is twice the distance; if they add like random draws, sqrt(2) times. A
run's largest distance over all its steps, not one step's draw, is what is compared, so the luck
of one draw barely moves it. Where the peer's distance comes out tiny (zero, or a fraction of an
ulp), the floor takes over; so it does for our averages' bias (see floor)."""


def floor(scale, steps, dtype):
    """One ulp of the tensor's scale per step: the farthest ours may stray where the peer's own
    distance is zero or tiny, derived from the ops, not measured.

    A state is updated by a chain of a few rounded ops, e.g. an average x = b x + (1 - b) g rounds
    b x, (1 - b) g and their sum (each by at most half an ulp of a value no larger than the state's
    scale, u = eps / 2 of it) and uses b and 1 - b rounded to the compute dtype, whose sum then misses
    1 by up to 3u / 4: a bias of the same sign every step (torch's lerp has none). That is about
    2u = eps of the scale per step. An error made at one step is damped by later steps (b < 1) or
    carried unchanged (params), never amplified, so after ``steps`` steps it is at most
    steps * eps * scale; roundings of random sign add up like sqrt(steps), so runs stay far inside.
    Where a value cancels (g = grad + weight_decay * param near equilibrium), errors relative to
    the scale are amplified, for the peer as for us: FACTOR covers those."""
    return steps * float(np.finfo(dtype).eps) * scale


# float64's roundings are float32's times this, so on one problem (float32 inputs upcast) the float64
# runs' distances are, to first order, the float32 ones times it.
SHRINK = float(np.finfo(np.float64).eps / np.finfo(np.float32).eps)  # 2^-29


def bound(peer_distance, scale, steps, dtype):
    """How far from the truth a ``dtype`` result of ours may be, given the peer's float32 distance.

    float32: FACTOR times the peer's distance, plus the floor. float64: the truth (the peer's float64
    run) is then no more accurate than ours, so |ours - truth| <= |ours - exact| + |truth - exact|:
    FACTOR times the truth's own error plus one time it, where that error is SHRINK times the peer's
    float32 one. Hence (FACTOR + 1) * SHRINK * the peer's float32 distance, plus the float64 floor."""
    if np.dtype(dtype) == np.float32:
        return FACTOR * peer_distance + floor(scale, steps, np.float32)
    return (FACTOR + 1) * SHRINK * peer_distance + floor(scale, steps, np.float64)


SHARES = {}
"""The largest share of its bound each test used, printed at the end of the session (the margins)."""


class Distances:
    """The distances of ours and of the peer's float32 run from the truth over a run, per tensor:
    the largest after any step, with the truth's largest magnitude (the tensor's scale). The bound
    is that of the whole run (its floor counts all its steps)."""

    def __init__(self):
        self.names, self.steps, self.dtype = None, 0, None
        self.ours = self.peer = self.scale = 0.0

    def record(self, ours, peer, truth, names):
        """One step's results, lists of non-empty arrays in the same order: ours (float32 or float64),
        the peer's (float32) and the truth's (float64); ``names`` names the tensors, the same every step."""
        assert self.names in (None, names), f"the tensors were {self.names}, now {names}"
        self.names = names
        self.dtype = np.asarray(ours[0]).dtype  # the first param's: a host-side scalar state may be a double
        assert self.dtype in (np.float32, np.float64)
        assert {np.asarray(x).dtype for x in peer} == {np.dtype(np.float32)}
        assert {np.asarray(x).dtype for x in truth} == {np.dtype(np.float64)}
        sizes = [np.size(x) for x in truth]
        assert [np.size(x) for x in ours] == [np.size(x) for x in peer] == sizes and min(sizes) > 0
        o, p, t = (np.concatenate([np.ravel(x) for x in run]).astype(np.float64) for run in (ours, peer, truth))
        starts = np.cumsum([0] + sizes[:-1])

        def largest(x):  # per tensor
            return np.maximum.reduceat(np.abs(x), starts)

        self.ours = np.maximum(self.ours, largest(o - t))
        self.peer = np.maximum(self.peer, largest(p - t))
        self.scale = np.maximum(self.scale, largest(t))
        self.steps += 1

    def share(self):
        """The largest share of its bound a tensor used, and a description of that tensor."""
        limits = bound(self.peer, self.scale, self.steps, self.dtype)
        shares = np.divide(self.ours, limits, out=np.where(self.ours > 0, np.inf, 0.0), where=limits > 0)
        i = int(np.argmax(shares))
        return float(shares[i]), (f"{self.names[i]} ({self.dtype.name}, {self.steps} steps): ours was "
                                  f"{self.ours[i]:.3g} from the truth, the peer's float32 {self.peer[i]:.3g}, "
                                  f"the scale {self.scale[i]:.3g}, the bound {limits[i]:.3g}")

    def check(self):
        """Ours stayed within the bound of every tensor; the share used is kept for the session's summary."""
        share, what = self.share()
        test = os.environ.get("PYTEST_CURRENT_TEST", "").split("[")[0].split(" ")[0]
        key = f"{test} ({self.dtype.name})"
        SHARES[key] = max(SHARES.get(key, 0.0), share)
        assert share <= 1, f"farther from the fp64 truth than the bound: {what}"


def params_of(opt):
    """An optimizer's params across its groups (torch's or ours)."""
    return [p for g in opt.param_groups for p in g["params"]]


@contextlib.contextmanager
def torch_default_dtype(dtype):
    """torch keeps per-param scalar state (step, NAdam's mu_product, ASGD's eta and mu) in its default
    dtype: a float64 run steps with float64 as the default, so that those scalars are float64 too, as
    ours are on the host."""
    import torch  # only the tests that have it call this

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def pytest_terminal_summary(terminalreporter):
    if SHARES:
        terminalreporter.section("largest share of an fp64-derived bound used, per test")
        for test, share in sorted(SHARES.items()):
            terminalreporter.write_line(f"{share:6.3f}  {test}")


# Runs a snippet in a fresh interpreter where the listed modules are missing, as if not installed
# (a None entry in sys.modules makes import raise and find_spec return None).
BLOCKER = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None
"""


def run_python(code, blocked=(), env=None):
    done = subprocess.run([sys.executable, "-c", BLOCKER.format(blocked=list(blocked)) + code], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    return done

# Together big enough for three threads (fusedoptim._kernels.THREAD_BYTES of each operand per
# thread, fp32 or fp64), split so that tensors end mid-chunk and mid-vector.
BIG = [150001, 37, 70003]


# Every optimizer of the registry, with hyperparameters that use every state it has.
EVERY_STATE_KWARGS = {"SGD": dict(lr=0.1, momentum=0.9, nesterov=True),
                      "Adagrad": dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.5),
                      "RMSprop": dict(lr=0.01, momentum=0.5, centered=True),
                      "Adam": dict(lr=0.01, amsgrad=True, weight_decay=0.1),
                      "AdamW": dict(lr=0.01, amsgrad=True),
                      "Adamax": dict(lr=0.01, weight_decay=0.1),
                      "Adadelta": dict(lr=0.5, weight_decay=0.1),
                      "RAdam": dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
                      "NAdam": dict(lr=0.01, weight_decay=0.1, momentum_decay=0.01),
                      "Lion": dict(lr=0.01, weight_decay=0.1),
                      "Lamb": dict(lr=0.01, weight_decay=0.1),
                      "ASGD": dict(lr=0.01, lambd=0.01, t0=2.0, weight_decay=0.1),
                      "Rprop": dict(lr=0.01, etas=(0.4, 1.3))}
