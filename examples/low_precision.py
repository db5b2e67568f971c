"""bfloat16 training with each way of storing params, against float32.

A small MLP regression (NumPy forward and backward, computed in float32 from the stored params)
trained with fusedoptim.Adam, params stored as:

- float32 (the reference curve);
- bfloat16, rounded to nearest: Adam's steps of about lr = 1e-3 are below half a bfloat16 ulp
  (2^-8 relative) of every weight larger than about 0.25, so those weights stop moving;
- bfloat16, rounding="stochastic": each small step survives with the probability it deserves;
- bfloat16, rounding="kahan": a bfloat16 compensation buffer keeps what the param cannot;
- bfloat16, master_weights=True: a float32 master copy is stepped, the param is its rounding.

Prints the loss table (and saves low_precision.png when matplotlib is installed). Runs in a few seconds:
    python examples/low_precision.py [--steps 600] [--plot low_precision.png]
"""

import argparse

import ml_dtypes
import numpy as np

import fusedoptim as fo

BF16 = np.dtype(ml_dtypes.bfloat16)
MODES = {
    "float32": (np.float32, {}),
    "bf16 nearest": (BF16, {}),
    "bf16 stochastic": (BF16, dict(rounding="stochastic", seed=0)),
    "bf16 kahan": (BF16, dict(rounding="kahan")),
    "bf16 master": (BF16, dict(master_weights=True)),
}


def data(n=256, features=32, hidden=32, seed=0):
    """Targets from a random teacher MLP, so that a student of the same shape can reach a small loss."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    w1 = rng.standard_normal((features, hidden)).astype(np.float32) / np.sqrt(features)
    w2 = rng.standard_normal((hidden, 1)).astype(np.float32) / np.sqrt(hidden)
    return x, np.maximum(x @ w1, 0) @ w2 * 4


def train(dtype, options, x, y, steps, lr=1e-3, seed=1):
    """Losses of full-batch Adam on the MLP with params stored as ``dtype``."""
    rng = np.random.default_rng(seed)
    shapes = [(x.shape[1], 32), (32,), (32, 1), (1,)]
    params = [(rng.standard_normal(s) * (1 / np.sqrt(s[0]) if len(s) > 1 else 0.0)).astype(dtype) for s in shapes]
    opt = fo.Adam(params, lr=lr, **options)
    losses = []
    for _ in range(steps):
        w1, b1, w2, b2 = (p.astype(np.float32) for p in params)
        h = x @ w1 + b1
        a = np.maximum(h, 0)
        err = a @ w2 + b2 - y
        losses.append(float(np.mean(err * err)))
        d_out = 2 * err / len(x)
        d_h = (d_out @ w2.T) * (h > 0)
        grads = [x.T @ d_h, d_h.sum(0), a.T @ d_out, d_out.sum(0)]
        opt.step([g.astype(dtype) for g in grads])
    return losses


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--plot", default="low_precision.png", help="where to save the plot (needs matplotlib)")
    args = parser.parse_args()
    x, y = data()
    curves = {name: train(dtype, options, x, y, args.steps) for name, (dtype, options) in MODES.items()}
    marks = sorted({0, args.steps // 10, args.steps // 4, args.steps // 2, args.steps - 1})
    print(f"{'step':>6} " + " ".join(f"{name:>16}" for name in curves))
    for k in marks:
        print(f"{k + 1:>6} " + " ".join(f"{curve[k]:16.5f}" for curve in curves.values()))
    final = {name: curve[-1] for name, curve in curves.items()}
    print("final loss / float32's: " + ", ".join(f"{name} {value / final['float32']:.2f}"
                                                  for name, value in final.items()))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plot)")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        ax.plot(np.arange(1, len(curve) + 1), curve, label=name, lw=1.5 if name == "float32" else 1)
    ax.set(xlabel="step", ylabel="training loss (MSE)", yscale="log", title="Adam, lr=1e-3: bf16 params by rounding mode")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print(f"saved {args.plot}")


if __name__ == "__main__":
    main()
