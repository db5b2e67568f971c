"""Trains a small two-layer network with each rule, on the fastest backend and on the NumPy
reference, and prints the loss, the optimizer-step time of each, and whether they agree bitwise."""

from __future__ import annotations

import time

import numpy as np

import fusedoptim as fo

RULES = [
    ("SGD", fo.SGD, dict(lr=0.05)),
    ("SGD momentum", fo.SGD, dict(lr=0.05, momentum=0.9)),
    ("SGD Nesterov", fo.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("Adagrad", fo.Adagrad, dict(lr=0.05)),
    ("RMSprop", fo.RMSprop, dict(lr=1e-3)),
    ("Adam", fo.Adam, dict(lr=1e-3)),
    ("AdamW", fo.AdamW, dict(lr=1e-3)),
    ("Adam AMSGrad", fo.Adam, dict(lr=1e-3, amsgrad=True)),
    ("Adamax", fo.Adamax, dict(lr=2e-3)),
    ("NAdam", fo.NAdam, dict(lr=2e-3)),
    ("RAdam", fo.RAdam, dict(lr=1e-3)),
    ("Adadelta", fo.Adadelta, dict(lr=1.0)),
    ("ASGD", fo.ASGD, dict(lr=0.05)),
    ("Rprop", fo.Rprop, dict(lr=1e-3)),
    ("Lion", fo.Lion, dict(lr=1e-4)),
    ("LAMB", fo.Lamb, dict(lr=1e-2)),
]


def make_data(n=2048, features=64, classes=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, features)).astype(np.float32) * 1.5
    labels = rng.integers(0, classes, n)
    x = centers[labels] + rng.standard_normal((n, features)).astype(np.float32)
    return x, labels


def init_params(features, hidden, classes, seed=1):
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((features, hidden)) / np.sqrt(features)).astype(np.float32),
        np.zeros(hidden, np.float32),
        (rng.standard_normal((hidden, classes)) / np.sqrt(hidden)).astype(np.float32),
        np.zeros(classes, np.float32),
    ]


def loss_and_grads(params, x, labels):
    """Softmax cross-entropy of a ReLU MLP, with its gradients by hand."""
    w1, b1, w2, b2 = params
    h = np.maximum(x @ w1 + b1, 0)
    logits = h @ w2 + b2
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    n = len(labels)
    loss = -np.log(p[np.arange(n), labels] + 1e-12).mean()
    d = p
    d[np.arange(n), labels] -= 1
    d /= n
    dh = (d @ w2.T) * (h > 0)
    return float(loss), [x.T @ dh, dh.sum(0), h.T @ d, d.sum(0)]


def train(make_optimizer, hyper, backend, steps, data, hidden):
    x, labels = data
    params = init_params(x.shape[1], hidden, labels.max() + 1)
    opt = make_optimizer(params, backend=backend, **hyper)
    step_time = 0.0
    for _ in range(steps):
        loss, grads = loss_and_grads(params, x, labels)
        start = time.perf_counter()
        opt.step(grads)
        step_time += time.perf_counter() - start
    return loss_and_grads(params, x, labels)[0], step_time / steps, params


def main(steps=30, hidden=1024):
    data = make_data()
    fast = fo._backends.resolve(None)
    n = sum(p.size for p in init_params(data[0].shape[1], hidden, 8))
    print(f"fusedoptim demo: a {data[0].shape[1]}-{hidden}-8 MLP ({n:,} params), {steps} steps per rule")
    fo.show_config()
    print(f"\n{'rule':<14} {'loss':>8} {'step ' + fast:>12} {'step numpy':>12} {'speed-up':>9}  bitwise equal")
    for name, cls, hyper in RULES:
        loss, fast_time, fast_params = train(cls, hyper, fast, steps, data, hidden)
        _, ref_time, ref_params = train(cls, hyper, "numpy", steps, data, hidden)
        equal = all(np.array_equal(a.view(np.uint32), b.view(np.uint32)) for a, b in zip(fast_params, ref_params))
        print(f"{name:<14} {loss:8.4f} {fast_time * 1e6:10.1f}us {ref_time * 1e6:10.1f}us "
              f"{ref_time / fast_time:8.1f}x  {'yes' if equal else 'NO'}")
