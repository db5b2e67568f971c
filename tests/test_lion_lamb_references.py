"""Lion and LAMB against independent implementations of their published forms, sign's edge cases
on every ISA level, LAMB's zero-norm guards and its reduction order.

Where an independent implementation's op order differs from ours, ours (float32 and float64) is
compared after every step with that implementation run in float64 (the truth), with a bound set by
its own float32 run (conftest's Distances, which derives it)."""

import math

import numpy as np
import pytest

import fusedoptim as fo
from conftest import (CASE_BY_NAME, DTYPES, Distances, assert_bitwise_equal, assert_matches_reference, backends,
                      make_problem)

ALL_BACKENDS = [("numpy", "numpy", None)] + backends()


def on_backend(backend, isa, fn, *args, **kwargs):
    if isa is not None:
        fo.set_isa(isa)
    with np.errstate(all="ignore"):
        return fn(*args, backend=backend, **kwargs)


# --- Lion ---

def published_lion(param, grad, exp_avg, lr, betas, weight_decay):
    """The paper's published PyTorch step, transcribed to NumPy in the compute dtype:
    p.mul_(1 - lr*wd); p.add_(sign(b1*m + (1-b1)*g), alpha=-lr); m.mul_(b2).add_(g, alpha=1-b2)."""
    t = param.dtype.type
    beta1, beta2 = betas
    param *= t(1 - lr * weight_decay)
    update = exp_avg * t(beta1) + grad * t(1 - beta1)
    param += t(-lr) * np.sign(update)
    exp_avg *= t(beta2)
    exp_avg += grad * t(1 - beta2)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("weight_decay", [0.0, 0.3])
def test_lion_equals_published_implementation(dtype, weight_decay, isa):
    rng = np.random.default_rng(0)
    n, steps, hyper = 1000, 20, dict(lr=3e-3, betas=(0.9, 0.99), weight_decay=weight_decay)
    param0 = rng.standard_normal(n).astype(dtype)
    grads = [rng.standard_normal(n).astype(dtype) for _ in range(steps)]
    expected, expected_m = param0.copy(), np.zeros(n, dtype)
    for g in grads:
        published_lion(expected, g, expected_m, **hyper)
    for label, backend, level in ALL_BACKENDS:
        param, exp_avg = param0.copy(), np.zeros(n, dtype)
        for g in grads:
            on_backend(backend, level, fo.lion_, param, g, exp_avg, **hyper)
        # Same ops in the same order, so not just close: equal.
        assert_bitwise_equal(param, expected, f"{label} param")
        assert_bitwise_equal(exp_avg, expected_m, f"{label} exp_avg")


def lion_formula(param, exp_avg, grad, lr, betas, weight_decay):
    """The issue's form, in param's dtype: p -= lr * (sign(c) + wd * p) with c = b1 m + (1 - b1) g, then
    m = b2 m + (1 - b2) g. Returns the new param and exp_avg."""
    beta1, beta2 = betas
    c = beta1 * exp_avg + (1 - beta1) * grad
    return param - lr * (np.sign(c) + weight_decay * param), beta2 * exp_avg + (1 - beta2) * grad


def lion_against_formula(**wrong):
    """The Distances (float32, float64) of ours from the issue's form in float64, its float32 run the
    peer; ``wrong`` overrides our hyperparameters (for the guard). exp_avg's update is the same ops in
    both, so it is equal; so is c, hence sign(c), of ours and of the formula in one dtype."""
    rng = np.random.default_rng(1)
    hyper = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.5)
    start = rng.standard_normal(500).astype(np.float32)
    formula = {dtype: (start.astype(dtype), np.zeros(500, dtype)) for dtype in DTYPES}
    ours = {dtype: (start.astype(dtype), np.zeros(500, dtype)) for dtype in DTYPES}
    distances = {dtype: Distances() for dtype in DTYPES}
    for _ in range(30):
        g = rng.standard_normal(500).astype(np.float32)
        for dtype in DTYPES:
            formula[dtype] = lion_formula(*formula[dtype], g.astype(dtype), **hyper)
            fo.lion_(ours[dtype][0], g.astype(dtype), ours[dtype][1], **{**hyper, **wrong})
        for dtype, (param, exp_avg) in ours.items():
            assert_bitwise_equal(exp_avg, formula[dtype][1], "exp_avg")
            distances[dtype].record([param], [formula[np.float32][0]], [formula[np.float64][0]], ["param"])
    return list(distances.values())


