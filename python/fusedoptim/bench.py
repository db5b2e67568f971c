"""``fusedoptim bench``: one optimizer step, timed for every backend, ISA level and thread count,
against torch.optim (when torch is installed) and the memory-bandwidth roof.

The roof is a kernel with a rule's memory traffic (it reads the param, the grad and every state,
writes the param and every state) and one add per read: a step cannot be faster than moving its
bytes, so "% of roof" is how close a step comes to that. Every fusedoptim and torch contender
times the optimizer's ``step()``, Python overhead included, as a user calls it. Medians of
many repeats; on a shared machine, rerun before trusting a close call.

A bench "rule" is an optimizer of the registry (``_rules.OPTIMIZERS``) by its class name in lower
case (``adam``, ``adamw``); by default, one optimizer per rule. Contenders come from
``contenders()``: an optimizer or contender added there appears here with no other change.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from typing import Callable, NamedTuple

import numpy as np

from . import _backends, _native, optim
from ._config import MAX_THREADS, _checked_threads, get_num_threads, isa_levels, set_isa, set_num_threads
from ._memory import aligned_full
from ._rules import OPTIMIZERS

# Hyperparameters a rule is benchmarked with, where its defaults are not the usual use.
HYPER = {"sgd": dict(lr=1e-3, momentum=0.9)}
LABEL = {"sgd": "SGD-momentum"}

SIZES = (4096, 65536, 1 << 20, 16 << 20, 64 << 20, "192 tensors")
QUICK_SIZES = (4096, 1 << 20, "192 tensors")
DEEPSPEED = ("DeepSpeed CPUAdam (not installable here; the issue's figures, same kind of machine): "
             "72% of roof at 16M elements; 4,096 elements 24 us; 192 tensors 0.72 ms.")


NAMES = {spec.name.lower(): spec for spec in OPTIMIZERS.values()}  # what --rules takes, in any case
RULES = [name for name, spec in NAMES.items() if not spec.fixed]  # the default: one optimizer per rule


def optimizer_class(rule):
    """fusedoptim's stateful optimizer of a bench name (None if there is none)."""
    spec = NAMES.get(rule)
    return getattr(optim, spec.name) if spec else None


def tensor_sizes(size):
    """Element counts of a case's tensors: one tensor, or a model of 192 small ones (295K elements)."""
    if size == "192 tensors":
        return [int(n) for n in np.random.default_rng(0).integers(256, 2817, 192)]
    return [int(size)]


