"""Trains a small two-layer network with each rule, on the fastest backend and on the NumPy
reference; prints the training loss, the time of one optimizer step on each, and whether the two
runs agree bit for bit."""

from __future__ import annotations

import math
import statistics
import time

import numpy as np

import fusedoptim as fo
from fusedoptim._storage import bfloat16

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
# Adam on bfloat16 params (float32 grads), with each way of storing an update in 8 bits of mantissa.
BF16_MODES = [
    ("nearest", dict()),
    ("stochastic", dict(rounding="stochastic")),
    ("kahan", dict(rounding="kahan")),
    ("master weights", dict(master_weights=True)),
]
CLASSES = 8
WARMUP, TIMED = 3, 25  # optimizer steps before timing (the first allocates state, numba compiles), and timed


def make_data(n=512, features=32, seed=0):
    """Points around one center per class; the clusters overlap, so the loss does not reach zero."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((CLASSES, features)).astype(np.float32) * np.float32(0.25)
    labels = rng.integers(0, CLASSES, n)
    x = centers[labels] + rng.standard_normal((n, features)).astype(np.float32)
    return x, labels


def init_params(features, hidden, seed=1):
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((features, hidden)) / np.sqrt(features)).astype(np.float32),
        np.zeros(hidden, np.float32),
        (rng.standard_normal((hidden, CLASSES)) / np.sqrt(hidden)).astype(np.float32),
        np.zeros(CLASSES, np.float32),
    ]


def loss_and_grads(params, x, labels):
    """Mean softmax cross-entropy of a ReLU MLP, and its float32 gradients by hand (for params of any dtype)."""
    w1, b1, w2, b2 = (p.astype(np.float32, copy=False) for p in params)
    h = np.maximum(x @ w1 + b1, 0)
    logits = h @ w2 + b2
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(shifted).sum(axis=1))  # >= 0: the largest term is exp(0)
    n = len(labels)
    loss = float(np.mean(log_sum - shifted[np.arange(n), labels]))  # each term >= 0, so never -0.0
    d = np.exp(shifted - log_sum[:, None])  # softmax
    d[np.arange(n), labels] -= 1
    d /= n
    dh = (d @ w2.T) * (h > 0)
    return loss, [x.T @ dh, dh.sum(0), h.T @ d, d.sum(0)]


def train(make_optimizer, hyper, backend, steps, data, hidden, dtype=np.float32):
    """The loss after ``steps`` full-batch steps of params stored in ``dtype``, the trained params, the
    optimizer and the last grads."""
    x, labels = data
    params = [p.astype(dtype) for p in init_params(x.shape[1], hidden)]
    opt = make_optimizer(params, backend=backend, **hyper)
    for _ in range(steps):
        grads = loss_and_grads(params, x, labels)[1]
        opt.step(grads)
    return loss_and_grads(params, x, labels)[0], params, opt, grads


def step_time(opt, grads):
    """Median seconds of ``opt.step(grads)`` alone, warmed up. Timed inside the training loop, a step
    would also pay for the caches the forward and backward passes evicted, and for BLAS threads that
    still spin on the cores: 10-50x its own time, varying from run to run."""
    for _ in range(WARMUP):
        opt.step(grads)
    times = []
    for _ in range(TIMED):
        start = time.perf_counter()
        opt.step(grads)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(steps=30, hidden=1024):
    if steps < 1:
        raise ValueError(f"Invalid steps: {steps} (must be >= 1)")
    data = make_data()
    fast = fo._backends.resolve(None)
    params = init_params(data[0].shape[1], hidden)
    n = sum(p.size for p in params)
    print(f"fusedoptim demo: a {data[0].shape[1]}-{hidden}-{CLASSES} MLP ({n:,} float32 params) trained with each "
          f"rule\nfor {steps} full-batch step{'s' * (steps > 1)} on {len(data[1]):,} points of {CLASSES} overlapping "
          f"classes\n")
    fo.show_config()
    print(f"""
loss     : training cross-entropy after the last step (it starts at {loss_and_grads(params, *data)[0]:.3f};
           a uniform guess scores ln {CLASSES} = {math.log(CLASSES):.3f})
step     : median time of one optimizer step, opt.step(grads), timed alone on the trained model
           ({TIMED} steps after {WARMUP} warm-up steps; the forward and backward passes are not timed)
speed-up : numpy's step time / {fast}'s
bitwise  : whether the {fast} and numpy runs end with the same params, bit for bit
""")
    print(f"{'rule':<14} {'loss':>6} {'step ' + fast:>12} {'step numpy':>12} {'speed-up':>9}  bitwise")
    for name, cls, hyper in RULES:
        loss, fast_params, fast_opt, grads = train(cls, hyper, fast, steps, data, hidden)
        _, ref_params, ref_opt, _ = train(cls, hyper, "numpy", steps, data, hidden)
        row(name, loss, fast_params, fast_opt, ref_params, ref_opt, grads)
    print(f"\nAdam (lr=1e-3) on bfloat16 params (ml_dtypes.bfloat16; float32 grads; the state in bfloat16, or a float32\n"
          f"master copy): how each update is stored. Nearest rounding loses updates smaller than half a bfloat16\n"
          f"step; stochastic rounding keeps them on average; Kahan's compensation and a float32 master copy carry\nthem over to later steps.\n")
    print(f"{'rounding':<14} {'loss':>6} {'step ' + fast:>12} {'step numpy':>12} {'speed-up':>9}  bitwise")
    for name, options in BF16_MODES:
        loss, fast_params, fast_opt, grads = train(fo.Adam, dict(lr=1e-3, **options), fast, steps, data, hidden, bfloat16)
        _, ref_params, ref_opt, _ = train(fo.Adam, dict(lr=1e-3, **options), "numpy", steps, data, hidden, bfloat16)
        row(name, loss, fast_params, fast_opt, ref_params, ref_opt, grads)


def row(name, loss, fast_params, fast_opt, ref_params, ref_opt, grads):
    """One line of the table: the loss, both step times and whether both backends' params agree bit for bit."""
    equal = all(np.array_equal(a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}")) for a, b in zip(fast_params, ref_params))
    fast_time, ref_time = step_time(fast_opt, grads), step_time(ref_opt, grads)
    print(f"{name:<14} {loss:6.3f} {fast_time * 1e6:10.1f}us {ref_time * 1e6:10.1f}us "
          f"{ref_time / fast_time:8.1f}x  {'yes' if equal else 'NO'}")
