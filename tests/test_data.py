import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import mnist_dir, requires_mnist

from nemon import data
from nemon.data import DataError, find_data_dir, load_dataset, read_cifar10, read_idx


def write_idx(path, array: np.ndarray, truncate: int = 0, magic=None):
    header = bytes([0, 0, 8, array.ndim]) if magic is None else magic
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as f:
        f.write(payload[: len(payload) - truncate])


def fake_idx_dataset(folder, n_train=12, n_test=6):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, n_train))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, n_test))


def test_read_idx_round_trip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", a)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), a)


def test_truncated_idx_names_the_file(tmp_path):
    write_idx(tmp_path / "x.gz", np.zeros((3, 4, 4)), truncate=5)
    with pytest.raises(DataError, match=r"x\.gz is truncated"):
        read_idx(tmp_path / "x.gz")


def test_bad_magic_and_not_gzip(tmp_path):
    write_idx(tmp_path / "m.gz", np.zeros((2, 2)), magic=bytes([0, 0, 9, 2]))
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "m.gz")
    (tmp_path / "plain.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"plain\.gz is not a readable gzip"):
        read_idx(tmp_path / "plain.gz")


def test_load_idx_dataset_without_checksum(tmp_path):
    fake_idx_dataset(tmp_path / "mnist")
    ds = load_dataset("mnist", tmp_path, download=False, verify=False)
    assert ds.train_x.shape == (12, 1, 28, 28) and ds.test_y.shape == (6,)
    assert ds.train_x.dtype == torch.float32 and 0 <= ds.train_x.min() and ds.train_x.max() <= 1


def test_checksum_mismatch_is_reported(tmp_path):
    fake_idx_dataset(tmp_path / "mnist")
    with pytest.raises(DataError, match="corrupt: its md5"):
        load_dataset("mnist", tmp_path, download=False)


def test_missing_files_and_failed_download(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="missing file train-images"):
        load_dataset("mnist", tmp_path, download=False)

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="could not download train-images.*--data-dir"):
        load_dataset("mnist", tmp_path)
    assert not list((tmp_path / "mnist").glob("*"))  # no partial file left behind


def test_download_is_atomic_and_checked(tmp_path, monkeypatch):
    payload = b"hello"

    def fake(url, timeout):
        return io.BytesIO(payload)

    monkeypatch.setattr(data.urllib.request, "urlopen", fake)
    target = tmp_path / "f.bin"
    data._download(["http://mirror/f.bin"], target, md5=None)
    assert target.read_bytes() == payload
    with pytest.raises(DataError, match="checksum mismatch"):
        data._download(["http://mirror/f.bin"], tmp_path / "g.bin", md5="0" * 32)
    assert not (tmp_path / "g.bin").exists()


def test_data_dir_discovery(tmp_path, monkeypatch):
    monkeypatch.setenv("NEMON_DATA_DIR", str(tmp_path))
    assert find_data_dir() == tmp_path
    assert find_data_dir("/somewhere") == Path("/somewhere")  # an explicit folder wins
    assert find_data_dir("~/d") == Path.home() / "d"
    monkeypatch.delenv("NEMON_DATA_DIR")
    assert find_data_dir().name == "nemon"


def write_cifar(path, n_per_batch=4, drop=None, corrupt=False):
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for name in names:
            if name == drop:
                continue
            cols = 3071 if corrupt else 3072
            batch = {
                b"data": rng.integers(0, 256, (n_per_batch, cols), dtype=np.uint8),
                b"labels": list(rng.integers(0, 10, n_per_batch)),
            }
            raw = pickle.dumps(batch)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


def test_cifar10_reader(tmp_path):
    write_cifar(tmp_path / "c.tar.gz")
    ds = read_cifar10(tmp_path / "c.tar.gz")
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_x.shape == (4, 3, 32, 32)
    assert ds.train_y.dtype == torch.int64


def test_cifar10_errors(tmp_path):
    write_cifar(tmp_path / "a.tar.gz", drop="data_batch_3")
    with pytest.raises(DataError, match="lacks data_batch_3"):
        read_cifar10(tmp_path / "a.tar.gz")
    write_cifar(tmp_path / "b.tar.gz", corrupt=True)
    with pytest.raises(DataError, match="batch data_batch_1 has data"):
        read_cifar10(tmp_path / "b.tar.gz")
    (tmp_path / "c.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match=r"c\.tar\.gz is not a readable CIFAR-10"):
        read_cifar10(tmp_path / "c.tar.gz")


@requires_mnist
def test_real_mnist():
    ds = load_dataset("mnist", mnist_dir(), download=False)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.num_classes == 10


@pytest.mark.skipif(
    not (Path("/usr/share/datasets/fashion-mnist") / "t10k-labels-idx1-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_fashion_mnist_from_debian(tmp_path):
    ds = load_dataset("fashion-mnist", tmp_path, download=False)  # found in the system folder
    assert ds.test_x.shape == (10000, 1, 28, 28) and ds.num_classes == 10


def test_the_test_split_alone_needs_only_its_files(tmp_path):
    """Evaluation offline with only MNIST's test files (the CLI's commands read no more)."""
    from helpers import mnist_dir

    source = mnist_dir()
    if source is None:
        pytest.skip("MNIST originals not found")
    (tmp_path / "mnist").mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / "mnist" / name).write_bytes((source / "mnist" / name).read_bytes())
    data = load_dataset("mnist", tmp_path, download=False, test_only=True)
    assert data.test_x.shape == (10000, 1, 28, 28) and len(data.train_x) == 0
    with pytest.raises(DataError, match="train-images"):
        load_dataset("mnist", tmp_path, download=False)
