"""Sharded training: fusedoptim.torch.Adam (and NAdam, whose state has a host-side scalar, and AdamW with
flat=True) as the optimizer_class of torch's ZeroRedundancyOptimizer.

Two processes (gloo, CPU, localhost) each hold half of the optimizer state and step their shard;
the result must equal one process stepping everything, bit for bit. Bitwise holds because the
kernel is elementwise (an element's update never depends on which shard it sits in) and both
runs average gradients identically: (g0 + g1) / 2, where a sum of two is the same in either order.
"""

import socket
import warnings

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
ft = pytest.importorskip("fusedoptim.torch")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

with warnings.catch_warnings():  # torch.distributed.optim scripts its functional optimizers on import
    warnings.simplefilter("ignore", DeprecationWarning)
    from torch.distributed.optim import ZeroRedundancyOptimizer  # noqa: E402

WORLD, STEPS = 2, 20
HYPER = {"Adam": dict(lr=0.01, weight_decay=0.01, amsgrad=True), "NAdam": dict(lr=0.01, weight_decay=0.01),
         "AdamW": dict(lr=0.01, flat=True)}  # each rank's shard of params moved into its optimizer's buffers


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 4))


def shard(rank):
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g)


def loss(net, batch):
    return torch.nn.functional.cross_entropy(net(batch[0]), batch[1])


def sharded(rank, name, port, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        net = model()
        opt = ZeroRedundancyOptimizer(net.parameters(), optimizer_class=getattr(ft, name), **HYPER[name])
        assert isinstance(opt.optim, getattr(ft, name))
        assert len(opt.optim.param_groups[0]["params"]) < len(list(net.parameters()))  # a shard
        for _ in range(STEPS):
            opt.zero_grad()
            loss(net, shard(rank)).backward()
            for p in net.parameters():
                dist.all_reduce(p.grad)
                p.grad /= WORLD
            opt.step()
        opt.consolidate_state_dict(to=0)
        if rank == 0:
            torch.save({"params": [p.detach() for p in net.parameters()], "optim": opt.state_dict()}, out)
    finally:
        dist.destroy_process_group()


def single(name):
    net = model()
    opt = getattr(ft, name)(net.parameters(), **HYPER[name])
    for _ in range(STEPS):
        grads = []
        for rank in range(WORLD):
            net.zero_grad()
            loss(net, shard(rank)).backward()
            grads.append([p.grad.clone() for p in net.parameters()])
        for p, g0, g1 in zip(net.parameters(), *grads):
            p.grad = (g0 + g1) / WORLD
        opt.step()
    return [p.detach() for p in net.parameters()], opt


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", HYPER)
def test_zero_redundancy_optimizer_matches_one_process(tmp_path, name):
    out = tmp_path / "rank0.pt"
    torch.multiprocessing.spawn(sharded, args=(name, free_port(), str(out)), nprocs=WORLD, join=True)
    result = torch.load(out)
    params, opt = single(name)
    assert all(torch.equal(a, b) for a, b in zip(result["params"], params))
    # The consolidated checkpoint has the one-process optimizer's layout and values.
    theirs, ours = result["optim"]["state"], opt.state_dict()["state"]
    assert theirs.keys() == ours.keys()
    for i in ours:
        assert theirs[i].keys() == ours[i].keys()
        assert all(torch.equal(theirs[i][k], ours[i][k]) for k in ours[i])
