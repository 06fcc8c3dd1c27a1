"""nemon.fit: the library's training API, for a user's own classifier and for the presets."""

import dataclasses
import json
from dataclasses import asdict

import pytest
import torch
from helpers import tiny_data
from torch import nn

import nemon
from nemon.app.config import PRESETS, TrainConfig
from nemon.attacks import accuracy_under_attack
from nemon.runs import RunFolderError


def custom_model(seed: int = 0) -> nemon.Classifier:
    """A user's own model: an explicit conv encoder into a NEMON layer."""
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten())
    layer = nemon.NEMONDense(4 * 4 * 4, 16, gamma=0.5)
    return nemon.Classifier(layer, 2, encoder=encoder, input_shape=(1, 8, 8))


SMALL = nemon.Recipe(epochs=2, batch_size=32, lr=1e-2, checkpoint_every=3)


def test_fit_trains_a_custom_model_and_lowers_its_loss():
    data = tiny_data()
    model = custom_model()
    before = nemon.evaluate(model, data.test_x, data.test_y)["loss"]
    result = nemon.fit(model, data, SMALL.replace(epochs=6, lr=3e-2), progress=False)
    assert result.model is model and not result.stopped
    assert [h["epoch"] for h in result.history] == list(range(1, 7))
    assert nemon.evaluate(model, data.test_x, data.test_y)["loss"] < 0.9 * before
    assert result["history"] is result.history  # the command line's dictionary view


def test_fit_accepts_tensors_and_a_recipe_by_name():
    data = tiny_data()
    pairs = ((data.train_x, data.train_y), (data.test_x, data.test_y))
    recipe = nemon.RECIPES["paper"].replace(epochs=1, batch_size=50)
    result = nemon.fit(custom_model(), pairs, recipe, progress=False)
    assert len(result.history) == 1 and 0 <= result.history[0]["test_accuracy"] <= 1
    with pytest.raises(ValueError, match="unknown recipe 'fast'; choose one of paper"):
        nemon.fit(custom_model(), pairs, "fast")
    with pytest.raises(ValueError, match=r"data must be a nemon.data.Dataset or \(train, test\)"):
        nemon.fit(custom_model(), data.train_x, recipe)
    with pytest.raises(ValueError, match="200 train inputs for 3 labels"):
        nemon.fit(custom_model(), ((data.train_x, data.train_y[:3]), pairs[1]), recipe)


def test_certified_recipe_on_a_custom_model_certifies_more_than_clean_training():
    """Interval training (a radius ramp) through the user's encoder, then the certificate."""
    data = tiny_data(n=440)
    recipe = SMALL.replace(epochs=4, cert_eps=0.05, cert_weight=1.0, cert_eval_eps=(0.02,))
    robust = nemon.fit(custom_model(), data, recipe, progress=False).model.eval()
    clean = nemon.fit(custom_model(), data, recipe.replace(cert_eps=0.0), progress=False).model
    x, y = data.test_x, data.test_y
    ok_robust = nemon.certify(robust, x, y, 0.02).float().mean()
    ok_clean = nemon.certify(clean.eval(), x, y, 0.02).float().mean()
    assert ok_robust > ok_clean
    assert "certified" in nemon.fit(custom_model(), data, recipe.replace(epochs=1)).history[0]


def test_recipes_validate_and_replace_names_the_setting():
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        nemon.Recipe(epochs=0)
    with pytest.raises(ValueError, match="cert_weight must be a finite number >= 0 and <= 1"):
        SMALL.replace(cert_weight=1.5)
    with pytest.raises(ValueError, match=r"unknown recipe settings \['radius'\]"):
        SMALL.replace(radius=0.1)
    with pytest.raises(ValueError, match="swa_start must be at most epochs"):
        nemon.Recipe(epochs=2, swa_start=3)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_model_plus_a_named_recipe(name):
    recipe = TrainConfig(**PRESETS[name]).recipe()
    named = {k: v for k, v in nemon.RECIPES.items() if asdict(v) == asdict(recipe.replace(seed=0))}
    overridden = {"cifar10-conv", "fashion-conv-quick"}  # the paper's recipe, batch and lr of 6.3
    assert named or name in overridden, name


