"""Models with NEMON layers compile whole (``fullgraph=True``, CPU, inductor) in training and
eval mode, with eager-equal values and gradients: the solve is one custom operator (#42.10)."""

import pytest
import torch

import nemon
from nemon.app.bench import compiled_step_times


def _step(model, u, y):
    model.zero_grad()
    with nemon.SolveLog() as log:
        loss = torch.nn.functional.cross_entropy(model(u), y)
        loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()], log


@pytest.mark.slow
@pytest.mark.parametrize("arch, backend", [("dense", "aot_eager"), ("conv", "aot_eager")])
def test_compiled_model_matches_eager(arch, backend):
    """Loss and every parameter's gradient equal eager's in train and eval mode; the compiled
    solves report to a SolveLog as eager ones do. AOT autograd traces the whole model as inductor
    does, without its code generation (50 s for the conv model on a loaded CPU; inductor runs in
    the bench test below)."""
    torch.manual_seed(0)
    model = nemon.build_model("nemon", arch, (1, 8, 8), hidden=4 if arch == "conv" else 16)
    u, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        loss_c, grads_c, log = _step(compiled, u, y)
        loss_e, grads_e, _ = _step(model, u, y)
        assert torch.allclose(loss_c, loss_e, atol=1e-6), mode
        for a, b in zip(grads_c, grads_e):
            assert torch.allclose(a, b, atol=1e-5), mode
        directions = [r.direction for r in log.records]
        assert directions == ["forward", "backward"], mode
        assert all(r.stats.converged for r in log.records)
    bad = u.clone()  # fullgraph=True: one graph, no break; its checks run in an operator
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(Exception, match="NaN or inf"):
        compiled(bad)


@pytest.mark.slow
def test_bench_reports_the_compiled_step_against_eager():
    (row,) = compiled_step_times(shapes=(("dense", (1, 6, 6), 8),), batch=8, repeat=1)
    assert row["threads"] == 1 and row["compile_seconds"] > 0
    assert row["compiled_ms"] > 0 and row["eager_ms"] > 0
    assert row["compiled_over_eager"] == pytest.approx(row["compiled_ms"] / row["eager_ms"])


@pytest.mark.slow
@pytest.mark.parametrize("family, arch", [("mon", "dense"), ("mon", "conv"), ("explicit", "dense")])
def test_other_families_compile_whole_with_eager_gradients(family, arch):
    """MON (its FFT resolvent and prox-form adjoint) and the explicit layer trace as one graph
    too, with eager's loss and gradients."""
    torch.manual_seed(0)
    model = nemon.build_model(family, arch, (1, 8, 8), hidden=4 if arch == "conv" else 16)
    u, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    loss_c, grads_c, _ = _step(compiled, u, y)  # training mode (eval: the NEMON test's)
    loss_e, grads_e, _ = _step(model, u, y)
    assert torch.allclose(loss_c, loss_e, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads_c, grads_e):
        assert torch.allclose(a, b, rtol=1e-2, atol=1e-4)
    bad = u.clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(Exception, match="NaN or inf"):
        compiled(bad)


@pytest.mark.slow
def test_a_compiled_adjoint_reports_to_the_log_open_at_its_forward():
    torch.manual_seed(0)
    model = nemon.build_model("nemon", "dense", (1, 8, 8), hidden=16)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    u, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    with nemon.SolveLog() as log:
        loss = torch.nn.functional.cross_entropy(compiled(u), y)
    with nemon.SolveLog() as other:
        loss.backward()  # after the forward's log closed, inside another
    assert [r.direction for r in log.records] == ["forward", "backward"]
    assert other.records == []
