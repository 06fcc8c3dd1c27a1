"""Datasets from their original files: MNIST, Fashion-MNIST (IDX gz) and CIFAR-10 (pickle tarball).

The data folder is the first of: the ``data_dir`` argument, ``$NEMON_DATA_DIR``, ``~/.cache/nemon``.
Each dataset lives in a sub-folder (``mnist``, ``fashion-mnist``, ``cifar-10``); Fashion-MNIST is
also found where Debian's ``dataset-fashion-mnist`` installs it. Missing files are downloaded from
mirrors (atomic write, md5 checked); every file is md5-verified before use, and a corrupt or
truncated file raises `DataError` naming it. Images are float32 in [0, 1], ``(N, C, H, W)``, and the datasets say so (``input_range``).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import pickle
import struct
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import InputError

__all__ = [
    "DataError",
    "Dataset",
    "DATASETS",
    "find_data_dir",
    "load_dataset",
    "read_idx",
    "batches",
]


class DataError(RuntimeError):
    """A data file is missing, corrupt, truncated or cannot be downloaded."""


@dataclass
class Dataset:
    """Training and test tensors with what describes them: a name, the number of classes (of
    the dataset, not of a subset) and ``input_range``, the range ``(lo, hi)`` its inputs live in
    (None: unbounded; see `nemon.ranges`). Images read by `load_dataset` live in ``(0, 1)``."""

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: int | None = None
    input_range: tuple[float, float] | None = (0.0, 1.0)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        if self.classes is not None:
            return self.classes
        return int(max(self.train_y.max(), self.test_y.max())) + 1


_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}

DATASETS = {
    "mnist": {
        "folder": "mnist",
        "files": _IDX_FILES,
        "md5": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        "mirrors": [
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ],
    },
    "fashion-mnist": {
        "folder": "fashion-mnist",
        "files": _IDX_FILES,
        "md5": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        # Debian's dataset-fashion-mnist recompresses the same files: its checksums are accepted too
        "alt_md5": {
            "train-images-idx3-ubyte.gz": "cf8536b0aa1a6ac5fa3f23001093305c",
            "train-labels-idx1-ubyte.gz": "10bea18fdb374794d4bb42e356e600c9",
            "t10k-images-idx3-ubyte.gz": "f78720b4224f21cce2f2ccf2d7a94c9a",
            "t10k-labels-idx1-ubyte.gz": "0d30e22e447f3c33dab9ed536400ac01",
        },
        "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        "system_dirs": ["/usr/share/datasets/fashion-mnist"],
    },
    "cifar10": {
        "folder": "cifar-10",
        "files": {"archive": "cifar-10-python.tar.gz"},
        "md5": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
        "mirrors": ["https://www.cs.toronto.edu/~kriz/"],
    },
}


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else ``$NEMON_DATA_DIR``, else ``~/.cache/nemon``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("NEMON_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "nemon"


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(urls: list[str], target: Path, md5: str | None, timeout: float = 30.0) -> None:
    """Fetch the first mirror that answers into ``target`` atomically, checking the md5.

    Folders created for ``target`` are removed again when every mirror fails.
    """
    created = [d for d in [target.parent, *target.parent.parents] if not d.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        _fetch_first(urls, target, md5, timeout)
    except DataError:
        for d in created:  # deepest first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def _fetch_first(urls: list[str], target: Path, md5: str | None, timeout: float) -> None:
    errors = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
            if md5 is not None and _md5(Path(tmp)) != md5:
                raise DataError(f"checksum mismatch for {url}")
            os.replace(tmp, target)
            return
        except Exception as exc:  # noqa: BLE001 - try the next mirror, report all at the end
            errors.append(f"{url}: {exc}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise DataError(
        f"could not download {target.name} ({'; '.join(errors)}). Without internet, place the "
        f"original file at {target} or point --data-dir / $NEMON_DATA_DIR at a folder holding it."
    )


def _locate(name: str, data_dir: Path, download: bool, verify: bool, keys=None) -> dict[str, Path]:
    spec = DATASETS[name]
    candidates = [data_dir / spec["folder"], data_dir] + [
        Path(d) for d in spec.get("system_dirs", [])
    ]
    paths = {}
    for key, fname in spec["files"].items():
        if keys is not None and key not in keys:
            continue
        found = next((d / fname for d in candidates if (d / fname).is_file()), None)
        if found is None:
            if not download:
                raise DataError(
                    f"{name}: missing file {fname}; looked in {', '.join(map(str, candidates))}"
                )
            found = data_dir / spec["folder"] / fname
            _download([m + fname for m in spec["mirrors"]], found, spec["md5"].get(fname))
        known = {spec["md5"][fname], spec.get("alt_md5", {}).get(fname)}
        if verify and _md5(found) not in known:
            raise DataError(f"{found} is corrupt: its md5 does not match the original {fname}")
        paths[key] = found
    return paths


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a gzip-compressed IDX file (unsigned bytes), checking header and length."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable gzip file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (incomplete header)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims)) if dims else 0
    if len(raw) - header != expected:
        raise DataError(
            f"{path} is truncated or corrupt: header says {expected} bytes of data, found "
            f"{len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _images(a: np.ndarray) -> Tensor:
    return torch.from_numpy(a.copy()).to(torch.float32).div_(255.0).unsqueeze(1)


def _labels(a: np.ndarray, count: int, path: Path) -> Tensor:
    if a.shape != (count,):
        raise DataError(f"{path}: {a.shape[0]} labels for {count} images")
    return torch.from_numpy(a.astype(np.int64))


def _load_idx_dataset(name: str, paths: dict[str, Path]) -> Dataset:
    arrays = {k: read_idx(p) for k, p in paths.items()}
    test_x = _images(arrays["test_x"])
    if "train_x" in arrays:
        train_x = _images(arrays["train_x"])
        train_y = _labels(arrays["train_y"], len(train_x), paths["train_y"])
    else:  # test_only
        train_x = test_x[:0]
        train_y = torch.zeros(0, dtype=torch.int64)
    return Dataset(
        name,
        train_x,
        train_y,
        test_x,
        _labels(arrays["test_y"], len(test_x), paths["test_y"]),
        classes=10,
    )


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10 batches only: dicts, lists, bytes and numpy arrays, nothing callable.

    The archive's md5 is checked before reading when it comes through `load_dataset`; this
    restriction keeps a crafted archive passed to `read_cifar10` from running code.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch")


def read_cifar10(path: str | os.PathLike) -> Dataset:
    """CIFAR-10 from the original ``cifar-10-python.tar.gz`` (five train batches, one test)."""
    path = Path(path)
    parts: dict[str, dict] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar.getmembers():
                base = os.path.basename(member.name)
                if base.startswith("data_batch_") or base == "test_batch":
                    f = tar.extractfile(member)
                    if f is not None:
                        parts[base] = _CifarUnpickler(f, encoding="bytes").load()
    except (tarfile.TarError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise DataError(f"{path} is not a readable CIFAR-10 archive ({exc})") from None
    wanted = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [w for w in wanted if w not in parts]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}")

    def convert(batch: dict, name: str) -> tuple[Tensor, Tensor]:
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
        if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise DataError(f"{path}: batch {name} has data {data.shape} and {len(labels)} labels")
        x = torch.from_numpy(data.astype(np.float32) / 255.0).reshape(-1, 3, 32, 32)
        return x, torch.from_numpy(labels.astype(np.int64))

    train = [convert(parts[w], w) for w in wanted[:5]]
    test_x, test_y = convert(parts["test_batch"], "test_batch")
    return Dataset(
        "cifar10",
        torch.cat([t[0] for t in train]),
        torch.cat([t[1] for t in train]),
        test_x,
        test_y,
        classes=10,
    )


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    verify: bool = True,
    test_only: bool = False,
) -> Dataset:
    """Load ``mnist``, ``fashion-mnist`` or ``cifar10`` from its original files.
    ``test_only``: read (and need, or download) only the test split; the training tensors are
    then empty (evaluation, certification and verification read nothing else)."""
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    idx = name != "cifar10"  # CIFAR-10's splits share one archive
    keys = ("test_x", "test_y") if test_only and idx else None
    paths = _locate(name, find_data_dir(data_dir), download, verify, keys)
    if name == "cifar10":
        return read_cifar10(paths["archive"])
    return _load_idx_dataset(name, paths)


def batches(x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator | None = None):
    """Mini-batches in a random order (from ``generator``) or in order when it is None."""
    n = len(x)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]
