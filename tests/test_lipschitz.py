"""Lipschitz bounds are never exceeded and certificates never certify a breakable point."""

import pytest
import torch
from helpers import ALL_KINDS, classifier, pgd_breaks

import nemon
from nemon.lipschitz import (
    LipschitzTerms,
    certified_lipschitz,
    certified_pairwise,
    output_bound,
    pairwise_bounds,
)

DT = torch.float64


def test_output_bound_hand_example():
    B = torch.tensor([[1.0, -2.0], [0.5, 0.5]])
    C = torch.tensor([[1.0, 1.0], [0.0, -3.0]])
    D = torch.tensor([[0.1, 0.2], [0.0, 0.0]])
    eta = torch.tensor([2.0, 1.0])
    terms = LipschitzTerms("inf", nemon.norms.norm_inf_from_input(B, eta), torch.tensor(0.5), eta)
    # ||B|| = max(3/2, 1/1) = 1.5 ; ||C|| = max(1*2 + 1*1, 3*1) = 3 ; ||D|| = 0.3
    assert float(output_bound(terms, C, D)) == pytest.approx(1.5 * 3 / 0.5 + 0.3)
    pair = pairwise_bounds(terms, C, D)
    # c_0 - c_1 = (1, 4): weighted l1 = 2 + 4 = 6 ; d_0 - d_1 = (0.1, 0.2)
    assert float(pair[0, 1]) == pytest.approx(1.5 * 6 / 0.5 + 0.3)
    assert torch.all(pair <= 2 * output_bound(terms, C, D) + 1e-12)
    assert torch.all(pair.diagonal() == 0)


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("seed", range(2))
def test_bound_never_exceeded_by_sampled_pairs(kind, seed):
    model = classifier(kind, seed)
    L = float(model.lipschitz_bound())
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(16, *model.layer.input_shape(), generator=g, dtype=DT)
    for scale in (1e-3, 1e-1, 1.0):
        # random directions and sign vertices of the l_inf ball
        for v in (torch.rand_like(u) * 2 - 1, torch.sign(torch.randn_like(u))):
            du = scale * v
            with torch.no_grad():
                dy = (model(u + du) - model(u)).abs().amax(dim=1)
            ratio = dy / du.flatten(1).abs().amax(dim=1)
            assert torch.all(ratio <= L * (1 + 1e-9))
    # and the direction of steepest ascent of one logit difference
    u.requires_grad_(True)
    y = model(u)
    (grad,) = torch.autograd.grad((y[:, 0] - y[:, 1]).sum(), u)
    du = 1e-2 * torch.sign(grad)
    with torch.no_grad():
        dy = (model(u + du) - y).abs().amax(dim=1)
    assert torch.all(dy <= L * 1e-2 * (1 + 1e-9))


def test_regularizer_variants():
    model = classifier("nemon")
    prod = model.lipschitz_penalty("product")
    halved = model.lipschitz_penalty("halved_sum")
    assert torch.allclose(prod, model.lipschitz_bound())
    assert halved >= prod  # (B^2/2 + C^2) >= sqrt(2) B C >= B C
    prod.backward()
    assert model.layer.B.weight.grad is not None
    with pytest.raises(ValueError, match="regulariser"):
        model.lipschitz_penalty("square")


def test_certificate_rule_on_known_margins():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 0.5]])
    labels = torch.tensor([0, 0])
    # sample 0: margin 2 -> certified iff 2 L eps < 2
    assert certified_lipschitz(logits, labels, 1.0, 0.99).tolist() == [True, False]
    assert certified_lipschitz(logits, labels, 1.0, 1.0).tolist() == [False, False]
    assert certified_lipschitz(logits, labels, 1.0, 0.5, slack=0.6).tolist() == [False, False]
    pair = torch.full((3, 3), 2.0)
    assert certified_pairwise(logits, labels, pair, 0.99).tolist() == [True, False]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["nemon", "nemon-eta", "idl", "conv-circular"])
def test_certificates_are_sound(kind):
    model = classifier(kind, seed=3)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(40, *model.layer.input_shape(), generator=g, dtype=DT)
    with torch.no_grad():
        labels = model(u).argmax(1)  # every point correctly classified; margins vary
        L = float(model.lipschitz_bound())
        margins = model(u).sort(1).values
        eps_values = [
            0.1 * float((margins[:, -1] - margins[:, -2]).median()) / L * k for k in (1, 4)
        ]
    certified_any = 0
    for eps in eps_values:
        lip = nemon.certify(model, u, labels, eps, method="lipschitz", input_range=None)
        pair = nemon.certify(model, u, labels, eps, method="pairwise", input_range=None)
        assert torch.all(pair | ~lip)  # pairwise is never weaker
        certified_any += int(pair.sum())
        # PGD at the same radius must never flip a certified point
        broken = pgd_breaks(model, u, labels, eps)
        assert not torch.any(broken & pair)
    assert certified_any > 0  # the test exercises certified points


def test_certify_list_of_radii_and_method_check():
    model = classifier("nemon")
    u = torch.randn(5, 5, dtype=DT)
    out = nemon.certify(
        model, u, torch.zeros(5, dtype=torch.long), [0.0, 1e-3, 1.0], input_range=None
    )
    assert out.shape == (3, 5)
    assert torch.all(out[0] >= out[1]) and torch.all(out[1] >= out[2])
    with pytest.raises(ValueError, match="certificate"):
        nemon.certify(model, u, torch.zeros(5, dtype=torch.long), 0.1, method="magic")
