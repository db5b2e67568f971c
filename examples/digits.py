"""Trains a small network on scikit-learn's bundled handwritten digits (no download) with
torch.optim and with fusedoptim.torch, and prints test accuracy and mean optimizer-step time.

    pip install "fusedoptim[examples]"
    python examples/digits.py
"""

import time

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import fusedoptim.torch

RULES = [
    ("SGD Nesterov", "SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("Adagrad", "Adagrad", dict(lr=0.02)),
    ("RMSprop", "RMSprop", dict(lr=3e-4)),
    ("Adam", "Adam", dict(lr=1e-3, weight_decay=1e-4)),
]


def digits():
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.25, random_state=0, stratify=y)
    as_tensors = lambda x, y: (torch.tensor(x, dtype=torch.float32), torch.tensor(y))  # noqa: E731
    return as_tensors(x_train, y_train), as_tensors(x_test, y_test)


def network():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Tanh(), torch.nn.Linear(256, 128), torch.nn.Tanh(),
                               torch.nn.Linear(128, 10))


def train(make_optimizer, hyper, train_set, test_set, epochs=15, batch=64):
    net = network()
    opt = make_optimizer(net.parameters(), **hyper)
    x, y = train_set
    order = torch.Generator().manual_seed(1)
    step_time, steps = 0.0, 0
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=order)[: len(x) // batch * batch].view(-1, batch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            start = time.perf_counter()
            opt.step()
            step_time += time.perf_counter() - start
            steps += 1
    with torch.no_grad():
        accuracy = (net(test_set[0]).argmax(1) == test_set[1]).float().mean().item()
    return accuracy, step_time / steps


def main():
    train_set, test_set = digits()
    print(f"digits: {len(train_set[0])} train / {len(test_set[0])} test images, MLP 64-256-128-10, fp32\n")
    print(f"{'rule':14s} {'torch.optim':>24s} {'fusedoptim.torch':>24s}")
    print(f"{'':14s} {'accuracy':>12s} {'step':>11s} {'accuracy':>12s} {'step':>11s}")
    for label, name, hyper in RULES:
        cells = []
        for module in (torch.optim, fusedoptim.torch):
            accuracy, seconds = train(getattr(module, name), hyper, train_set, test_set)
            cells.append(f"{accuracy:12.2%} {seconds * 1e6:8.1f} us")
        print(f"{label:14s} {' '.join(cells)}")


if __name__ == "__main__":
    main()