def test_fit_writes_a_run_folder_and_resumes_it_exactly(tmp_path):
    data = tiny_data()
    full = nemon.fit(custom_model(), data, SMALL, out=tmp_path / "full", progress=False)
    cut = nemon.fit(
        custom_model(), data, SMALL, out=tmp_path / "cut", progress=False, stop_after_steps=9
    )
    assert cut.stopped and len(cut.history) == 1
    resumed = nemon.fit(custom_model(1), data, SMALL, out=tmp_path / "cut", resume=True)
    for key, value in full.model.state_dict().items():
        assert torch.allclose(value, resumed.model.state_dict()[key], atol=1e-6), key
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    with pytest.raises(RunFolderError, match=r"other settings \(recipe.lr: 0.01 -> 0.02"):
        nemon.fit(custom_model(), data, SMALL.replace(lr=2e-2), out=tmp_path / "cut", resume=True)
    with pytest.raises(RunFolderError, match="not empty"):
        nemon.fit(custom_model(), data, SMALL, out=tmp_path / "cut")
    with pytest.raises(RunFolderError, match="resume needs the run folder"):
        nemon.fit(custom_model(), data, SMALL, resume=True)


def test_fit_trains_any_module_on_a_clean_recipe_and_refuses_a_certified_one():
    data = tiny_data()
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 2))
    result = nemon.fit(mlp, data, SMALL.replace(epochs=1), progress=False)
    assert result.history[0]["lipschitz"] is None and result.history[0]["forward_iterations"] == 0
    with pytest.raises(ValueError, match=r"radius \(cert_eps\) needs a nemon.Classifier"):
        nemon.fit(mlp, data, SMALL.replace(cert_eps=0.1))
    for bad in (0, "many", 2.5):
        with pytest.raises(ValueError, match="threads must be an integer from 1 to 1024"):
            nemon.fit(small_model_for_threads(), data, SMALL, threads=bad)
    with pytest.raises(ValueError, match="fit needs a torch module with parameters"):
        nemon.fit(lambda u: u, data, SMALL)


def small_model_for_threads():
    return nemon.build_model("nemon", "dense", input_shape=(1, 8, 8), num_classes=2, hidden=4)


def test_progress_bars_only_on_a_terminal(capsys):
    """Output to a file (not a terminal): one line per epoch, no progress bar."""
    nemon.fit(custom_model(), tiny_data(), SMALL, progress=None)
    captured = capsys.readouterr()
    assert captured.out.count("epoch ") == 2 and "test acc" in captured.out
    assert "it/s" not in captured.err and "epoch 1/2" not in captured.err
    nemon.fit(custom_model(), tiny_data(), SMALL, progress=False)
    assert capsys.readouterr().out == ""


def test_a_loose_training_tolerance_leaves_evaluation_at_the_layers_own():
    """``solve_tol``: training solves stop earlier; evaluation, and the layer after training,
    keep the layer's tolerance."""
    data = tiny_data()
    runs = {}
    for tol in (None, 0.5):
        torch.manual_seed(0)
        model = nemon.build_model("nemon", "dense", input_shape=(1, 8, 8), num_classes=2, hidden=8)
        model.layer.solver_options = dataclasses.replace(model.layer.solver_options, tol=1e-8)
        before = model.layer.solver_options
        runs[tol] = nemon.fit(model, data, SMALL.replace(epochs=1, solve_tol=tol), progress=False)
        assert model.layer.solver_options == before
    assert runs[0.5].history[0]["forward_iterations"] < runs[None].history[0]["forward_iterations"]
    evaluated = nemon.evaluate(runs[0.5].model, data.test_x, data.test_y)["forward_iterations"]
    assert evaluated > runs[0.5].history[0]["forward_iterations"]  # at the layer's 1e-8
    with pytest.raises(ValueError, match="solve_tol must be a finite number >= 1e-15"):
        SMALL.replace(solve_tol=0.0)


def test_adam_is_fused_on_cpu_and_takes_the_state_of_plain_adam():
    """fit's Adam runs the fused kernel; a checkpoint written by plain Adam (older runs) loads
    into it and the next steps equal plain Adam's."""
    import copy

    from nemon.training import adam

    torch.manual_seed(0)
    weights = [torch.randn(5, 3, requires_grad=True), torch.randn(3, requires_grad=True)]
    copies = [w.detach().clone().requires_grad_() for w in weights]
    plain = torch.optim.Adam(weights, lr=1e-2)

    def step(opt, params):
        loss = sum((p**2).sum() for p in params)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(plain, weights)
    fused = adam(copies, 1e-2)
    assert fused.defaults["fused"] is True
    with torch.no_grad():
        for c, w in zip(copies, weights):
            c.copy_(w)
    fused.load_state_dict(copy.deepcopy(plain.state_dict()))  # as read back from a file
    for _ in range(3):
        step(plain, weights)
        step(fused, copies)
    for c, w in zip(copies, weights):
        assert torch.allclose(c, w, atol=1e-6)


