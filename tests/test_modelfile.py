"""One model file: nemon.save / nemon.load rebuild every model the library can describe, exactly;
what they cannot describe, and weights trained under another constraint, are refused by name."""

import json
from collections import OrderedDict

import pytest
import torch
from helpers import mnist_dir, requires_mnist
from safetensors.torch import save_file
from torch import nn

import nemon
from nemon import modelfile
from nemon.app.cli import main
from nemon.explicit import BatchNorm2d, Normalize


def _encoder():
    return nn.Sequential(
        Normalize([0.5], [0.25]),
        nn.Conv2d(1, 4, 3, stride=2, padding=1, padding_mode="replicate"),
        BatchNorm2d(4),
        nn.ReLU(),
        nn.AvgPool2d(2, ceil_mode=True),
        nn.Flatten(),
    )


def _models():
    torch.manual_seed(0)
    yield "nemon-dense", nemon.Classifier(nemon.NEMONDense(64, 12, gamma=0.5, learn_eta=True), 3)
    yield "idl", nemon.Classifier(nemon.IDLDense(64, 12, gamma=0.7), 3, direct=True)
    yield "mon", nemon.Classifier(nemon.MONDense(64, 12, activation="leaky_relu"), 3)
    yield "explicit", nemon.Classifier(nemon.ExplicitDense(64, 12), 3)
    yield "nemon-conv", nemon.Classifier(nemon.NEMONConv2d(1, 4, 8, padding="zeros", pool=2), 3)
    yield "mon-conv", nemon.Classifier(nemon.MONConv2d(1, 4, 8, pool=2), 3)
    enc = nemon.Classifier(nemon.NEMONDense(16, 12), 3, encoder=_encoder(), input_shape=(1, 8, 8))
    yield "encoder", enc
    yield "float64", nemon.Classifier(nemon.NEMONDense(64, 12, tol=1e-9), 3).double()
    members = [nemon.build_model("nemon", "dense", (1, 8, 8), 3, hidden=6) for _ in range(2)]
    yield "ensemble", nemon.Ensemble(members)


@pytest.mark.parametrize("name,model", list(_models()), ids=[n for n, _ in _models()])
def test_round_trip_is_exact(tmp_path, name, model):
    with torch.no_grad():  # non-trivial running statistics and weights
        for b in model.buffers():
            if b.is_floating_point() and b.dim() == 1 and b.numel() == 4:
                b.uniform_(0.5, 1.5)
    model.eval()
    path = nemon.save(model, tmp_path / "m.safetensors", data={"name": "mnist", "range": [0, 1]})
    loaded = nemon.load(path)
    x = torch.rand(5, 1, 8, 8, dtype=next(model.parameters()).dtype)
    assert type(loaded) is type(model)
    assert torch.equal(loaded(x), model(x))
    assert not loaded.training
    assert modelfile.model_data(path) == {"name": "mnist", "range": [0, 1]}
    state, again = model.state_dict(), loaded.state_dict()
    assert state.keys() == again.keys()
    assert all(torch.equal(state[k], again[k]) for k in state)


def test_solver_settings_changed_after_construction_travel(tmp_path):
    model = nemon.Classifier(nemon.MONDense(64, 8), 3)
    model.layer.set_splitting_step(0.125)
    model.layer.error_tol = 1e-6
    loaded = nemon.load(nemon.save(model, tmp_path / "m.safetensors"))
    assert loaded.layer.solver_options.method.step == 0.125
    assert loaded.layer.backward_options.method.step == 0.125
    assert loaded.layer.error_tol == 1e-6


def test_gamma_travels_with_the_weights():
    trained = nemon.NEMONDense(10, 5, gamma=0.95)
    with pytest.raises(ValueError, match=r"trained with gamma = 0.95.*has gamma = 0.3"):
        nemon.NEMONDense(10, 5, gamma=0.3).load_state_dict(trained.state_dict())
    nemon.NEMONDense(10, 5, gamma=0.95).load_state_dict(trained.state_dict())
    old = {k: v for k, v in trained.state_dict().items() if k != "gamma_bound"}
    nemon.NEMONDense(10, 5, gamma=0.3).load_state_dict(old)  # written before gamma travelled
    for make in (nemon.IDLDense, nemon.MONDense):
        with pytest.raises(ValueError, match="gamma"):
            make(10, 5, gamma=0.5).load_state_dict(make(10, 5, gamma=0.9).state_dict())
    conv = nemon.NEMONConv2d(1, 2, 8, gamma=0.9)
    with pytest.raises(ValueError, match="gamma"):
        nemon.NEMONConv2d(1, 2, 8, gamma=0.5).load_state_dict(conv.state_dict())


