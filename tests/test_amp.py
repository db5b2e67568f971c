"""fusedoptim.torch under torch.amp.GradScaler("cpu"), as torch's fused optimizers plug in: fp16 training
against torch's own fused Adam under its own GradScaler, and the layer options in torch."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fusedoptim.torch")

from conftest import assert_bitwise_equal  # noqa: E402


def f64(t):
    return t.detach().to(torch.float64).numpy()


def f16_ulp(x):
    """One float16 ulp at |x| (2^-24 below the normal range)."""
    x = np.abs(np.asarray(x, np.float64))
    return 2.0 ** (np.floor(np.log2(np.maximum(x, 2.0**-14))) - 10)


# The bound of test_low_precision_layers.py's bf16 comparison, for float16 storage: both optimizers
# divide the same float16 grads by the same power-of-two scale (exact), compute in float32 in their own
# op orders (|x - y| <= 2^-20 S, S the terms' magnitudes) and round once to float16, so the stored
# values differ by at most 2^-20 S + 1 float16 ulp of the larger. Teacher forcing: torch starts every
# step from our params and state.
def test_fp16_adam_under_grad_scaler_agrees_with_torch_fused():
    against_torch_fused_under_grad_scaler(1e-3)


def test_guard_the_bound_catches_a_slightly_wrong_step():
    with pytest.raises(AssertionError):
        against_torch_fused_under_grad_scaler(1e-3 * (1 + 2.0**-5))


def against_torch_fused_under_grad_scaler(lr):
    """Teacher-forced steps of ours (at ``lr``) and torch's fused Adam (at 1e-3), each under its own GradScaler."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(32, 17), (17,)]  # a linear regression's weight and bias, trained in float16
    ours = [(torch.randn(s, generator=gen) * 0.1).half().requires_grad_() for s in shapes]
    x, target = torch.randn(64, 32, generator=gen), torch.randn(64, 17, generator=gen)
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt, ref = ft.Adam(ours, lr=lr), torch.optim.Adam(theirs, lr=1e-3, fused=True)
    assert ft.Adam._step_supports_amp_scaling
    scaler, ref_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12), torch.amp.GradScaler("cpu",
                                                                                              init_scale=2.0**12)
    skipped = {4, 9}
    changed = 0
    for step in range(1, 16):
        for a, b in zip(ours, theirs):
            with torch.no_grad():
                b.copy_(a)
            for name, value in opt.state[a].items() if step > 1 else ():
                ref.state[b][name].copy_(value)
        opt.zero_grad()
        ref_scaler.scale(torch.ones(()))  # the scale is created on first use
        loss = (x @ ours[0].float() + ours[1].float() - target).square().mean()
        scaler.scale(loss).backward()
        if step in skipped:
            ours[0].grad.view(-1)[7] = float("inf")  # an overflowed grad: both skip the step and shrink the scale
        for a, b in zip(ours, theirs):
            b.grad = a.grad.clone()
        before = [(f64(a), {k: v.clone() for k, v in opt.state[a].items()}) for a in ours]
        p0 = [f64(a) for a in ours]
        scaler.step(opt)
        ref_scaler.step(ref)
        scaler.update()
        ref_scaler.update()
        assert scaler.get_scale() == ref_scaler.get_scale()
        for a, b, x0, (_, state0) in zip(ours, theirs, p0, before):
            if step in skipped:  # nothing changed: param, state, step count
                assert_bitwise_equal(f64(a), x0, f"param after the skipped step {step}")
                for k, v in state0.items():
                    assert torch.equal(opt.state[a][k], v), (step, k)
                continue
            scale = np.abs(x0) + np.abs(f64(a) - x0)
            mine, torchs = f64(a), f64(b)
            limit = 2.0**-20 * scale + f16_ulp(np.maximum(np.abs(mine), np.abs(torchs)))
            assert np.all(np.abs(mine - torchs) <= limit), (step, float(np.max(np.abs(mine - torchs) - limit)))
            changed += int(np.count_nonzero(mine != x0))
            assert opt.state[a]["step"].item() == ref.state[b]["step"].item()
    assert opt.state[ours[0]]["step"].item() == 15 - len(skipped)
    assert changed > 13 * (32 * 17 + 17) // 2  # the steps taken moved most params (the bound compares steps)


def test_grad_scaler_hands_the_scale_to_the_kernel():
    """Our step divides by GradScaler's scale inside the kernel: the same as stepping the unscaled grads."""
    gen = torch.Generator().manual_seed(1)
    p = (torch.randn(300, generator=gen)).half().requires_grad_()
    q = p.detach().clone().requires_grad_()
    opt, plain = ft.Adam([p], lr=1e-2, master_weights=True), ft.Adam([q], lr=1e-2, master_weights=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaler.scale(torch.ones(()))  # the scale is created on first use
    for _ in range(3):
        g = (torch.randn(300, generator=gen) * 1e-2).half()
        p.grad = (g.float() * scaler.get_scale()).half()
        scaled = p.grad.clone()
        q.grad = g.clone()
        scaler.step(opt)
        assert torch.equal(p.grad, scaled)  # GradScaler did not unscale the grads itself: the kernel divided
        scaler.update()
        plain.step()
        assert torch.equal(p, q) and torch.equal(opt.state[p]["master_param"], plain.state[q]["master_param"])


@pytest.mark.parametrize("options", [dict(master_weights=True), dict(rounding="kahan"),
                                     dict(rounding="stochastic", seed=3)], ids=str)
def test_torch_layer_options_step_as_the_numpy_layer(options):
    """The same modes, state names and bits in fusedoptim.torch as in the NumPy classes; checkpoints
    keep the master in float32 through torch's load_state_dict (which casts state to the param's dtype)."""
    import fusedoptim as fo
    from fusedoptim._storage import bfloat16
    gen = torch.Generator().manual_seed(2)
    ours = [torch.randn(s, generator=gen).bfloat16().requires_grad_() for s in ((40, 3), (7,))]
    arrays = [p.detach().view(torch.int16).numpy().view(bfloat16).copy() for p in ours]
    opt, numpy_opt = ft.Adam(ours, lr=1e-2, **options), fo.Adam(arrays, lr=1e-2, **options)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=gen).bfloat16() for p in ours]
        for p, g in zip(ours, grads):
            p.grad = g
        opt.step()
        numpy_opt.step([g.view(torch.int16).numpy().view(bfloat16) for g in grads])
    for i, (p, a) in enumerate(zip(ours, arrays)):
        assert_bitwise_equal(p.detach().view(torch.int16).numpy(), a.view(np.int16), f"param {i}")
        for k, v in numpy_opt.state[i].items():
            if k != "step":
                mine = opt.state[p][k]
                assert_bitwise_equal(mine.view(torch.int16 if mine.dtype == torch.bfloat16 else mine.dtype).numpy(),
                                     v.view(np.int16) if v.dtype == bfloat16 else v, f"{k} {i}")
    loaded = ft.Adam([p.detach().clone() for p in ours], lr=1e-2, **options)
    loaded.load_state_dict(opt.state_dict())
    for a, b in zip(loaded.state.values(), opt.state.values()):
        assert {k: v.dtype for k, v in a.items()} == {k: v.dtype for k, v in b.items()}
