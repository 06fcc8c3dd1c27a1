"""Memory a model needs, judged before it is built: a setting that cannot fit is refused in one
line naming it, instead of an allocation that fails (or swaps the machine) minutes later.

The estimate counts the dominant terms (the float32 weights of every layer, exact to a few
entries; the dense matrix ``A`` a forward pass builds; Adam's state while training; the float64
copy and the embedding system ``(2n)^2`` while certifying). Activations come on top: a model
that passes may still need more, one that is refused cannot fit.
"""

from __future__ import annotations

import os
from dataclasses import asdict, is_dataclass

import torch

from ..errors import InputError

__all__ = ["ResourceError", "available_memory", "memory_needed", "check_memory"]

GIB = 2**30
FLOAT32, FLOAT64 = 4, 8  # bytes: models are built in float32; certificates work in float64


class ResourceError(InputError):
    """A model that cannot fit in the memory available; the message names the setting."""


def available_memory(device: str | torch.device = "cpu") -> int | None:
    """Bytes that can be allocated now on ``device`` (host: ``MemAvailable``; CUDA: the free
    memory the driver reports), or None where the system does not say."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError, ValueError):
            return None
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _settings(config) -> dict:
    return asdict(config) if is_dataclass(config) else dict(config)


def _encoder_size(c: dict, shape: tuple[int, int, int]) -> tuple[int, int]:
    """``(features, weights)`` of the encoder before the dense layer, built on the meta device
    (no memory); the image itself when there is none."""
    from ..explicit import ENCODERS
    from ..models import stacked_encoder

    channels, height, width = shape
    arch = c["arch"]
    if arch == "conv-stacked":
        kwargs = {k: v for k, v in (c.get("layer_kwargs") or {}).items() if k == "channels"}
        inner = kwargs.get("channels", 16)
        try:
            with torch.device("meta"):
                encoder = stacked_encoder(channels, height, c["gamma"], **kwargs)
            weights = sum(p.numel() for p in encoder.state_dict().values())
        except Exception:  # noqa: BLE001 - the estimate falls back to the features alone
            weights = 0
        return 2 * inner * (height // 4) * (width // 4), weights
    if arch in ENCODERS:
        try:
            with torch.device("meta"), torch.no_grad():
                encoder = ENCODERS[arch](channels, image_size=(height, width)).eval()
                features = encoder(torch.zeros(1, *shape)).shape[1]
            return int(features), sum(t.numel() for t in encoder.state_dict().values())
        except Exception:  # noqa: BLE001 - an image the encoder refuses: the build says why
            return channels * height * width, 0
    return channels * height * width, 0


#: the layer's ``gamma_bound`` buffer: one element
GAMMA = 1


def _model_size(c: dict, shape: tuple[int, int, int], classes: int) -> tuple[int, int]:
    """``(weights, n)``: the model's weights and buffers (elements), and the state size ``n``
    of a dense implicit layer (0 for the conv layer, which never materialises a matrix)."""
    n, family = int(c["hidden"]), c["model"]
    factors = 2 if family == "mon" else 1  # MON's A = (1 - m) I - B^T B + C - C^T: two n x n
    channels, height, width = shape
    if c["arch"] == "conv":
        kw = c.get("layer_kwargs") or {}
        k, k_in, pool = kw.get("kernel_size", 3), kw.get("input_kernel_size", 3), kw.get("pool", 4)
        pooled = max(height // max(pool, 1), 1) * max(width // max(pool, 1), 1)
        weights = factors * n * n * k * k + n * channels * k_in * k_in + 2 * n + GAMMA
        return weights + classes * (n * pooled + 1), 0
    features, encoder = _encoder_size(c, shape)
    weights = factors * n * n + n * (features + 1) + classes * (n + 1) + encoder
    return weights + (GAMMA if family != "explicit" else 0), n


USES = {
    "load": "loading",
    "train": "training",
    "certify": "certifying",
}


def memory_needed(config, input_shape, num_classes: int, use: str) -> tuple[int, str]:
    """``(bytes, what they hold)`` the model of ``config`` needs for ``use``: ``"load"`` (the
    weights, once read from the file and once in the model, and the dense ``A``), ``"train"``
    (weights, gradients and Adam's two moments, ``A`` and its gradient) or ``"certify"``
    (``"load"`` and the certificate's float64 copy with ``A``, the embedding matrix
    ``(2n)^2`` and its two blocks)."""
    if use not in USES:
        raise InputError(f"use must be one of {', '.join(USES)}, got {use!r}")
    c = _settings(config)
    shape = tuple(int(s) for s in input_shape)
    weights, n = _model_size(c, shape, int(num_classes))
    if use == "train":
        return FLOAT32 * (4 * weights + 2 * n * n), "weights, gradients, Adam's moments, dense A"
    load = FLOAT32 * (2 * weights + n * n)
    if use == "load":
        return load, "weights as read and as loaded, dense A"
    embedding = n * n + (2 * n) ** 2 + 2 * n * n
    return load + FLOAT64 * (weights + embedding), "weights, float64 copy, embedding system"


def check_memory(config, input_shape, num_classes: int, use: str, device="cpu") -> None:
    """Refuse (`ResourceError`, one line naming ``hidden``) a model whose `memory_needed` for
    ``use`` exceeds the memory available on ``device``; nothing is refused where the system
    does not say how much is available."""
    need, what = memory_needed(config, input_shape, num_classes, use)
    have = available_memory(device)
    if have is None or need <= have:
        return
    c = _settings(config)
    raise ResourceError(
        f"hidden = {c['hidden']}: {USES[use]} this {c['model']} {c['arch']} model on inputs "
        f"{tuple(input_shape)} needs about {need / GIB:.1f} GiB ({what}), more than the "
        f"{have / GIB:.1f} GiB of memory available; lower hidden"
    )
