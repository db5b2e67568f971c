"""pytest-benchmark: one optimizer step per case, for every contender of ``fusedoptim bench``.

Run with ``pytest benchmarks --benchmark-only`` (the normal test run skips them). Each group
is one case; compare within a group. For the interleaved table with the roof, use ``fusedoptim bench``.
"""

import numpy as np
import pytest

from fusedoptim import bench

CASES = [("adam", "1M"), ("adam", "4K"), ("adam", "192"), ("sgd", "1M"), ("adagrad", "1M"), ("rmsprop", "1M")]


@pytest.mark.parametrize("contender", bench.contenders(), ids=lambda c: c.name.format(name="Rule", lower="rule"))
@pytest.mark.parametrize("rule,name", CASES, ids=[f"{rule}-{name}" for rule, name in CASES])
def test_step(benchmark, rule, name, contender):
    case = bench.case(name)
    step = contender.prepare(bench.problem(rule, case, "fp32", case.placements[0]))
    if step is None:
        pytest.skip(f"{bench.contender_name(contender, rule)} does not run {rule}")
    benchmark.group = f"{rule} {case.label}"
    with np.errstate(all="ignore"):
        step()  # allocates the state
        benchmark(step)
