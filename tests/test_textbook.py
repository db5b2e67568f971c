"""The lecture's forms of each rule, written independently here, against fusedoptim's PyTorch forms.

On a quadratic J(theta) = 1/2 theta^T A theta - b^T theta, the two forms are equal in exact
arithmetic (after the stated change of variables), so they agree to rounding. Both are driven by the
same gradients (teacher forcing): the quadratic's gradient where the lecture's form in float64 takes
it, rounded to float32. That run is the truth; the lecture's form in float32 is the peer that sets
the bound for ours in float32 and float64 (conftest's Distances, which derives it).

Each form is a generator: it yields what is compared (and the lecture's form, first, the point where
it takes its next gradient), and is sent the next gradient (and ours, the step number).
"""

import numpy as np
import pytest

import fusedoptim as fo
from conftest import DTYPES, Distances

N, STEPS = 50, 60


@pytest.fixture(scope="module")
def quadratic():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((N, N))
    a = q @ q.T / N + np.eye(N) * 0.1
    b = rng.standard_normal(N)
    return (lambda theta: a @ theta - b), rng.standard_normal(N).astype(np.float32)


def distances_from_lecture(quadratic, lecture, pytorch_form):
    """The Distances (float32, float64) of ``pytorch_form`` from ``lecture`` in float64, after every step."""
    grad, start = quadratic
    forms = {dtype: lecture(start.astype(dtype)) for dtype in DTYPES}
    ours = {dtype: pytorch_form(start.astype(dtype)) for dtype in DTYPES}
    now = {dtype: next(form) for dtype, form in forms.items()}
    for form in ours.values():
        next(form)
    distances = {dtype: Distances() for dtype in DTYPES}
    for step in range(1, STEPS + 1):
        point, _ = now[np.float64]
        g = grad(point).astype(np.float32)
        now = {dtype: form.send(g.astype(dtype)) for dtype, form in forms.items()}
        for dtype, form in ours.items():
            compared = form.send((g.astype(dtype), step))
            names = [f"compared[{i}]" for i in range(len(compared))]
            distances[dtype].record(compared, now[np.float32][1], now[np.float64][1], names)
    return list(distances.values())


def assert_forms_agree(quadratic, lecture, pytorch_form):
    for distances in distances_from_lecture(quadratic, lecture, pytorch_form):
        distances.check()


# classic momentum: h = gamma*h + alpha*grad; theta -= h  ==  PyTorch's buf = mu*buf + g; p -= lr*buf, h = lr*buf

def lecture_momentum(theta, gamma=0.9, alpha=0.01):
    h = np.zeros_like(theta)
    while True:
        g = yield theta, [theta, h]
        h = gamma * h + alpha * g
        theta = theta - h


def pytorch_momentum(p, gamma=0.9, alpha=0.01, nesterov=False):
    buf = np.zeros_like(p)
    while True:
        g, step = yield ([p] if nesterov else [p, alpha * buf])
        fo.sgd_(p, g, buf, step=step, lr=alpha, momentum=gamma, nesterov=nesterov)


def test_classic_momentum(quadratic):
    assert_forms_agree(quadratic, lecture_momentum, pytorch_momentum)


def lecture_nesterov(theta, gamma=0.9, alpha=0.01):
    """h = gamma*h + alpha*grad(theta - gamma*h); theta -= h  ==  PyTorch's Nesterov on p = theta - gamma*h."""
    h = np.zeros_like(theta)
    while True:
        g = yield theta - gamma * h, [theta - gamma * h]
        h = gamma * h + alpha * g
        theta = theta - h


def test_nesterov_look_ahead(quadratic):
    assert_forms_agree(quadratic, lecture_nesterov, lambda p: pytorch_momentum(p, nesterov=True))


def lecture_adam(theta, bias_correction, alpha=0.01, b1=0.9, b2=0.999, eps=1e-8):
    """m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; theta -= alpha*m_hat/(sqrt(v_hat) + eps),
    where m_hat, v_hat are m, v (the lecture's Adam) or divided by 1 - b^t (Kingma & Ba)."""
    m, v, t = np.zeros_like(theta), np.zeros_like(theta), 0
    while True:
        g = yield theta, [theta, m]
        t += 1
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat, v_hat = (m / (1 - b1**t), v / (1 - b2**t)) if bias_correction else (m, v)
        theta = theta - alpha * m_hat / (np.sqrt(v_hat) + eps)


