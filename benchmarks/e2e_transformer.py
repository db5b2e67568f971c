"""End to end: a small transformer language model trained on CPU for a few hundred steps, with
torch.optim.AdamW(fused=True) and with fusedoptim.torch.AdamW, without and with flat=True (issue 10, item 5).

    python benchmarks/e2e_transformer.py [--steps 200] [--width 256] [--layers 4] [--threads N]

Three copies of one model, from the same initial weights, train on the same batches; their steps
interleave (the order reverses every step), so a burst of noise from other processes falls on
all. Each step is timed in two parts: forward and backward, then ``opt.step()``. Printed: the
medians (and p10-p90) after a warm-up, the optimizer's share of the whole step, and the whole
step's speed-up. The batches are random token ids: a step's cost does not depend on the data.
Takes about a minute on a quiet 2-core machine (the default model: 5.3M params in 54 tensors).
"""

import argparse
import copy
import time

import numpy as np
import torch

import fusedoptim
import fusedoptim.torch
from fusedoptim.bench import cpu_model, format_time

WARMUP = 20


class LanguageModel(torch.nn.Module):
    """Decoder-only: token and position embeddings, causal pre-norm blocks, a final norm, a linear head."""

    def __init__(self, vocab, context, width, layers, heads=4):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.position = torch.nn.Embedding(context, width)
        block = torch.nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True,
                                                 norm_first=True)
        self.blocks = torch.nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, vocab)
        self.register_buffer("mask", torch.nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, ids):
        h = self.embed(ids) + self.position.weight[: ids.shape[1]]
        return self.head(self.norm(self.blocks(h, mask=self.mask, is_causal=True)))


def timed_step(model, opt, ids):
    """One training step; returns (seconds of forward and backward, seconds of opt.step())."""
    start = time.perf_counter()
    opt.zero_grad()
    logits = model(ids[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss.backward()
    middle = time.perf_counter()
    opt.step()
    return middle - start, time.perf_counter() - middle


def threads(count):
    return f"{count} thread{'s' if count > 1 else ''}"


def describe(samples):
    median = float(np.median(samples))
    p10, p90 = np.percentile(samples, [10, 90])
    return f"{format_time(median):>9} ({format_time(p10)}-{format_time(p90)})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--context", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--threads", type=int, help="for torch and fusedoptim (default: each one's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        fusedoptim.set_num_threads(args.threads)

    torch.manual_seed(0)
    base = LanguageModel(args.vocab, args.context + 1, args.width, args.layers)
    params = sum(p.numel() for p in base.parameters())
    tensors = len(list(base.parameters()))
    runs = {}
    for name, make in (("torch.optim.AdamW(fused=True)", lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True)),
                       ("fusedoptim.torch.AdamW", lambda ps: fusedoptim.torch.AdamW(ps, lr=1e-3)),
                       ("fusedoptim.torch.AdamW(flat=True)", lambda ps: fusedoptim.torch.AdamW(ps, lr=1e-3, flat=True))):
        model = copy.deepcopy(base)
        runs[name] = (model, make(model.parameters()), [], [])
    data = torch.Generator().manual_seed(1)
    for step in range(args.steps + WARMUP):
        ids = torch.randint(0, args.vocab, (args.batch, args.context + 1), generator=data)
        order = list(runs.values()) if step % 2 == 0 else list(runs.values())[::-1]
        for model, opt, forward_backward, optimizer in order:
            f, o = timed_step(model, opt, ids)
            if step >= WARMUP:
                forward_backward.append(f)
                optimizer.append(o)

    print(f"{cpu_model()}, torch {torch.__version__} ({threads(torch.get_num_threads())}), fusedoptim "
          f"{fusedoptim.__version__} ({threads(fusedoptim.get_num_threads())})")
    print(f"model: {args.layers} pre-norm blocks of width {args.width}, {tensors} tensors, {params:,} params; "
          f"batch {args.batch} x {args.context} tokens; medians (p10-p90) of {args.steps} steps after {WARMUP}")
    print(f"{'optimizer':<34}{'forward+backward':>28}{'opt.step()':>28}{'whole step':>28}{'opt share':>10}")
    whole = {}
    for name, (_, _, forward_backward, optimizer) in runs.items():
        total = np.add(forward_backward, optimizer)
        whole[name] = (float(np.median(total)), float(np.median(optimizer)))
        share = float(np.median(np.divide(optimizer, total)))
        print(f"{name:<34}{describe(forward_backward):>28}{describe(optimizer):>28}{describe(total):>28}"
              f"{share:>10.1%}")
    (torch_total, torch_opt), *ours = whole.values()
    for name, (ours_total, ours_opt) in zip(list(whole)[1:], ours):
        print(f"{name} vs torch fused: opt.step() {torch_opt / ours_opt:.2f}x, whole step "
              f"{torch_total / ours_total:.2f}x")


if __name__ == "__main__":
    main()
