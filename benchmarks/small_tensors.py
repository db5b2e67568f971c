"""Per-tensor cost inside the native step: fp32 Adam over 192 separate small arrays ([768, 768, 3072] * 64)
against the same elements as one flat array, as 192 views into flat arrays, and the roof; and one 1M-element
tensor (cache-resident on a big L3), for which DeepSpeed's CPUAdam is the mark.
Usage: python small_tensors.py THREADS [DIR_WITH__kernels.so]  (the latter to time another build)."""
import sys
import time

import numpy as np

if len(sys.argv) > 2:
    sys.path.insert(0, sys.argv[2])
    import _kernels as K
else:
    import fusedoptim._kernels as K

sizes = [768, 768, 3072] * 64
rng = np.random.default_rng(0)
P = [rng.standard_normal(n).astype(np.float32) for n in sizes]
G = [rng.standard_normal(n).astype(np.float32) for n in sizes]
M = [np.zeros(n, np.float32) for n in sizes]
V = [np.zeros(n, np.float32) for n in sizes]
K.set_num_threads(int(sys.argv[1]))
na = K.RULES[3]["num_planned"]
sc = tuple([0.9, 0.999, 1e-3, 1e-8, 0.0] + [0.5] * (na - 5))
flat = [np.zeros(sum(sizes), np.float32) for _ in range(4)]
off = np.cumsum([0] + sizes)
big = [rng.standard_normal(1 << 20).astype(np.float32) for _ in range(4)]
Pv, Gv, Mv, Vv = ([f[a:b] for a, b in zip(off[:-1], off[1:])] for f in flat)
cases = {
    "roof": lambda: K.roof(flat, flat[:1] + flat[2:]),
    "192 arrays": lambda: K.adam(P, G, (M, V, None), 3, sc, 0),
    "checks only": lambda: K.adam(P, G, (M, V, None), 3, sc, 0, check_only=True),
    "flat": lambda: K.adam([flat[0]], [flat[1]], ([flat[2]], [flat[3]], None), 3, sc, 0),
    "192 views": lambda: K.adam(Pv, Gv, (Mv, Vv, None), 3, sc, 0),
    "1M": lambda: K.adam([big[0]], [big[1]], ([big[2]], [big[3]], None), 3, sc, 0),
}
times = {k: [] for k in cases}
for _ in range(int(sys.argv[3]) if len(sys.argv) > 3 else 1000):
    for k, f in cases.items():
        a = time.perf_counter()
        f()
        times[k].append(time.perf_counter() - a)
med = {k: np.median(v) * 1e6 for k, v in times.items()}
print(" ".join(f"{k}={v:.0f}" for k, v in med.items()), f"ratio192/roof={med['192 arrays'] / med['roof']:.2f}")
