"""fusedoptim.torch under torch's distributed engines: FSDP2 (``fully_shard``, params made on meta and
materialized after the optimizer is built), tensor-parallel DTensors (Shard and Replicate placements)
and DDP. Two processes (gloo, CPU, localhost) run every scenario in one spawn, bounded in time; each
test checks one scenario's results.

What must hold, and why it can be exact:
- An elementwise rule (AdamW) steps each element as it would unsharded, so a sharded run equals one
  process stepping the whole tensors, bit for bit, given the same gradients. FSDP2's and DDP's
  gradients are the two ranks' average, (g0 + g1) / 2 however it is divided (a division by 2 is
  exact), which one process reproduces.
- LAMB's trust ratio takes each tensor's whole norm: each rank's shard sums are all-gathered and added
  in rank order. For shards of a power of two of whole reduction blocks (1024 elements) the total is
  the whole tensor's own pairwise sum, bit for bit (tests/test_sharded_norms.py), so these runs equal
  one process too; without the reduction each shard would take its own norm, and they would not.
- Against torch.optim.AdamW in the same FSDP2 run, with teacher forcing (ours takes torch's gradients):
  the fp64-truth bound of conftest's Distances, with torch's float64 run, sharded alike, as the truth.
"""

import copy
import pickle
import socket
import time
import warnings

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
ft = pytest.importorskip("fusedoptim.torch")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from conftest import Distances  # noqa: E402

WORLD, STEPS, TIMEOUT = 2, 6, 240
ADAMW = dict(lr=0.01, weight_decay=0.1)
LAMB = dict(lr=0.01, weight_decay=0.01)


def model(bias=True):
    """Widths chosen so that every FSDP2 shard of a weight is a power of two of whole 1024-element blocks."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64, bias=bias), torch.nn.Tanh(),
                               torch.nn.Linear(64, 32, bias=bias), torch.nn.Tanh(), torch.nn.Linear(32, 64, bias=bias))


def batch(rank, step):
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(16, 32, generator=g), torch.randint(0, 64, (16,), generator=g)


def loss_of(net, data):
    return torch.nn.functional.cross_entropy(net(data[0]), data[1])


def fsdp(dtype=torch.float32, bias=True, on_meta=False):
    """The model under FSDP2, each Linear and the whole sharded over both ranks. On meta: made there,
    sharded, and returned with a function that materializes it (to_empty, then the reference values)."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import distribute_tensor

    reference = model(bias).to(dtype)
    if on_meta:
        with torch.device("meta"):
            net = model(bias).to(dtype)
    else:
        net = model(bias).to(dtype)
    for layer in net:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(net)

    def materialize():
        net.to_empty(device="cpu")
        with torch.no_grad():
            for p, full in zip(net.parameters(), reference.parameters()):
                p.to_local().copy_(distribute_tensor(full.detach(), p.device_mesh, p.placements).to_local())

    if not on_meta:
        materialize()
    return net, materialize


def full(t):
    """A DTensor gathered whole, a plain tensor as it is, detached, on every rank."""
    t = t.detach()
    return t.full_tensor() if hasattr(t, "full_tensor") else t.clone()


def snapshot(net, opt):
    params = [full(p) for p in net.parameters()]
    state = [{k: full(v) for k, v in opt.state[p].items()} for p in net.parameters()]
    return params, state


# --- The scenarios, run by each rank; rank 0 returns what the tests check ---

def fsdp_closed_loop(rank, make, hyper):
    """Deferred initialization: the optimizer is built on the meta params, which are then materialized."""
    net, materialize = fsdp(bias=make is ft.AdamW, on_meta=True)
    opt = make(net.parameters(), **hyper)
    materialize()
    losses = []
    for step in range(STEPS):
        opt.zero_grad()
        loss = loss_of(net, batch(rank, step))
        loss.backward()
        opt.step()
        losses.append(loss.detach().clone())
    assert all(type(p).__name__ == "DTensor" and type(opt.state[p]["exp_avg"]).__name__ == "DTensor"
               for p in net.parameters())
    return {"losses": losses, "snapshot": snapshot(net, opt)}


