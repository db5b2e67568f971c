"""The `fusedoptim` command: its version, config, and one clear line for every bad input."""

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import fusedoptim as fo
from fusedoptim.__main__ import main

HAVE_CPP = "cpp" in fo.available_backends()
# The console script pip installs next to the interpreter, when this environment has one.
SCRIPT = Path(sys.executable).with_name("fusedoptim")
COMMANDS = [[sys.executable, "-m", "fusedoptim"]] + [[str(SCRIPT)]] * SCRIPT.exists()


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"fusedoptim {fo.__version__}\n"


def test_config_names_versions_compiler_and_what_the_isa_level_applies_to():
    out = subprocess.run(COMMANDS[0] + ["config"], capture_output=True, text=True, timeout=120, check=True).stdout
    assert f"fusedoptim version : {fo.__version__}\n" in out
    for name in ("numpy", "numba", "torch"):
        assert f"{name + ' version':<19}: {metadata.version(name)}\n" in out
    if HAVE_CPP:
        assert f"cpp extension      : built by {fo._backends._kernels.COMPILER}\n" in out
        assert fo._backends._kernels.COMPILER.split()[0] in ("GNU", "Clang", "AppleClang", "IntelLLVM")
        assert f"ISA level selected : {fo._backends._kernels.isa()} (applies to the cpp backend only)\n" in out


@pytest.mark.parametrize("command", COMMANDS, ids=["python -m fusedoptim", "script"][:len(COMMANDS)])
@pytest.mark.parametrize("variable, value", [("FUSEDOPTIM_BACKEND", "fortran"), ("FUSEDOPTIM_NUM_THREADS", "abc"),
                                             ("FUSEDOPTIM_NUM_THREADS", "0")] + [("FUSEDOPTIM_ISA", "sse9")] * HAVE_CPP)
def test_a_bad_variable_is_one_line_not_a_traceback(command, variable, value):
    done = subprocess.run(command + ["config"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, variable: value})
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(f"fusedoptim: ${variable}={value!r} is not valid: expected ")
    assert done.stderr.count("\n") == 1, done.stderr


@pytest.mark.parametrize("argv, message", [
    (["demo", "--steps", "0"], "argument --steps: expected a whole number >= 1, got '0'"),
    (["demo", "--steps", "x"], "argument --steps: expected a whole number >= 1, got 'x'"),
    (["bench", "--threads", "0"], "argument --threads: expected a whole number of threads from 1 to 1024, got '0'"),
    (["bench", "--threads", "1025"], "argument --threads: expected a whole number of threads from 1 to 1024"),
])
def test_bad_arguments_are_refused_before_anything_runs(argv, message, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    assert message in capsys.readouterr().err
