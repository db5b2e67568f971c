"""Bad input raises TypeError / ValueError naming the argument, and modifies nothing."""

import re

import numpy as np
import pytest

import fusedoptim as fo

BACKENDS = fo.available_backends()


def adam_operands(n=33, dtype=np.float32, count=2):
    rng = np.random.default_rng(0)
    make = lambda: [rng.standard_normal(n).astype(dtype) for _ in range(count)]  # noqa: E731
    return dict(params=make(), grads=make(), exp_avgs=make(), exp_avg_sqs=[np.abs(a) for a in make()])


def snapshot(operands):
    return {k: [np.array(a, copy=True) for a in v] for k, v in operands.items() if isinstance(v, list)}


def assert_unchanged(operands, before):
    for k, arrays in before.items():
        for a, b in zip(operands[k], arrays):
            assert np.asarray(a).tobytes() == b.tobytes(), f"{k} was modified"


def call_adam(ops, backend, **kw):
    fo.adam_(ops["params"], ops["grads"], ops["exp_avgs"], ops["exp_avg_sqs"], step=kw.pop("step", 1),
             backend=backend, **kw)


def bad_cases():
    """(name, how to break a valid Adam step, exception, text the message must contain)."""
    def setter(key, i, value):
        def apply(ops):
            ops[key][i] = value(ops[key][i]) if callable(value) else value
            return {}
        return apply

    def kwargs(**kw):
        return lambda ops: kw

    def drop_last(key):
        return lambda ops: ops[key].pop() is None or {}

    return [
        ("grad shape", setter("grads", 1, lambda a: a[:-1].copy()), ValueError, "grads[1] has shape"),
        ("state shape", setter("exp_avg_sqs", 0, lambda a: a.reshape(3, 11).copy()), ValueError, "exp_avg_sqs[0] has shape"),
        ("grad dtype", setter("grads", 0, lambda a: a.astype(np.float64)), TypeError, "grads[0] is float64"),
        ("mixed param dtypes", lambda ops: (ops.update(
            params=[ops["params"][0], ops["params"][1].astype(np.float64)],
            grads=[ops["grads"][0], ops["grads"][1].astype(np.float64)],
            exp_avgs=[ops["exp_avgs"][0], ops["exp_avgs"][1].astype(np.float64)],
            exp_avg_sqs=[ops["exp_avg_sqs"][0], ops["exp_avg_sqs"][1].astype(np.float64)])) or {},
         TypeError, "params[1] is float64"),
        ("int dtype", lambda ops: ops.update(params=[a.astype(np.int32) for a in ops["params"]]) or {}, TypeError,
         "has dtype int32; supported: float64, float32, bfloat16, float16"),
        ("state dtype", lambda ops: ops.update(params=[a.astype(np.float16) for a in ops["params"]],
                                               exp_avgs=[a.astype(np.float64) for a in ops["exp_avgs"]]) or {},
         TypeError, "exp_avgs[0] is float64 but params[0] is float16; with float16 params, exp_avgs may be float16, "
                    "float32"),
        ("read-only param", setter("params", 1, lambda a: (a.setflags(write=False), a)[1]), ValueError,
         "params[1] is read-only"),
        ("read-only state", setter("exp_avgs", 0, lambda a: (a.setflags(write=False), a)[1]), ValueError,
         "exp_avgs[0] is read-only"),
        ("non-contiguous param", setter("params", 0, lambda a: np.repeat(a, 2)[::2]), ValueError,
         "params[0] is not C-contiguous"),
        ("non-contiguous state", setter("exp_avg_sqs", 1, lambda a: np.repeat(a, 2)[::2]), ValueError,
         "exp_avg_sqs[1] is not C-contiguous"),
        ("state is param", lambda ops: ops["exp_avgs"].__setitem__(0, ops["params"][0]) or {}, ValueError,
         "overlap"),
        ("grad overlaps state", lambda ops: ops["grads"].__setitem__(1, ops["exp_avg_sqs"][1][:]) or {},
         ValueError, "overlap"),
        ("same param twice", lambda ops: ops["params"].__setitem__(1, ops["params"][0]) or {}, ValueError,
         "params[0] and params[1] overlap"),
        ("partial overlap", lambda ops: _partial_overlap(ops), ValueError, "overlap"),
        ("list lengths", drop_last("grads"), ValueError, "grads has 1 arrays but params has 2"),
        ("state list length", drop_last("exp_avgs"), ValueError, "exp_avgs has 1 arrays"),
        ("not an array", setter("params", 0, "abc"), TypeError, "params"),
        ("grads not a list", lambda ops: ops.update(grads=ops["grads"][0]) or {}, TypeError, "grads must be a list"),
        ("amsgrad without buffers", kwargs(amsgrad=True), ValueError, "max_exp_avg_sqs is required"),
        ("negative lr", kwargs(lr=-1e-3), ValueError, "Invalid lr"),
        ("nan lr", kwargs(lr=float("nan")), ValueError, "Invalid lr"),
        ("inf eps", kwargs(eps=float("inf")), ValueError, "Invalid eps"),
        ("string lr", kwargs(lr="0.1"), TypeError, "Invalid lr"),
        ("beta1 = 1", kwargs(betas=(1.0, 0.999)), ValueError, "Invalid beta1"),
        ("beta2 < 0", kwargs(betas=(0.9, -0.1)), ValueError, "Invalid beta2"),
        ("betas not a pair", kwargs(betas=0.9), TypeError, "Invalid betas"),
        ("negative weight decay", kwargs(weight_decay=-0.1), ValueError, "Invalid weight_decay"),
        ("step 0", kwargs(step=0), ValueError, "Invalid step"),
        ("float step", kwargs(step=1.0), TypeError, "Invalid step"),
        ("unknown backend", kwargs(backend="cuda"), ValueError, "Invalid backend"),
    ]


