"""Training and eval modes: evaluate a model in eval mode and give it back as it was."""

from __future__ import annotations

import contextlib

from torch import nn

__all__ = ["evaluation_mode"]


@contextlib.contextmanager
def evaluation_mode(model: nn.Module):
    """``model`` in eval mode inside the block; afterwards every submodule is back in the mode
    it was in (training or eval), also when the block raises."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
