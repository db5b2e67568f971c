"""What this installation can run, and the ISA level and threads in use."""

from __future__ import annotations

import numbers
from typing import TextIO
from importlib import metadata

from . import _backends, _env, _native


def isa_levels() -> list[tuple[str, bool]]:
    """[(name, supported_by_this_cpu)] for every compiled ISA level, lowest first ([] without the extension)."""
    return list(_native.module().isa_levels()) if _native.module() else []


def set_isa(name: str) -> str:
    """Selects the ISA level the cpp backend uses ("scalar", "avx2", "avx512", "avx512bf16"); returns the
    previous one.

    The default is the best level the CPU supports, or $FUSEDOPTIM_ISA. Names are
    case-insensitive. Every level gives bitwise-identical results; this exists to check that
    and to benchmark each level.
    """
    if _native.module() is None:
        raise RuntimeError(f"the cpp backend is not available: {_native.error}")
    if not isinstance(name, str):
        raise TypeError(f"Invalid ISA level: expected a str, got {type(name).__name__}")
    previous = _native.module().isa()
    _native.module().set_isa(name.lower())
    return previous


def set_num_threads(threads: int) -> int:
    """Sets how many threads a cpp step may use (the caller's included); returns the previous number.

    ``threads`` is an int from 1 to 1024 (``MAX_THREADS``). The default is
    $FUSEDOPTIM_NUM_THREADS, else the CPUs this process may run on. Steps too small to gain
    from threads run on one whatever the setting, and every thread count gives
    bitwise-identical results. Lowering the setting ends the pool's surplus threads. The numba
    and numpy backends always use one thread.
    """
    if _native.module() is None:
        raise RuntimeError(f"the cpp backend is not available: {_native.error}")
    previous = _native.module().num_threads()
    _native.module().set_num_threads(_checked_threads(threads))
    return previous


MAX_THREADS = _env.MAX_THREADS


def _checked_threads(threads):
    # numbers.Integral: Python's and NumPy's ints, not bools (NumPy's bool is no Integral).
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral):
        raise TypeError(f"Invalid num_threads: expected an int, got {type(threads).__name__}")
    count = int(threads)
    if not 1 <= count <= MAX_THREADS:
        raise ValueError(f"Invalid num_threads: {count} (expected 1 to {MAX_THREADS})")
    return count


def get_num_threads() -> int:
    """How many threads a cpp step may use (1 without the extension)."""
    return _native.module().num_threads() if _native.module() else 1


def versions() -> dict[str, str | None]:
    """{name: version} of fusedoptim and the packages it runs with (None: not installed), read from
    their metadata: reporting torch's version must not import it."""
    from . import __version__

    found = {"fusedoptim": __version__}
    for name in ("numpy", "numba", "torch"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def show_config(file: TextIO | None = None) -> None:
    """Prints the versions, the extension's compiler, the backends available and selected, and the
    cpp backend's ISA levels (compiled, supported, selected) and threads."""
    kernels = _native.module()
    lines = [f"{name + ' version':<19}: {version or 'not installed'}" for name, version in versions().items()]
    lines += [
        f"backends available : {', '.join(_backends.available())}",
        f"backend selected   : {_backends.resolve(None)}",
    ]
    if kernels is None:
        lines.append(f"cpp extension      : not importable ({_native.error})")
    else:
        levels = ", ".join(f"{name}{'' if ok else ' (unsupported by this CPU)'}" for name, ok in kernels.isa_levels())
        lines += [f"cpp extension      : built by {kernels.COMPILER}",
                  f"ISA levels compiled: {levels}",
                  f"ISA level selected : {kernels.isa()} (applies to the cpp backend only)",
                  f"threads            : {kernels.num_threads()} (the cpp backend's; numba and numpy use one)"]
    print("\n".join(lines), file=file)


# The environment's choices, validated by _env, handed to the extension once.
if _native.module() is not None:
    _native.module().set_num_threads(_env.NUM_THREADS)
    if _env.ISA is not None:
        _native.module().set_isa(_env.ISA)
