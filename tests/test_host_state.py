"""Per-param state kept on the host (NAdam's mu_product), through the stateful optimizer."""

import numpy as np

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
