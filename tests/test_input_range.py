"""The input range: one setting, one name (`input_range`) across fit, certify, verify, the attacks
and export; a dataset carries it; nothing is clamped to a range the data does not live in."""

import pytest
import torch

import nemon
from nemon.attacks import ATTACKS
from nemon.data import Dataset


def _tabular(n=96, features=6, seed=0):
    """Standardized features (mean 0, std 1, values well outside [0, 1]), two classes."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, features, generator=g) + 1.5 * (2 * y[:, None] - 1)
    x = (x - x.mean(0)) / x.std(0)
    return x, y


def _model(features=6):
    torch.manual_seed(0)
    return nemon.Classifier(nemon.NEMONDense(features, 16, gamma=0.5), 2, input_shape=(features,))


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attacks_refuse_inputs_outside_the_range_and_stay_within_eps_without_one(attack):
    x, y = _tabular()
    model = _model().eval()
    with pytest.raises(ValueError, match=r"outside .*input_range=\(0, 1\).*input_range=None"):
        ATTACKS[attack](model, x, y, 0.05)

    def distance(adv):  # in float64, where the ball's ends are rounded inwards
        return float((adv.double() - x.double()).abs().max())

    assert distance(ATTACKS[attack](model, x, y, 0.05, input_range=None)) <= 0.05  # not ~12
    wide = (float(x.min()) - 1, float(x.max()) + 1)
    assert distance(ATTACKS[attack](model, x, y, 0.05, input_range=wide)) <= 0.05


def test_an_unknown_setting_is_an_error_not_ignored():
    x, y = _tabular()
    with pytest.raises(TypeError):
        ATTACKS["fgsm"](_model().eval(), x, y, 0.05, box=None)
    ok = nemon.accuracy_under_attack(
        _model(), x, y, [0.05], attack="inversion", input_range=None, steps=3
    )  # PGD's settings are ignored by the other attacks
    assert len(ok) == 1


def test_certify_and_verify_share_the_name():
    x, y = _tabular()
    model = _model().eval()
    for call in (nemon.certify, nemon.margin_bounds):
        with pytest.raises(ValueError, match="outside input_range"):
            call(model, x, y, 0.01)
    assert nemon.certify(model, x, y, 0.01, input_range=None).shape == (len(x),)
    pytest.importorskip("highspy")
    result = nemon.verify(model, x[:3], y[:3], 0.01, input_range=None, time_limit=5)
    assert (result.certified | result.falsified).all()
    with pytest.raises(ValueError, match="outside input_range"):
        nemon.verify(model, x[:3], y[:3], 0.01)


def test_fit_on_standardized_data_with_a_certified_recipe(tmp_path):
    """Tabular data, certified training, certified end to end: the range comes from the data."""
    x, y = _tabular()
    model = _model()
    recipe = nemon.RECIPES["ibp-0.1"].replace(
        epochs=2, warmup_epochs=0, cert_ramp_epochs=1, batch_size=32, cert_eval_limit=32
    )
    result = nemon.fit(model, ((x, y), (x, y)), recipe, out=tmp_path / "run", progress=False)
    assert len(result.history) == 2 and "certified" in result.history[-1]
    assert nemon.modelfile.model_data(tmp_path / "run") == {"name": "custom", "range": None}
    loaded = nemon.load(tmp_path / "run")
    certified = nemon.certify(loaded, x, y, 0.01, input_range=None)
    assert bool(certified.any())


def test_fit_refuses_data_outside_the_range_before_writing(tmp_path):
    x, y = _tabular()
    with pytest.raises(ValueError, match=r"input_range \(data train_x\)"):
        nemon.fit(_model(), ((x, y), (x, y)), "paper", out=tmp_path / "run", input_range=(0, 1))
    assert not (tmp_path / "run").exists()
    data = Dataset("mine", x, y, x, y, input_range=(0.0, 1.0))  # a dataset's range is believed
    with pytest.raises(ValueError, match="outside input_range"):
        nemon.fit(_model(), data, "paper", out=tmp_path / "run")
    with pytest.raises(ValueError, match="lo < hi"):
        nemon.fit(_model(), ((x, y), (x, y)), "paper", input_range=(1, 0))


def test_images_keep_the_unit_range(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 1, 4, 4, generator=g), torch.randint(0, 2, (16,), generator=g)
    model = nemon.Classifier(nemon.NEMONDense(16, 8), 2)
    recipe = nemon.Recipe(epochs=1, batch_size=8)
    nemon.fit(model, ((x, y), (x, y)), recipe, progress=False)  # inferred (0, 1): no error
    with pytest.raises(ValueError, match="input_range"):
        nemon.export_onnx(model.eval(), tmp_path / "m.onnx", input_range=None)
