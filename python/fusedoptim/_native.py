"""The one accessor of the C++ extension: its import, and the check that it was built from the
same rules as this package (scalar and flag counts, state slots, the reduction's block and lanes).
"""

from . import _storage, reference
from ._rules import RULES

try:
    from . import _kernels
except ImportError as e:  # a source checkout without a build, or a platform without a wheel
    _kernels, error = None, e
else:
    error = None


def module():
    """The extension module, or None when it could not be imported (``error`` says why)."""
    return _kernels


def _mismatches(kernels):
    found = []
    names = [r["name"] for r in kernels.RULES]
    if names != list(RULES):
        found.append(f"rules {names} != {list(RULES)}")
    for native, rule in zip(kernels.RULES, RULES.values()):
        plan = rule.first_plan()
        mine = {"num_planned": len(plan.scalars), "num_flags": len(plan.flags), "num_states": len(rule.states),
                "num_sums": len(rule.sums)}
        theirs = {k: native[k] for k in mine}
        if mine != theirs:
            found.append(f"{rule.name}: {theirs} != {mine}")
    if (kernels.REDUCTION_BLOCK, kernels.REDUCTION_LANES) != (reference.BLOCK, reference.LANES):
        found.append(f"reduction block and lanes {(kernels.REDUCTION_BLOCK, kernels.REDUCTION_LANES)} != "
                     f"{(reference.BLOCK, reference.LANES)}")
    return found


if _kernels is not None:
    _found = _mismatches(_kernels)
    if _found:
        raise ImportError("fusedoptim's C++ extension was built from other rules than this package's "
                          f"(rebuild it with `pip install .`): {'; '.join(_found)}")
    _kernels._register_bfloat16(_storage.bfloat16)  # a user-defined dtype: NumPy numbers it at run time
