"""Every code block of the README runs as written: each Python block on its own, in a fresh
interpreter (so none leans on another's names); the set-up commands are the ones CI runs."""

import argparse
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
pytestmark = pytest.mark.skipif(not README.exists(), reason="runs from a source checkout")


def blocks(language):
    return [code for lang, code in re.findall(r"```(\w*)\n(.*?)\n```", README.read_text(), re.S) if lang == language]


def test_every_block_is_of_a_kind_these_tests_run():
    languages = re.findall(r"```(\w*)\n.*?\n```", README.read_text(), re.S)
    assert set(languages) <= {"sh", "python", "text"}, languages


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = blocks("sh")
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


@pytest.mark.parametrize("code", blocks("python"), ids=lambda code: code.splitlines()[-1][:40])
def test_python_block_runs(code, tmp_path):
    """A block that starts a process group is a script for torchrun, and runs as one, on 2 processes."""
    if "import torch" in code and importlib.util.find_spec("torch") is None:
        pytest.skip("needs torch")
    script = tmp_path / "block.py"
    script.write_text(code)
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"] * ("init_process_group" in code)
    done = subprocess.run([sys.executable, *launch, str(script)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_bench_synopsis_names_the_bench_options():
    from fusedoptim.bench import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    (synopsis,) = [b for b in blocks("text") if b.startswith("fusedoptim bench")]
    assert set(re.findall(r"--[\w-]+", synopsis)) <= set(parser._option_string_actions)
