"""Ensembles: the mean of the members' logits, certified by the mean of their margin bounds."""

import json
import math

import pytest
import torch
from helpers import classifier, config, pgd_breaks, tiny_data

import nemon
from nemon import pretrained
from nemon.app import cli, loading
from nemon.app.shipping import save_pretrained
from nemon.app.train import load_checkpoint, train
from nemon.certificates import _margin_bounds, _tight
from nemon.export import ExportError, export_onnx

DT = torch.float64
METHODS = ["interval", "pairwise", "lipschitz"]


def _inputs(model, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, *model.input_shape, generator=g, dtype=DT)
    with torch.no_grad():
        return u, model(u).argmax(1)


def _bounds(model, u, labels, eps, method):
    with _tight(model, 1e-12, u):
        return _margin_bounds(model, u, labels, [eps], method, None)[1][0]


def test_forward_is_the_mean_of_the_members():
    a, b = classifier("nemon-eta", seed=1), classifier("idl", seed=2)
    ens = nemon.Ensemble([a, b])
    u, _ = _inputs(ens)
    with torch.no_grad():
        assert torch.allclose(ens(u), (a(u) + b(u)) / 2, atol=1e-12)
    assert float(ens.lipschitz_bound()) == pytest.approx(
        (float(a.lipschitz_bound()) + float(b.lipschitz_bound())) / 2
    )


@pytest.mark.parametrize("method", METHODS)
def test_one_member_certifies_as_the_member(method):
    model = classifier("nemon-eta", seed=3)
    u, labels = _inputs(model)
    for eps in (0.01, 0.05, 0.2):
        alone = nemon.certify(model, u, labels, eps, method=method, input_range=None)
        ens = nemon.certify(
            nemon.Ensemble([model]), u, labels, eps, method=method, input_range=None
        )
        assert torch.equal(alone, ens)


@pytest.mark.parametrize("method", METHODS)
def test_bounds_are_the_members_mean_and_hold_in_the_ball(method):
    a, b = classifier("nemon-eta", seed=4), classifier("nemon", seed=5)
    ens = nemon.Ensemble([a, b])
    u, labels = _inputs(ens)
    eps = 0.05
    bound = _bounds(ens, u, labels, eps, method)
    members = [_bounds(m, u, labels, eps, method) for m in (a, b)]
    assert torch.allclose(bound, (members[0] + members[1]) / 2, atol=1e-12)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(50):
            v = u + eps * torch.sign(torch.randn(u.shape, generator=g, dtype=DT))
            y = ens(v)
            assert torch.all(y.gather(1, labels[:, None]) - y >= bound - 1e-9)


@pytest.mark.slow
def test_interval_certificates_survive_pgd_and_need_every_member():
    a, b = classifier("nemon-eta", seed=6), classifier("nemon-eta", seed=7)
    ens = nemon.Ensemble([a, b])
    u, labels = _inputs(ens, n=60)
    certified_somewhere = False
    for eps in (0.005, 0.02, 0.05, 0.1):
        ok = nemon.certify(ens, u, labels, eps, method="interval", input_range=None)
        both = [
            nemon.certify(m, u, labels, eps, method="interval", input_range=None) for m in (a, b)
        ]
        assert torch.all(ok | ~(both[0] & both[1]))  # certified by both members: by the mean
        assert not torch.any(ok & pgd_breaks(ens, u, labels, eps))
        certified_somewhere |= bool(ok.any())
    assert certified_somewhere


def test_bad_members_are_refused():
    with pytest.raises(ValueError, match="at least one member"):
        nemon.Ensemble([])
    with pytest.raises(TypeError, match="member 1 is a Linear"):
        nemon.Ensemble([classifier("nemon"), torch.nn.Linear(5, 3)])
    other = nemon.Classifier(classifier("nemon").layer, 4)
    with pytest.raises(ValueError, match="disagree"):
        nemon.Ensemble([classifier("nemon"), other])


