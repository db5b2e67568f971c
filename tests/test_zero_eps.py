"""eps = 0, or an eps that rounds to 0 in float32: 0/0 and x/0 follow IEEE on every backend
(NaN and Inf, bit for bit as the reference), never an exception part way through a step."""

import inspect

import numpy as np
import pytest

from conftest import CASES, DTYPES, assert_matches_reference

EPS_CASES = [c for c in CASES if "eps" in inspect.signature(c.functional).parameters]


def zero_state_problem(case, hyper, dtype, seed):
    """Fresh (zero) states and gradients that are zero at half the elements: 0/0 there with eps = 0."""
    rng = np.random.default_rng(seed)
    sizes = [1037, 5, 64]
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    states = {arg: [np.zeros(n, dtype) for n in sizes] for arg in case.used_states(hyper)}
    grads = [[np.where(rng.random(n) < 0.5, 0, rng.standard_normal(n)).astype(dtype) for n in sizes]
             for _ in range(3)]
    return params, states, grads


def test_every_rule_with_eps_is_covered():
    assert {c.name for c in EPS_CASES} == {"adagrad", "rmsprop", "adam", "adamax", "adadelta", "radam", "nadam",
                                           "lamb"}


@pytest.mark.parametrize("eps", [0.0, 1e-50], ids=["eps=0", "eps=1e-50"])  # 1e-50 is 0 in float32 only
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", EPS_CASES, ids=repr)
def test_zero_eps_agrees_bitwise(case, dtype, eps, isa):
    for k, hyper in enumerate(case.grid):
        hyper = {**hyper, "eps": eps}
        problem = zero_state_problem(case, hyper, dtype, seed=k)
        # First step 1, and 10 for RAdam's rectified branch (rho_t > 5 from step 6 on).
        for first_step in (1, 10) if case.takes_step else (1,):
            assert_matches_reference(case, hyper, problem, first_step, [4 * (k % 3) + j % 5 * 8 for j in range(64)])


def test_zero_eps_makes_nan():
    """Guards the test above: the inputs do divide zero by zero."""
    import fusedoptim as fo

    p, g = np.ones(4, np.float32), np.zeros(4, np.float32)
    with np.errstate(invalid="ignore"):
        fo.adam_(p, g, np.zeros(4, np.float32), np.zeros(4, np.float32), step=1, eps=0.0, backend="numpy")
    assert np.isnan(p).all()
