"""Linear operators ``A`` acting on batched hidden states, with adjoint and diagonal.

Weights are passed explicitly (built once per forward by the layer), so the same operator serves
the forward solve, the adjoint solve and the single autograd application in the backward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError

__all__ = [
    "Operator",
    "DenseOperator",
    "MONDenseOperator",
    "ConvOperator",
    "MONConvOperator",
    "kernel_spectrum",
    "same_padding",
    "conv_same",
    "conv_same_adjoint",
]


class Operator:
    """A linear map ``A`` given by its effective weights (built once per forward).

    Every operator applies ``A`` and ``A^T`` and gives its diagonal. ``matvec_add`` and
    ``rmatvec_add`` (``A x + z``, ``A^T w + g``) may be fused by an operator that can; the
    resolvent ``(I + a (I - A))^-1``, which the splitting solvers need, exists where
    ``has_resolvent`` says so.
    """

    has_resolvent = False

    def matvec(self, weights: tuple[Tensor, ...], x: Tensor) -> Tensor:
        raise NotImplementedError

    def rmatvec(self, weights: tuple[Tensor, ...], w: Tensor) -> Tensor:
        raise NotImplementedError

    def diagonal_entries(self, weights: tuple[Tensor, ...]) -> Tensor:
        raise NotImplementedError

    def matvec_add(self, weights: tuple[Tensor, ...], x: Tensor, z: Tensor) -> Tensor:
        """``A x + z``."""
        return self.matvec(weights, x) + z

    def rmatvec_add(self, weights: tuple[Tensor, ...], w: Tensor, g: Tensor) -> Tensor:
        """``A^T w + g``."""
        return self.rmatvec(weights, w) + g

    def resolvent(self, weights: tuple[Tensor, ...], a: float, transpose: bool):
        """``v -> (I + a (I - A))^-1 v`` (``A^T`` with ``transpose``)."""
        raise NotImplementedError(f"{type(self).__name__} has no resolvent")

    def weight_vjp(
        self, weights: tuple[Tensor, ...], x: Tensor, w: Tensor, needs: tuple[bool, ...]
    ) -> list[Tensor | None]:
        """``w^T d(A x)/d weights`` for the weights flagged in ``needs`` (None for the others),
        by autograd through one application of ``A``."""
        with torch.enable_grad():
            leaves = tuple(t.detach().requires_grad_(n) for t, n in zip(weights, needs))
            wanted = [t for t in leaves if t.requires_grad]
            found = iter(torch.autograd.grad(self.matvec(leaves, x), wanted, w))
        return [next(found) if n else None for n in needs]


class DenseOperator(Operator):
    """``A x`` for batch rows: ``x @ A^T``; weights ``(A,)`` of shape ``(n, n)``."""

    def matvec(self, weights: tuple[Tensor, ...], x: Tensor) -> Tensor:
        return x @ weights[0].T

    def rmatvec(self, weights: tuple[Tensor, ...], w: Tensor) -> Tensor:
        return w @ weights[0]

    def matvec_add(self, weights: tuple[Tensor, ...], x: Tensor, z: Tensor) -> Tensor:
        """``A x + z`` in one ``addmm``."""
        return torch.addmm(z, x, weights[0].T)

    def rmatvec_add(self, weights: tuple[Tensor, ...], w: Tensor, g: Tensor) -> Tensor:
        """``A^T w + g`` in one ``addmm``."""
        return torch.addmm(g, w, weights[0])

    def diagonal_entries(self, weights: tuple[Tensor, ...]) -> Tensor:
        return torch.diagonal(weights[0])

    def weight_vjp(self, weights, x, w, needs):
        """``dL/dA = w^T x`` summed over the batch: one product, no application of ``A``."""
        return [w.T @ x if needs[0] else None]


class MONDenseOperator(DenseOperator):
    """A dense ``A`` with the resolvent MON's splittings use (one inverse per solve)."""

    has_resolvent = True

    def resolvent(self, weights: tuple[Tensor, ...], a: float, transpose: bool):
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
    """Adjoint of `conv_same`: flipped, channel-transposed kernel, mirrored padding."""
    mode = "circular" if padding == "circular" else "constant"
    flipped = kernel.transpose(0, 1).flip(2, 3)
    return F.conv2d(F.pad(y, same_padding(kernel.shape[-1], adjoint=True), mode=mode), flipped)


