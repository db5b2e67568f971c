"""The contract's floating-point environment (DESIGN.md, point 7) for the numba and numpy backends.

The cpp backend sets it natively on every thread of a step. numba's and NumPy's code runs on
the calling thread, in whatever environment the caller set: after
``torch.set_flush_denormal(True)`` (flush-to-zero and denormals-are-zero) they would flush the
subnormals that the contract keeps, and disagree with cpp. ``contract()`` runs a block in the
C library's default environment (round to nearest, no FTZ/DAZ, every exception masked) and
gives the caller's back afterwards, flags included.

It calls fegetenv/fesetenv(FE_DFL_ENV) through ctypes, about a microsecond a block. That needs
glibc, where FE_DFL_ENV is the pointer (fenv_t *) -1 on every architecture; on other C
libraries ``contract()`` does nothing, and those backends run in the caller's environment.
"""

import contextlib
import ctypes
import os

# At least sizeof(fenv_t) on every glibc architecture (32 bytes on x86-64, 8 on aarch64).
_FENV_BYTES = 64


def _glibc_fenv():
    """(fegetenv, fesetenv, FE_DFL_ENV) from glibc's libm, or None on another C library."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):  # only glibc answers
            return None
        libm = ctypes.CDLL("libm.so.6")
    except (AttributeError, ValueError, OSError):
        return None
    get, set_ = libm.fegetenv, libm.fesetenv
    get.argtypes = set_.argtypes = [ctypes.c_void_p]
    get.restype = set_.restype = ctypes.c_int
    return get, set_, ctypes.c_void_p(-1 % (1 << (8 * ctypes.sizeof(ctypes.c_void_p))))


_GLIBC = _glibc_fenv()


class _Contract:
    """One use: saves this thread's environment on entry, sets the default, restores on exit."""

    __slots__ = ("_saved",)

    def __enter__(self):
        fegetenv, fesetenv, default = _GLIBC
        self._saved = ctypes.create_string_buffer(_FENV_BYTES)
        fegetenv(self._saved)
        fesetenv(default)

    def __exit__(self, *exc_info):
        _GLIBC[1](self._saved)


def contract():
    """A context manager: the block runs under the contract's environment on this thread."""
    return _Contract() if _GLIBC else contextlib.nullcontext()