def fsdp_checkpoint(rank):
    """torch.distributed.checkpoint's state_dicts of a sharded run (DTensor state), taken after 3 steps and
    loaded back after 3 more: the same 3 steps again reach the same bits."""
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    net, _ = fsdp()
    opt = ft.AdamW(net.parameters(), **ADAMW)

    def train(steps):
        for step in steps:
            opt.zero_grad()
            loss_of(net, batch(rank, step)).backward()
            opt.step()

    train(range(STEPS // 2))
    saved = copy.deepcopy((get_model_state_dict(net), get_optimizer_state_dict(net, opt)))
    train(range(STEPS // 2, STEPS))
    straight = snapshot(net, opt)
    set_model_state_dict(net, saved[0])
    set_optimizer_state_dict(net, opt, saved[1])
    train(range(STEPS // 2, STEPS))
    return {"snapshots": [straight, snapshot(net, opt)]}


def fsdp_against_torch(rank):
    """torch's AdamW leads (float32, closed loop); ours (float32) and torch's float64 run (the truth) take its
    gradients, all three sharded by FSDP2."""
    leader, _ = fsdp()
    ours, _ = fsdp()
    exact, _ = fsdp(torch.float64)
    theirs = torch.optim.AdamW(leader.parameters(), foreach=False, **ADAMW)
    mine = ft.AdamW(ours.parameters(), **ADAMW)
    truth = torch.optim.AdamW(exact.parameters(), foreach=False, **ADAMW)
    distances = Distances()
    for step in range(STEPS):
        theirs.zero_grad()
        loss_of(leader, batch(rank, step)).backward()
        for p, q, r in zip(leader.parameters(), ours.parameters(), exact.parameters()):
            q.grad, r.grad = p.grad.clone(), p.grad.to(torch.float64)
        theirs.step()
        mine.step()
        truth.step()
        runs = [snapshot(net, opt) for net, opt in ((ours, mine), (leader, theirs), (exact, truth))]
        arrays = [[t.numpy() for t in params] + [s[k].numpy() for s in state for k in sorted(s) if k != "step"]
                  for params, state in runs]
        names = [f"params[{i}]" for i in range(len(runs[0][0]))] + \
                [f"{k}[{i}]" for i, s in enumerate(runs[0][1]) for k in sorted(s) if k != "step"]
        distances.record(*arrays, names)
    return {"distances": distances}


def tensor_parallel(rank, make, hyper):
    """Params placed as tensor parallelism places them: row shards, column shards, replicated; gradients
    placed alike, from whole ones every rank knows."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD,))
    placements = PLACEMENTS[make.__name__]
    wholes = whole_params()
    params = [torch.nn.Parameter(distribute_tensor(w.clone(), mesh, [{"row": Shard(0), "column": Shard(1),
                                                                      "replicated": Replicate()}[how]]))
              for w, how in zip(wholes, placements)]
    opt = make(params, **hyper)
    for step in range(STEPS):
        for p, g in zip(params, whole_grads(step)):
            p.grad = distribute_tensor(g, mesh, p.placements)
        opt.step()
    return {"params": [full(p) for p in params]}


PLACEMENTS = {"AdamW": ["row", "column", "replicated"], "Lamb": ["row", "replicated", "row"]}


def whole_params():
    g = torch.Generator().manual_seed(7)
    return [torch.randn(64, 64, generator=g), torch.randn(64, 32, generator=g), torch.randn(128, 16, generator=g)]


def whole_grads(step):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(w.shape, generator=g) for w in whole_params()]


def ddp(rank, flat=False):
    """With flat=True, DDP's grads are views of its buckets (gradient_as_bucket_view): the optimizer's
    zero_grad(set_to_none=False) makes them views of its own buffer again each step."""
    net = model()
    wrapped = torch.nn.parallel.DistributedDataParallel(net, gradient_as_bucket_view=flat)
    opt = ft.Adam(wrapped.parameters(), lr=0.01, amsgrad=True, flat=flat)
    losses = []
    for step in range(STEPS):
        opt.zero_grad(set_to_none=not flat)
        loss = loss_of(wrapped, batch(rank, step))
        loss.backward()
        opt.step()
        losses.append(loss.detach().clone())
    return {"losses": losses, "snapshot": snapshot(net, opt)}


def unreduced(run, *args):
    """The guard: ``run`` with each shard taking its own norm, as without the reduction."""
    keep = ft.Optimizer._reduction
    ft.Optimizer._reduction = lambda self, params: None
    try:
        return run(*args)
    finally:
        ft.Optimizer._reduction = keep


SCENARIOS = {
    "fsdp_adamw": lambda rank: fsdp_closed_loop(rank, ft.AdamW, ADAMW),
    "fsdp_lamb": lambda rank: fsdp_closed_loop(rank, ft.Lamb, LAMB),
    "fsdp_lamb_unreduced": lambda rank: unreduced(fsdp_closed_loop, rank, ft.Lamb, LAMB),
    "fsdp_against_torch": fsdp_against_torch,
    "fsdp_checkpoint": fsdp_checkpoint,
    "tp_adamw": lambda rank: tensor_parallel(rank, ft.AdamW, ADAMW),
    "tp_lamb": lambda rank: tensor_parallel(rank, ft.Lamb, LAMB),
    "ddp_adam": ddp,
    "ddp_adam_flat": lambda rank: ddp(rank, flat=True),
}


def worker(rank, port, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    results = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, scenario in SCENARIOS.items():
                try:
                    results[name] = scenario(rank)
                except Exception as e:  # reported by the scenario's test, the others still run
                    results[name] = {"error": f"{type(e).__name__}: {e}"}
                dist.barrier()
    finally:
        dist.destroy_process_group()
    if rank == 0:
        with open(out, "wb") as f:
            pickle.dump(results, f)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed") / "rank0.pkl"
    context = torch.multiprocessing.start_processes(worker, args=(free_port(), str(out)), nprocs=WORLD, join=False,
                                                    start_method="spawn")
    deadline = time.monotonic() + TIMEOUT
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the distributed run did not end within {TIMEOUT} s")
    with open(out, "rb") as f:
        return pickle.load(f)


def scenario(results, name):
    result = results[name]
    assert "error" not in result, result.get("error")
    return result


# --- One process, the same steps ---

def single_closed_loop(make, hyper, bias=True, wrapped=False):
    net = model(bias)
    opt = make(net.parameters(), **hyper)
    losses = []
    for step in range(STEPS):
        grads, step_losses = [], []
        for rank in range(WORLD):
            net.zero_grad()
            loss = loss_of(net, batch(rank, step))
            loss.backward()
            step_losses.append(loss.detach().clone())
            grads.append([p.grad.clone() for p in net.parameters()])
        for p, g0, g1 in zip(net.parameters(), *grads):
            p.grad = (g0 + g1) / WORLD
        opt.step()
        losses.append(step_losses[0])
    return {"losses": losses, "snapshot": snapshot(net, opt)}


def assert_same(sharded, single):
    assert all(torch.equal(a, b) for a, b in zip(sharded["losses"], single["losses"])), "losses"
    (params, state), (single_params, single_state) = sharded["snapshot"], single["snapshot"]
    assert all(torch.equal(a, b) for a, b in zip(params, single_params)), "params"
    for mine, theirs in zip(state, single_state):
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), "state"


def test_fsdp2_adamw_with_deferred_init_equals_one_process(results):
    assert_same(scenario(results, "fsdp_adamw"), single_closed_loop(ft.AdamW, ADAMW))


def test_fsdp2_lamb_takes_whole_norms(results):
    single = single_closed_loop(ft.Lamb, LAMB, bias=False)
    assert_same(scenario(results, "fsdp_lamb"), single)
    with pytest.raises(AssertionError, match="params"):  # the guard: each shard with its own norm
        assert_same({**scenario(results, "fsdp_lamb_unreduced"), "losses": single["losses"]}, single)


def test_fsdp2_adamw_matches_torch_adamw(results):
    scenario(results, "fsdp_against_torch")["distances"].check()


def test_fsdp2_distributed_checkpoint_resumes_to_the_same_bits(results):
    (params, state), (resumed_params, resumed_state) = scenario(results, "fsdp_checkpoint")["snapshots"]
    assert all(torch.equal(a, b) for a, b in zip(params, resumed_params))
    for mine, theirs in zip(state, resumed_state):
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


@pytest.mark.parametrize("name, make, hyper", [("tp_adamw", ft.AdamW, ADAMW), ("tp_lamb", ft.Lamb, LAMB)],
                         ids=["AdamW", "Lamb"])
def test_tensor_parallel_params_equal_one_process(results, name, make, hyper):
    params = [torch.nn.Parameter(w.clone()) for w in whole_params()]
    opt = make(params, **hyper)
    for step in range(STEPS):
        for p, g in zip(params, whole_grads(step)):
            p.grad = g
        opt.step()
    assert all(torch.equal(a, b.detach()) for a, b in zip(scenario(results, name)["params"], params))


@pytest.mark.parametrize("name", ["ddp_adam", "ddp_adam_flat"])
def test_ddp_equals_one_process(results, name):
    assert_same(scenario(results, name), single_closed_loop(ft.Adam, dict(lr=0.01, amsgrad=True)))
