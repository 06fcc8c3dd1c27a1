import math

import numpy as np
import pytest
import torch

import nemon
from nemon.contraction import (
    theorem1_alpha_star,
    theorem1_factor,
    theorem1_kappa,
    theorem2_alpha_star,
    theorem2_factor,
    theorem2_kappa,
)


@pytest.mark.parametrize("lip,osl", [(1.0, 0.5), (3.0, -1.0), (10.0, 0.9), (0.5, 0.0)])
def test_theorem1_alpha_star_minimises_the_factor(lip, osl):
    c = 1 - osl
    upper = c / ((c + lip + 1) * (lip + 1))
    grid = np.linspace(upper * 1e-4, upper * (1 - 1e-9), 200001)
    values = [theorem1_factor(a, lip, c) for a in grid[::50]]
    best = grid[::50][int(np.argmin(values))]
    ours = theorem1_alpha_star(lip, osl)
    assert ours == pytest.approx(best, rel=2e-3)
    kappa = theorem1_kappa(lip, osl)
    expansion = (1 / (2 * kappa**2) - 3 / (8 * kappa**3)) / (1 - osl)
    assert ours == pytest.approx(expansion, rel=2 / kappa**2 + 1e-3)
    # the literal prefactor kappa / (1 - osL) of Theorem 1(v) leaves the admissible interval
    literal = kappa / (1 - osl) * (1 - 1 / math.sqrt(1 + 1 / kappa))
    assert literal > upper
    assert theorem1_factor(ours, lip, c) < 1


def test_theorem2_constants_match_the_solver():
    A = torch.tensor([[-3.0, 0.5], [0.2, -0.5]])
    diag = float(torch.diagonal(A).min())
    osl = max(float(nemon.mu_inf(A)), 0.0)  # osL(Phi(Ax + z)) <= mu(A)_+ for slopes in [0, 1]
    assert theorem2_alpha_star(diag) == nemon.alpha_star(torch.diagonal(A)) == 0.25
    assert theorem2_factor(0.25, osl, diag) == pytest.approx(nemon.contraction_factor(0.25, osl))
    assert theorem2_factor(0.25, osl, diag) == pytest.approx(1 - 1 / theorem2_kappa(osl, diag))
    with pytest.raises(ValueError, match="Theorem 2"):
        theorem2_factor(0.3, osl, diag)
    with pytest.raises(ValueError, match="osL"):
        theorem1_kappa(1.0, 1.0)
