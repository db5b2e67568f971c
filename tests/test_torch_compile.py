"""fusedoptim.torch inside torch.compile: ``step()`` is a graph break (``torch.compiler.disable``), so a
compiled training step runs the model's graphs compiled and our step eagerly, with eager's results.

The kernels are not registered as torch.library ops: a step is host-side work around them (the plan's
scalars from the step count and host state, state made on first use, the all-or-nothing checks), the
kernel is as opaque to inductor inside a graph as outside it, and the break costs one Python call per
step. The "eager" backend compiles nothing, so its graphs run the very ops of an eager run and the bits
can be compared; inductor fuses the model's own ops and changes their bits, whatever the optimizer."""

import pytest

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fusedoptim.torch")


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))


def training_step(model, opt, batch):
    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(batch[0]), batch[1])
        loss.backward()
        opt.step()
        return loss

    return step


def test_compiled_training_step_equals_eager():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(1)
    batch = torch.randn(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g)
    eager_model, compiled_model = net(), net()
    eager = training_step(eager_model, ft.AdamW(eager_model.parameters(), lr=0.01), batch)
    compiled = torch.compile(training_step(compiled_model, ft.AdamW(compiled_model.parameters(), lr=0.01), batch),
                             backend="eager")
    for _ in range(4):
        assert torch.equal(eager(), compiled())
    assert all(torch.equal(a, b) for a, b in zip(eager_model.parameters(), compiled_model.parameters()))


def test_step_is_a_graph_break_not_traced():
    torch._dynamo.reset()
    model = net()
    opt = ft.Adam(model.parameters())
    model(torch.randn(2, 8)).sum().backward()
    explained = torch._dynamo.explain(lambda: opt.step())()
    assert explained.graph_count == 0  # dynamo did not trace into the step at all
    with pytest.raises(Exception, match="disable|skip"):
        torch.compile(lambda: opt.step(), backend="eager", fullgraph=True)()
