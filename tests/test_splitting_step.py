"""MON's splitting step, tuned as MON's code tunes it, and kept by checkpoints."""

from dataclasses import replace

import pytest
import torch
from helpers import tiny_data

import nemon
from nemon.layers import MONDense, NEMONDense


def mon_layer(seed=0):
    torch.manual_seed(seed)
    layer = MONDense(12, 20, gamma=0.5, tol=1e-4)
    with torch.no_grad():
        layer.parametrizations.A.original0.mul_(4.0)  # a stiff A: step 1 is not the best
    return layer


def test_the_tuned_step_is_the_halving_search_of_mon_code():
    """Halve from 1 while the iterations do not grow; keep the last step before they did.
    Checked against the counts of every step of the search, recomputed here."""
    layer = mon_layer()
    u = torch.randn(30, 12)

    def count(step):
        with layer.solver_settings(method=replace(layer.solver_options.method, step=step)):
            return layer.solve(u).stats.iterations

    counts = {2.0**-k: count(2.0**-k) for k in range(0, 14)}
    expected, k = 1.0, 1
    while 2.0**-k >= 1e-4 and counts[2.0**-k] <= counts[expected]:
        expected, k = 2.0**-k, k + 1
    step = layer.tune_splitting_step(u)
    assert step == expected and step < 1.0  # the search moved, to the step MON's code picks
    assert layer.solver_options.method == layer.backward_options.method
    assert layer.solver_options.method.step == step
    assert layer.solve(u).stats.iterations == counts[step] < counts[1.0]


def test_averaged_layers_keep_their_best_step():
    layer = NEMONDense(12, 20)
    assert layer.tune_splitting_step(torch.randn(4, 12)) is None
    assert layer.solver_options.method == nemon.solvers.Diagonal()  # its best steps, untouched


def test_fit_tunes_mon_and_resumes_with_the_tuned_step(tmp_path):
    data = tiny_data()
    recipe = nemon.Recipe(epochs=2, batch_size=20, lr=1e-2, checkpoint_every=3)

    def model():
        torch.manual_seed(0)
        return nemon.build_model("mon", "dense", (1, 8, 8), 2, hidden=16, gamma=0.5)

    full = nemon.fit(model(), data, recipe, out=tmp_path / "full", progress=False)
    assert full.model.layer.solver_options.method.step is not None  # tuned at steps 5 and 10 of 10
    cut = nemon.fit(model(), data, recipe, out=tmp_path / "cut", progress=False,
                    stop_after_steps=13)  # fmt: skip
    assert cut.stopped
    fresh = model()
    assert fresh.layer.solver_options.method.step is None
    resumed = nemon.fit(fresh, data, recipe, out=tmp_path / "cut", resume=True, progress=False)
    for key, value in full.model.state_dict().items():
        assert torch.allclose(value, resumed.model.state_dict()[key], atol=1e-6), key
    off = nemon.fit(model(), data, recipe.replace(tune_splitting_step=False), progress=False)
    assert off.model.layer.solver_options.method.step is None


def test_the_setting_is_a_bool():
    with pytest.raises(ValueError, match="tune_splitting_step must be True or False"):
        nemon.Recipe(tune_splitting_step="yes")