def test_lion_matches_the_formula():
    """The issue's form differs from the published one (ours) by rounding only."""
    for distances in lion_against_formula():
        distances.check()


def lion_against_published_torch(**wrong):
    """The Distances (float32, float64) of ours from the paper's published step in torch's float64, its
    float32 run the peer; ``wrong`` overrides our hyperparameters (for the guard)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    lr, betas, wd = 1e-3, (0.95, 0.98), 0.1
    start = rng.standard_normal(777).astype(np.float32)
    theirs = {dtype: (torch.tensor(start, dtype=dtype), torch.zeros(777, dtype=dtype))
              for dtype in (torch.float32, torch.float64)}
    ours = {dtype: (start.astype(dtype), np.zeros(777, dtype)) for dtype in DTYPES}
    distances = {dtype: Distances() for dtype in DTYPES}
    for _ in range(50):
        g = rng.standard_normal(777).astype(np.float32)
        for dtype, (tp, tm) in theirs.items():
            tg = torch.tensor(g, dtype=dtype)
            tp.mul_(1 - lr * wd)
            tp.add_(torch.sign(tm * betas[0] + tg * (1 - betas[0])), alpha=-lr)
            tm.mul_(betas[1]).add_(tg, alpha=1 - betas[1])
        peer, truth = ([t.numpy() for t in run] for run in theirs.values())
        for dtype, (p, m) in ours.items():
            fo.lion_(p, g.astype(dtype), m, **{**dict(lr=lr, betas=betas, weight_decay=wd), **wrong})
            distances[dtype].record([p, m], peer, truth, ["param", "exp_avg"])
    return list(distances.values())


def test_lion_against_published_torch_step():
    for distances in lion_against_published_torch():
        distances.check()


def sign_edge_values(dtype):
    info = np.finfo(dtype)
    magnitudes = [0.0, info.smallest_subnormal, info.smallest_normal / 2, info.smallest_normal, info.eps, 0.25, 0.5,
                  0.75, 1.0, 1.5, 1.9999, 2.0, 3.0, 7.0, 1e6, info.max / 2, info.max, np.inf, np.nan]
    values = np.array(magnitudes, dtype=dtype)
    return np.concatenate([values, -values])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_sign_edge_cases_bitwise_on_every_isa(dtype, isa):
    """With beta1 = 0, lr = 1 and param = exp_avg = -0.0, Lion's step is param = -0.0 - sign(grad):
    the result shows sign's value bit for bit, including which zero it returns (-0.0 - +0.0 is -0.0,
    -0.0 - -0.0 is +0.0). Every value visits every lane of every vector width and the scalar tail.
    A bitwise-and of the value with 1.0's bits, or copying its sign onto 1.0, fails here."""
    edge = sign_edge_values(dtype)
    grad = np.concatenate([np.roll(edge, k) for k in range(17)] + [edge[:5]])
    expected = dtype(-0.0) - np.sign(grad)
    # np.sign's own semantics, which every backend must match.
    zeros, nans = grad == 0, np.isnan(grad)
    assert np.all(np.signbit(expected[zeros])) and np.all(np.isnan(expected[nans]))
    assert np.all(expected[~zeros & ~nans] == -np.where(grad[~zeros & ~nans] > 0, 1, -1))
    for label, backend, level in ALL_BACKENDS:
        param, exp_avg = np.full_like(grad, -0.0), np.full_like(grad, -0.0)
        on_backend(backend, level, fo.lion_, param, grad, exp_avg, lr=1.0, betas=(0.0, 0.5))
        assert_bitwise_equal(param, expected, f"{label} sign")


# --- LAMB ---