def label(size):
    if isinstance(size, str):
        return size
    for unit, scale in (("M", 1 << 20), ("K", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


class Problem(NamedTuple):
    rule: str
    params: list  # float32 arrays, shared by every contender (each steps them in place)
    grads: list
    threads: int


class Contender(NamedTuple):
    name: str
    # Returns a function taking one step of the problem, or None if this contender does not
    # apply (missing backend or rule, or a thread count it cannot use).
    prepare: Callable[[Problem], Callable[[], None] | None]
    setup: Callable[[Problem], None] = lambda problem: None  # runs right before timing


def _fusedoptim(backend, isa=None):
    def prepare(problem):
        cls = optimizer_class(problem.rule)
        if cls is None or backend not in _backends.available() or (backend != "cpp" and problem.threads > 1):
            return None
        opt = cls(problem.params, **HYPER.get(problem.rule, {}), backend=backend)
        return lambda: opt.step(problem.grads)

    def setup(problem):
        if backend == "cpp":
            set_isa(isa)
            set_num_threads(problem.threads)

    return Contender(f"fusedoptim {backend}/{isa}" if isa else f"fusedoptim {backend}", prepare, setup)


def _tensors(problem):
    """The problem's arrays as torch tensors sharing their memory, each with its ``.grad``."""
    import torch

    params = [torch.from_numpy(p) for p in problem.params]
    for p, g in zip(params, problem.grads):
        p.grad = torch.from_numpy(g)
    return params


def _best_isa():
    return [name for name, ok in isa_levels() if ok][-1]


def _torch(kind):
    def prepare(problem):
        import torch

        cls = getattr(torch.optim, optimizer_class(problem.rule).__name__, None)
        if cls is None:
            return None
        flag = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}[kind]
        try:
            opt = cls(_tensors(problem), **HYPER.get(problem.rule, {}), **flag)
        except (TypeError, RuntimeError, ValueError):  # this torch has no such variant of the rule
            return None
        return opt.step

    def setup(problem):
        import torch

        torch.set_num_threads(problem.threads)

    return Contender(f"torch {kind}", prepare, setup)


def _fusedoptim_torch():
    """fusedoptim.torch's drop-in optimizer on torch tensors: the kernel plus the torch layer's cost."""

    def prepare(problem):
        if "cpp" not in _backends.available():
            return None
        from . import torch as fusedoptim_torch

        opt = getattr(fusedoptim_torch, optimizer_class(problem.rule).__name__)(_tensors(problem),
                                                                                **HYPER.get(problem.rule, {}))
        return opt.step

    def setup(problem):
        set_isa(_best_isa())
        set_num_threads(problem.threads)

    return Contender("fusedoptim.torch", prepare, setup)


def _roof():
    def prepare(problem):
        if _native.module() is None:
            return None
        states = _states_used(problem.rule)
        arrays = [aligned_full(sum(p.size for p in problem.params), np.float32) for _ in range(2 + states)]
        reads, writes = arrays, arrays[:1] + arrays[2:]
        return lambda: _native.module().roof(reads, writes)

    def setup(problem):
        set_isa(_best_isa())
        set_num_threads(problem.threads)

    return Contender("roof (same traffic)", prepare, setup)


def contenders():
    """Every contender this installation can run, in table order."""
    out = [_fusedoptim("cpp", name) for name, ok in reversed(isa_levels()) if ok]
    out += [_fusedoptim("numba"), _fusedoptim("numpy")]
    if importlib.util.find_spec("torch") is not None:
        out += [_fusedoptim_torch(), _torch("for-loop"), _torch("foreach"), _torch("fused")]
    return out + [_roof()]


def measure(step, min_time, repeat):
    """Median seconds per call: batches of calls long enough to time, at least ``repeat`` of them."""
    step()  # first step: allocates state, compiles, warms caches
    start = time.perf_counter()
    step()
    once = max(time.perf_counter() - start, 1e-7)
    batch = max(1, int(2e-4 / once))
    samples = []
    deadline = time.perf_counter() + min_time
    while len(samples) < repeat or (time.perf_counter() < deadline and len(samples) < 1000):
        start = time.perf_counter()
        for _ in range(batch):
            step()
        samples.append((time.perf_counter() - start) / batch)
    return statistics.median(samples)


class Row(NamedTuple):
    rule: str
    size: object
    threads: int
    contender: str
    seconds: float
    elements: int
    bytes: int


def run(rules=None, sizes=SIZES, threads=None, min_time=0.3, repeat=7, progress=None):
    """Times every (rule, size, threads, contender); returns a list of Row."""
    rules = [r for r in (rules or RULES) if optimizer_class(r) is not None]
    counts = sorted({1, threads or get_num_threads()})
    field = contenders()
    total = len(rules) * len(sizes) * len(counts) * len(field)
    rows, done = [], 0
    progress = sys.stderr.isatty() if progress is None else progress
    saved = (_native.module().isa(), get_num_threads()) if _native.module() else None
    try:
        for size in sizes:
            sizes_ = tensor_sizes(size)
            rng = np.random.default_rng(1)
            params = [aligned_full(n, np.float32) for n in sizes_]
            grads = [aligned_full(n, np.float32) for n in sizes_]
            for p, g in zip(params, grads):
                p[...] = rng.standard_normal(p.size, np.float32)
                g[...] = rng.standard_normal(g.size, np.float32) * np.float32(1e-3)
            for rule in rules:
                traffic = None
                for count in counts:
                    problem = Problem(rule, params, grads, count)
                    for contender in field:
                        done += 1
                        if progress:
                            _progress(done, total, f"{LABEL.get(rule, rule)} {label(size)} {count}t {contender.name}")
                        step = contender.prepare(problem)
                        if step is None:
                            continue
                        contender.setup(problem)
                        with np.errstate(all="ignore"):
                            seconds = measure(step, min_time, repeat)
                        if traffic is None:
                            traffic = _traffic(rule) * 4 * sum(sizes_)
                        rows.append(Row(rule, size, count, contender.name, seconds, sum(sizes_), traffic))
                        del step
    finally:
        if progress:
            print("\r" + " " * 90 + "\r", end="", file=sys.stderr)
        if saved:
            set_isa(saved[0])
            set_num_threads(saved[1])
    return rows


def _states_used(rule):
    """How many state buffers the benchmarked configuration of a rule reads and writes."""
    spec = NAMES[rule]
    return sum(spec.rule.first_plan(**spec.fixed, **HYPER.get(rule, {})).uses)


def _traffic(rule):
    """Arrays read plus arrays written per element."""
    states = _states_used(rule)
    return (2 + states) + (1 + states)


def _progress(done, total, what, width=30):
    filled = width * done // total
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {what:<48.48}", end="", file=sys.stderr,
          flush=True)