def _partial_overlap(ops):
    shared = np.zeros(50, np.float32)
    ops["exp_avgs"][0] = shared[:33]
    ops["exp_avgs"][1] = shared[17:]
    return {}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,breaker,error,message", bad_cases(), ids=[c[0] for c in bad_cases()])
def test_bad_input_raises_and_modifies_nothing(backend, name, breaker, error, message):
    ops = adam_operands()
    extra = breaker(ops)
    before = snapshot(ops)
    kw = {"backend": backend, **extra}
    with pytest.raises(error, match=re.escape(message)):
        call_adam(ops, kw.pop("backend"), **kw)
    assert_unchanged(ops, before)


def test_valid_call_does_modify():
    """The counterpart of the test above: the unchanged-check can see a change."""
    ops = adam_operands()
    before = snapshot(ops)
    call_adam(ops, None)
    with pytest.raises(AssertionError):
        assert_unchanged(ops, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_rules_name_their_arguments(backend):
    p, g = np.zeros(8, np.float32), np.ones(8, np.float32)
    with pytest.raises(ValueError, match="momentum_buffers is required"):
        fo.sgd_(p, g, momentum=0.9, step=1, backend=backend)
    with pytest.raises(ValueError, match="Invalid nesterov"):
        fo.sgd_(p, g, np.zeros_like(p), momentum=0.9, dampening=0.1, nesterov=True, step=1, backend=backend)
    with pytest.raises(TypeError, match="Invalid step"):
        fo.sgd_(p, g, np.zeros_like(p), momentum=0.9, backend=backend)
    with pytest.raises(ValueError, match="grad_avgs is required"):
        fo.rmsprop_(p, g, np.zeros_like(p), centered=True, backend=backend)
    with pytest.raises(ValueError, match="Invalid alpha"):
        fo.rmsprop_(p, g, np.zeros_like(p), alpha=1.5, backend=backend)
    with pytest.raises(ValueError, match="Invalid lr_decay"):
        fo.adagrad_(p, g, np.zeros_like(p), step=1, lr_decay=-1.0, backend=backend)
    assert np.all(p == 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("functional, hyper, error, message", [
    (fo.asgd_, dict(lambd=-1e-4), ValueError, "Invalid lambd"),  # torch does not check: its eta can turn complex
    (fo.asgd_, dict(alpha=-0.5), ValueError, "Invalid alpha"),
    (fo.asgd_, dict(t0=float("nan")), ValueError, "Invalid t0"),
    (fo.asgd_, dict(eta=-0.1), ValueError, "Invalid eta"),
    (fo.asgd_, dict(mu=1.5), ValueError, "Invalid mu"),
    (fo.asgd_, dict(step=0), ValueError, "Invalid step"),
    (fo.rprop_, dict(etas=(1.2, 0.5)), ValueError, "Invalid etas"),
    (fo.rprop_, dict(etas=(0.0, 1.2)), ValueError, "Invalid etas"),
    (fo.rprop_, dict(etas=(0.5, float("inf"))), ValueError, "Invalid etaplus"),
    (fo.rprop_, dict(etas=0.5), TypeError, "Invalid etas"),
    (fo.rprop_, dict(step_sizes=(1e-6,)), TypeError, "Invalid step_sizes"),
    (fo.rprop_, dict(step_sizes=(1e-6, "50")), TypeError, "Invalid step_size_max"),
], ids=lambda x: getattr(x, "__name__", None))
def test_asgd_and_rprop_check_their_hyperparameters(backend, functional, hyper, error, message):
    arrays = [np.full(5, 0.5, np.float32) for _ in range(4 if functional is fo.rprop_ else 3)]
    host = dict(step=1, eta=0.01, mu=1.0) if functional is fo.asgd_ else {}
    with pytest.raises(error, match=message):
        functional(*arrays, **{**host, **hyper}, backend=backend)
    assert all(np.all(a == 0.5) for a in arrays)


def test_hyperparameters_are_read_at_every_call():
    """(A functional keeps the checked schedule of the hyperparameter objects of its last call.)"""
    def adam(betas, lr=1e-2):
        arrays = [np.full(5, 0.5, np.float32) for _ in range(4)]
        fo.adam_(*arrays, step=3, lr=lr, betas=betas)
        return arrays[0]

    betas = [0.9, 0.999]
    adam(betas)
    betas[0] = 0.5  # a list changed in place
    assert np.array_equal(adam(betas), adam((0.5, 0.999)))
    assert not np.array_equal(adam((0.5, 0.999)), adam((0.9, 0.999)))
    arrays = [np.full(5, 0.5, np.float32) for _ in range(4)]
    for lr, error in [(1.0, None), (True, TypeError), (1.0, None), (-1.0, ValueError), (float("nan"), ValueError)]:
        if error is None:
            fo.adam_(*[a.copy() for a in arrays], step=1, lr=lr)
            continue
        with pytest.raises(error, match="Invalid lr"):
            fo.adam_(*arrays, step=1, lr=lr)
        assert all(np.all(a == 0.5) for a in arrays)


@pytest.mark.parametrize("backend", BACKENDS)
def test_size_zero_and_empty_lists(backend):
    e = np.zeros(0, np.float32)
    fo.adam_(e, e.copy(), e.copy(), e.copy(), step=1, backend=backend)
    fo.adam_([], [], [], [], step=1, backend=backend)
    fo.sgd_([np.zeros((0, 3))], [np.zeros((0, 3))], [np.zeros((0, 3))], momentum=0.9, step=1, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_buffer_protocol_and_noncontiguous_grads(backend):
    """Writable buffers (array.array) are stepped in place; a strided grad is read correctly."""
    import array

    p = array.array("f", [1.0, 2.0, 3.0])
    g = np.arange(6, dtype=np.float32)[::2]  # [0, 2, 4], not contiguous
    fo.sgd_(p, g, lr=0.5, backend=backend)
    assert list(p) == [1.0, 1.0, 1.0]


def test_native_and_python_overlap_checks_agree():
    if fo._validate._find_overlap_native is None:
        pytest.skip("the C++ extension is not built")
    rng = np.random.default_rng(1)
    base = np.zeros(1000, np.float32)
    for _ in range(300):
        views = []
        for _ in range(rng.integers(1, 6)):
            lo = int(rng.integers(0, 1000))
            hi = int(rng.integers(lo, 1001))
            step = int(rng.choice([1, 1, 2, -1]))
            views.append(base[lo:hi][::step])
        assert fo._validate._find_overlap_native(views) == fo._validate._find_overlap_python(views)


def not_in_place():
    """(label, value factory): objects np.asarray would copy, or that cannot be written."""
    x0 = np.array(0.5, np.float32)
    return [
        ("list", lambda n: [0.0] * n),
        ("tuple", lambda n: (0.0,) * n),
        ("numpy scalar", lambda n: np.abs(x0)),  # a 0-d operation returns a NumPy scalar, not an array
        ("0-d item", lambda n: x0[()]),
        ("float", lambda n: 0.0),
        ("None", lambda n: None),
        ("read-only buffer", lambda n: memoryview(bytes(4 * n)).cast("f")),
        ("bytes", lambda n: bytes(4 * n)),
    ]


IN_PLACE_MESSAGE = "must be a writeable NumPy array (it is updated in place), got "


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("label,make", not_in_place(), ids=[c[0] for c in not_in_place()])
@pytest.mark.parametrize("where", ["params", "exp_avgs", "exp_avg_sqs"])
def test_written_operands_must_be_arrays_updated_in_place(backend, label, make, where):
    """A copy would take the update and drop it: a TypeError naming the operand, nothing modified."""
    ops = adam_operands(n=1 if label in ("numpy scalar", "0-d item", "float") else 33)
    n = ops["params"][0].size
    if label in ("numpy scalar", "0-d item", "float"):  # 0-d operands: give every operand shape ()
        ops = {k: [a.reshape(()) for a in v] for k, v in ops.items()}
    ops[where][1] = make(n)
    before = snapshot({k: v for k, v in ops.items()})
    with pytest.raises(TypeError, match=re.escape(f"{where}[1] {IN_PLACE_MESSAGE}")):
        call_adam(ops, backend)
    for k, arrays in before.items():
        for a, b in zip(ops[k], arrays):
            if isinstance(a, np.ndarray):
                assert a.tobytes() == b.tobytes(), f"{k} was modified"


@pytest.mark.parametrize("backend", BACKENDS)
def test_lists_of_floats_are_not_params(backend):
    """The issue's two calls: a list of floats as params, and lists as states."""
    with pytest.raises(TypeError, match=re.escape(f"params[0] {IN_PLACE_MESSAGE}float")):
        fo.sgd_([1.0, 2.0], [0.5, 0.5], lr=0.1, backend=backend)
    p, g = np.ones(4, np.float32), np.ones(4, np.float32)
    with pytest.raises(TypeError, match=re.escape(f"exp_avgs {IN_PLACE_MESSAGE}list")):
        fo.adam_(p, g, [0.0] * 4, [0.0] * 4, step=1, lr=0.1, backend=backend)
    assert np.all(p == 1)
    with pytest.raises(TypeError, match=re.escape(f"params {IN_PLACE_MESSAGE}numpy.float32")):
        fo.sgd_(np.abs(np.array(1.0, np.float32)), np.array(0.5, np.float32), lr=0.1, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_writeable_buffers_are_stepped_in_place(backend):
    """array.array and writeable memoryviews expose their memory: stepped there, as arrays are."""
    import array

    rng = np.random.default_rng(3)
    p, g, m, v = (rng.standard_normal(37).astype(np.float32) for _ in range(4))
    v = np.abs(v)
    expected = [p.copy(), m.copy(), v.copy()]
    fo.adam_(expected[0], g, expected[1], expected[2], step=1, lr=0.1, backend="numpy")
    buffers = [array.array("f", p.tobytes()), memoryview(m.copy()), memoryview(bytearray(v.tobytes())).cast("f")]
    fo.adam_(buffers[0], g, buffers[1], buffers[2], step=1, lr=0.1, backend=backend)
    for got, want in zip(buffers, expected):
        assert np.frombuffer(got, np.float32).tobytes() == want.tobytes()
    empty = array.array("f")
    fo.sgd_(empty, np.zeros(0, np.float32), lr=0.1, backend=backend)  # an empty view is still a view


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_only_operands_may_be_any_array_like(backend):
    p = np.ones(3, np.float64)
    fo.sgd_(p, [0.5, 1.0, 2.0], lr=0.5, backend=backend)  # a list of (float64) floats as the gradient
    assert p.tolist() == [0.75, 0.5, 0.0]
    q = np.ones(3, np.float32)
    fo.sgd_(q, memoryview(np.float32([0.5, 1.0, 2.0]).tobytes()).cast("f"), lr=0.5, backend=backend)  # read-only
    assert q.tolist() == [0.75, 0.5, 0.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_none_operands_are_named(backend):
    p, g = np.ones(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(TypeError, match=re.escape(f"params[0] {IN_PLACE_MESSAGE}NoneType")):
        fo.sgd_([None], [g], lr=0.1, backend=backend)
    with pytest.raises(TypeError, match=re.escape("grads[1] must be a NumPy array or expose the buffer protocol, "
                                                  "got NoneType")):
        fo.sgd_([p, p.copy()], [g, None], lr=0.1, backend=backend)
    assert np.all(p == 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_flags_take_numpy_bools_and_name_other_types(backend):
    p, g = np.ones(3, np.float32), np.ones(3, np.float32)
    fo.sgd_(p, g, lr=0.5, maximize=np.True_, backend=backend)  # e.g. a flag read from a NumPy array
    assert np.all(p == 1.5)
    for value, shown in [(np.float64(1.0), "numpy.float64"), ("yes", "str"), (None, "NoneType")]:
        with pytest.raises(TypeError, match=re.escape(f"Invalid maximize: expected a bool, got {shown}")):
            fo.sgd_(p, g, lr=0.5, maximize=value, backend=backend)
    with pytest.raises(TypeError, match=re.escape("Invalid lr: expected a real number, got numpy.bool")):
        fo.sgd_(p, g, lr=np.True_, backend=backend)
    assert np.all(p == 1.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_beyond_double_is_a_value_error(backend):
    ops = adam_operands()
    before = snapshot(ops)
    for step in (10**400, 2**53 + 1, np.uint64(2**63)):
        with pytest.raises(ValueError, match=r"Invalid step: .* \(must be <= 2\*\*53"):
            call_adam(ops, backend, step=step)
    assert_unchanged(ops, before)
    call_adam(ops, backend, step=2**53)  # the largest exact count is a valid step


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_gradient_may_serve_several_params(backend):
    """Grads are only read, so one array for two params is fine (torch.optim allows one grad
    tensor for two params); a grad that overlaps anything written is still an error."""
    ops = adam_operands(count=3)
    shared = ops["grads"][0]
    ops["grads"] = [shared, shared, shared[:]]
    expected = {k: [a.copy() for a in v] for k, v in ops.items()}
    expected["grads"] = [shared.copy()] * 3
    call_adam(expected, "numpy")
    call_adam(ops, backend)
    for k in ("params", "exp_avgs", "exp_avg_sqs"):
        for a, b in zip(ops[k], expected[k]):
            assert a.tobytes() == b.tobytes(), k
    ops["grads"][2] = ops["exp_avgs"][0]
    with pytest.raises(ValueError, match=re.escape("exp_avgs[0] and grads[2] overlap in memory")):
        call_adam(ops, backend)


def scalar_overflows():
    """(label, functional, dtype, array count, hyperparameters, message): hyperparameters finite
    in double whose step scalars are not, in the compute dtype."""
    return [
        ("sgd lr", fo.sgd_, np.float32, 2, dict(lr=1e300),
         "Invalid lr: 1e+300 is not finite in float32, the compute dtype of float32 params"),
        ("adam lr", fo.adam_, np.float32, 4, dict(step=1, lr=1e300), "Invalid step_size: 1e+301 is not finite in float32"),
        ("adam step_size", fo.adam_, np.float32, 4, dict(step=1, lr=1e38),  # lr fits in float32, lr / (1 - 0.9) does not
         "Invalid step_size: 1e+39 is not finite in float32"),
        ("adam float64", fo.adam_, np.float64, 4, dict(step=1, lr=1e308), "Invalid step_size: inf is not finite in float64"),
        ("adagrad eps", fo.adagrad_, np.float32, 3, dict(step=1, eps=1e39), "Invalid eps: 1e+39"),
        ("lion decay", fo.lion_, np.float32, 3, dict(lr=1e20, weight_decay=1e20),
         "Invalid decay_factor: -1e+40 is not finite in float32"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("label,functional,dtype,count,hyper,message", scalar_overflows(),
                         ids=[c[0] for c in scalar_overflows()])
def test_scalars_must_be_finite_in_the_compute_dtype(backend, label, functional, dtype, count, hyper, message):
    """Rounded once to the compute dtype, an lr of 1e300 is Inf: every param would become NaN or Inf."""
    arrays = [np.full(5, 0.5, dtype) for _ in range(count)]
    with pytest.raises(ValueError, match=re.escape(message)):
        functional(*arrays, **hyper, backend=backend)
    assert all(np.all(a == 0.5) for a in arrays)