def straightforward_lamb(params, grads_per_step, lr, betas, eps, weight_decay=0.0, bias_correction=True,
                         dtype=np.float64):
    """LAMB as the paper writes it, per tensor, in ``dtype`` with np.linalg.norm: the params after each step."""
    beta1, beta2 = betas
    params = [p.astype(dtype) for p in params]
    ms = [np.zeros_like(p) for p in params]
    vs = [np.zeros_like(p) for p in params]
    trajectory = []
    for t, grads in enumerate(grads_per_step, start=1):
        for p, g, m, v in zip(params, grads, ms, vs):
            g = g.astype(dtype)
            m[...] = beta1 * m + (1 - beta1) * g
            v[...] = beta2 * v + (1 - beta2) * g * g
            m_hat, v_hat = (m / (1 - beta1**t), v / (1 - beta2**t)) if bias_correction else (m, v)
            u = m_hat / (np.sqrt(v_hat) + eps) + weight_decay * p
            w_norm, u_norm = np.linalg.norm(p), np.linalg.norm(u)
            trust = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
            p -= lr * trust * u
        trajectory.append([p.copy() for p in params])
    return trajectory


def lamb_against_straightforward(dtype, hyper, backends, **wrong):
    """The Distances, one per backend, of ours in ``dtype`` from the straightforward form in float64,
    its float32 run the peer; ``wrong`` overrides our hyperparameters (for the guard)."""
    rng = np.random.default_rng(3)
    sizes, steps = [3000, 64, 1], 15
    params0 = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads = [[rng.standard_normal(n).astype(np.float32) for n in sizes] for _ in range(steps)]
    hyper = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-6, **hyper)
    truth, peer = (straightforward_lamb(params0, grads, dtype=d, **hyper) for d in (np.float64, np.float32))
    runs = []
    for label, backend, level in backends:
        params = [p.astype(dtype) for p in params0]
        ms, vs = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
        distances = Distances()
        for t, g in enumerate(grads, start=1):
            on_backend(backend, level, fo.lamb_, params, [x.astype(dtype) for x in g], ms, vs, step=t,
                       **{**hyper, **wrong})
            distances.record(params, peer[t - 1], truth[t - 1], [f"{label} params[{i}]" for i in range(len(sizes))])
        for i, p in enumerate(params):  # each step moves a tensor by about lr = 1e-2 of its norm: 15 steps, ~0.1
            assert not np.allclose(p, params0[i], rtol=1e-3), "the step moved the params"
        runs.append(distances)
    return runs


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("hyper", [dict(weight_decay=0.0), dict(weight_decay=0.01), dict(bias_correction=False)],
                         ids=["plain", "weight_decay", "no_bias_correction"])
def test_lamb_matches_straightforward_implementation(dtype, hyper, isa):
    for distances in lamb_against_straightforward(dtype, hyper, ALL_BACKENDS):
        distances.check()


@pytest.mark.parametrize("compare", [
    lambda: lion_against_formula(weight_decay=0.45),
    lambda: lion_against_published_torch(betas=(0.95, 0.97)),
    *(lambda dtype=dtype: lamb_against_straightforward(dtype, dict(weight_decay=0.01), ALL_BACKENDS[:1],
                                                       weight_decay=0.02) for dtype in DTYPES),
], ids=["Lion: weight_decay 0.45 as 0.5", "Lion (torch): beta2 0.97 as 0.98", "LAMB float32: weight_decay 0.02 as 0.01",
        "LAMB float64: weight_decay 0.02 as 0.01"])
