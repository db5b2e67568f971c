"""The bench command, in a configuration small enough for the test suite. Speed is never asserted."""

import pytest

import fusedoptim as fo
from fusedoptim.__main__ import main


@pytest.mark.skipif("cpp" not in fo.available_backends(), reason="needs the cpp extension")
def test_bench_prints_every_contender_for_every_case(capsys):
    assert main(["bench", "--sizes", "4096,192 tensors", "--repeat", "2", "--rules", "adam,sgd", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    header = "contender                    median  ns/elem    GB/s  % roof vs torch fused"
    assert out.count(header) == 8  # 2 rules x 2 sizes x 1 and 2 threads
    for name, ok in fo.isa_levels():
        if ok:
            assert out.count(f"fusedoptim cpp/{name} ") == 8
    assert out.count("roof (same traffic)") == 8
    assert out.count("fusedoptim numpy ") == 4  # one thread only
    assert "adam, 4K (4,096 elements), 2 threads" in out
    assert "SGD-momentum, 192 tensors" in out


def test_bench_rejects_unknown_rules():
    with pytest.raises(SystemExit, match="unknown rules: nope; known"):
        main(["bench", "--rules", "adam,nope", "--sizes", "16"])


def test_bench_takes_the_registrys_optimizer_names_in_any_case(capsys):
    """AdamW is an optimizer of its own (Adam with decoupled weight decay), so it can be benchmarked."""
    assert main(["bench", "--sizes", "16", "--repeat", "1", "--rules", "AdamW,sgd", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "adamw, 16 (16 elements), 1 thread" in out and "SGD-momentum, 16 (16 elements), 1 thread" in out
