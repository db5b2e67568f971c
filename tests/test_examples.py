"""The examples run (shortened), where their extras (pip install ".[examples]") are installed."""

import importlib.util
import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.skipif(not EXAMPLES.exists(), reason="runs from a source checkout")


def test_charlm_trains_times_and_plots(tmp_path, capsys, monkeypatch):
    for extra in ("torch", "tqdm", "matplotlib"):
        pytest.importorskip(extra)
    plot = tmp_path / "charlm.png"
    monkeypatch.setattr(sys, "argv", ["charlm.py", "--steps", "12", "--plot", str(plot)])
    runpy.run_path(str(EXAMPLES / "charlm.py"), run_name="__main__")
    out = capsys.readouterr().out
    table = out.split("validation\n", 1)[1]
    for label in ("torch.optim.AdamW ", "torch.optim.AdamW fused ", "fusedoptim.torch.AdamW "):
        assert label in table
    assert plot.stat().st_size > 10_000


def test_charlm_refuses_too_few_steps(monkeypatch, capsys):
    if importlib.util.find_spec("tqdm") is None or importlib.util.find_spec("torch") is None:
        pytest.skip("needs the examples extra")
    monkeypatch.setattr(sys, "argv", ["charlm.py", "--steps", "10"])
    with pytest.raises(SystemExit):
        runpy.run_path(str(EXAMPLES / "charlm.py"), run_name="__main__")
    assert "--steps must be more than the 10 warm-up steps" in capsys.readouterr().err
