"""fusedoptim.torch's ``flat=True``: each group's params of a dtype moved into one buffer the optimizer
owns, their states packed alike, and with ``zero_grad(set_to_none=False)`` their grads in another.
Training with it must give the bits of training without it, the model must keep its Parameter
objects, backward must accumulate into the grad buffer, and whatever cannot move stays put."""

import copy
import pickle

import pytest
from hypothesis import given, settings, strategies as st

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fusedoptim.torch")
import fusedoptim  # noqa: E402
from conftest import supported_isas  # noqa: E402
from test_prepared import assert_same, snapshot  # noqa: E402

RULES = [
    (ft.Adam, dict(lr=0.01, weight_decay=0.1)),
    (ft.AdamW, dict(lr=0.01, amsgrad=True)),
    (ft.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (ft.SGD, dict(lr=0.1)),
    (ft.Adagrad, dict(lr=0.1)),
    (ft.RMSprop, dict(lr=0.01, momentum=0.5, centered=True)),
    (ft.Lion, dict(lr=0.01)),
    (ft.Lamb, dict(lr=0.01)),  # two-pass: its tensors are never coalesced
    (ft.NAdam, dict(lr=0.01)),  # host state: the general path
]


class Model(torch.nn.Module):
    """Layers of several sizes, a channels-last conv weight, and a param backward never reaches."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, dtype=dtype)
        self.conv.weight.data = self.conv.weight.data.to(memory_format=torch.channels_last)
        self.linear = torch.nn.Linear(16, 5, dtype=dtype)
        self.norm = torch.nn.LayerNorm(5, dtype=dtype)
        self.unused = torch.nn.Parameter(torch.randn(7, generator=gen, dtype=dtype))
        for p in self.parameters():
            p.data.copy_(torch.randn(p.shape, generator=gen, dtype=dtype))

    def forward(self, x):
        return self.norm(self.linear(self.conv(x).flatten(1)))


def train(model, opt, steps, seed=0, set_to_none=False):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        opt.zero_grad(set_to_none=set_to_none)
        x = torch.randn(2, 3, 4, 4, generator=gen, dtype=model.linear.weight.dtype)
        model(x).square().sum().backward()
        opt.step()


def twins(cls, hyper, dtype=torch.float32, groups=False):
    """Two equal models, an optimizer of each: with flat=True and without."""
    made = []
    for flat in (False, True):
        model = Model(dtype)
        params = list(model.parameters())
        if groups:
            params = [{"params": params[:2]}, {"params": params[2:], "lr": hyper["lr"] / 2}]
        made.append((model, cls(params, **hyper, flat=flat)))
    return made


@pytest.mark.parametrize("cls, hyper", RULES, ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_training_gives_the_bits_of_training_without_flat(cls, hyper):
    (model, opt), (flat_model, flat_opt) = twins(cls, hyper, groups=True)
    train(model, opt, 5)
    train(flat_model, flat_opt, 5)
    assert_same(snapshot(flat_opt), snapshot(opt))
    assert flat_model.unused.grad is None  # backward never reached it: no grad, as in torch


@settings(max_examples=12, deadline=None)
@given(dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
       threads=st.integers(1, 3), isa=st.sampled_from(supported_isas() or [None]), steps=st.integers(1, 4))
def test_every_dtype_thread_count_and_isa_level(dtype, threads, isa, steps):
    previous_threads, previous_isa = fusedoptim.get_num_threads(), fusedoptim._backends._kernels.isa()
    try:
        fusedoptim.set_num_threads(threads)
        if isa:
            fusedoptim.set_isa(isa)
        (model, opt), (flat_model, flat_opt) = twins(ft.Adam, dict(lr=0.01), dtype)
        train(model, opt, steps)
        train(flat_model, flat_opt, steps)
        assert_same(snapshot(flat_opt), snapshot(opt))
    finally:
        fusedoptim.set_num_threads(previous_threads)
        fusedoptim.set_isa(previous_isa)


@pytest.mark.parametrize("options", [dict(master_weights=True), dict(state_dtype="float32"),
                                     dict(rounding="stochastic", seed=5), dict(rounding="kahan")], ids=repr)
def test_low_precision_options(options):
    """bfloat16 params with a master copy, float32 state, or rounding modes (stepped tensor by tensor)."""
    (model, opt), (flat_model, flat_opt) = twins(ft.Adam, dict(lr=0.01, **options), torch.bfloat16)
    train(model, opt, 3)
    train(flat_model, flat_opt, 3)
    assert_same(snapshot(flat_opt), snapshot(opt))


def spans(tensors):
    return [(t.data_ptr(), t.numel() * t.element_size()) for t in tensors]


def consecutive(tensors):
    """Whether each tensor's memory starts where the one before ends."""
    s = spans(tensors)
    return all(a + n == b for (a, n), (b, _) in zip(s, s[1:]))


def test_params_grads_and_states_are_consecutive_views_of_the_optimizers_buffers():
    model = Model()
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    opt = ft.Adam(model.parameters(), lr=0.01, flat=True)
    assert list(model.parameters()) == params and all(map(torch.equal, params, before))  # the same objects and values
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)  # laid out as it was
    assert consecutive(params)
    train(model, opt, 2)  # the first backward makes grads; the next zero_grad makes them views of the buffer
    reached = [p for p in params if p is not model.unused]
    assert consecutive([p.grad for p in reached[:3]]) and consecutive([p.grad for p in reached[3:]])
    for name in ("exp_avg", "exp_avg_sq"):
        assert consecutive([opt.state[p][name] for p in params if p in opt.state])
    pointers = spans(p.grad for p in reached)
    train(model, opt, 2)  # backward accumulates into the buffer: no grad is made anew
    assert spans(p.grad for p in reached) == pointers


