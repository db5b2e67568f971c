"""The environment variables: read and validated once, at import, in fusedoptim._env; a bad value
stops `import fusedoptim` with one line that names the variable, the value and what is accepted."""

import pytest

import fusedoptim as fo
from fusedoptim import _env
from conftest import run_python

HAVE_CPP = "cpp" in fo.available_backends()
SUPPORTED = [name for name, ok in fo.isa_levels() if ok]
UNSUPPORTED = [name for name, ok in fo.isa_levels() if not ok]

IMPORT = """
try:
    import fusedoptim as fo
except ValueError as e:
    print("ValueError:", e)
else:
    print("threads", fo.get_num_threads(), "isa", fo.isa_levels() and fo._backends._kernels.isa(),
          "backend", fo._env.BACKEND)
"""


def import_with(**env):
    """What `import fusedoptim` says in a fresh interpreter with these variables set."""
    return run_python(IMPORT, env=env).stdout.strip()


def refusal(reader, variable, value, monkeypatch):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError) as caught:
        reader()
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"${variable}={value!r} is not valid: expected "), message
    return message


@pytest.mark.parametrize("value", ["abc", "0", "-1", "2x", "99999", "1025", "+3", "3.0", "0x10", "1_0", "٣"])
def test_bad_thread_counts_are_refused(value, monkeypatch):
    assert "from 1 to 1024" in refusal(_env._num_threads, "FUSEDOPTIM_NUM_THREADS", value, monkeypatch)


@pytest.mark.parametrize("value, threads", [("1", 1), (" 3 ", 3), ("1024", 1024), ("", None), ("  ", None)])
def test_thread_counts(value, threads, monkeypatch):
    monkeypatch.setenv("FUSEDOPTIM_NUM_THREADS", value)
    assert _env._num_threads() == (threads or min(_env.cpu_count(), _env.MAX_THREADS))


@pytest.mark.parametrize("value", ["fortran", "c++", "numpy2", "auto cpp"])
def test_bad_backends_are_refused(value, monkeypatch):
    assert "auto, cpp, numba, numpy" in refusal(_env._backend, "FUSEDOPTIM_BACKEND", value, monkeypatch)


@pytest.mark.parametrize("value, name", [("NumPy", "numpy"), (" cpp ", "cpp"), ("AUTO", "auto"), ("", "auto")])
def test_backend_names_in_any_case(value, name, monkeypatch):
    monkeypatch.setenv("FUSEDOPTIM_BACKEND", value)
    assert _env._backend() == name


@pytest.mark.skipif(not HAVE_CPP, reason="needs the cpp extension")
@pytest.mark.parametrize("value", ["sse9", "avx-2", "avx2 scalar"] + UNSUPPORTED)
def test_bad_isa_levels_are_refused(value, monkeypatch):
    message = refusal(_env._isa, "FUSEDOPTIM_ISA", value, monkeypatch)
    assert ", ".join(SUPPORTED) in message
    for name in UNSUPPORTED:
        assert f"{name} compiled, but this CPU cannot run it" in message


@pytest.mark.skipif(not HAVE_CPP, reason="needs the cpp extension")
def test_isa_names_in_any_case(monkeypatch):
    for name in SUPPORTED:
        for spelled in (name, name.upper(), f" {name.title()} "):
            monkeypatch.setenv("FUSEDOPTIM_ISA", spelled)
            assert _env._isa() == name
    monkeypatch.setenv("FUSEDOPTIM_ISA", "")
    assert _env._isa() is None


@pytest.mark.skipif(not HAVE_CPP, reason="needs the cpp extension")
def test_set_isa_takes_any_case(isa):
    assert fo.set_isa(SUPPORTED[0].upper()) == isa and fo._backends._kernels.isa() == SUPPORTED[0]
    with pytest.raises(TypeError, match="ISA level"):
        fo.set_isa(2)


@pytest.mark.parametrize("variable, value", [("FUSEDOPTIM_NUM_THREADS", "2x"), ("FUSEDOPTIM_BACKEND", "fortran")]
                         + [("FUSEDOPTIM_ISA", "sse9")] * HAVE_CPP)
def test_a_bad_value_stops_the_import(variable, value):
    assert import_with(**{variable: value}).startswith(f"ValueError: ${variable}={value!r} is not valid: expected ")


@pytest.mark.skipif(not HAVE_CPP, reason="needs the cpp extension")
def test_the_values_reach_the_extension():
    level = SUPPORTED[0]
    said = import_with(FUSEDOPTIM_NUM_THREADS="5", FUSEDOPTIM_ISA=level.upper(), FUSEDOPTIM_BACKEND="NumPy")
    assert said == f"threads 5 isa {level} backend numpy"
    said = import_with(FUSEDOPTIM_NUM_THREADS="", FUSEDOPTIM_ISA="", FUSEDOPTIM_BACKEND="")
    assert said == f"threads {min(_env.cpu_count(), 1024)} isa {SUPPORTED[-1]} backend auto"