def test_a_different_rule_is_caught(compare):
    """Guards the bounds above: each of these must exceed them."""
    for distances in compare():
        share, what = distances.share()
        assert share > 1, what


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_lamb_zero_norm_guards(dtype, isa):
    """A zero param (||p|| = 0) takes the unscaled step -lr * u; a zero update (||u|| = 0) leaves
    param as it is: either way trust = 1, not 0 or NaN."""
    rng = np.random.default_rng(4)
    n, lr = 1100, 1e-2
    grad = rng.standard_normal(n).astype(dtype)
    for label, backend, level in ALL_BACKENDS:
        param, m, v = np.zeros(n, dtype), np.zeros(n, dtype), np.zeros(n, dtype)
        on_backend(backend, level, fo.lamb_, param, grad, m, v, step=1, lr=lr, weight_decay=0.1)
        # reference.lamb's ops on the m and v it left, with trust = 1 (and weight_decay * 0 = 0): equal.
        u = m / (np.sqrt(v) * dtype(1 / math.sqrt(1 - 0.999)) + dtype(1e-6)) * dtype(1 / (1 - 0.9))
        assert_bitwise_equal(param, dtype(-lr) * u, f"{label} zero param")
        assert np.all(param != 0) and np.all(np.sign(param) == -np.sign(grad)), label

        param0 = rng.standard_normal(n).astype(dtype)
        param, m, v = param0.copy(), np.zeros(n, dtype), np.zeros(n, dtype)
        on_backend(backend, level, fo.lamb_, param, np.zeros(n, dtype), m, v, step=1, lr=lr)
        assert_bitwise_equal(param, param0, f"{label} zero update")


def test_lamb_trust_ratio_is_per_tensor():
    """Scaling one tensor scales its own step's trust ratio, and leaves the other tensor's step alone."""
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal(500), rng.standard_normal(300)
    ga, gb = rng.standard_normal(500), rng.standard_normal(300)

    def step(a, b):
        a, b = a.copy(), b.copy()
        fo.lamb_([a, b], [ga, gb], [np.zeros(500), np.zeros(300)], [np.zeros(500), np.zeros(300)], step=1, lr=0.1)
        return a, b

    a1, b1 = step(a, b)
    a2, b2 = step(a, 4 * b)
    assert_bitwise_equal(a1, a2, "the other tensor")
    # Scaling by a power of two commutes with every rounding (the sum of squares, its sqrt, the trust
    # ratio, lr * trust, its product with u, the difference), so the step scales exactly.
    assert_bitwise_equal(b2 - 4 * b, 4 * (b1 - b), "the scaled tensor's step")


