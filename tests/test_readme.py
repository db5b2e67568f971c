"""The README's set-up commands are the ones CI runs and the ones that work."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    return re.findall(r"```sh\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert len(commands) == 2, commands
    install_and_run, install_and_test = commands
    assert "pip install ." in install_and_run and "python -m fusedoptim" in install_and_run
    assert 'pip install ".[test]"' in install_and_test and "pytest" in install_and_test
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install_and_test in ci, ".ci/run must run the README's test command verbatim"


def test_main_job_runs():
    """The README's main job (`python -m fusedoptim`), shortened."""
    done = subprocess.run([sys.executable, "-m", "fusedoptim", "demo", "--steps", "2"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    table = done.stdout.split("speed-up  bitwise\n", 1)[1]
    assert "Adam " in table and "NO" not in table


def test_importing_fusedoptim_does_not_import_torch():
    code = "import sys, fusedoptim; fusedoptim.show_config(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)


@pytest.mark.skipif(not (ROOT / "README.md").exists(), reason="runs from a source checkout")
def test_readme_usage_example_runs():
    block = re.search(r"```python\n(.+?)\n```", (ROOT / "README.md").read_text(), re.S).group(1)
    import numpy as np

    setup = {f"{n}": np.ones(3, np.float32) for n in ("w1", "b1", "w2", "b2", "g1", "gb1", "g2", "gb2")}
    exec(block, setup)
    assert abs(setup["param"]).mean() < 0.05  # from ~0.8: 100 Adam steps of ~lr on sum(p^2)
