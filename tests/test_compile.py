"""The implicit layers run under torch.compile (CPU, inductor) with eager-equal values and grads."""

import pytest
import torch

import nemon


@pytest.mark.slow
def test_compiled_model_matches_eager():
    torch.manual_seed(0)
    model = nemon.build_model("nemon", hidden=16, input_shape=(1, 6, 6))
    u, y = torch.rand(8, 1, 6, 6), torch.randint(0, 10, (8,))
    compiled = torch.compile(model)

    def grads(m):
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(m(u), y)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    with nemon.SolveLog() as log:  # the compiled model's solves report what they return
        loss_c, grads_c = grads(compiled)
    loss_e, grads_e = grads(model)
    assert torch.allclose(loss_c, loss_e, atol=1e-5)
    for a, b in zip(grads_c, grads_e):
        assert torch.allclose(a, b, atol=1e-5)
    assert [s.result for s in log.stats("forward") + log.stats("backward")] == ["converged"] * 2


def test_the_solve_is_the_only_graph_break():
    """Dynamo traces the encoder and readout and leaves the solve (a data-dependent iteration
    with its checks and statistics) to run eagerly: one break, at the layer's solve."""
    torch.manual_seed(0)
    model = nemon.build_model("nemon", "conv-small", hidden=8, input_shape=(1, 12, 12))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(torch.rand(2, 1, 12, 12))
    assert explained.graph_break_count == 1
    assert "disable" in str(explained.break_reasons[0].reason)
