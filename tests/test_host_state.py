"""Per-param state kept on the host (NAdam's mu_product, ASGD's eta and mu), through the stateful optimizers."""

import numpy as np
import pytest

import fusedoptim as fo


def test_nadam_mu_product_follows_each_params_own_steps_and_survives_a_checkpoint():
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(7), rng.standard_normal(3)]
    grads = [[rng.standard_normal(7), rng.standard_normal(3) if k % 2 else None] for k in range(6)]
    opt = fo.NAdam(params)
    mu_product = [1.0, 1.0]
    for g in grads[:3]:
        opt.step(g)
    assert opt.state[0]["step"] == 3 and opt.state[1]["step"] == 1
    saved = opt.state_dict()
    restored_params = [p.copy() for p in params]
    restored = fo.NAdam(restored_params)
    restored.load_state_dict(saved)
    for g in grads[3:]:
        opt.step(g)
        restored.step(g)
    for a, b in zip(params, restored_params):
        assert np.array_equal(a, b)
    assert opt.state[0]["mu_product"] == restored.state[0]["mu_product"]

    # The functional chain, one param at a time, gives the same products.
    for i in range(2):
        for step in range(1, opt.state[i]["step"] + 1):
            mu_product[i] = fo.nadam_(np.zeros(1), np.zeros(1), np.zeros(1), np.zeros(1), step=step,
                                      mu_product=mu_product[i])
        assert mu_product[i] == opt.state[i]["mu_product"]


def test_asgd_eta_and_mu_follow_each_params_own_steps_and_survive_a_checkpoint():
    rng = np.random.default_rng(1)
    hyper = dict(lr=0.05, lambd=0.01, alpha=0.6, t0=1.0)
    params = [rng.standard_normal(7), rng.standard_normal(3)]
    grads = [[rng.standard_normal(7), rng.standard_normal(3) if k % 2 else None] for k in range(8)]
    opt = fo.ASGD(params, **hyper)
    for g in grads[:4]:
        opt.step(g)
    assert opt.state[0]["step"] == 4 and opt.state[1]["step"] == 2
    restored_params = [p.copy() for p in params]
    restored = fo.ASGD(restored_params, **hyper)
    restored.load_state_dict(opt.state_dict())
    for g in grads[4:]:
        opt.step(g)
        restored.step(g)
    for i, (a, b) in enumerate(zip(params, restored_params)):
        assert np.array_equal(a, b)
        assert np.array_equal(opt.state[i]["ax"], restored.state[i]["ax"])
        assert (opt.state[i]["eta"], opt.state[i]["mu"]) == (restored.state[i]["eta"], restored.state[i]["mu"])
    assert opt.state[0]["mu"] < 1  # averaging by now (t0 = 1)

    # The functional chain, one param at a time, from eta = lr and mu = 1, gives the same values.
    for i in range(2):
        eta, mu = hyper["lr"], 1.0
        for step in range(1, opt.state[i]["step"] + 1):
            eta, mu = fo.asgd_(np.zeros(1), np.zeros(1), np.zeros(1), step=step, eta=eta, mu=mu, **hyper)
        assert (eta, mu) == (opt.state[i]["eta"], opt.state[i]["mu"])


def test_asgd_eta_whose_power_overflows_is_zero():
    """(1 + lambd lr step)^alpha past the largest double (2^2000 here): eta is lr / inf, not an OverflowError."""
    eta, mu = fo.asgd_(np.ones(1), np.ones(1), np.zeros(1), step=1, eta=1.0, mu=1.0, lr=1.0, lambd=1.0, alpha=2000.0)
    assert (eta, mu) == (0.0, 1.0)


def test_torch_asgd_keeps_eta_and_mu_as_torch_does():
    """torch keeps eta and mu as tensors of its default dtype (float32): eta starts at the group's lr
    when a param first steps, rounded so, and lags the lr by a step. With lambd = 0 and gradients that
    are powers of two, every product is exact, so no FMA in torch can make a difference: float64
    params and their averages equal torch's bit for bit, under a schedule and with a param that
    starts late."""
    torch = pytest.importorskip("torch")
    ft = pytest.importorskip("fusedoptim.torch")
    rng = np.random.default_rng(2)
    initial = [rng.standard_normal(5), rng.standard_normal(4)]
    runs = []
    for make in (torch.optim.ASGD, ft.ASGD):
        params = [torch.tensor(p, requires_grad=True) for p in initial]
        opt = make(params, lr=0.1, lambd=0.0, t0=2.0)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 / (1 + epoch))
        runs.append((params, opt, schedule))
    for k in range(8):
        grads = [np.ldexp(rng.choice([-1.0, 1.0], p.shape), rng.integers(-2, 3, p.shape)) for p in initial]
        for params, opt, schedule in runs:
            for p, g in zip(params, grads):
                p.grad = torch.tensor(g)
            if k < 3:
                params[1].grad = None  # starts at step 4, at that step's lr
            opt.step()
            schedule.step()
        (theirs, torch_opt, _), (ours, our_opt, _) = runs
        for p, q in zip(theirs, ours):
            assert torch.equal(p, q)
            a, b = torch_opt.state[p], our_opt.state[q]
            assert a.keys() == b.keys()
            for name in a:
                assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