def test_a_module_it_cannot_describe_is_refused_by_name(tmp_path):
    class Scaled(nn.Linear):
        pass

    model = nemon.Classifier(
        nemon.NEMONDense(4, 6), 2, encoder=nn.Sequential(nn.Flatten(), Scaled(64, 4)),
        input_shape=(1, 8, 8),
    )  # fmt: skip
    with pytest.raises(modelfile.ModelFileError, match=r"model\.encoder\.1 is a .*Scaled"):
        nemon.save(model, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_files_that_are_not_model_files_are_refused(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(modelfile.ModelFileError, match="without a nemon model description"):
        nemon.load(plain)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(modelfile.ModelFileError, match="not a readable safetensors"):
        nemon.load(tmp_path / "junk.safetensors")
    crafted = {"format": modelfile.FORMAT, "module": {"type": "os.system", "args": {}}}
    evil = tmp_path / "evil.safetensors"
    save_file({"w": torch.zeros(2)}, str(evil), metadata={"nemon.model": json.dumps(crafted)})
    with pytest.raises(modelfile.ModelFileError, match="unknown module type 'os.system'"):
        nemon.load(evil)
    with pytest.raises(modelfile.ModelFileError, match="neither model.safetensors"):
        nemon.load(tmp_path)
    with pytest.raises(modelfile.ModelFileError, match="no such file"):
        nemon.load(tmp_path / "missing.safetensors")


def test_weights_that_do_not_fit_are_refused(tmp_path):
    path = nemon.save(nemon.Classifier(nemon.NEMONDense(64, 8), 3), tmp_path / "m.safetensors")
    info = modelfile.read_description(path)
    info["module"]["args"]["layer"]["module"]["args"]["hidden"] = 9
    modelfile.write(info, nemon.Classifier(nemon.NEMONDense(64, 8), 3).state_dict(), path)
    with pytest.raises(modelfile.ModelFileError, match="do not fit its description"):
        nemon.load(path)


def test_fit_writes_a_model_file_every_loader_reads(tmp_path):
    torch.manual_seed(0)
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 3, (32,))
    model = nemon.Classifier(nemon.NEMONDense(64, 8), 3)
    recipe = nemon.Recipe(epochs=1, batch_size=16)
    nemon.fit(model, ((x, y), (x, y)), recipe, out=tmp_path / "run", progress=False)
    expected = model.eval()(x)
    for path in (tmp_path / "run", tmp_path / "run" / "model.safetensors"):
        assert torch.equal(nemon.load(path)(x), expected)
    assert torch.equal(nemon.load(tmp_path / "run" / "checkpoint.pt")(x), expected)
    assert modelfile.model_data(tmp_path / "run") == {"name": "custom", "range": [0.0, 1.0]}


def test_shipped_model_by_name():
    model = nemon.load("mnist-cert-0.1")
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(model(x), nemon.load_pretrained("mnist-cert-0.1")(x))


@requires_mnist
def test_every_command_takes_what_fit_wrote(tmp_path, capsys):
    torch.manual_seed(0)
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    model = nemon.Classifier(nemon.NEMONDense(784, 8), 10)
    nemon.fit(model, ((x, y), (x, y)), nemon.Recipe(epochs=1), out=tmp_path / "run", progress=False)
    data = ["--test-limit", "20", "--data-dir", str(mnist_dir())]
    assert main(["eval", str(tmp_path / "run"), *data]) == 2  # its data has no name
    assert "pass --dataset" in capsys.readouterr().err
    for path in ("run", "run/model.safetensors", "run/checkpoint.pt"):
        assert (
            main(["certify", str(tmp_path / path), "--eps", "0.01", "--dataset", "mnist", *data])
            == 0
        )
    onnx = tmp_path / "m.onnx"
    assert main(["export", str(tmp_path / "run"), "--onnx", str(onnx)]) == 0
    assert onnx.is_file()


def test_half_precision_and_named_children_round_trip(tmp_path):
    torch.manual_seed(0)
    for dtype in (torch.bfloat16, torch.float16):  # gamma_bound is cast with the model
        model = nemon.build_model("nemon", "dense", (1, 8, 8), 3, hidden=8).to(dtype)
        model.load_state_dict(model.state_dict())
        assert nemon.load(nemon.save(model, tmp_path / f"{dtype}.safetensors")).layer.gamma == 0.95
    encoder = nn.Sequential(
        OrderedDict(conv=nn.Conv2d(1, 4, 3, 2, 1), act=nn.ReLU(), flat=nn.Flatten())
    )
    model = nemon.Classifier(nemon.NEMONDense(64, 6), 3, encoder=encoder, input_shape=(1, 8, 8))
    loaded = nemon.load(nemon.save(model.eval(), tmp_path / "named.safetensors"))
    assert list(loaded.encoder._modules) == ["conv", "act", "flat"]
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))


def test_a_damaged_description_is_refused(tmp_path):
    path = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"nemon.model": "{not json"})
    with pytest.raises(modelfile.ModelFileError, match="not valid JSON"):
        nemon.load(path)


def test_the_model_file_keeps_a_tuned_splitting_step(tmp_path):
    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 4, 4), torch.randint(0, 2, (64,))
    model = nemon.Classifier(nemon.MONDense(16, 6), 2)
    nemon.fit(model, ((x, y), (x, y)), nemon.Recipe(epochs=1, batch_size=8), out=tmp_path / "r")
    tuned = model.layer.solver_options.method.step
    assert tuned is not None
    assert (
        nemon.load(tmp_path / "r" / "model.safetensors").layer.solver_options.method.step == tuned
    )
