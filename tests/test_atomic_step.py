"""A step is all or nothing: an exception or a Ctrl-C part way through a step of many tensors
leaves either every operand as it was or every operand stepped, on every backend."""

import linecache
import os
import signal
import sys
import threading

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import _backends, reference

N = 40  # tensors in a step


def operands(seed=0):
    rng = np.random.default_rng(seed)
    make = lambda: [rng.standard_normal(17).astype(np.float32) for _ in range(N)]  # noqa: E731
    return {"params": make(), "grads": make(), "exp_avgs": make(), "exp_avg_sqs": [np.abs(a) for a in make()]}


def adam(ops, backend):
    fo.adam_(ops["params"], ops["grads"], ops["exp_avgs"], ops["exp_avg_sqs"], step=3, lr=0.1, backend=backend)


def written(ops):
    return [a.tobytes() for k in ("params", "exp_avgs", "exp_avg_sqs") for a in ops[k]]


def stepped(backend):
    ops = operands()
    adam(ops, backend)
    return written(ops)


def interrupt():
    """Ctrl-C, as the terminal sends it: the handler runs at the main thread's next bytecode."""
    os.kill(os.getpid(), signal.SIGINT)


def failing_after(kernel, calls, action):
    """``kernel``, doing ``action`` in its ``calls``-th call (1-based), after stepping that tensor."""
    count = [0]

    def wrapped(*args):
        kernel(*args)
        count[0] += 1
        if count[0] == calls:
            action()

    return wrapped


def raise_error():
    raise MemoryError("injected")


@pytest.mark.parametrize("action,error", [(raise_error, MemoryError), (interrupt, KeyboardInterrupt)],
                         ids=["exception", "Ctrl-C"])
def test_numpy_backend_interrupted_while_computing_changes_nothing(monkeypatch, action, error):
    ops = operands()
    before = written(ops)
    monkeypatch.setattr(reference, "adam", failing_after(reference.adam, N // 2, action))
    with pytest.raises(error):
        adam(ops, "numpy")
    assert written(ops) == before


def test_numpy_backend_interrupted_while_committing_finishes_first():
    """Ctrl-C while the results are copied into the operands: the copy completes, then the
    KeyboardInterrupt is raised. The trace sends SIGINT on the third line that copies."""
    run_code = _backends.run.__code__
    copies = [0]

    def local(frame, event, arg):
        if event == "line" and "np.copyto(" in linecache.getline(run_code.co_filename, frame.f_lineno):
            copies[0] += 1
            if copies[0] == 3:
                interrupt()
        return local

    def trace(frame, event, arg):
        return local if frame.f_code is run_code else None

    ops = operands()
    sys.settrace(trace)
    try:
        with pytest.raises(KeyboardInterrupt):
            adam(ops, "numpy")
    finally:
        sys.settrace(None)
    assert copies[0] == 3 * N, "the trace did not see the copies"
    assert written(ops) == stepped("numpy")


@pytest.mark.skipif("numba" not in fo.available_backends(), reason="needs numba")
def test_numba_backend_interrupted_between_tensors_finishes_first(monkeypatch):
    """One jitted call per tensor: a Ctrl-C after the fifth waits until the last is stepped."""
    from fusedoptim import _numba

    expected = stepped("numba")
    ops = operands()
    monkeypatch.setattr(_numba, "adam", failing_after(_numba.adam, 5, interrupt))
    with pytest.raises(KeyboardInterrupt):
        adam(ops, "numba")
    assert written(ops) == expected


def test_guard_an_undeferred_interrupt_splits_a_step(monkeypatch):
    """The tests above can fail: the same injection outside a deferred block stops part way."""
    from fusedoptim import _numba

    class NotDeferred:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    if "numba" not in fo.available_backends():
        pytest.skip("needs numba")
    monkeypatch.setattr(_backends, "deferred_interrupts", NotDeferred)
    monkeypatch.setattr(_numba, "adam", failing_after(_numba.adam, 5, interrupt))
    ops = operands()
    before = written(ops)
    with pytest.raises(KeyboardInterrupt):
        adam(ops, "numba")
    after = written(ops)
    assert after != before and after != stepped("numba")


def test_deferred_interrupts_reach_the_callers_handler():
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        with _backends.deferred_interrupts():
            with _backends.deferred_interrupts():  # nested: delivered to the outer block, then out
                interrupt()
                assert caught == []
            assert caught == []
        assert caught == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_deferred_interrupts_in_another_thread_change_no_handler():
    handlers = []

    def work():
        with _backends.deferred_interrupts():
            handlers.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert handlers == [signal.getsignal(signal.SIGINT)]


@pytest.mark.parametrize("backend", fo.available_backends())
def test_stateful_step_interrupted_after_the_kernels_still_counts_the_step(monkeypatch, backend):
    """Ctrl-C during a long native step is handled when the kernel returns: the step counts
    (and new states) must still be recorded, or the next step would repeat step 1's scalars."""
    ops = operands()
    opt = fo.Adam([{"params": ops["params"][:20]}, {"params": ops["params"][20:], "lr": 0.5}], lr=0.1, backend=backend)
    real = fo._backends.run

    def then_interrupt(*args):  # two groups: the step is checked whole, then each group's call runs
        real(*args)
        interrupt()

    monkeypatch.setattr(fo._backends, "run", then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        opt.step(ops["grads"])
    assert [opt.state[i]["step"] for i in range(N)] == [1] * N
