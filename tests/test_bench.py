"""The bench command: its output's structure, units and flags, on tiny sizes (``--tiny``). Speed is
never asserted: these runs only check what is printed and written."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import fusedoptim as fo
from fusedoptim import bench
from fusedoptim.__main__ import main
from fusedoptim._rules import OPTIMIZERS

needs_cpp = pytest.mark.skipif("cpp" not in fo.available_backends(), reason="the roof needs the cpp extension")
TINY = ["bench", "--tiny", "--quick"]


@pytest.fixture(autouse=True)
def no_deepspeed(monkeypatch):
    """DeepSpeed, where installed, takes seconds to load: these tests run as if it were not."""
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    monkeypatch.setattr(bench, "deepspeed", bench._DeepSpeed())


def summary_rows(out):
    """The summary's rows (case, placement, threads, the rest), between its header and the legend."""
    block = out.split(bench.SUMMARY_HEADER + "\n", 1)[1].split("\n\n", 1)[0]
    return [line.split(None, 3) for line in block.splitlines() if line[:1].isalnum() and
            not line.startswith(("DeepSpeed", "placement spread"))]


@needs_cpp
def test_the_summary_comes_first_one_row_per_case_placement_and_thread_count(capsys):
    assert main([*TINY, "--cases", "192,4K,16M", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith(f"fusedoptim {fo.__version__} bench: ") and "ISA " in lines[0]
    assert "1 and 2 threads" in lines[0]
    assert lines[1].startswith("Adam, fp32: summary (medians of 2 interleaved rounds)")
    rows = summary_rows(out)
    # quick: the models on torch's allocator, 4K as NumPy places it, 16M also staggered
    expected = [("192", "tensors", "torch", "1"), ("192", "tensors", "torch", "2"), ("4K", "numpy", "1"),
                ("4K", "numpy", "2"), ("16M", "numpy", "1"), ("16M", "numpy", "2"), ("16M", "staggered", "1"),
                ("16M", "staggered", "2")]
    assert [tuple(" ".join(r).split()[: len(e)]) for r, e in zip(rows, expected)] == expected
    assert len(rows) == len(expected)
    for threads in ("1 thread", "2 threads"):  # 16M is the only case in two placements
        assert len(re.findall(rf"^placement spread, 16M, {threads}: roof", out, re.M)) == 0
        # a spread is three digits: 1.23x, or 12.3x when another process disturbed a tiny step
        assert len(re.findall(rf"^placement spread, 16M, {threads}: adam_ (\d\.\d\d|\d\d\.\d|\d+)x, fo\.Adam\.step ",
                              out, re.M)) == 1
    assert "placement spread, 4K" not in out
    assert "DeepSpeed: absent (not importable)" in out
    assert out.index("Legend") > out.index(bench.SUMMARY_HEADER)
    assert "(--detail prints every contender's timings" in out
    assert bench.DETAIL_HEADER not in out


@needs_cpp
def test_detail_prints_every_contender_of_every_case(capsys):
    assert main([*TINY, "--cases", "4K", "--placements", "torch,aligned2M", "--threads", "1", "--detail"]) == 0
    out = capsys.readouterr().out
    assert out.count(bench.DETAIL_HEADER) == 2
    assert "Adam, fp32, 4K (1 tensor, 16 elements), aligned2M placement, 1 thread" in out
    for name in ("roof", "adam_", "fo.Adam.step", "fusedoptim.torch.Adam", "torch fused", "torch foreach"):
        assert len(re.findall(rf"^{re.escape(name)} ", out, re.M)) == 2, name
    assert "DeepSpeed CPUAdam" not in out.split("Legend")[1]  # absent: no row of it


def result(contender, layer, *samples, threads=1):
    return bench.Result("adam", "fp32", bench.case("4K"), "numpy", threads, contender, layer, list(samples), 100)


def test_summary_names_the_fastest_and_fusedoptims_best_layer_with_their_ratios():
    results = [result("roof", "roof", 1e-6), result("adam_", "fusedoptim", 4e-6), result("fo.Adam.step", "fusedoptim", 5e-6),
               result("torch fused", "torch", 8e-6), result("DeepSpeed CPUAdam", "deepspeed", 2e-6, 2e-6, 3e-6)]
    row = bench.summary(results).splitlines()[-1].split()
    # fastest: DeepSpeed at 50% of roof, 4x torch fused; fusedoptim's best: adam_ at 25%, 2x fused, 0.5x DeepSpeed
    assert row == ["4K", "numpy", "1", "1.00", "µs", "DeepSpeed", "CPUAdam", "50%", "4.00x", "adam_", "25%", "2.00x",
                   "0.50x", "-", "~"]  # vs fp32: this is fp32; ~: DeepSpeed's p90/p10 is above 1.3


def test_a_low_precision_row_compares_fusedoptims_best_layers_with_fp32():
    """vs fp32: fusedoptim's best fp32 time over its best time in the row's dtype, same case."""
    fp32 = [result("roof", "roof", 4e-6), result("adam_", "fusedoptim", 8e-6), result("fo.Adam.step", "fusedoptim", 6e-6),
            result("torch fused", "torch", 1e-6)]  # torch is no fusedoptim layer
    bf16 = [r._replace(dtype="bf16", samples=[t / 3 for t in r.samples]) for r in fp32]
    bf16[2] = bf16[2]._replace(samples=[4e-6])  # in bf16, adam_ (8/3 µs) is the best layer
    rows = [line.split() for line in bench.summary(fp32 + bf16).splitlines() if line.startswith("4K")]
    assert rows[0][-1] == "-"  # the fp32 row
    assert rows[1][-1] == "2.25x"  # 6 µs (fo.Adam.step, fp32) over 8/3 µs (adam_, bf16)


def test_a_steady_row_is_not_flagged():
    results = [result("roof", "roof", 1e-6, 1.1e-6), result("adam_", "fusedoptim", 2e-6, 2.1e-6)]
    assert not bench.summary(results).endswith("~")
    assert bench.summary(results).splitlines()[-1].split()[-2:] == ["-", "-"]  # no torch fused, no DeepSpeed


@pytest.mark.parametrize("seconds,text", [(999.96e-6, "1.00 ms"), (1e-3, "1.00 ms"), (123.45e-6, "123 µs"),
                                          (12.345e-6, "12.3 µs"), (1.2345e-6, "1.23 µs"), (999.4e-9, "999 ns"),
                                          (0.5e-9, "0.50 ns"), (13.44e-3, "13.4 ms"), (2.0, "2.00 s")])
def test_times_print_in_a_unit_that_keeps_three_digits(seconds, text):
    assert bench.format_time(seconds) == text


@given(st.floats(1e-9, 999.0))  # seconds are the largest unit
def test_a_time_never_prints_an_exponent_or_1000_of_a_unit(seconds):
    value, unit = bench.format_time(seconds).split()
    assert unit in ("ns", "µs", "ms", "s") and "e" not in value
    assert 1 <= float(value) < 1000


def test_spread_uses_the_medians_unit():
    assert bench.format_spread(result("adam_", "fusedoptim", 60.2e-6, 61e-6, 62.9e-6)) == "60.4-62.5 µs"  # linear interpolation


def test_plot_without_matplotlib_fails_before_the_run_with_the_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed

    def run(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr(bench, "run", run)
    with pytest.raises(SystemExit, match=re.escape('pip install "fusedoptim[plot]"')):
        main([*TINY, "--plot", str(tmp_path / "bench.png")])
    assert not (tmp_path / "bench.png").exists()


@needs_cpp
def test_json_holds_every_timing(tmp_path, capsys):
    data = tmp_path / "bench.json"
    assert main([*TINY, "--cases", "192,4K", "--threads", "2", "--json", str(data)]) == 0
    runs = json.loads(data.read_text())
    assert runs["machine"] == capsys.readouterr().out.splitlines()[0]
    cases = {(r["case"], r["placement"], r["threads"]) for r in runs["results"]}
    assert cases == {("192 tensors", "torch", 1), ("192 tensors", "torch", 2), ("4K", "numpy", 1), ("4K", "numpy", 2)}
    assert all(len(r["samples"]) == 2 and r["p10"] <= r["median"] <= r["p90"] for r in runs["results"])


@needs_cpp
def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    assert main([*TINY, "--cases", "192,4K", "--threads", "2", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("flag,value,message", [("--rules", "adam,nope", "unknown rules: nope; known"),
                                                ("--placements", "numpy,heap", "unknown placements: heap; known"),
                                                ("--cases", "4K,big", "unknown case: big; known"),
                                                ("--dtype", "fp8", "unknown dtypes: fp8; known")])
def test_bench_rejects_unknown_names(flag, value, message):
    with pytest.raises(SystemExit, match=message):
        main(["bench", flag, value])


@needs_cpp
def test_every_optimizer_of_the_registry_can_be_benchmarked(capsys):
    """Each contender builds its step from the registry (hyperparameters, states, host states)."""
    names = [spec.name for spec in OPTIMIZERS.values()]
    assert main([*TINY, "--cases", "4K", "--rules", ",".join(names), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 thread;" in out.splitlines()[0]
    for name in names:
        assert f"{name}, fp32: summary" in out
        assert re.search(rf"^4K +numpy +1 .*{name.lower()}_", out, re.M) or f"fo.{name}.step" in out


@needs_cpp
def test_bench_takes_the_registrys_optimizer_names_in_any_case(capsys):
    """AdamW is an optimizer of its own (Adam with decoupled weight decay), so it can be benchmarked."""
    assert main([*TINY, "--cases", "4K", "--rules", "AdamW,sgd", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "AdamW, fp32: summary" in out and "SGD, fp32: summary" in out


@pytest.mark.parametrize("dtype,per_element", [("fp32", 28), ("bf16", 14), ("bf16/fp32", 22), ("bf16+master", 28)])
def test_each_dtypes_roof_moves_the_steps_bytes(dtype, per_element):
    """Adam reads and writes the param (a master copy instead, when it has one: the param is then
    only written), its two states, and reads the grad: the roof streams exactly those bytes."""
    pytest.importorskip("ml_dtypes")
    problem = bench.problem("adam", bench.case("1000"), dtype, "numpy")
    assert bench.traffic(problem) == 1000 * per_element
    reads, writes = bench.roof_streams(problem)
    assert sum(a.nbytes for a in reads + writes) == bench.traffic(problem)
    assert len({a.size for a in reads + writes}) == 1 and max(len(reads), len(writes)) <= 12  # kMaxStreams


@needs_cpp
def test_every_dtype_is_benchmarked_with_its_options(capsys):
    if bench.bf16_support():
        pytest.skip(bench.bf16_support())
    assert main([*TINY, "--cases", "4K", "--dtype", "bf16/fp32,bf16+master", "--threads", "1", "--detail"]) == 0
    out = capsys.readouterr().out
    for dtype in ("bf16/fp32", "bf16+master"):
        assert f"Adam, {dtype}: summary" in out and f"Adam, {dtype}, 4K (1 tensor" in out
        assert f"  {dtype:<9} " in out.split("Legend")[1]
    assert "vs fp32   fusedoptim's best fp32 time" in out


def test_the_layers_store_state_and_masters_as_the_dtype_says():
    pytest.importorskip("ml_dtypes")
    for dtype, state, masters in [("bf16", "bfloat16", None), ("bf16/fp32", "float32", None),
                                  ("bf16+master", "float32", "float32")]:
        problem = bench.problem("adam", bench.case("64"), dtype, "numpy")
        assert [s[0].dtype.name for s in problem.states] == [state, state]
        assert (problem.masters and problem.masters[0].dtype.name) == masters
        bench._functional(problem)()  # the functional takes them
        opt = fo.Adam(problem.params, **problem.mode.options())
        opt.step(problem.grads)
        assert {a.dtype.name for a in opt.state[0].values() if hasattr(a, "dtype")} >= {state}


@needs_cpp
def test_bf16_is_benchmarked_or_skipped_with_the_reason(capsys):
    assert main([*TINY, "--cases", "4K", "--dtype", "fp32,bf16", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    why = bench.bf16_support()
    assert ("Adam, bf16: summary" in out) == (why is None)
    assert (f"bf16: skipped: {why}" in out) == (why is not None)
    assert "Adam, fp32: summary" in out


def test_the_model_cases_are_shaped_as_documented():
    assert len(bench.case("192").sizes) == 192 and bench.case("192").elements == 294_912
    gpt2 = bench.case("gpt2")
    assert len(gpt2.sizes) == 196 and 9e6 < gpt2.elements < 11e6
    assert len(bench.case("gpt2", quick=True).sizes) == 196  # the same tensors, fewer bytes
    assert bench.case("16M").sizes == [16 << 20] and bench.case("4K").placements == bench.PLACEMENTS


@needs_cpp
def test_a_contender_of_another_project_that_fails_is_noted_and_left_out(monkeypatch, capsys):
    def broken(problem):
        def step():
            raise RuntimeError("no kernel for this dtype\nmore")

        return step

    field = bench.contenders()
    monkeypatch.setattr(bench, "contenders", lambda: field + [bench.Contender("broken {name}", "torch", broken)])
    assert main([*TINY, "--cases", "4K", "--threads", "1", "--detail"]) == 0
    out = capsys.readouterr().out
    assert "broken Adam: not measured for fp32 (RuntimeError: no kernel for this dtype)" in out
    assert not re.search(r"^broken Adam ", out, re.M)


def test_the_end_to_end_benchmark_runs(capsys):
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("e2e", Path(__file__).parents[1] / "benchmarks" / "e2e_transformer.py")
    e2e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e2e)
    e2e.main(["--steps", "2", "--width", "16", "--layers", "1", "--vocab", "32", "--context", "8"])
    out = capsys.readouterr().out
    assert "fusedoptim.torch.AdamW vs torch fused: opt.step() " in out and "whole step" in out
    assert "fusedoptim.torch.AdamW(flat=True) vs torch fused: opt.step() " in out


def test_each_end_of_a_spread_keeps_three_digits():
    assert bench.format_spread(result("adam_", "fusedoptim", 8.58e-3, 9e-3, 11e-3, 150e-3, 192.33e-3)) == "8.75-175 ms"


@needs_cpp
def test_without_torch_the_models_are_placed_by_numpy_and_torchs_columns_are_empty(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # as if not installed
    assert main([*TINY, "--cases", "192", "--threads", "1", "--detail"]) == 0
    out = capsys.readouterr().out
    assert [row[:3] for row in summary_rows(out)] == [["192", "tensors", "numpy"]]
    assert summary_rows(out)[0][3].split().count("-") == 4  # vs torch fused (twice), vs DeepSpeed, vs fp32
    assert not re.search(r"^(torch|fusedoptim\.torch)", out.split("Legend")[1], re.M)


@needs_cpp
def test_the_run_leaves_the_thread_counts_as_it_found_them(capsys):
    torch = pytest.importorskip("torch")
    before = fo.get_num_threads(), torch.get_num_threads()
    fo.set_num_threads(1)
    torch.set_num_threads(1)
    try:
        assert main([*TINY, "--cases", "4K", "--threads", "2"]) == 0
        assert (fo.get_num_threads(), torch.get_num_threads()) == (1, 1)
    finally:
        fo.set_num_threads(before[0])
        torch.set_num_threads(before[1])


def test_measure_takes_one_sample_per_round_of_each_step_and_nothing_of_no_step():
    calls = {"a": 0, "b": 0}

    def counter(name):
        def step():
            calls[name] += 1

        return step

    samples = bench.measure({"a": counter("a"), "b": counter("b")}, rounds=4, batch_seconds=0.0)
    assert {k: len(v) for k, v in samples.items()} == {"a": 4, "b": 4}
    assert calls == {"a": 5, "b": 5}  # one call to size the batch (of one call here), then one per round
    assert bench.measure({}, rounds=4, batch_seconds=1e-3, budget=1.0) == {}