def test_grads_of_a_model_zeroed_to_none_are_taken_back_by_the_next_zero_grad():
    (model, opt), (flat_model, flat_opt) = twins(ft.Adam, dict(lr=0.01))
    train(model, opt, 2)
    train(flat_model, flat_opt, 2)
    flat_model.zero_grad()  # torch's Module.zero_grad: every grad None
    opt.zero_grad()
    train(model, opt, 2)
    train(flat_model, flat_opt, 2)
    assert_same(snapshot(flat_opt), snapshot(opt))
    assert consecutive([flat_model.linear.weight.grad, flat_model.linear.bias.grad])


def test_zero_grad_does_as_torchs_and_keeps_flat_grads_in_the_buffer():
    model = Model()
    base = torch.randn(4)
    loose, other = torch.nn.Parameter(base[:2]), torch.nn.Parameter(base[2:])
    loose.data, other.data = base[:2], base[2:]  # params sharing memory: not moved
    opt = ft.Adam([*model.parameters(), loose, other], lr=0.01, flat=True)
    assert loose.data_ptr() == base.data_ptr()
    train(model, opt, 2)
    loose.grad = torch.ones_like(loose)
    opt.zero_grad()  # set_to_none=True: every grad None, so that backward keeps the grad it makes
    assert all(p.grad is None for p in [*model.parameters(), loose, other])
    train(model, opt, 1, set_to_none=True)
    made = model.linear.weight.grad
    loose.grad = kept = torch.ones_like(loose)
    opt.zero_grad(set_to_none=False)
    assert loose.grad is kept and not kept.any()  # zeroed in place, as torch does
    assert model.linear.weight.grad is not made and not model.linear.weight.grad.any()  # a view of the buffer
    assert model.unused.grad is None and other.grad is None  # none to zero


@pytest.mark.parametrize("set_to_none", [True, False])
def test_training_with_either_zero_grad_gives_the_bits_of_training_without_flat(set_to_none):
    (model, opt), (flat_model, flat_opt) = twins(ft.AdamW, dict(lr=0.01))
    train(model, opt, 4, set_to_none=set_to_none)
    train(flat_model, flat_opt, 4, set_to_none=set_to_none)
    assert_same(snapshot(flat_opt), snapshot(opt))


def test_params_sharing_memory_stay_where_they_are_and_step_as_without_flat():
    def make(flat):
        base = torch.randn(12, generator=torch.Generator().manual_seed(1))
        params = [torch.nn.Parameter(base[:6]), torch.nn.Parameter(base[6:]), torch.nn.Parameter(torch.randn(4))]
        params[0].data = base[:6]
        params[1].data = base[6:]  # two views of one storage: moving one would part them
        return base, params, ft.SGD(params, lr=0.1, momentum=0.9, flat=flat)

    (base, params, opt), (flat_base, flat_params, flat_opt) = make(False), make(True)
    flat_params[2].data.copy_(params[2].data)
    for k in range(3):
        for p, q in zip(params, flat_params):
            p.grad = torch.full_like(p, k + 1.0)
            q.grad = p.grad.clone()
        opt.step()
        flat_opt.step()
    assert flat_params[0].data_ptr() == flat_base.data_ptr()
    assert torch.equal(flat_base, base) and torch.equal(flat_params[2], params[2])


def test_added_groups_meta_params_and_copies():
    model = Model()
    opt = ft.Adam([model.unused], lr=0.01, flat=True)
    opt.add_param_group({"params": [model.linear.weight, model.linear.bias], "lr": 0.1})
    assert consecutive([model.linear.weight, model.linear.bias])
    meta = torch.nn.Parameter(torch.empty(4, device="meta"))
    opt.add_param_group({"params": [meta]})  # stays on meta, to be stepped once materialized
    assert meta.is_meta
    for copied in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert copied._flat and len(copied._flats) == len(opt._flats)
        weight, bias = copied.param_groups[1]["params"]
        assert consecutive([weight, bias]) and weight.data_ptr() != model.linear.weight.data_ptr()


def test_a_loaded_checkpoint_is_copied_into_packed_states():
    (model, opt), (flat_model, flat_opt) = twins(ft.Adam, dict(lr=0.01))
    train(model, opt, 2)
    train(flat_model, flat_opt, 2)
    flat_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    params = [p for p in flat_model.parameters() if p in flat_opt.state]
    assert consecutive([flat_opt.state[p]["exp_avg"] for p in params])
    train(model, opt, 2)
    train(flat_model, flat_opt, 2)
    assert_same(snapshot(flat_opt), snapshot(opt))


def test_layer_options_survive_copies():
    p = torch.nn.Parameter(torch.randn(4, dtype=torch.bfloat16))
    for options in (dict(rounding="stochastic", seed=3, state_dtype="float32"), dict(master_weights=True)):
        opt = ft.Adam([p], lr=0.01, **options)
        for copied in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
            assert [copied._rounding, copied._seed, copied._float32_states, copied._master_weights] == \
                   [opt._rounding, opt._seed, opt._float32_states, opt._master_weights]


@pytest.mark.parametrize("flat", [1, "yes", None])
def test_flat_must_be_a_bool(flat):
    with pytest.raises(TypeError, match="flat"):
        ft.Adam([torch.nn.Parameter(torch.randn(2))], flat=flat)