def pytorch_adam(p, bias_correction, alpha=0.01, betas=(0.9, 0.999), eps=1e-8):
    exp_avg, exp_avg_sq = np.zeros_like(p), np.zeros_like(p)
    while True:
        g, step = yield [p, exp_avg]
        fo.adam_(p, g, exp_avg, exp_avg_sq, step=step, lr=alpha, betas=betas, eps=eps,
                 bias_correction=bias_correction)


@pytest.mark.parametrize("bias_correction", [False, True])
def test_adam(quadratic, bias_correction):
    assert_forms_agree(quadratic, lambda theta: lecture_adam(theta, bias_correction),
                       lambda p: pytorch_adam(p, bias_correction))


def lecture_adagrad(theta, alpha=0.1, eps=1e-10):
    """G += g^2; theta -= alpha * g / (sqrt(G) + eps)."""
    big_g = np.zeros_like(theta)
    while True:
        g = yield theta, [theta]
        big_g = big_g + g**2
        theta = theta - alpha * g / (np.sqrt(big_g) + eps)


def pytorch_adagrad(p, alpha=0.1, eps=1e-10):
    state_sum = np.zeros_like(p)
    while True:
        g, step = yield [p]
        fo.adagrad_(p, g, state_sum, step=step, lr=alpha, eps=eps)


def test_adagrad(quadratic):
    assert_forms_agree(quadratic, lecture_adagrad, pytorch_adagrad)


def lecture_rmsprop(theta, alpha=0.01, rho=0.9, eps=1e-8):
    """E = rho*E + (1-rho)*g^2; theta -= alpha * g / (sqrt(E) + eps)  (eps outside the root, as PyTorch)."""
    e = np.zeros_like(theta)
    while True:
        g = yield theta, [theta]
        e = rho * e + (1 - rho) * g**2
        theta = theta - alpha * g / (np.sqrt(e) + eps)


def pytorch_rmsprop(p, alpha=0.01, rho=0.9, eps=1e-8):
    square_avg = np.zeros_like(p)
    while True:
        g, _ = yield [p]
        fo.rmsprop_(p, g, square_avg, lr=alpha, alpha=rho, eps=eps)


def test_rmsprop(quadratic):
    assert_forms_agree(quadratic, lecture_rmsprop, pytorch_rmsprop)


@pytest.mark.parametrize("lecture, pytorch_form", [
    (lecture_momentum, lambda p: pytorch_momentum(p, gamma=0.89)),
    (lambda theta: lecture_adam(theta, bias_correction=False), lambda p: pytorch_adam(p, bias_correction=True)),
    (lecture_rmsprop, lambda p: pytorch_rmsprop(p, rho=0.91)),
], ids=["momentum 0.89 as 0.9", "Adam with bias correction as without", "RMSprop rho 0.91 as 0.9"])
def test_a_different_rule_is_caught(quadratic, lecture, pytorch_form):
    """Guards the bounds above: each of these must exceed them, in float32 and float64."""
    for distances in distances_from_lecture(quadratic, lecture, pytorch_form):
        share, what = distances.share()
        assert share > 1, what


def test_the_rules_converge(quadratic):
    """Each rule actually minimises: the gradient norm falls by two orders of magnitude."""
    grad, start = quadratic
    start = start.astype(np.float64)
    for name, make in [
        ("sgd", lambda ps: fo.SGD(ps, lr=0.05, momentum=0.9)),
        ("adagrad", lambda ps: fo.Adagrad(ps, lr=0.5)),
        ("rmsprop", lambda ps: fo.RMSprop(ps, lr=0.003)),
        ("adam", lambda ps: fo.Adam(ps, lr=0.05)),
        ("amsgrad", lambda ps: fo.Adam(ps, lr=0.05, amsgrad=True)),
        ("adamw", lambda ps: fo.AdamW(ps, lr=0.05, weight_decay=0.0)),
        ("adamax", lambda ps: fo.Adamax(ps, lr=0.05)),
        ("nadam", lambda ps: fo.NAdam(ps, lr=0.01)),
        ("radam", lambda ps: fo.RAdam(ps, lr=0.05)),
    ]:
        p = start.copy()
        opt = make([p])
        for _ in range(3000):
            opt.step([grad(p)])
        assert np.linalg.norm(grad(p)) < 1e-2 * np.linalg.norm(grad(start)), name
