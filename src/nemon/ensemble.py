"""Ensembles of classifiers: the mean of the members' logits, certified by the mean of their bounds.

If every member ``m`` satisfies ``y_m,label - y_m,j >= l_m,j`` on the input ball, the mean logits
satisfy ``y_label - y_j >= mean_m l_m,j`` there: `nemon.certify` certifies an ensemble when
these averaged lower bounds (interval, pairwise or Lipschitz, each member's solver error charged)
are positive for every ``j``. An ensemble of NEMON classifiers is itself one NEMON model: the
layers side by side form one layer with a block-diagonal ``A``, whose weighted measure is the
largest block's (so still ``<= gamma``), the encoders one grouped encoder and the readouts one
readout scaled by ``1/k``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .arguments import RecordsArguments
from .errors import InputError
from .models import Classifier

__all__ = ["Ensemble"]


class Ensemble(RecordsArguments, nn.Module):
    """The mean of the logits of ``members`` (`Classifier` s with one input shape
    and one number of classes), trained separately (for example with different seeds)."""

    def __init__(self, members: Sequence[Classifier]) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise InputError("an ensemble needs at least one member")
        for i, m in enumerate(members):
            if not isinstance(m, Classifier):
                raise TypeError(f"member {i} is a {type(m).__name__}, not a nemon Classifier")
        signatures = {(tuple(m.input_shape), m.num_classes) for m in members}
        if len(signatures) > 1:
            raise InputError(
                "ensemble members disagree on (input shape, classes): "
                + ", ".join(str(s) for s in sorted(signatures))
            )
        self.members = nn.ModuleList(members)
        self.input_shape = tuple(members[0].input_shape)
        self.num_classes = members[0].num_classes

    def forward(self, u: Tensor) -> Tensor:
        return torch.stack([m(u) for m in self.members]).mean(0)

    def classifiers(self) -> tuple[Classifier, ...]:
        """The members, whose mean logits this model is (see `Classifier.classifiers`)."""
        return tuple(self.members)

    def lipschitz_bound(self) -> Tensor:
        """Input-output l_inf Lipschitz bound: the mean of the members' bounds (15)."""
        return torch.stack([m.lipschitz_bound() for m in self.members]).mean(0)
