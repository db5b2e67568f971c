"""Adam's step in low-precision storage against its same-traffic roof (issue 11, item 6), one run.

    python benchmarks/low_precision_speed.py [--size 16M] [--threads 1] [--repeat 15]

Every case steps one tensor of ``size`` elements with fusedoptim.adam_ (cpp backend, best ISA level)
on buffers fusedoptim allocates (staggered, as its optimizers allocate state). Its roof is the
extension's streaming kernel (one add per read) over float32 buffers moving the same bytes with
the same number of read and written streams where the widths allow: a step cannot beat moving its
bytes. Prints medians and the ratios item 6 asks for; speed is measured here, never asserted.
"""

import argparse
import statistics
import time

import ml_dtypes
import numpy as np

import fusedoptim as fo
from fusedoptim import _native
from fusedoptim._memory import aligned_full

BF16, F16, F32 = np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16), np.dtype(np.float32)

# name: (param, grad, state dtypes), the roof's (reads, writes) of float32 streams of size * scale elements
CASES = {
    "fp32 (28 B/elem)": ((F32, F32, F32), (4, 3), 1.0),
    "all-bf16 (14 B/elem)": ((BF16, BF16, BF16), (4, 3), 0.5),
    "bf16, fp32 state (22 B/elem)": ((BF16, BF16, F32), (6, 5), 0.5),
    "all-fp16 (14 B/elem)": ((F16, F16, F16), (4, 3), 0.5),
    "bf16, fp16 grads (14 B/elem, catch-all)": ((BF16, F16, BF16), (4, 3), 0.5),
    "fp32, bf16 grads (26 B/elem, catch-all)": ((F32, BF16, F32), (6, 5), 26 / 44),
}


def median_time(step, repeat):
    step()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def adam_step(n, dtypes):
    rng = np.random.default_rng(0)
    param, grad, state = dtypes
    p = aligned_full(n, param)
    p[...] = rng.standard_normal(n).astype(param)
    g = aligned_full(n, grad)
    g[...] = (rng.standard_normal(n) * 1e-3).astype(grad)
    m, v = aligned_full(n, state), aligned_full(n, state)
    return lambda: fo.adam_(p, g, m, v, step=3, lr=1e-3, backend="cpp")


def roof_step(n, reads, writes, scale):
    count = int(n * scale)
    arrays = [aligned_full(count, np.float32, 1.0) for _ in range(reads)]
    return lambda: _native.module().roof(arrays, arrays[:1] + arrays[reads - writes + 1:])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="16M")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    n = int(args.size[:-1]) << 20 if args.size[-1] in "Mm" else int(args.size)
    fo.set_num_threads(args.threads)
    print(f"Adam, {args.size} elements, {args.threads} thread(s), ISA {fo._backends._kernels.isa()}")
    times = {}
    for name, (dtypes, (reads, writes), scale) in CASES.items():
        step, roof = adam_step(n, dtypes), roof_step(n, reads, writes, scale)
        times[name] = median_time(step, args.repeat), median_time(roof, args.repeat)
        del step, roof
        t, r = times[name]
        print(f"{name:<42} {t * 1e3:8.2f} ms   roof {r * 1e3:7.2f} ms   {100 * r / t:5.1f}% of roof")
    fp32 = times["fp32 (28 B/elem)"][0]
    bf16 = times["all-bf16 (14 B/elem)"][0]
    print(f"all-bf16 vs fusedoptim's fp32 step: {fp32 / bf16:.2f}x faster")


if __name__ == "__main__":
    main()