def test_a_member_that_cannot_certify_stops_the_ensemble():
    a, b = classifier("nemon-eta", seed=1), classifier("nemon-eta", seed=2)
    with torch.no_grad():
        b.readout.weight[0, 0] = math.nan
    ens = nemon.Ensemble([a, b])
    u, labels = _inputs(a)
    assert "member 1: parameter readout.weight" in nemon.certificate_obstacle(ens)
    with pytest.warns(nemon.CertificateWarning, match="member 1"):
        assert not nemon.certify(ens, u, labels, 0.01, method="interval", input_range=None).any()


@pytest.fixture
def shipped_ensemble(tmp_path, monkeypatch):
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"run{seed}"
        train(config(epochs=1, seed=seed), run, data=tiny_data(), progress=False)
        runs.append(run / "checkpoint.pt")
    root = tmp_path / "pretrained"
    save_pretrained(runs, root / "pair", "# pair\n", member_preset="tiny")
    monkeypatch.setattr(pretrained, "_root", lambda: root)
    return runs, root


def test_ensemble_round_trip_by_name(shipped_ensemble):
    runs, root = shipped_ensemble
    model = nemon.load_pretrained("pair")
    assert isinstance(model, nemon.Ensemble) and not model.training
    members = [load_checkpoint(r)[0].eval() for r in runs]
    x = tiny_data().test_x
    with torch.no_grad():
        assert torch.allclose(model(x), (members[0](x) + members[1](x)) / 2, atol=1e-6)
    info = json.loads((root / "pair" / "config.json").read_text())
    assert set(info) == {"members", "member_preset", "input_shape", "num_classes", "sha256"} | {
        "config_sha256"
    }
    assert [m["seed"] for m in info["members"]] == [0, 1]


def test_cli_evaluates_and_certifies_a_shipped_ensemble(shipped_ensemble, monkeypatch, capsys):
    data = tiny_data()
    monkeypatch.setattr(loading, "load_dataset", lambda name, data_dir=None, **_: data)
    assert cli.main(["eval", "pair"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert cli.main(["certify", "pair", "--eps", "0.01", "--method", "interval"]) == 0


def test_export_refuses_an_ensemble(shipped_ensemble, tmp_path):
    with pytest.raises(ExportError, match="got Ensemble"):
        export_onnx(nemon.load_pretrained("pair"), tmp_path / "pair.onnx")


def test_checkpoints_of_different_shapes_are_not_shipped_together(tmp_path):
    runs = []
    for i, data in enumerate((tiny_data(), tiny_data())):
        if i:
            data.test_x, data.train_x = data.test_x[..., :6], data.train_x[..., :6]
        train(config(epochs=1), tmp_path / f"r{i}", data=data, progress=False)
        runs.append(tmp_path / f"r{i}" / "checkpoint.pt")
    with pytest.raises(ValueError, match="disagree"):
        save_pretrained(runs, tmp_path / "bad", "#\n")


@pytest.mark.parametrize("method", METHODS)
def test_margin_bounds_are_what_certify_checks(method):
    model = nemon.Ensemble([classifier("nemon-eta", seed=8), classifier("idl", seed=9)])
    u, labels = _inputs(model)
    radii = [0.0, 0.01, 0.05]
    correct, bounds = nemon.margin_bounds(model, u, labels, radii, method=method, input_range=None)
    assert bounds.shape == (3, len(u), model.num_classes)
    assert torch.all(bounds.gather(2, labels[None, :, None].expand(3, -1, 1)) == 0)
    others = bounds.scatter(2, labels[None, :, None].expand(3, -1, 1), math.inf).amin(2)
    expected = nemon.certify(model, u, labels, radii, method=method, input_range=None)
    assert torch.equal(correct & (others > 0), expected)
    assert torch.all(bounds[1:] <= bounds[:-1] + 1e-12)  # a larger ball: never a larger bound
    single, one = nemon.margin_bounds(model, u, labels, 0.01, method=method, input_range=None)
    assert torch.equal(one, bounds[1]) and torch.equal(single, correct)
