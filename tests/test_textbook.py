"""The lecture's forms of each rule, written independently here, against fusedoptim's PyTorch forms.

On a quadratic J(theta) = 1/2 theta^T A theta - b^T theta in float64: the two forms are equal in
exact arithmetic (after the stated change of variables), so they agree to rounding.
"""

import numpy as np
import pytest

import fusedoptim as fo

N, STEPS = 50, 60
RTOL = 1e-12


@pytest.fixture(scope="module")
def quadratic():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((N, N))
    a = q @ q.T / N + np.eye(N) * 0.1
    b = rng.standard_normal(N)
    return (lambda theta: a @ theta - b), rng.standard_normal(N)


def close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * np.abs(expected).max())


def test_classic_momentum(quadratic):
    """h = gamma*h + alpha*grad; theta -= h  ==  PyTorch's buf = mu*buf + g; p -= lr*buf, with h = lr*buf."""
    grad, start = quadratic
    gamma, alpha = 0.9, 0.01
    theta, h = start.copy(), np.zeros(N)
    p, buf = start.copy(), np.zeros(N)
    for step in range(1, STEPS + 1):
        h = gamma * h + alpha * grad(theta)
        theta = theta - h
        fo.sgd_(p, grad(p), buf, step=step, lr=alpha, momentum=gamma)
    close(p, theta)
    close(alpha * buf, h)


def test_nesterov_look_ahead(quadratic):
    """h = gamma*h + alpha*grad(theta - gamma*h); theta -= h  ==  PyTorch's Nesterov on p = theta - gamma*h."""
    grad, start = quadratic
    gamma, alpha = 0.9, 0.01
    theta, h = start.copy(), np.zeros(N)
    p, buf = start.copy(), np.zeros(N)
    for step in range(1, STEPS + 1):
        h = gamma * h + alpha * grad(theta - gamma * h)
        theta = theta - h
        fo.sgd_(p, grad(p), buf, step=step, lr=alpha, momentum=gamma, nesterov=True)
    close(p, theta - gamma * h)


@pytest.mark.parametrize("bias_correction", [False, True])
def test_adam(quadratic, bias_correction):
    """m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; theta -= alpha*m_hat/(sqrt(v_hat) + eps),
    where m_hat, v_hat are m, v (the lecture's Adam) or divided by 1 - b^t (Kingma & Ba)."""
    grad, start = quadratic
    alpha, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    theta, m, v = start.copy(), np.zeros(N), np.zeros(N)
    p, exp_avg, exp_avg_sq = start.copy(), np.zeros(N), np.zeros(N)
    for t in range(1, STEPS + 1):
        g = grad(theta)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat, v_hat = (m / (1 - b1**t), v / (1 - b2**t)) if bias_correction else (m, v)
        theta = theta - alpha * m_hat / (np.sqrt(v_hat) + eps)
        fo.adam_(p, grad(p), exp_avg, exp_avg_sq, step=t, lr=alpha, betas=(b1, b2), eps=eps,
                 bias_correction=bias_correction)
    close(p, theta)
    close(exp_avg, m)


def test_adagrad(quadratic):
    """G += g^2; theta -= alpha * g / (sqrt(G) + eps)."""
    grad, start = quadratic
    alpha, eps = 0.1, 1e-10
    theta, big_g = start.copy(), np.zeros(N)
    p, state_sum = start.copy(), np.zeros(N)
    for t in range(1, STEPS + 1):
        g = grad(theta)
        big_g = big_g + g**2
        theta = theta - alpha * g / (np.sqrt(big_g) + eps)
        fo.adagrad_(p, grad(p), state_sum, step=t, lr=alpha, eps=eps)
    close(p, theta)


def test_rmsprop(quadratic):
    """E = rho*E + (1-rho)*g^2; theta -= alpha * g / (sqrt(E) + eps)  (eps outside the root, as PyTorch).

    At alpha = 0.01 these sign-like steps bounce around the optimum chaotically (a 1-ulp change
    of the start grows 4-6x a step), so the comparison runs where the dynamics are smooth.
    """
    grad, start = quadratic
    alpha, rho, eps = 0.003, 0.9, 1e-8
    theta, e = start.copy(), np.zeros(N)
    p, square_avg = start.copy(), np.zeros(N)
    for _ in range(STEPS):
        g = grad(theta)
        e = rho * e + (1 - rho) * g**2
        theta = theta - alpha * g / (np.sqrt(e) + eps)
        fo.rmsprop_(p, grad(p), square_avg, lr=alpha, alpha=rho, eps=eps)
    close(p, theta)


def test_the_rules_converge(quadratic):
    """Each rule actually minimises: the gradient norm falls by two orders of magnitude."""
    grad, start = quadratic
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
