"""Linear operators ``A`` acting on batched hidden states, with adjoint and diagonal.

Weights are passed explicitly (built once per forward by the layer), so the same operator serves
the forward solve, the adjoint solve and the single autograd application in the backward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DenseOperator", "ConvOperator", "same_padding", "conv_same", "conv_same_adjoint"]


class DenseOperator:
    """``A x`` for batch rows: ``x @ A^T``; weights ``(A,)`` of shape ``(n, n)``."""

    def matvec(self, weights: tuple[Tensor, ...], x: Tensor) -> Tensor:
        return x @ weights[0].T

    def rmatvec(self, weights: tuple[Tensor, ...], w: Tensor) -> Tensor:
        return w @ weights[0]

    def affine(self, weights: tuple[Tensor, ...], x: Tensor, z: Tensor) -> Tensor:
        """``A x + z`` in one ``addmm``."""
        return torch.addmm(z, x, weights[0].T)

    def raffine(self, weights: tuple[Tensor, ...], w: Tensor, g: Tensor) -> Tensor:
        """``A^T w + g`` in one ``addmm``."""
        return torch.addmm(g, w, weights[0])

    def diagonal(self, weights: tuple[Tensor, ...]) -> Tensor:
        return torch.diagonal(weights[0])

    @staticmethod
    def resolvent(weights: tuple[Tensor, ...], a: float, transpose: bool):
        """``v -> (I + a (I - A))^-1 v`` (or with ``A^T``), one inverse per solve."""
        A = weights[0]
        eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
        inv = torch.linalg.inv((1 + a) * eye - a * A)
        mat = inv if transpose else inv.T
        return lambda v: v @ mat


def same_padding(kernel_size: int, adjoint: bool = False) -> tuple[int, int, int, int]:
    """``F.pad`` widths for a stride-1 'same' convolution (asymmetric for even kernels)."""
    lo, hi = (kernel_size - 1) // 2, kernel_size // 2
    if adjoint:
        lo, hi = hi, lo
    return (lo, hi, lo, hi)


def conv_same(x: Tensor, kernel: Tensor, padding: str) -> Tensor:
    """Stride-1 'same' cross-correlation with circular or zero padding."""
    mode = "circular" if padding == "circular" else "constant"
    return F.conv2d(F.pad(x, same_padding(kernel.shape[-1]), mode=mode), kernel)


def conv_same_adjoint(y: Tensor, kernel: Tensor, padding: str) -> Tensor:
    """Adjoint of :func:`conv_same`: flipped, channel-transposed kernel, mirrored padding."""
    mode = "circular" if padding == "circular" else "constant"
    flipped = kernel.transpose(0, 1).flip(2, 3)
    return F.conv2d(F.pad(y, same_padding(kernel.shape[-1], adjoint=True), mode=mode), flipped)


class ConvOperator:
    """``A x = conv(x, K) + shift * x`` on ``(batch, c, h, w)``; weights ``(K, shift)``.

    ``K`` has shape ``(c, c, k, k)`` and ``shift`` shape ``(c,)`` (per output channel).
    """

    def __init__(self, padding: str = "circular") -> None:
        if padding not in ("circular", "zeros"):
            raise ValueError(f"padding must be 'circular' or 'zeros', got {padding!r}")
        self.padding = padding

    def matvec(self, weights: tuple[Tensor, ...], x: Tensor) -> Tensor:
        kernel, shift = weights
        return conv_same(x, kernel, self.padding) + shift[:, None, None] * x

    def rmatvec(self, weights: tuple[Tensor, ...], w: Tensor) -> Tensor:
        kernel, shift = weights
        return conv_same_adjoint(w, kernel, self.padding) + shift[:, None, None] * w

    def diagonal(self, weights: tuple[Tensor, ...]) -> Tensor:
        """Per-channel diagonal ``K[c, c, centre] + shift_c`` (image size >= kernel size)."""
        kernel, shift = weights
        centre = (kernel.shape[-1] - 1) // 2
        return (torch.diagonal(kernel[:, :, centre, centre]) + shift)[:, None, None]
