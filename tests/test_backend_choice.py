"""Backend selection: auto falls back cpp -> numba -> numpy with one warning; FUSEDOPTIM_ISA forces a level."""

import os
import subprocess
import sys

import pytest

import fusedoptim as fo
from conftest import run_python

STEP_TWICE = """
import warnings, numpy as np, fusedoptim as fo
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    p, g = np.ones(5, np.float32), np.ones(5, np.float32)
    fo.sgd_(p, g, lr=0.5)
    fo.sgd_(p, g, lr=0.5)
assert p.tolist() == [0.0] * 5
print("backend:", fo._backends.resolve(None))
print("warnings:", len(caught))
for w in caught:
    print("message:", w.message)
"""


def test_auto_falls_back_to_numba_with_one_warning():
    out = run_python(STEP_TWICE, blocked=["fusedoptim._kernels"]).stdout
    assert "backend: numba" in out
    assert "warnings: 1" in out and "C++ extension could not be imported" in out


def test_auto_falls_back_to_numpy_without_numba():
    out = run_python(STEP_TWICE, blocked=["fusedoptim._kernels", "numba"]).stdout
    assert "backend: numpy" in out and "warnings: 1" in out


def test_explicit_unavailable_backend_raises():
    code = """
import numpy as np, fusedoptim as fo
try:
    fo.sgd_(np.ones(2), np.ones(2), backend="cpp")
except RuntimeError as e:
    print("error:", e)
"""
    assert "error: backend 'cpp' is not available" in run_python(code, blocked=["fusedoptim._kernels"]).stdout


@pytest.mark.skipif(not fo.isa_levels(), reason="needs the C++ extension")
@pytest.mark.parametrize("level", [name for name, ok in fo.isa_levels() if ok])
def test_env_forces_isa_level(level):
    out = run_python("import fusedoptim as fo; fo.show_config()", env={"FUSEDOPTIM_ISA": level}).stdout
    assert f"ISA level selected : {level}" in out


@pytest.mark.skipif(not fo.isa_levels(), reason="needs the C++ extension")
def test_unknown_or_unsupported_isa_is_refused(isa):
    with pytest.raises(ValueError, match="unknown ISA level 'sse9'"):
        fo.set_isa("sse9")
    unsupported = [name for name, ok in fo.isa_levels() if not ok]
    for name in unsupported:
        with pytest.raises(ValueError, match="does not support"):
            fo.set_isa(name)
    assert fo.set_isa("scalar") == isa and fo._backends._kernels.isa() == "scalar"


def test_default_isa_is_the_best_supported():
    if not fo.isa_levels():
        pytest.skip("needs the C++ extension")
    best = [name for name, ok in fo.isa_levels() if ok][-1]
    out = run_python("import fusedoptim as fo; fo.show_config()", env={"FUSEDOPTIM_ISA": ""}).stdout
    assert f"ISA level selected : {best}" in out


def test_env_selects_the_backend():
    """$FUSEDOPTIM_BACKEND is read once, at import (an unknown one is refused there: test_config.py)."""
    code = """
import fusedoptim as fo
print("backend:", fo._backends.resolve(None))
try:
    fo._backends.resolve("fortran")
except ValueError as e:
    print("error:", e)
"""
    out = run_python(code, env={"FUSEDOPTIM_BACKEND": "numpy"}).stdout
    assert "backend: numpy" in out and "error: Invalid backend: 'fortran'" in out
