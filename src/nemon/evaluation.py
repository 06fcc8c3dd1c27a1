"""Evaluating a classifier on a test set: accuracy and loss, certified accuracy, and the count
of solves that stopped before their tolerance (`ConvergenceTally`)."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .certificates import CertificateWarning, certify
from .data import batches
from .modes import evaluation_mode
from .progress import Progress
from .ranges import IMAGES, InputRange
from .solve_log import SolveLog
from .solvers import ConvergenceWarning

__all__ = [
    "evaluate",
    "certified_accuracy",
    "model_device",
    "ConvergenceTally",
]


def model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> dict:
    """Accuracy, mean loss and the mean iterations of a layer's solve on ``(x, y)``, in eval mode
    (the model's own modes are restored after)."""
    with evaluation_mode(model):
        return _evaluate(model, x, y, batch_size)


def _evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> dict:
    device = model_device(model)
    correct, loss = 0, 0.0
    with SolveLog() as log:
        for xb, yb in batches(x, y, batch_size):
            xb, yb = xb.to(device), yb.to(device)
            logits = model(xb)
            correct += int((logits.argmax(1) == yb).sum())
            loss += float(F.cross_entropy(logits, yb, reduction="sum"))
    return {
        "accuracy": correct / len(x),
        "loss": loss / len(x),
        "forward_iterations": log.mean_iterations("forward"),
    }


@torch.no_grad()
def certified_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: list[float],
    method: str | None = None,
    batch_size=1000,
    input_range: InputRange = IMAGES,
    progress: bool | None = None,
) -> dict[float, float]:
    """Fraction of samples certified robust at each radius in ``eps`` (see `nemon.certify`;
    ``method=None``: the strongest the model supports). A method that certifies nothing at a
    positive radius says so once, for the whole set, not once per batch. The model's own
    modes (training or eval) are restored after. ``input_range``: as `nemon.certify`'s;
    ``progress``: see `nemon.progress.Progress`."""
    with evaluation_mode(model), Progress(len(x), "certify", "input", progress) as bar:
        return _certified_accuracy(model, x, y, eps, method, batch_size, input_range, bar)


def _certified_accuracy(model, x, y, eps, method, batch_size, input_range, bar) -> dict:
    device = model_device(model)
    total, noted = torch.zeros(len(eps)), []
    for xb, yb in batches(x, y, batch_size):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CertificateWarning)
            ok = certify(
                model, xb.to(device), yb.to(device), list(eps), method, input_range=input_range
            )
        for w in caught:  # "none certified" is judged on the whole set below; the rest passes
            if getattr(w.message, "kind", None) == "none_certified":
                noted.append(w.message)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        total += ok.sum(dim=1).cpu().float()
        bar.update(len(xb))
    empty = [e for e, t in zip(eps, total.tolist()) if e > 0 and t == 0]
    if empty and noted:
        warning = CertificateWarning.none_certified(
            method or noted[-1].method, empty, noted[-1].stronger
        )
        warnings.warn(warning, stacklevel=4)
    return {float(e): float(t) / len(x) for e, t in zip(eps, total)}


class ConvergenceTally(warnings.catch_warnings):
    """Collects `ConvergenceWarning` inside the block and re-issues one summary.

    Other warnings pass through unchanged. ``count`` is the number of solves that stopped early.
    """

    def __init__(self) -> None:
        super().__init__(record=True)
        self.count = 0

    def __enter__(self):
        self._log = super().__enter__()
        warnings.simplefilter("always", ConvergenceWarning)
        return self

    def __exit__(self, *exc_info):
        super().__exit__(*exc_info)
        caught = [w for w in self._log if issubclass(w.category, ConvergenceWarning)]
        for w in self._log:
            if not issubclass(w.category, ConvergenceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self.count = len(caught)
        if caught and exc_info[0] is None:
            warnings.warn(
                f"{len(caught)} solves stopped before reaching their tolerance; the last: "
                f"{caught[-1].message}",
                ConvergenceWarning,
                stacklevel=2,
            )
        return False
