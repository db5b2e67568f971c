"""The demo's numbers: a loss that cannot print as -0.0000, and a step count that must be >= 1."""

import math

import numpy as np
import pytest

from fusedoptim import demo


def test_the_loss_of_a_certain_right_model_is_plus_zero():
    """Every class-0 point scored with certainty: each term of the cross-entropy is exactly 0, and
    the mean must be +0.0 (-log(p + 1e-12) gave -0.0, printed as -0.0000)."""
    x, _ = demo.make_data(n=16)
    labels = np.zeros(16, np.int64)
    params = demo.init_params(x.shape[1], 4)
    params[3][0] = 1e4  # b2: class 0's logit far above the others
    loss, _ = demo.loss_and_grads(params, x, labels)
    assert loss == 0.0 and math.copysign(1.0, loss) == 1.0


def test_the_loss_is_the_cross_entropy():
    x, labels = demo.make_data(n=64)
    params = demo.init_params(x.shape[1], 16)
    w1, b1, w2, b2 = (p.astype(np.float64) for p in params)
    logits = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = -np.log(p[np.arange(64), labels]).mean()
    assert demo.loss_and_grads(params, x, labels)[0] == pytest.approx(expected, rel=1e-5)


def test_zero_steps_are_refused():
    with pytest.raises(ValueError, match=r"Invalid steps: 0 \(must be >= 1\)"):
        demo.main(steps=0)
