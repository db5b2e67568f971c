"""Trains a small character-level transformer language model on the Python documentation that ships
with Python itself (``pydoc_data``, so nothing is downloaded), once with ``torch.optim.AdamW``
(torch's default CPU implementation, and its fused one) and once with ``fusedoptim.torch.AdamW``,
from the same initial weights on the same batches. Prints the optimizer step's time per step and
the losses, and saves both as a plot.

    pip install "fusedoptim[examples]"
    python examples/charlm.py [--steps 200] [--plot charlm.png]

The step time is that of ``opt.step()`` alone, the forward and backward passes not included, timed
inside the training loop as a user's step runs (after the backward pass, with caches and cores as
it left them): the median over the steps after a warm-up, with the 10th and 90th percentiles.
"""

import argparse
import platform
import statistics
import time

import numpy as np
import torch
from pydoc_data.topics import topics
from tqdm import tqdm

import fusedoptim
import fusedoptim.torch

CONTEXT, BATCH, WARMUP = 64, 16, 10


def corpus():
    """The text of every pydoc topic, in a fixed order, as character ids; and the characters."""
    text = "\n".join(topics[name] for name in sorted(topics))
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    return torch.tensor([index[c] for c in text]), chars


class CharTransformer(torch.nn.Module):
    """A decoder-only transformer: token and position embeddings, causal pre-norm blocks, a linear head."""

    def __init__(self, vocab, width=64, layers=2, heads=4):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.position = torch.nn.Embedding(CONTEXT, width)
        block = torch.nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True,
                                                 norm_first=True)
        self.blocks = torch.nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, vocab)
        self.register_buffer("mask", torch.nn.Transformer.generate_square_subsequent_mask(CONTEXT), persistent=False)

    def forward(self, ids):
        h = self.embed(ids) + self.position.weight[: ids.shape[1]]
        return self.head(self.norm(self.blocks(h, mask=self.mask, is_causal=True)))


def batches(ids, steps, seed=0):
    """``steps`` batches of (input, target) windows of the first 90% of the text, the same every run."""
    g = torch.Generator().manual_seed(seed)
    train = ids[: len(ids) * 9 // 10]
    for _ in range(steps):
        start = torch.randint(0, len(train) - CONTEXT - 1, (BATCH,), generator=g)
        window = torch.stack([train[s: s + CONTEXT + 1] for s in start.tolist()])
        yield window[:, :-1], window[:, 1:]


def validation_loss(model, ids, windows=64):
    held_out = ids[len(ids) * 9 // 10:]
    starts = torch.linspace(0, len(held_out) - CONTEXT - 2, windows).long().tolist()
    window = torch.stack([held_out[s: s + CONTEXT + 1] for s in starts])
    with torch.no_grad():
        logits = model(window[:, :-1])
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten()).item()


def train(label, make_optimizer, ids, vocab, steps):
    """Training losses, the optimizer step's seconds per step (after the warm-up), and the validation loss."""
    torch.manual_seed(0)
    model = CharTransformer(vocab)
    opt = make_optimizer(model.parameters(), lr=3e-3, weight_decay=0.01)
    losses, seconds = [], []
    for x, y in tqdm(batches(ids, steps), total=steps, desc=f"{label:<22}", leave=True):
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        start = time.perf_counter()
        opt.step()
        seconds.append(time.perf_counter() - start)
        losses.append(loss.item())
    return losses, seconds[WARMUP:], validation_loss(model, ids)


def plot(results, path, title):
    """Three panels: the loss curves (which overlap), each run's loss minus the first run's, and the
    optimizer step times (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, gaps, times) = plt.subplots(1, 3, figsize=(17, 4.8), gridspec_kw={"width_ratios": [1.3, 1.3, 1]})
    first, (baseline, _, _) = next(iter(results.items()))
    styles = ["-", "--", ":"]
    for k, (label, (losses, seconds, _)) in enumerate(results.items()):
        steps = range(1, len(losses) + 1)
        curves.plot(steps, losses, styles[k % 3], color=f"C{k}", lw=1.4, label=label)
        if k:
            gaps.plot(steps, np.subtract(losses, baseline), styles[k % 3], color=f"C{k}", lw=1.2, label=label)
        p10, p50, p90 = np.percentile(np.array(seconds) * 1e3, [10, 50, 90])
        times.barh(k, p50, color=f"C{k}", xerr=[[p50 - p10], [p90 - p50]], capsize=4)
        times.text(p90 * 1.1, k, f"{p50:.2f} ms", va="center")
    curves.set(xlabel="step", ylabel="training loss (cross-entropy, nats/char)", title="loss curves (they overlap)")
    gaps.set(xlabel="step", ylabel="loss difference", title=f"loss minus {first}'s, same batches")
    for ax in (curves, gaps):
        ax.legend()
        ax.grid(alpha=0.3)
    times.set_xscale("log")
    times.set_yticks(range(len(results)), list(results))
    times.invert_yaxis()
    times.set(xlabel="ms per step (median; bars: 10th to 90th percentile)", title="optimizer step time")
    times.set_xlim(right=max(np.percentile(r[1], 90) for r in results.values()) * 1e3 * 6)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps per optimizer (default: 200)")
    parser.add_argument("--plot", default="charlm.png", help="where to save the plot (default: charlm.png)")
    args = parser.parse_args(argv)
    if args.steps <= WARMUP:
        parser.error(f"--steps must be more than the {WARMUP} warm-up steps")

    ids, chars = corpus()
    model = CharTransformer(len(chars))
    params = sum(p.numel() for p in model.parameters())
    tensors = len(list(model.parameters()))
    print(f"{len(ids):,} characters of Python's documentation ({len(chars)} distinct); a 2-layer transformer, "
          f"{params:,} params in {tensors} tensors; batches of {BATCH} x {CONTEXT} characters; "
          f"{args.steps} steps per optimizer; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"fusedoptim {fusedoptim.__version__}, {fusedoptim.get_num_threads()} threads\n")
    runs = {
        "torch.optim.AdamW": torch.optim.AdamW,
        "torch.optim.AdamW fused": lambda p, **kw: torch.optim.AdamW(p, fused=True, **kw),
        "fusedoptim.torch.AdamW": fusedoptim.torch.AdamW,
    }
    results = {label: train(label, make, ids, len(chars), args.steps) for label, make in runs.items()}

    print(f"\n{'optimizer':<24} {'step p10':>9} {'median':>9} {'p90':>9}   {'loss, last 20':>13} {'validation':>10}")
    for label, (losses, seconds, validation) in results.items():
        p10, p50, p90 = np.percentile(np.array(seconds) * 1e3, [10, 50, 90])
        print(f"{label:<24} {p10:7.2f}ms {p50:7.2f}ms {p90:7.2f}ms   {statistics.mean(losses[-20:]):13.3f} "
              f"{validation:10.3f}")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if platform.system() == "Linux" else platform.processor()
    title = (f"char-level transformer ({params:,} params, {tensors} tensors) on pydoc text, {args.steps} steps: "
             f"{cpu}, torch {torch.__version__} ({torch.get_num_threads()} threads), fusedoptim "
             f"{fusedoptim.__version__} ({fusedoptim.get_num_threads()} threads)")
    plot(results, args.plot, title)
    print(f"\nplot saved to {args.plot}")


if __name__ == "__main__":
    main()
