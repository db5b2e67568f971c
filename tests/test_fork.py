"""Fork safety (DESIGN.md, contract point 7): a fork at any moment leaves a child that can step,
whatever the parent's threads were doing: stepping in parallel, growing or shrinking the pool,
holding its locks, or nothing.

Every child makes one parallel step, checks its bits and leaves with os._exit; the parent waits
for each child with a time limit and kills a hung one, so a deadlock fails the test, never hangs it.
"""

import ast
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import fusedoptim as fo
from conftest import assert_bitwise_equal

pytestmark = [
    pytest.mark.skipif("cpp" not in fo.available_backends(), reason="needs the cpp extension"),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
]

N = 1 << 17  # fp32: enough for 4 threads (THREAD_BYTES of each operand per thread)
CHILD_SECONDS = 10  # a child's one step takes milliseconds; this long only when it is stuck
KILLED = "hung (killed)"

_kernels = fo._backends._kernels
_START = np.random.default_rng(0).standard_normal((4, N), dtype=np.float32)


def adam_operands():
    """Fresh copies of one param, grad and two states: cheap enough for a child to make."""
    return list(_START.copy())


def adam_step(operands):
    fo.adam_(*operands, step=1, lr=0.1, weight_decay=0.01)
    return operands


@pytest.fixture
def expected():
    """The params after one step from adam_operands(), on one thread; the setting is restored."""
    previous = fo.set_num_threads(1)
    yield adam_step(adam_operands())[0]
    fo.set_num_threads(previous)


def fork_a_stepping_child(expected):
    """Forks; the child steps on the pool and exits 0 when it got the expected bits. Returns the
    child's exit status, or KILLED when it did not end in time."""
    with warnings.catch_warnings():  # Python 3.12+ warns that forking a threaded process is risky
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        status = 1
        try:
            status = 0 if np.array_equal(adam_step(adam_operands())[0].view(np.uint32), expected.view(np.uint32)) else 2
        finally:
            os._exit(status)
    deadline = time.monotonic() + CHILD_SECONDS
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.001)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return KILLED


class Background:
    """Runs each function in a loop on its own thread until the block ends."""

    def __init__(self, *loops):
        self.stop = threading.Event()
        self.errors = []
        self.threads = [threading.Thread(target=self._repeat, args=(f,)) for f in loops]

    def _repeat(self, f):
        try:
            while not self.stop.is_set():
                f()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.errors.append(e)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()
        assert not self.errors, self.errors


STORM = """
import sys, time
sys.path.insert(0, {tests!r})
import fusedoptim as fo
from test_fork import Background, adam_operands, adam_step, fork_a_stepping_child

fo.set_num_threads(1)
expected = adam_step(adam_operands())[0]
fo.set_num_threads(2)
operands = [adam_operands() for _ in range(3)]

def resize():
    fo.set_num_threads(3)
    time.sleep(0.002)
    fo.set_num_threads(2)
    time.sleep(0.002)

with Background(*(lambda ops=ops: adam_step(ops) for ops in operands), resize):
    statuses = [fork_a_stepping_child(expected) for _ in range({forks})]
print(statuses)
"""


def test_fork_storm_while_threads_step_and_resize_the_pool():
    """Three threads step with 2-3 threads each while a fourth grows and shrinks the pool, and
    the main thread forks: each fork catches some of them inside the pool, some between steps.
    In a fresh interpreter, so that a fork copies only what the storm needs, whatever ran before."""
    forks = 100
    done = subprocess.run([sys.executable, "-c", STORM.format(tests=str(Path(__file__).parent), forks=forks)],
                          capture_output=True, text=True, timeout=forks * CHILD_SECONDS + 60)
    assert done.returncode == 0, done.stderr
    statuses = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert statuses == [0] * forks, [s for s in statuses if s != 0]


def test_fork_while_another_thread_holds_the_pool_locks(expected):
    """The moment a storm hits once in thousands of forks, made certain: a thread holds the
    pool's locks (as a step or a resize in flight does) while the main thread forks."""
    fo.set_num_threads(2)
    holder = threading.Thread(target=_kernels._hold_pool_locks, args=(0.5,))
    holder.start()
    statuses = []
    try:
        for _ in range(3):  # the first fork could come before the holder has the locks
            time.sleep(0.05)
            statuses.append(fork_a_stepping_child(expected))
    finally:
        holder.join()
    assert statuses == [0, 0, 0]


def test_forked_child_of_an_idle_pool_steps(expected):
    fo.set_num_threads(2)
    adam_step(adam_operands())  # the pool exists, its worker asleep
    assert fork_a_stepping_child(expected) == 0
    assert_bitwise_equal(adam_step(adam_operands())[0], expected, "the parent after the fork")
