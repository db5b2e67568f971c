"""``fusedoptim bench``: one optimizer step, timed for each of fusedoptim's layers, torch.optim and
DeepSpeed (when installed), against the memory-bandwidth roof, in one run.

Cases are steps users take: many small tensors, a GPT-2-shaped model, single tensors from a
cache-resident 4K to a memory-bound 16M elements; for each, where the caller's arrays live (the
placement), how many threads, and which storage dtype. Contenders are timed interleaved: every
round times each contender once, in a rotating order, so a burst of noise from other processes
falls on all of them and the ratios within a run stay fair. Medians, with the 10th and 90th
percentiles; nothing printed comes from anywhere but this run.

A bench "rule" is an optimizer of the registry (``_rules.OPTIMIZERS``) by its class name in any
case (``adam``, ``AdamW``); contenders come from ``contenders()``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.metadata
import importlib.util
import itertools
import json
import logging
import os
import platform
import sys
import textwrap
import time
from typing import Callable, NamedTuple

import numpy as np

from . import __version__, _backends, _native, functional, optim
from ._config import MAX_THREADS, _checked_threads, get_num_threads, set_num_threads, versions
from ._memory import HUGE_PAGE, aligned_full
from ._rules import OPTIMIZERS

# Hyperparameters a rule is benchmarked with, where its defaults are not the usual use.
HYPER = {"sgd": dict(lr=1e-3, momentum=0.9)}

NAMES = {spec.name.lower(): spec for spec in OPTIMIZERS.values()}  # what --rules takes, in any case

PLACEMENTS = ("numpy", "torch", "aligned2M", "staggered")
UNSTABLE = 1.3  # p90 / p10 above this flags a timing as unstable


class Mode(NamedTuple):
    """A --dtype: how a step stores its operands."""
    param: str  # the params' and grads' NumPy dtype name
    state: str  # the states'
    master: bool  # a float32 master copy of each param (master_weights=True)
    legend: str  # what the legend says of it

    def options(self):
        """The optimizer layers' options that store a step as this mode does."""
        return {**({"state_dtype": "float32"} if self.state != self.param else {}),
                **({"master_weights": True} if self.master else {})}


MODES = {
    "fp32": Mode("float32", "float32", False, ""),
    "bf16": Mode("bfloat16", "bfloat16", False, "params, grads and state in bfloat16"),
    "bf16/fp32": Mode("bfloat16", "float32", False, 'bfloat16 params and grads, float32 state (state_dtype="float32")'),
    "bf16+master": Mode("bfloat16", "float32", True, "bf16/fp32 plus a float32 master copy of each param "
                                                     "(master_weights=True): the step reads and writes the master, "
                                                     "and writes the param rounded from it"),
}
DTYPES = tuple(MODES)


# ---------------------------------------------------------------------------------------------
# Cases


def gpt2_like(width, blocks=16, vocab=2048, context=256):
    """Element counts of a GPT-2-shaped model's parameters (GPT-2 small is width 768, 12 blocks,
    vocab 50257): token and position embeddings, per block two LayerNorms, the attention's in and
    out projections and the MLP's two layers (each weight with its bias), and a final LayerNorm."""
    w = width
    block = [w, w, w * 3 * w, 3 * w, w * w, w, w, w, w * 4 * w, 4 * w, 4 * w * w, w]
    return [vocab * w, context * w] + block * blocks + [w, w]


def _elements(name):
    """'4K' -> 4096, '16M' -> 16 << 20, '1000' -> 1000."""
    scale = {"K": 1 << 10, "M": 1 << 20}.get(name[-1:].upper(), 1)
    digits = name[:-1] if scale > 1 else name
    if not digits.isdigit() or int(digits) < 1:
        raise ValueError(name)
    return int(digits) * scale


class Case(NamedTuple):
    name: str  # as --cases takes it
    label: str  # as tables show it
    sizes: list  # element count of each tensor
    placements: tuple  # the default placements of the caller's arrays

    @property
    def elements(self):
        return sum(self.sizes)