def table(rows):
    """The results as text: one block per (rule, size, threads), contenders fastest first."""
    header = f"{'contender':<24} {'median':>10} {'ns/elem':>8} {'GB/s':>7} {'% roof':>7} {'vs torch fused':>14}"
    lines = []
    cases = {}
    for r in rows:
        cases.setdefault((r.rule, r.size, r.threads), []).append(r)
    for (rule, size, threads), group in cases.items():
        by_name = {r.contender: r for r in group}
        roof = by_name.get("roof (same traffic)")
        fused = by_name.get("torch fused")
        elements = group[0].elements
        lines += ["", f"{LABEL.get(rule, rule)}, {label(size)} ({elements:,} elements), "
                      f"{threads} thread{'s' if threads > 1 else ''}", header]
        for r in sorted(group, key=lambda r: r.seconds):
            lines.append(
                f"{r.contender:<24} {_time(r.seconds):>10} {r.seconds / elements * 1e9:>8.3f} "
                f"{r.bytes / r.seconds / 1e9:>7.1f} "
                f"{(f'{100 * roof.seconds / r.seconds:.0f}%' if roof else '-'):>7} "
                f"{(f'{fused.seconds / r.seconds:.2f}x' if fused else '-'):>14}")
    return "\n".join(lines[1:])


def _time(seconds):
    for unit, scale in (("s", 1), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def plot(rows, path):
    """GB/s of each contender against size: a row of panels per rule, a column per thread count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rules = list(dict.fromkeys(r.rule for r in rows))
    counts = sorted({r.threads for r in rows})
    names = [n for n in dict.fromkeys(r.contender for r in rows) if not n.startswith("roof")]
    color = {name: f"C{k % 10}" for k, name in enumerate(names)}  # one colour per contender in every panel
    fig, axes = plt.subplots(len(rules), len(counts), figsize=(6 * len(counts), 4 * len(rules)), squeeze=False)
    for ax, (rule, threads) in zip(axes.flat, [(rule, t) for rule in rules for t in counts]):
        mine = [r for r in rows if (r.rule, r.threads) == (rule, threads)]
        sizes = list(dict.fromkeys(r.size for r in mine))
        for name in dict.fromkeys(r.contender for r in mine):
            points = [(sizes.index(r.size), r.bytes / r.seconds / 1e9) for r in mine if r.contender == name]
            style = dict(linestyle="--", color="black") if name.startswith("roof") else dict(marker="o", color=color[name])
            ax.plot(*zip(*points), label=name, **style)
        ax.set_xticks(range(len(sizes)), [label(s) for s in sizes], rotation=30)
        ax.set_yscale("log")
        ax.set_title(f"{LABEL.get(rule, rule)}, {threads} thread{'s' if threads > 1 else ''}")
        ax.set_ylabel("GB/s of optimizer traffic")
    axes[0][0].legend(fontsize=7, loc="lower right")  # one thread: every contender
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fusedoptim bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return command(parser.parse_args(argv))


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats: under a minute")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw a chart (needs matplotlib)")
    parser.add_argument("--rules", help="comma-separated optimizer names, any case (default: one per rule)")
    parser.add_argument("--threads", type=thread_count, help="the N of '1 and N threads' (default: fusedoptim's)")
    parser.add_argument("--sizes", help=argparse.SUPPRESS)  # e.g. "4096,192 tensors": for tests
    parser.add_argument("--repeat", type=int, help=argparse.SUPPRESS)


def thread_count(text):
    """argparse's type of --threads: what set_num_threads takes."""
    try:
        return _checked_threads(int(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads from 1 to {MAX_THREADS}, "
                                         f"got {text!r}") from e


def command(args):
    sizes = SIZES if not args.quick else QUICK_SIZES
    if args.sizes:
        sizes = [s if not s.strip().isdigit() else int(s) for s in args.sizes.split(",")]
    rules = [name.strip().lower() for name in args.rules.split(",")] if args.rules else None
    unknown = [name for name in rules or () if name not in NAMES]
    if unknown:
        known = ", ".join(spec.name for spec in OPTIMIZERS.values())
        raise SystemExit(f"unknown rules: {', '.join(unknown)}; known (any case): {known}")
    repeat = args.repeat or (3 if args.quick else 7)
    min_time = 0.0 if args.repeat else (0.1 if args.quick else 0.3)
    rows = run(rules, sizes, args.threads, min_time=min_time, repeat=repeat)
    print(table(rows))
    if importlib.util.find_spec("torch") is not None:
        print("\n" + DEEPSPEED)
    if args.plot:
        plot(rows, args.plot)
        print(f"\nchart written to {args.plot}")
    return 0