class ConvOperator(Operator):
    """``A x = conv(x, K) + shift * x`` on ``(batch, c, h, w)``; weights ``(K, shift)``.

    ``K`` has shape ``(c, c, k, k)`` and ``shift`` shape ``(c,)`` (per output channel).
    """

    def __init__(self, padding: str = "circular") -> None:
        if padding not in ("circular", "zeros"):
            raise InputError(f"padding must be 'circular' or 'zeros', got {padding!r}")
        self.padding = padding

    def matvec(self, weights: tuple[Tensor, ...], x: Tensor) -> Tensor:
        kernel, shift = weights
        return conv_same(x, kernel, self.padding) + shift[:, None, None] * x

    def rmatvec(self, weights: tuple[Tensor, ...], w: Tensor) -> Tensor:
        kernel, shift = weights
        return conv_same_adjoint(w, kernel, self.padding) + shift[:, None, None] * w

    def diagonal_entries(self, weights: tuple[Tensor, ...]) -> Tensor:
        """Per-channel diagonal ``K[c, c, centre] + shift_c`` (image size >= kernel size)."""
        kernel, shift = weights
        centre = (kernel.shape[-1] - 1) // 2
        return (torch.diagonal(kernel[:, :, centre, centre]) + shift)[:, None, None]


def kernel_spectrum(kernel: Tensor, size: int) -> Tensor:
    """Per-frequency matrices of the circular 'same' convolution: shape ``(size, size, out, in)``.

    `conv_same` with circular padding is ``y = G * x`` (circular convolution) with
    ``G[o, c, (lo - a) mod s, (lo - b) mod s] = K[o, c, a, b]``, so ``fft2(y)[f] = fft2(G)[f] x̂[f]``.
    """
    out_ch, in_ch, k, _ = kernel.shape
    lo = (k - 1) // 2
    idx = (lo - torch.arange(k, device=kernel.device)) % size
    G = kernel.new_zeros(out_ch, in_ch, size, size)
    G[:, :, idx[:, None], idx[None, :]] = kernel
    return torch.fft.fft2(G).permute(2, 3, 0, 1)


class MONConvOperator(Operator):
    """``A x = gamma x - W^T W x - Z x + Z^T x`` with circular convolutions ``W``, ``Z``.

    Weights ``(W, Z)`` of shape ``(c, c, k, k)``; ``mu_2(A) <= gamma`` by construction. The
    resolvent ``(I + a (I - A))^-1`` is applied frequency by frequency with the FFT.
    """

    has_resolvent = True

    def __init__(self, gamma: float, size: int) -> None:
        self.gamma, self.size = gamma, size

    def matvec(self, weights: tuple[Tensor, ...], x: Tensor) -> Tensor:
        W, Z = weights
        WtW = conv_same_adjoint(conv_same(x, W, "circular"), W, "circular")
        return (
            self.gamma * x - WtW - conv_same(x, Z, "circular") + conv_same_adjoint(x, Z, "circular")
        )

    def rmatvec(self, weights: tuple[Tensor, ...], w: Tensor) -> Tensor:
        W, Z = weights
        WtW = conv_same_adjoint(conv_same(w, W, "circular"), W, "circular")
        return (
            self.gamma * w - WtW + conv_same(w, Z, "circular") - conv_same_adjoint(w, Z, "circular")
        )

    def diagonal_entries(self, weights: tuple[Tensor, ...]) -> Tensor:
        """``gamma - sum_{o,taps} W[o, c, tap]^2`` per channel (Z's diagonal cancels)."""
        W = weights[0]
        return (self.gamma - (W**2).sum(dim=(0, 2, 3)))[:, None, None]

    def spectrum(self, weights: tuple[Tensor, ...]) -> Tensor:
        """``A(f)`` for every frequency, shape ``(s, s, c, c)`` (complex)."""
        W_hat = kernel_spectrum(weights[0], self.size)
        Z_hat = kernel_spectrum(weights[1], self.size)
        eye = torch.eye(W_hat.shape[-1], dtype=W_hat.dtype, device=W_hat.device)
        Wh = W_hat.conj_physical().transpose(-1, -2)  # physical: no lazy conjugate bit
        return self.gamma * eye - Wh @ W_hat - Z_hat + Z_hat.conj_physical().transpose(-1, -2)

    def resolvent(self, weights: tuple[Tensor, ...], a: float, transpose: bool):
        """``v -> (I + a (I - A))^-1 v`` (or with ``A^T``) via FFT, one batched inverse per solve."""
        half = self.size // 2 + 1  # real input: the other frequencies are conjugates
        A_hat = self.spectrum(weights)[:, :half]
        eye = torch.eye(A_hat.shape[-1], dtype=A_hat.dtype, device=A_hat.device)
        R = torch.linalg.inv((1 + a) * eye - a * A_hat)
        if transpose:
            R = R.conj_physical().transpose(-1, -2)
        size = (self.size, self.size)

        def apply(v: Tensor) -> Tensor:
            v_hat = torch.fft.rfft2(v).permute(2, 3, 1, 0)  # (s, s/2 + 1, c, batch)
            out = (R @ v_hat).permute(3, 2, 0, 1)
            return torch.fft.irfft2(out, s=size).to(v.dtype)

        return apply
