"""The CUDA paths agree with the CPU ones (skipped without a CUDA device).

Each test runs the same float64 computation on both devices: equilibria, implicit gradients,
interval bounds through a certified architecture, certificates and a short training run.
"""

import json

import pytest
import torch
import torch.nn.functional as F

from nemon import build_model, certify
from nemon.app.train import TrainConfig, train
from nemon.data import Dataset
from nemon.intervals import logit_difference_bounds

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _model(arch="conv-small"):
    torch.manual_seed(0)
    return build_model("nemon", arch, hidden=32, gamma=0.5, ibp_init=True).double()


def _batch(n=8):
    gen = torch.Generator().manual_seed(1)
    u = torch.rand(n, 1, 28, 28, generator=gen, dtype=torch.float64)
    return u, torch.randint(0, 10, (n,), generator=gen)


def test_logits_and_gradients_match_cpu():
    model = _model()
    u, y = _batch()
    grads = []
    for device in ("cpu", "cuda"):
        model.to(device)
        loss = F.cross_entropy(model(u.to(device)), y.to(device))
        grads.append([g.cpu() for g in torch.autograd.grad(loss, list(model.parameters()))])
    for cpu, gpu in zip(*grads):
        assert torch.allclose(cpu, gpu, atol=1e-7, rtol=1e-6)


def test_interval_bounds_and_certificates_match_cpu():
    model = _model()
    u, y = _batch(16)
    bounds, certified = [], []
    for device in ("cpu", "cuda"):
        model.to(device)
        with torch.no_grad():
            bounds.append(logit_difference_bounds(model, u.to(device), y.to(device), 0.05).cpu())
        certified.append(certify(model, u.to(device), y.to(device), [0.0, 0.01], "interval").cpu())
    assert torch.allclose(bounds[0], bounds[1], atol=1e-7)
    assert torch.equal(certified[0], certified[1])


def _tiny_data(n=200):
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(n, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return Dataset("tiny", x, y, x[:50], y[:50], classes=10)


def test_certified_training_runs_on_cuda(tmp_path):
    cfg = TrainConfig(
        arch="conv-small",
        hidden=32,
        gamma=0.5,
        epochs=2,
        batch_size=50,
        cert_eps=0.1,
        warmup_epochs=1,
        cert_ramp_epochs=1,
        cert_eval_eps=[0.05],
        device="cuda",
    )
    result = train(cfg, tmp_path, data=_tiny_data(), progress=False)
    assert next(result["model"].parameters()).is_cuda
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[-1]["train_eps"] > 0 and history[-1]["unconverged_solves"] == 0
