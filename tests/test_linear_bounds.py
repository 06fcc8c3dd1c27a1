"""Linear (CROWN-style) bounds through the encoder: sound, tighter, never weaker as a certificate."""

import pytest
import torch
from torch import nn

import nemon
from nemon.explicit import Normalize, UnsupportedModule
from nemon.linear_bounds import encoder_linear_bounds, injection_bounds, supports_linear_bounds

DT = torch.float64


def model(arch="conv-small", seed=0, family="nemon"):
    torch.manual_seed(seed)
    m = nemon.build_model(family, arch, hidden=24, gamma=0.5).double().eval()
    if arch == "conv-small-bn":  # running statistics away from the identity
        for bn in (x for x in m.modules() if isinstance(x, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    return m


def box(seed=1, n=3, eps=0.05):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 1, 28, 28, generator=g, dtype=DT)
    return (u - eps).clamp(0, 1), (u + eps).clamp(0, 1)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["conv-small", "conv-medium", "conv-small-bn"])
def test_injection_box_contains_sampled_and_attacked_injections_and_is_tighter(arch):
    m = model(arch)
    lo, hi = box()
    z_lo, z_hi = injection_bounds(m, lo, hi)
    v_lo, v_hi = m.encode_interval(lo, hi)
    B = m.layer.B
    i_lo = B((v_lo + v_hi) / 2) - ((v_hi - v_lo) / 2) @ B.weight.abs().T
    i_hi = B((v_lo + v_hi) / 2) + ((v_hi - v_lo) / 2) @ B.weight.abs().T
    assert bool((z_lo >= i_lo - 1e-12).all() and (z_hi <= i_hi + 1e-12).all())
    assert (z_hi - z_lo).mean() < 0.8 * (i_hi - i_lo).mean()  # an untrained net: far tighter
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _ in range(50):
            p = lo + (hi - lo) * torch.rand(lo.shape, generator=g, dtype=DT)
            z = B(m.encoder(p))
            assert bool((z >= z_lo - 1e-10).all() and (z <= z_hi + 1e-10).all())
    # the extremes: gradient steps on single injection coordinates towards each bound
    for k in range(3):
        for sign in (1.0, -1.0):
            p = ((lo + hi) / 2).clone().requires_grad_(True)
            for _ in range(30):
                (grad,) = torch.autograd.grad(sign * B(m.encoder(p))[:, k].sum(), p)
                p = torch.max(torch.min(p + 0.01 * grad.sign(), hi), lo).detach()
                p.requires_grad_(True)
            z = B(m.encoder(p)).detach()
            assert bool(
                (z[:, k] <= z_hi[:, k] + 1e-10).all() and (z[:, k] >= z_lo[:, k] - 1e-10).all()
            )


def test_a_single_affine_module_is_bounded_exactly():
    """Through affine modules alone the linear bounds are the exact range of ``spec L x + c`` on
    the box: centre +- ``|spec L| r`` (fails on a wrong transpose, offset or sign split)."""
    torch.manual_seed(0)
    for module in (nn.Conv2d(1, 3, 3, 2, 1), nn.Linear(12, 5), Normalize([0.3], [0.5])):
        encoder = nn.Sequential(module, nn.Flatten()).double()
        shape = (4, 12) if isinstance(module, nn.Linear) else (4, 1, 6, 6)
        lo = torch.rand(shape, dtype=DT)
        hi = lo + torch.rand(shape, dtype=DT)
        spec = torch.randn(7, encoder(lo).shape[1], dtype=DT)
        low, high = encoder_linear_bounds(encoder, lo, hi, spec)
        L = torch.autograd.functional.jacobian(lambda x, e=encoder: e(x[None])[0], lo[0]).flatten(1)
        centre = encoder((lo + hi) / 2) @ spec.T
        radius = ((hi - lo) / 2).flatten(1) @ (spec @ L).abs().T
        assert torch.allclose(low, centre - radius, atol=1e-10)
        assert torch.allclose(high, centre + radius, atol=1e-10)


@pytest.mark.slow
def test_the_linear_certificate_is_never_weaker_than_interval_and_sound_against_pgd():
    m = model("conv-small", seed=3)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(40, 1, 28, 28, generator=g, dtype=DT)
    labels = m(u).argmax(1)
    gained = 0
    for eps in (0.002, 0.005, 0.01):
        interval = nemon.certify(m, u, labels, eps, method="interval")
        linear = nemon.certify(m, u, labels, eps, method="linear")
        assert bool((linear >= interval).all())
        adv = nemon.pgd(m, u, labels, eps, steps=30, restarts=2)
        broken = m(adv).argmax(1) != labels
        assert not bool((linear & broken).any())
        gained += int(linear.sum()) - int(interval.sum())
    assert gained > 0  # it pays on an untrained net


def test_models_without_a_supported_encoder_keep_the_interval_certificate():
    dense = model("dense")
    assert not supports_linear_bounds(dense)
    u = torch.rand(5, 1, 28, 28, dtype=DT)
    labels = dense(u).argmax(1)
    same = nemon.certify(dense, u, labels, 0.01, method="linear")
    assert torch.equal(same, nemon.certify(dense, u, labels, 0.01, method="interval"))
    pooled = model("conv-small")
    pooled.encoder.insert(0, nn.MaxPool2d(1))
    assert not supports_linear_bounds(pooled)
    with pytest.raises(UnsupportedModule):
        injection_bounds(pooled, *box())