def case(name, quick=False, tiny=False):
    """The case of a --cases name: '192' (bias/LayerNorm-sized tensors), 'gpt2', or an element count."""
    models = PLACEMENTS[1:2] if importlib.util.find_spec("torch") else PLACEMENTS[:1]  # a model's params are torch's
    if name == "192":
        # GPT-2 small's per-block vectors: two LayerNorm weights or biases of 768 to one MLP bias of
        # 3,072, 64 times: 294,912 elements.
        sizes = [768, 768, 3072] * 64
        return Case(name, "192 tensors", [n // 64 for n in sizes] if tiny else sizes, models)
    if name == "gpt2":
        sizes = gpt2_like(8 if tiny else 112 if quick else 224)  # quick: the same tensors, a quarter of the bytes
        return Case(name, "GPT-2-like", sizes, models)
    n = _elements(name)
    # quick: the caller's default placement, and fusedoptim's own where placement matters most
    placements = PLACEMENTS if not quick else ("numpy", "staggered") if n >= HUGE_PAGE else ("numpy",)
    return Case(name, name, [max(16, n >> 10) if tiny else n], placements)


CASES = ("192", "gpt2", "4K", "1M", "16M")


# ---------------------------------------------------------------------------------------------
# The caller's arrays


def _dtype(name):
    """A NumPy dtype by name, bfloat16 included."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def placed(sizes, dtype, placement):
    """Zeroed arrays of ``sizes`` placed as ``placement`` places them, allocated one after another."""
    out = []
    for n in sizes:
        nbytes = n * dtype.itemsize
        if placement == "numpy":
            raw = np.zeros(nbytes, np.uint8)
        elif placement == "torch":
            import torch

            raw = torch.zeros(nbytes, dtype=torch.uint8).numpy()  # the array keeps the tensor alive
        elif placement == "aligned2M":
            raw = np.zeros(nbytes + HUGE_PAGE, np.uint8)
            start = -raw.ctypes.data % HUGE_PAGE
            raw = raw[start : start + nbytes]
        else:
            raw = aligned_full(nbytes, np.uint8)
        out.append(raw.view(dtype))
    return out


class Problem(NamedTuple):
    rule: str
    mode: Mode
    params: list  # arrays shared by every contender (each steps them in place)
    grads: list
    states: list  # per state the functional uses: the caller's arrays, placed like the params
    masters: list | None  # the functional's float32 master copies of the params (master weights)
    tensors: Callable[[], list]  # the params as torch tensors sharing their memory, with .grad

    @property
    def spec(self):
        return NAMES[self.rule]


def _states_used(rule):
    """Which of a rule's states its benchmarked configuration reads and writes."""
    spec = NAMES[rule]
    uses = spec.rule.first_plan(**spec.fixed, **HYPER.get(rule, {})).uses
    return [state for state, used in zip(spec.rule.states, uses) if used]


def _as_tensor(array):
    """A torch tensor sharing ``array``'s memory."""
    import torch

    if array.dtype == np.float32:
        return torch.from_numpy(array)
    return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)  # torch knows no ml_dtypes.bfloat16


def problem(rule, case, mode, placement, seed=1):
    """The caller's side of a step stored as ``mode`` (a MODES key): params, grads (and the
    functional's state and master copies), placed."""
    mode = MODES[mode]
    dtype = _dtype(mode.param)
    rng = np.random.default_rng(seed)
    params, grads = placed(case.sizes, dtype, placement), placed(case.sizes, dtype, placement)
    for p, g in zip(params, grads):
        p[...] = rng.standard_normal(p.size, np.float32).astype(dtype, copy=False)
        g[...] = (rng.standard_normal(g.size, np.float32) * np.float32(1e-3)).astype(dtype, copy=False)
    states = [placed(case.sizes, _dtype(mode.state), placement) for _ in _states_used(rule)]
    masters = None
    if mode.master:
        masters = placed(case.sizes, np.dtype(np.float32), placement)
        for master, p in zip(masters, params):
            master[...] = p
    made = []

    def tensors():
        if not made:
            for p, g in zip(params, grads):
                made.append(_as_tensor(p))
                made[-1].grad = _as_tensor(g)
        return made

    return Problem(rule, mode, params, grads, states, masters, tensors)


def operands(problem):
    """(bytes per element, read, written) of each operand a step streams: the param (not read
    when a master copy is), the grad, every state and the master."""
    mode, states = problem.mode, len(problem.states)
    param, state = _dtype(mode.param).itemsize, _dtype(mode.state).itemsize
    return [(param, not mode.master, True), (param, True, False), *[(state, True, True)] * states,
            *[(4, True, True)] * mode.master]


def traffic(problem):
    """Bytes a step moves: every operand read and written as ``operands`` says."""
    elements = sum(p.size for p in problem.params)
    return elements * sum(size * (read + written) for size, read, written in operands(problem))


# ---------------------------------------------------------------------------------------------
# Contenders


class Contender(NamedTuple):
    name: str  # a format of the optimizer's class name: {name} is "Adam", {lower} is "adam"
    layer: str  # "roof", "fusedoptim", "torch" or "deepspeed"
    # Returns a function taking one step of the problem, or None if this contender does not
    # apply (a rule it lacks, a missing package).
    prepare: Callable[[Problem], Callable[[], None] | None]


def _functional(problem):
    spec = problem.spec
    rule = spec.rule
    hyper = HYPER.get(problem.rule, {})
    kwargs = {**hyper, **dict(zip(rule.host_states, rule.host_start(hyper))), **({"step": 1} if rule.step else {})}
    kwargs.update({state.arg: arrays for state, arrays in zip(_states_used(problem.rule), problem.states)})
    if problem.masters is not None:
        kwargs["master_params"] = problem.masters
    step = getattr(functional, spec.functional)
    return lambda: step(problem.params, problem.grads, **kwargs)


def _stateful(problem):
    opt = getattr(optim, problem.spec.name)(problem.params, **HYPER.get(problem.rule, {}), **problem.mode.options())
    return lambda: opt.step(problem.grads)


def _fusedoptim_torch(flat):
    def prepare(problem):
        if importlib.util.find_spec("torch") is None:
            return None
        from . import torch as fusedoptim_torch

        tensors = problem.tensors()
        if flat:  # copies, moved into the optimizer's own buffers: the problem's stay where they were placed
            placed, tensors = tensors, [t.clone() for t in tensors]
            for copy, t in zip(tensors, placed):
                copy.grad = t.grad.clone()
        return getattr(fusedoptim_torch, problem.spec.name)(tensors, **HYPER.get(problem.rule, {}),
                                                            **problem.mode.options(), flat=flat).step

    return prepare


def _torch(flag):
    def prepare(problem):
        if importlib.util.find_spec("torch") is None or not problem.spec.torch:
            return None
        import torch

        try:
            return getattr(torch.optim, problem.spec.name)(problem.tensors(), **HYPER.get(problem.rule, {}),
                                                           **{flag: True}).step
        except (TypeError, RuntimeError, ValueError):  # this torch has no such variant of the rule
            return None

    return prepare


class _DeepSpeed:
    """DeepSpeedCPUAdam, when importable: never a dependency. Its CPU op compiles on first use."""

    status = None  # what the output says of DeepSpeed; None until a run asked for it

    def __call__(self, problem):
        if problem.spec.name not in ("Adam", "AdamW") or problem.mode.master:  # it keeps no master copy
            return None
        if self.status is None:
            self.status = "absent (not importable)"
            if importlib.util.find_spec("deepspeed") and importlib.util.find_spec("torch"):
                self.status = self._load()
        if self.status != "measured":
            return None
        hyper = problem.spec.hyper_defaults()
        return self.cls(problem.tensors(), lr=hyper["lr"], weight_decay=hyper["weight_decay"],
                        adamw_mode=problem.spec.name == "AdamW").step

    def _load(self):
        print("DeepSpeed: loading DeepSpeedCPUAdam's CPU op (compiled on its first use ever: about a minute)",
              file=sys.stderr)
        logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(sys.stderr):  # its logger prints on import and build
                import cpuinfo
                import torch
                from deepspeed.ops.adam import DeepSpeedCPUAdam

                # Each DeepSpeedCPUAdam() asks py-cpuinfo about the CPU, which runs a subprocess
                # (1.5 s here): ask once per run, the answer cannot change.
                cpuinfo.get_cpu_info = functools.lru_cache(maxsize=1)(cpuinfo.get_cpu_info)

                DeepSpeedCPUAdam([torch.zeros(16, requires_grad=True)])  # builds or loads the op
        except Exception as e:  # noqa: BLE001 -- any failure of an optional third party means "absent"
            return f"absent ({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''})"
        self.cls = DeepSpeedCPUAdam
        return "measured"


deepspeed = _DeepSpeed()


def roof_streams(problem):
    """The roof's float32 arrays, read and written (``operands``): one stream per operand, of the
    operand's bytes, or where operands differ in width, one stream per 2 bytes of an element (a
    float32 state is two streams beside a bfloat16 param), so that every stream has one size.
    fusedoptim's own staggered buffers; an operand both read and written is one array."""
    elements = sum(p.size for p in problem.params)
    unit = min(size for size, _, _ in operands(problem))
    reads, writes = [], []
    for size, read, written in operands(problem):
        for _ in range(size // unit):
            stream = aligned_full(elements * unit // 4, np.float32)
            reads += [stream] * read
            writes += [stream] * written
    return reads, writes


def _roof(problem):
    """Streams the step's bytes, one add per read (``roof_streams``)."""
    if _native.module() is None:
        return None
    reads, writes = roof_streams(problem)
    return lambda: _native.module().roof(reads, writes)


def contenders():
    """Every contender, in table order; ``prepare`` says whether it runs a problem."""
    return [
        Contender("roof", "roof", _roof),
        Contender("{lower}_", "fusedoptim", _functional),
        Contender("fo.{name}.step", "fusedoptim", _stateful),
        Contender("fusedoptim.torch.{name}", "fusedoptim", _fusedoptim_torch(flat=False)),
        Contender("fo.torch.{name}(flat)", "fusedoptim", _fusedoptim_torch(flat=True)),
        Contender("torch fused", "torch", _torch("fused")),
        Contender("torch foreach", "torch", _torch("foreach")),
        Contender("DeepSpeed CPU{name}", "deepspeed", deepspeed),
    ]


def contender_name(contender, rule):
    name = NAMES[rule].name
    return contender.name.format(name=name, lower=name.lower())


# ---------------------------------------------------------------------------------------------
# Measuring


def measure(steps, rounds, batch_seconds, budget=None):
    """Seconds per call of each step, one sample per round. A round times a batch of calls of every
    step (enough calls to take ``batch_seconds``), in an order rotating from round to round. With a
    ``budget`` (seconds), fewer rounds where ``rounds`` would take longer, but at least three."""
    batches, per_round = {}, 0.0
    for name, step in steps.items():
        start = time.perf_counter()  # this call also warms caches for the rounds
        step()
        once = max(time.perf_counter() - start, 1e-7)
        batches[name] = max(1, int(batch_seconds / once))
        per_round += batches[name] * once
    if budget is not None and steps:
        rounds = max(3, min(rounds, int(budget / per_round)))
    samples = {name: [] for name in steps}
    names = list(steps)
    for r in range(rounds if names else 0):
        for name in names[r % len(names):] + names[: r % len(names)]:
            step, calls = steps[name], batches[name]
            start = time.perf_counter()
            for _ in range(calls):
                step()
            samples[name].append((time.perf_counter() - start) / calls)
    return samples


class Result(NamedTuple):
    rule: str
    dtype: str
    case: Case
    placement: str
    threads: int
    contender: str
    layer: str
    samples: list  # seconds per step, one per round
    bytes: int  # the step's memory traffic

    @property
    def median(self):
        return float(np.median(self.samples))

    @property
    def spread(self):
        return tuple(float(x) for x in np.percentile(self.samples, [10, 90]))

    @property
    def unstable(self):
        p10, p90 = self.spread
        return p90 > UNSTABLE * p10


def run(rules, cases, dtypes=("fp32",), placements=None, threads=None, rounds=15, batch_seconds=2e-3, budget=None,
        progress=None):
    """Times every (rule, dtype, case, placement, threads) and contender. Returns a list of Result, and
    notes on the contenders of torch or DeepSpeed that failed their first step (they are left out)."""
    counts = sorted({1, threads or get_num_threads()})
    work = [(rule, dtype, c, placement) for rule in rules for dtype in dtypes for c in cases
            for placement in (placements or c.placements)]
    progress = sys.stderr.isatty() if progress is None else progress
    torch = importlib.import_module("torch") if importlib.util.find_spec("torch") else None
    saved = get_num_threads(), torch and torch.get_num_threads()
    results, notes = [], []
    try:
        for done, (rule, dtype, c, placement) in enumerate(work):
            if progress:
                print(f"\r[{done + 1}/{len(work)}] {NAMES[rule].name} {dtype} {c.label} {placement:<12}", end="",
                      file=sys.stderr, flush=True)
            prob = problem(rule, c, dtype, placement)
            with np.errstate(all="ignore"):
                steps = {}
                for contender in contenders():
                    step = contender.prepare(prob)
                    if step is None:
                        continue
                    try:
                        step()  # the first step allocates the contender's state
                    except Exception as e:  # noqa: BLE001 -- another project's limits; fusedoptim's own must pass
                        if contender.layer in ("roof", "fusedoptim"):
                            raise
                        notes.append(f"{contender_name(contender, rule)}: not measured for {dtype} "
                                     f"({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})")
                        continue
                    steps[contender] = step
                for count in counts:
                    set_num_threads(count)
                    if torch:
                        torch.set_num_threads(count)  # torch's and DeepSpeed's (OpenMP) threads
                    samples = measure(steps, rounds, batch_seconds, budget)
                    results += [Result(rule, dtype, c, placement, count, contender_name(k, rule), k.layer, s,
                                       traffic(prob)) for k, s in samples.items()]
            del steps, prob
    finally:
        if progress:
            print("\r" + " " * 79 + "\r", end="", file=sys.stderr)
        set_num_threads(saved[0])
        if torch:
            torch.set_num_threads(saved[1])
    return results, list(dict.fromkeys(notes))


# ---------------------------------------------------------------------------------------------
# Output


def format_time(seconds):
    """'61.0 µs', '1.00 ms', '13.4 ms': three significant digits in a unit that keeps 1 <= value < 1000."""
    rounded = float(f"{seconds:.3g}")  # round first, so 999.96 µs becomes 1.00 ms, not 1000 µs
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if rounded >= scale or unit == "ns":
            return f"{_three_digits(rounded / scale)} {unit}"


def format_spread(result):
    """p10-p90 in the unit of the median: '60.2-62.9 µs'."""
    unit = format_time(result.median).split()[1]
    scale = {"s": 1.0, "ms": 1e-3, "µs": 1e-6, "ns": 1e-9}[unit]
    p10, p90 = (_three_digits(x / scale) for x in result.spread)
    return f"{p10}-{p90} {unit}"


def _three_digits(value):
    """'1.23', '12.3', '123', '1234': a value of about 1 to 1000, without an exponent."""
    return f"{value:.{2 if value < 10 else 1 if value < 100 else 0}f}"


def _ratio(numerator, denominator):
    """'1.23x', '12.3x', '123x': how many times faster ``denominator`` is than ``numerator``."""
    if not (numerator and denominator):
        return "-"
    return f"{_three_digits(numerator.median / denominator.median)}x"


def _percent_of_roof(roof, result):
    return f"{100 * roof.median / result.median:.0f}%" if roof and result else "-"


def _threads(count):
    return f"{count} thread{'s' if count > 1 else ''}"


def _blocks(results):
    """Results by (rule, dtype) then by (case, placement, threads), in run order."""
    out = {}
    for r in results:
        out.setdefault((r.rule, r.dtype), {}).setdefault((r.case.name, r.placement, r.threads), []).append(r)
    return out


SUMMARY_HEADER = (f"{'':<36}{'fastest contender':<38}fusedoptim's best layer\n"
                  f"{'case':<12}{'placement':<10}{'thr':>3}{'roof':>9}  {'name':<22}{'% roof':>7}{'vs fused':>9}  "
                  f"{'name':<22}{'% roof':>7}{'vs fused':>9}{'vs DS':>8}{'vs fp32':>9}")


def summary(results):
    """One line per (case, placement, threads) of each (rule, dtype): who is fastest, how close to
    the roof, and how fusedoptim's best layer compares with torch fused and DeepSpeed."""
    lines = []
    blocks = _blocks(results)
    for (rule, dtype), cases in blocks.items():
        lines += ["", f"{NAMES[rule].name}, {dtype}: summary (medians of {_rounds(results)} interleaved rounds)",
                  SUMMARY_HEADER]
        for where, group in cases.items():
            placement, threads = where[1:]
            roof = next((r for r in group if r.layer == "roof"), None)
            fused = next((r for r in group if r.contender == "torch fused"), None)
            ds = next((r for r in group if r.layer == "deepspeed"), None)
            best = _best_fusedoptim(group)
            fp32 = _best_fusedoptim(blocks.get((rule, "fp32"), {}).get(where, [])) if dtype != "fp32" else None
            fastest = min((r for r in group if r.layer != "roof"), key=lambda r: r.median, default=None)
            shown = [r for r in (roof, fused, ds, fastest, best, fp32) if r]
            lines.append(
                f"{group[0].case.label:<12}{placement:<10}{threads:>3}"
                f"{format_time(roof.median) if roof else '-':>9}  "
                f"{fastest.contender if fastest else '-':<22}{_percent_of_roof(roof, fastest):>7}"
                f"{_ratio(fused, fastest):>9}  "
                f"{best.contender if best else '-':<22}{_percent_of_roof(roof, best):>7}{_ratio(fused, best):>9}"
                f"{_ratio(ds, best):>8}{_ratio(fp32, best):>9}{' ~' if any(r.unstable for r in shown) else ''}")
        lines += _placement_spreads([r for group in cases.values() for r in group])
    return "\n".join(lines[1:])


def _best_fusedoptim(group):
    return min((r for r in group if r.layer == "fusedoptim"), key=lambda r: r.median, default=None)


def _placement_spreads(results):
    """For each case timed in several placements and each thread count: every contender's slowest
    placement's median over its fastest's, wrapped to the summary's width."""
    lines = []
    by_case = {}
    for r in results:
        if r.layer != "roof":
            by_case.setdefault((r.case.label, r.threads), {}).setdefault(r.contender, []).append(r)
    for (label, threads), contenders in by_case.items():
        if max(len(timed) for timed in contenders.values()) < 2:
            continue
        spreads = [f"{name} {_three_digits(max(r.median for r in timed) / min(r.median for r in timed))}x"
                   for name, timed in contenders.items() if len(timed) > 1]
        lines += textwrap.wrap(f"placement spread, {label}, {_threads(threads)}: " + ", ".join(spreads), 116,
                               subsequent_indent="    ")
    return lines


def _rounds(results):
    """'7', or '3-7' where a time budget cut some cases' rounds."""
    counts = sorted({len(r.samples) for r in results})
    return f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def legend(results):
    cases = {r.case.name: r.case for r in results}
    dtypes = {r.dtype for r in results}
    described = "; ".join(f"{c.label} = {len(c.sizes)} tensor{'s' if len(c.sizes) > 1 else ''}, "
                          f"{c.elements:,} elements" for c in cases.values())
    text = [
        "Legend",
        "  roof      a streaming kernel with the step's memory traffic (it reads the param, the grad and every",
        "            state, and writes the param and every state, with one add per read and no other math),",
        "            on fusedoptim's own staggered float32 buffers: no step moves its bytes faster.",
        "  % roof    roof time / contender time (100% = at the memory roof).",
        "  vs fused  torch.optim's fused=True time / contender time: above 1.00x is faster than torch fused;",
        "  vs DS     likewise against DeepSpeed's DeepSpeedCPUAdam.",
        "  fastest   of every contender but the roof; 'fusedoptim's best layer': of the functional (adam_),",
        "            the NumPy optimizer (fo.Adam.step) and fusedoptim.torch (fo.torch.Adam(flat): with flat=True,",
        "            on copies of the params and grads moved into its own buffers, as zero_grad(set_to_none=False)",
        "            keeps grads, so placed alike everywhere).",
        f"  times     the median of {_rounds(results)} rounds; each round times every contender once, in a rotating order.",
        f"            p10-p90 is the spread; ~ marks a row with a timing whose p90/p10 exceeds {UNSTABLE}:",
        "            other processes disturbed it, so rerun before trusting a close call.",
        "  placement where the caller's arrays live (the params, grads, and the functional's state): numpy =",
        "            np.zeros one after another; torch = torch's allocator; aligned2M = each on a 2 MiB",
        "            boundary; staggered = fusedoptim's state allocator (2 MiB boundary plus a different multiple",
        "            of 256 B each). fo.Adam, fusedoptim.torch, torch and DeepSpeed allocate their own state.",
        "  placement spread  a contender's median in its slowest placement over that in its fastest.",
        *textwrap.wrap(f"  cases     {described}.", 104, subsequent_indent=" " * 12),
    ]
    for name in (name for name in MODES if name in dtypes and MODES[name].legend):
        text += textwrap.wrap(f"  {name:<9} {MODES[name].legend}.", 104, subsequent_indent=" " * 12)
    if dtypes - {"fp32"}:
        text += ["  vs fp32   fusedoptim's best fp32 time / its best time in this dtype, in the same case, placement",
                 "            and threads. torch steps bfloat16 params with bfloat16 state; DeepSpeed keeps float32",
                 "            state (and no master copy); each roof moves its own dtype's bytes."]
    return "\n".join(text)


DETAIL_HEADER = f"{'contender':<23}{'median':>10}  {'p10-p90':<19}{'GB/s':>7}{'% roof':>8}{'vs fused':>10}{'vs DS':>8}"


def detail(results):
    """Every contender of every case: one table per (rule, dtype, case, placement, threads), fastest first."""
    lines = []
    for (rule, dtype), cases in _blocks(results).items():
        for (_, placement, threads), group in cases.items():
            c = group[0].case
            roof = next((r for r in group if r.layer == "roof"), None)
            fused = next((r for r in group if r.contender == "torch fused"), None)
            ds = next((r for r in group if r.layer == "deepspeed"), None)
            lines += ["", f"{NAMES[rule].name}, {dtype}, {c.label} ({len(c.sizes)} tensor{'s' * (len(c.sizes) > 1)}, "
                          f"{c.elements:,} elements), {placement} placement, {_threads(threads)}", DETAIL_HEADER]
            for r in sorted(group, key=lambda r: r.median):
                lines.append(f"{r.contender:<23}{format_time(r.median):>10}  {format_spread(r):<19}"
                             f"{r.bytes / r.median / 1e9:>7.1f}{_percent_of_roof(roof, r):>8}{_ratio(fused, r):>10}"
                             f"{_ratio(ds, r):>8}{' ~' if r.unstable else ''}")
    return "\n".join(lines[1:])


def cpu_model():
    """The CPU's model name, with its family and model numbers (a VM may name it only 'AMD EPYC')."""
    try:
        with open("/proc/cpuinfo") as f:
            fields = dict(line.split(":", 1) for line in itertools.takewhile(str.strip, f) if ":" in line)
    except OSError:
        fields = {}
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    return f"{fields['model name']} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"


def machine(threads):
    """What the run ran on, in one line: CPU, ISA level, threads, versions."""
    found = {k: v for k, v in versions().items() if v and k != "numba"}
    if deepspeed.status == "measured":
        found["deepspeed"] = importlib.metadata.version("deepspeed")
    isa = _native.module().isa() if _native.module() else f"none ({_backends.available()[0]} backend)"
    return (f"{cpu_model()}, {os.cpu_count()} CPUs, ISA {isa}, {threads}; "
            + ", ".join(f"{k} {v}" for k, v in found.items()))


def plot(results, path, title):
    """Time per step as a multiple of the roof (log scale, lower is better) by case, as grouped bars
    with p10-p90 whiskers: one panel per (rule, dtype, threads), one above the other."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((r.rule, r.dtype, r.threads) for r in results))
    names = [n for n in dict.fromkeys(r.contender for r in results if r.layer != "roof")]
    color = {name: f"C{k % 10}" for k, name in enumerate(names)}  # one colour per contender in every panel
    categories = list(dict.fromkeys((r.case.name, r.placement) for r in results))
    labels = {(r.case.name, r.placement): f"{r.case.label}\n{r.placement}" for r in results}
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8.0, 0.85 * len(categories) + 2), 3.4 * len(panels) + 1.6),
                             squeeze=False)
    width = 0.8 / len(names)
    for ax, (rule, dtype, threads) in zip(axes[:, 0], panels):
        mine = [r for r in results if (r.rule, r.dtype, r.threads) == (rule, dtype, threads)]
        roofs = {(r.case.name, r.placement): r.median for r in mine if r.layer == "roof"}
        for k, name in enumerate(names):
            bars = [r for r in mine if r.contender == name and (r.case.name, r.placement) in roofs]
            if not bars:
                continue
            where = [(r.case.name, r.placement) for r in bars]
            x = [categories.index(c) - 0.4 + (k + 0.5) * width for c in where]
            y = [r.median / roofs[c] for r, c in zip(bars, where)]
            whiskers = [[(r.median - r.spread[0]) / roofs[c] for r, c in zip(bars, where)],
                        [(r.spread[1] - r.median) / roofs[c] for r, c in zip(bars, where)]]
            ax.bar(x, y, width, color=color[name], yerr=whiskers, ecolor="0.25", error_kw=dict(lw=0.7, capsize=1.2))
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.set_xticks(range(len(categories)), [labels[c] for c in categories], fontsize=8)
        ax.set_xlim(-0.5, len(categories) - 0.5)
        ax.set_title(f"{NAMES[rule].name}, {dtype}, {_threads(threads)}", fontsize=10)
        ax.set_ylabel("step time / roof time\n(log scale; lower is better)", fontsize=8)
        ax.grid(axis="y", which="major", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=color[n]) for n in names]
    handles.append(plt.Line2D([], [], color="black", linestyle="--"))
    columns = min(4, len(names) + 1)
    fig.legend(handles, names + ["roof = 1 (same traffic, no math)"], loc="lower center", ncol=columns, fontsize=8,
               frameon=False)
    height = fig.get_figheight()
    fig.suptitle(title, fontsize=9, y=1 - 0.1 / height, va="top")
    legend_rows = -(-(len(names) + 1) // columns)
    fig.tight_layout(rect=(0, (0.25 + 0.18 * legend_rows) / height, 1, 1))  # it leaves room for the suptitle
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_json(results, path, header):
    data = {"machine": header, "unstable_above": UNSTABLE,
            "results": [dict(rule=NAMES[r.rule].name, dtype=r.dtype, case=r.case.label, tensors=len(r.case.sizes),
                             elements=r.case.elements, placement=r.placement, threads=r.threads,
                             contender=r.contender, bytes=r.bytes, median=r.median, p10=r.spread[0], p90=r.spread[1],
                             samples=r.samples) for r in results]}
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


# ---------------------------------------------------------------------------------------------
# The command


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fusedoptim bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return command(parser.parse_args(argv))


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true",
                        help="fewer rounds, a smaller GPT-2-like model, fewer placements: well under a minute")
    parser.add_argument("--detail", action="store_true", help="also print every contender's timings, case by case")
    parser.add_argument("--plot", metavar="FILE.png", help='also draw a chart (needs matplotlib: pip install '
                                                           '"fusedoptim[plot]")')
    parser.add_argument("--json", metavar="FILE.json", help="also write every timing (each round's) as JSON")
    parser.add_argument("--rules", default="adam", help="comma-separated optimizer names, any case (default: adam)")
    parser.add_argument("--cases", default=",".join(CASES),
                        help="comma-separated: 192 (small tensors), gpt2, or element counts such as 4K, 1M, 16M "
                             f"(default: {','.join(CASES)})")
    parser.add_argument("--placements", help=f"comma-separated, of {', '.join(PLACEMENTS)} (default: all four for "
                                             "single tensors, torch for the models)")
    parser.add_argument("--dtype", default="fp32", help=f"comma-separated storage dtypes, of {', '.join(DTYPES)} "
                                                        "(default: fp32)")
    parser.add_argument("--threads", type=thread_count, help="the N of '1 and N threads' (default: fusedoptim's)")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: tiny sizes, two rounds


def thread_count(text):
    """argparse's type of --threads: what set_num_threads takes."""
    try:
        return _checked_threads(int(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads from 1 to {MAX_THREADS}, "
                                         f"got {text!r}") from e


def _choices(text, known, what):
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name.lower() not in {k.lower() for k in known}]
    if unknown or not names:
        raise SystemExit(f"unknown {what}: {', '.join(unknown) if unknown else repr(text)}; known: {', '.join(known)}")
    return [next(k for k in known if k.lower() == name.lower()) for name in names]


def bf16_support():
    """None if this installation steps bfloat16 arrays, else why not."""
    try:
        import ml_dtypes
    except ImportError:
        return "ml_dtypes is not installed"
    a = [np.zeros(8, ml_dtypes.bfloat16) for _ in range(4)]
    try:
        functional.adam_(*a, step=1)
    except (TypeError, ValueError) as e:
        return f"this fusedoptim does not step bfloat16 ({str(e).splitlines()[0][:80]})"
    return None


def command(args):
    if args.plot:  # fail now, not after the run
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit('fusedoptim bench --plot needs matplotlib: pip install "fusedoptim[plot]"') from None
    rules = [name.lower() for name in _choices(args.rules, [spec.name for spec in OPTIMIZERS.values()], "rules")]
    try:
        cases = [case(name.strip(), args.quick, args.tiny) for name in args.cases.split(",")]
    except ValueError as e:
        raise SystemExit(f"unknown case: {e}; known: 192, gpt2, or a count of elements such as 4K, 1M, 16M") from None
    placements = _choices(args.placements, PLACEMENTS, "placements") if args.placements else None
    if "torch" in (placements or ()) and importlib.util.find_spec("torch") is None:
        raise SystemExit("the torch placement needs torch")
    dtypes = _choices(args.dtype, DTYPES, "dtypes")
    low = [name for name in dtypes if MODES[name].param == "bfloat16"]
    if low and (why := bf16_support()):
        print(f"{', '.join(low)}: skipped: {why}")
        dtypes = [name for name in dtypes if name not in low]
        if not dtypes:
            return 0
    rounds = 2 if args.tiny else 7 if args.quick else 15
    batch = 1e-4 if args.tiny else 5e-4 if args.quick else 2e-3
    budget = None if args.tiny else 1.0 if args.quick else 10.0  # seconds per case and thread count
    results, notes = run(rules, cases, dtypes, placements, args.threads, rounds, batch, budget)
    counts = sorted({r.threads for r in results})
    header = f"fusedoptim {__version__} bench: {machine(' and '.join(map(str, counts[:-1])) + ' and ' * (len(counts) > 1) + _threads(counts[-1]))}"
    print(header)
    print(summary(results))
    if deepspeed.status not in (None, "measured"):
        print(f"DeepSpeed: {deepspeed.status}")
    for note in notes:
        print(note)
    print()
    print(legend(results))
    if args.detail:
        print()
        print(detail(results))
    else:
        print("\n(--detail prints every contender's timings, with p10-p90 and GB/s)")
    if args.json:
        to_json(results, args.json, header)
        print(f"timings written to {args.json}")
    if args.plot:
        plot(results, args.plot, header.replace(": ", ":\n", 1).replace("; ", "\n"))
        print(f"chart written to {args.plot}")
    return 0
