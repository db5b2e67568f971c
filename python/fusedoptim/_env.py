"""fusedoptim's environment variables, read and validated once, at import, in this one place.

$FUSEDOPTIM_NUM_THREADS  threads a cpp step may use: a whole number in [1, MAX_THREADS]
$FUSEDOPTIM_ISA          the cpp backend's ISA level, one the CPU supports (any case); without
                         the extension there is none to choose, and it is not looked at
$FUSEDOPTIM_BACKEND      auto, cpp, numba or numpy (any case)

An empty variable counts as unset. A bad value raises ValueError at ``import fusedoptim``,
naming the variable, the value and what is accepted; the ``fusedoptim`` command says the same in
one line and exits. The extension reads no environment: the
package hands it the values (``_config`` does), so no two places can disagree about them.
Read once because a lookup in os.environ costs about a microsecond, more than a small step.
"""

import os
import sys

from . import _native

_kernels = _native.module()  # without it there is no ISA level to choose

# Threads beyond the cores only oversubscribe them; the cap is a fixed number, not a multiple
# of this machine's CPUs, so a setting valid on one machine is valid on every other.
MAX_THREADS = 1024
BACKENDS = ("auto", "cpp", "numba", "numpy")


def _refuse(variable, value, accepted):
    return ValueError(f"${variable}={value!r} is not valid: expected {accepted}")


def _read(variable):
    value = os.environ.get(variable, "")
    return value if value.strip() else None


def cpu_count():
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _num_threads():
    raw = _read("FUSEDOPTIM_NUM_THREADS")
    if raw is None:
        return min(cpu_count(), MAX_THREADS)
    text = raw.strip()
    # isdecimal() alone would take other scripts' digits, and int() signs and underscores.
    if not (text.isascii() and text.isdecimal() and 1 <= int(text) <= MAX_THREADS):
        raise _refuse("FUSEDOPTIM_NUM_THREADS", raw, f"a whole number of threads from 1 to {MAX_THREADS}")
    return int(text)


def _isa():
    raw = _read("FUSEDOPTIM_ISA")
    if raw is None or _kernels is None:
        return None
    name = raw.strip().lower()
    supported = [level for level, ok in _kernels.isa_levels() if ok]
    if name not in supported:
        unsupported = [level for level, ok in _kernels.isa_levels() if not ok]
        also = f" ({', '.join(unsupported)} compiled, but this CPU cannot run it)" if unsupported else ""
        raise _refuse("FUSEDOPTIM_ISA", raw, f"one of {', '.join(supported)}{also}")
    return name


def _backend():
    raw = _read("FUSEDOPTIM_BACKEND")
    if raw is None:
        return "auto"
    name = raw.strip().lower()
    if name not in BACKENDS:
        raise _refuse("FUSEDOPTIM_BACKEND", raw, f"one of {', '.join(BACKENDS)}")
    return name


def _is_the_command():
    """Whether this process is the ``fusedoptim`` command: its script, or ``python -m fusedoptim``
    (while Python finds the module to run, ``sys.argv[0]`` is "-m")."""
    if os.path.splitext(os.path.basename(sys.argv[0]))[0] == "fusedoptim":
        return True
    argv = getattr(sys, "orig_argv", ["-m", "fusedoptim"])  # Python 3.9 has no orig_argv
    return sys.argv[:1] == ["-m"] and "-m" in argv and argv[argv.index("-m") + 1:][:1] == ["fusedoptim"]


try:
    NUM_THREADS = _num_threads()  # the default thread count: the variable, else the CPUs
    ISA = _isa()  # None: the best level the CPU supports
    BACKEND = _backend()
except ValueError as error:
    # The command's own code runs only once the package has imported, so it cannot catch this:
    # the package says it for it, in one line rather than a traceback.
    if _is_the_command():
        sys.exit(f"fusedoptim: {error}")
    raise