# Sizes around the reduction's lanes (16) and blocks (1024): exactly one block, one past it, many.
BLOCK_SIZES = [0, 1, 15, 16, 17, 1023, 1024, 1025, 2048, 3 * 1024 + 5, 9999, 16 * 1024 + 1]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("size", BLOCK_SIZES)
def test_lamb_bitwise_across_block_boundaries(size, dtype, isa):
    """float64 exposes any difference in the order of the sums (float32's trust ratio, rounded from
    double, would mostly hide it)."""
    case = CASE_BY_NAME["lamb"]
    for k, hyper in enumerate(case.grid[:2]):
        problem = make_problem(case, hyper, dtype, [size, size // 3 + 1], steps=3, seed=size + k, specials=False)
        assert_matches_reference(case, hyper, problem, 1, [8 * (j % 3) for j in range(64)])


def test_lamb_sums_in_the_documented_order():
    """reference._sum_of_squares is the order its docstring states, written out element by element."""
    rng = np.random.default_rng(6)
    for n in [0, 1, 17, 1024, 1025, 5 * 1024 + 100]:
        x = (rng.standard_normal(n) * np.exp(rng.uniform(-20, 20, n))).astype(np.float32)
        blocks = []
        for start in range(0, n, fo.reference.BLOCK):
            lanes = [0.0] * fo.reference.LANES
            for i in range(start, min(n, start + fo.reference.BLOCK)):
                lanes[i % fo.reference.LANES] += float(x[i]) * float(x[i])
            while len(lanes) > 1:
                half = len(lanes) // 2
                lanes = [lanes[j] + lanes[j + half] for j in range(half)]
            blocks.append(lanes[0])
        while len(blocks) > 1:
            blocks = [blocks[j] + blocks[j + 1] for j in range(0, len(blocks) - 1, 2)] + blocks[len(blocks) // 2 * 2:]
        expected = blocks[0] if blocks else 0.0
        assert fo.reference._sum_of_squares(x) == expected
        # Each square of a float32 is exact in double (24 by 24 bits). Each then passes through at most
        # `depth` rounded additions of non-negative numbers (its lane's, the lane fold's, the blocks'),
        # so the sum is within depth * u / (1 - depth * u) of the exact one (Higham, Accuracy and
        # Stability of Numerical Algorithms, 4.2), which fsum rounds once more (u).
        lane_adds = fo.reference.BLOCK // fo.reference.LANES - 1
        block_count = -(-n // fo.reference.BLOCK)
        depth = lane_adds + int(math.log2(fo.reference.LANES)) + math.ceil(math.log2(max(1, block_count)))
        u = 2.0**-53
        assert math.isclose(expected, math.fsum(float(v) ** 2 for v in x), rel_tol=depth * u / (1 - depth * u) + u)


def test_lamb_nan_poisons_the_tensor_on_every_backend():
    case = CASE_BY_NAME["lamb"]
    problem = make_problem(case, case.grid[0], np.float32, [2000, 50], steps=1, seed=8, specials=False)
    problem[2][0][0][1234] = np.nan  # one NaN gradient in the first tensor
    assert_matches_reference(case, case.grid[0], problem, 1, [0] * 64)
    param = problem[0][0].copy()
    fo.lamb_(param, problem[2][0][0], np.zeros_like(param), np.zeros_like(param), step=1)
    assert np.all(np.isnan(param))


# --- stateful optimizers ---

@pytest.mark.parametrize("cls, functional, states", [
    (fo.Lion, fo.lion_, ("exp_avg",)),
    (fo.Lamb, fo.lamb_, ("exp_avg", "exp_avg_sq")),
])
def test_optimizer_equals_functional(cls, functional, states):
    rng = np.random.default_rng(9)
    params0 = [rng.standard_normal(n).astype(np.float32) for n in (1500, 7)]
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in params0] for _ in range(3)]
    params = [p.copy() for p in params0]
    opt = cls(params, lr=1e-2, weight_decay=0.1)
    expected = [p.copy() for p in params0]
    buffers = {name: [np.zeros_like(p) for p in params0] for name in states}
    for t, g in enumerate(grads, start=1):
        opt.step(g)
        functional(expected, g, *buffers.values(), lr=1e-2, weight_decay=0.1,
                   **({"step": t} if cls is fo.Lamb else {}))
    for i in range(2):
        assert_bitwise_equal(params[i], expected[i], f"params[{i}]")
        assert set(opt.state[i]) == {"step", *states} and opt.state[i]["step"] == 3
        for name in states:
            assert_bitwise_equal(opt.state[i][name], buffers[name][i], f"{name}[{i}]")


def test_defaults():
    lion = fo.Lion([np.zeros(3)])
    assert {k: lion.defaults[k] for k in ("lr", "betas", "weight_decay")} == dict(lr=1e-4, betas=(0.9, 0.99),
                                                                                 weight_decay=0.0)
    lamb = fo.Lamb([np.zeros(3)])
    assert {k: lamb.defaults[k] for k in ("lr", "betas", "eps", "weight_decay", "bias_correction")} == dict(
        lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, bias_correction=True)


@pytest.mark.parametrize("call, match", [
    (lambda p: fo.lion_(p, p.copy(), np.zeros(4), lr=-1.0), "Invalid lr"),
    (lambda p: fo.lion_(p, p.copy(), np.zeros(4), betas=(1.0, 0.9)), "Invalid beta1"),
    (lambda p: fo.lamb_(p, p.copy(), np.zeros(4), np.zeros(4), step=1, eps=-1e-6), "Invalid eps"),
    (lambda p: fo.lamb_(p, p.copy(), np.zeros(4), np.zeros(4), step=0), "Invalid step"),
    (lambda p: fo.lamb_(p, p.copy(), np.zeros(4), np.zeros(4), step=1, weight_decay=-0.1), "Invalid weight_decay"),
])
def test_bad_hyperparameters_modify_nothing(call, match):
    p = np.ones(4)
    with pytest.raises(ValueError, match=match):
        call(p)
    assert np.all(p == 1)
