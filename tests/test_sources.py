"""fit takes tensors, NumPy arrays, map-style datasets and DataLoaders; each is checked before a
file is written, and tensors, arrays and datasets train bit for bit alike."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data import Dataset as TorchDataset

import nemon


def _data(n=60):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 2, (n,), generator=g)


def _fit(data, **kw):
    torch.manual_seed(0)
    model = nemon.Classifier(nemon.NEMONDense(16, 6), 2)
    return nemon.fit(model, data, nemon.Recipe(epochs=2, batch_size=20), progress=False, **kw)


class _Flips(TorchDataset):
    """A dataset with a random transform in __getitem__ (augmentation)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        flip = bool(torch.rand(()) < 0.5)
        return (self.x[i].flip(-1) if flip else self.x[i]).numpy(), int(self.y[i])


def test_tensors_arrays_and_datasets_train_alike():
    x, y = _data()
    losses = {
        name: [h["train_loss"] for h in _fit(data).history]
        for name, data in {
            "tensors": ((x, y), (x, y)),
            "arrays": ((x.double().numpy(), y.numpy()), (x.numpy(), y.int().numpy())),
            "datasets": (TensorDataset(x, y), TensorDataset(x, y)),
        }.items()
    }
    assert losses["tensors"] == losses["arrays"] == losses["datasets"]


def test_a_dataloader_with_transforms_trains_and_resumes(tmp_path):
    x, y = _data()
    loader = DataLoader(_Flips(x, y), batch_size=15, shuffle=True)
    result = _fit((loader, DataLoader(TensorDataset(x, y), batch_size=7)), out=tmp_path / "r")
    assert [h["train_samples"] for h in result.history] == [60, 60]
    assert nemon.load(tmp_path / "r")(x).shape == (60, 2)
    resumed = _fit((loader, (x, y)), out=tmp_path / "r", resume=True)
    assert len(resumed.history) == 2


@pytest.mark.parametrize(
    "train,match",
    [
        ("nan", r"train_x\[3\] holds NaN"),
        ("labels", r"train_y\[0\] is 5; labels must be in \[0, 2\)"),
        ("shape", r"samples of shape \(1, 3, 3\)"),
        ("triples", r"must be \(inputs, labels\) pairs"),
        ("strings", "must be tensors or NumPy arrays"),
        ("empty", "yields no batches"),
    ],
)
def test_bad_data_is_refused_before_any_file(tmp_path, train, match):
    x, y = _data()
    bad = {
        "nan": lambda: TensorDataset(
            torch.where(torch.arange(60)[:, None, None, None] == 3, float("nan"), x), y
        ),
        "labels": lambda: TensorDataset(x, torch.full_like(y, 5)),
        "shape": lambda: TensorDataset(torch.rand(60, 1, 3, 3), y),
        "triples": lambda: TensorDataset(x, y, y),
        "strings": lambda: [("a", 0)] * 3,
        "empty": lambda: DataLoader(TensorDataset(x[:0], y[:0]), batch_size=4),
    }[train]()
    with pytest.raises(ValueError, match=match):
        _fit((bad, (x, y)), out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_every_batch_of_a_dataset_is_checked(tmp_path):
    """The first batches set the range; a later batch outside it stops the run by name."""
    x, y = _data()
    x[45:] = x[45:] * 3  # samples the first two batches (in dataset order) do not hold
    with pytest.raises(nemon.InputError, match=r"training batch \d+ of epoch 1: .*input_range"):
        _fit((TensorDataset(x, y), (x[:20], y[:20])), out=tmp_path / "r")


def test_an_iterable_loader_is_refused():
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter([(torch.rand(1, 4, 4), 0)] * 4)

    x, y = _data()
    with pytest.raises(nemon.InputError, match="IterableDataset has no length"):
        _fit((DataLoader(Stream(), batch_size=2), (x, y)))
