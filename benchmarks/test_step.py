"""pytest-benchmark: one optimizer step per case, every backend and ISA level, and torch.

Run with ``pytest benchmarks --benchmark-only`` (the normal test run skips them). Each group
is one case; compare within a group. For a table with the bandwidth roof, use ``fusedoptim bench``.
"""

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import bench

CASES = [("adam", 1 << 20), ("adam", 4096), ("adam", "192 tensors"), ("sgd", 1 << 20), ("adagrad", 1 << 20),
         ("rmsprop", 1 << 20)]


def problem(rule, size, threads=1):
    rng = np.random.default_rng(0)
    sizes = bench.tensor_sizes(size)
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads = [rng.standard_normal(n).astype(np.float32) * np.float32(1e-3) for n in sizes]
    return bench.Problem(rule, params, grads, threads)


@pytest.mark.parametrize("contender", bench.contenders(), ids=lambda c: c.name)
@pytest.mark.parametrize("rule,size", CASES, ids=lambda x: bench.label(x) if not isinstance(x, str) or x[0].isdigit() else x)
def test_step(benchmark, rule, size, contender):
    if contender.name == "fusedoptim numpy" and size == "192 tensors":
        pytest.skip("slow and not informative")
    p = problem(rule, size)
    step = contender.prepare(p)
    if step is None:
        pytest.skip(f"{contender.name} does not run {rule}")
    benchmark.group = f"{rule} {bench.label(size)}"
    contender.setup(p)
    saved = fo._backends._kernels.isa() if fo._backends._kernels else None
    try:
        with np.errstate(all="ignore"):
            step()
            benchmark(step)
    finally:
        if saved:
            fo.set_isa(saved)