def _tiny_classifier(classes: int = 2) -> nemon.Classifier:
    torch.manual_seed(0)
    return nemon.build_model("nemon", input_shape=(1, 8, 8), num_classes=classes, hidden=8)


def _damaged(damage):
    data = tiny_data()
    data = dataclasses.replace(data, train_y=data.train_y.clone(), test_x=data.test_x.clone())
    data = dataclasses.replace(data, train_x=data.train_x.clone())
    damage(data)
    return data


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d.train_y.__setitem__(5, 7), r"train_y\[5\] is 7; labels must be in \[0, 2\)"),
        (lambda d: d.train_y.__setitem__(9, -1), r"train_y\[9\] is -1"),
        (lambda d: setattr(d, "test_y", d.test_y.float()), "test_y must hold integer class labels"),
        (lambda d: d.train_x.__setitem__(190, float("nan")), r"train_x\[190\] holds NaN"),
        (lambda d: d.test_x.__setitem__(3, float("inf")), r"test_x\[3\] holds an infinite value"),
        (lambda d: setattr(d, "test_x", d.test_x[:, :, :4]), r"test_x holds samples of shape"),
        (lambda d: setattr(d, "train_x", d.train_x.double()), "train_x is torch.float64 and"),
        (lambda d: setattr(d, "test_y", d.test_y[:, None]), "one label per sample"),
    ],
    ids=["label-7", "label-negative", "float-labels", "nan-late", "inf-test", "shape", "dtype",
         "label-shape"],
)  # fmt: skip
def test_fit_checks_the_data_before_writing_anything(tmp_path, damage, message):
    """Each problem with the data is one ValueError naming the split and the index, raised
    before the run folder is made (not an IndexError or a NaN loss after files exist)."""
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        nemon.fit(_tiny_classifier(), _damaged(damage), SMALL, out=out, progress=False)
    assert not out.exists()


def test_fit_takes_integer_labels_of_any_width():
    data = tiny_data()
    pairs = ((data.train_x, data.train_y.int()), (data.test_x, data.test_y.to(torch.uint8)))
    result = nemon.fit(_tiny_classifier(), pairs, SMALL.replace(epochs=1), progress=False)
    assert len(result.history) == 1


def test_fit_gives_torch_its_thread_count_back(monkeypatch):
    before = torch.get_num_threads()
    other = 2 if before != 2 else 1
    nemon.fit(_tiny_classifier(), tiny_data(), SMALL.replace(epochs=1), threads=other)
    assert torch.get_num_threads() == before

    def broken(self, *args):
        assert torch.get_num_threads() == other  # the run's own count while it trains
        raise RuntimeError("a failing step")

    monkeypatch.setattr(nemon.training._Trainer, "train_step", broken)
    with pytest.raises(RuntimeError, match="a failing step"):
        nemon.fit(_tiny_classifier(), tiny_data(), SMALL, threads=other, progress=False)
    assert torch.get_num_threads() == before


def test_evaluation_leaves_every_module_in_the_mode_it_was_in():
    """evaluate and certified_accuracy run in eval mode and restore each submodule's own mode
    (a frozen encoder in eval mode inside a model in training mode stays so), also on errors."""
    model = custom_model().train()
    model.encoder.eval()
    modes = {name: m.training for name, m in model.named_modules()}
    data = tiny_data()
    nemon.evaluate(model, data.test_x, data.test_y)
    assert {name: m.training for name, m in model.named_modules()} == modes
    nemon.evaluation.certified_accuracy(model, data.test_x[:8], data.test_y[:8], [0.01])
    assert {name: m.training for name, m in model.named_modules()} == modes
    accuracy_under_attack(model, data.test_x[:8], data.test_y[:8], [0.01], "fgsm")
    assert {name: m.training for name, m in model.named_modules()} == modes
    with pytest.raises(ValueError):
        nemon.evaluation.certified_accuracy(model, data.test_x[:8], data.test_y[:8], [0.1], "none")
    assert {name: m.training for name, m in model.named_modules()} == modes
    result = nemon.fit(model, data, SMALL.replace(epochs=1), progress=False)
    assert not any(m.training for m in result.model.modules())  # fit returns it for use
