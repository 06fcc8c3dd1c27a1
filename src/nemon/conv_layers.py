"""Convolutional implicit layers: NEMON (section 5) and MON (Winston and Kolter), single conv layer.

Both take images ``(batch, c_in, s, s)``, inject them with a 'same' convolution, keep a state of
``channels`` feature maps of size ``s x s`` and hand the readout average-pooled features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activations import Activation
from .errors import InputError
from .implicit import Equilibrium
from .layers import FullPrecision, ImplicitLayer
from .lipschitz import LipschitzTerms
from .norms import capped_measure
from .operators import ConvOperator, MONConvOperator, conv_same, kernel_spectrum
from .parametrize import check_gamma, checked_weights, conv_measure_upper, conv_shift

__all__ = ["NEMONConv2d", "MONConv2d"]


class _ConvLayer(ImplicitLayer):
    """Shared by the conv families: input convolution, pooling readout features, shapes."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        image_size: int,
        kernel_size: int,
        input_kernel_size: int,
        pool: int,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if kernel_size < 1 or image_size < kernel_size:
            raise InputError(
                f"need 1 <= kernel_size <= image_size, got {kernel_size}, {image_size}"
            )
        if image_size % pool:
            raise InputError(f"pool size {pool} must divide the image size {image_size}")
        self.in_channels, self.channels, self.image_size = in_channels, channels, image_size
        self.kernel_size, self.pool = kernel_size, pool
        fan_in = in_channels * input_kernel_size**2
        self.input_kernel = nn.Parameter(
            torch.randn(channels, in_channels, input_kernel_size, input_kernel_size)
            / math.sqrt(fan_in)
        )
        self.input_bias = nn.Parameter(torch.zeros(channels))

    def input_shape(self) -> tuple[int, ...]:
        return (self.in_channels, self.image_size, self.image_size)

    def state_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def injection(self, u: Tensor) -> Tensor:
        return conv_same(u, self.input_kernel, "zeros") + self.input_bias[:, None, None]

    def weight_matrix(self) -> Tensor:
        """Dense matrix of ``A`` on the flattened state (small images only: tests)."""
        n = self.channels * self.image_size**2
        basis = torch.eye(n, dtype=self.input_kernel.dtype).reshape(n, *self.state_shape())
        return self.operator.matvec(self.effective_weights(), basis).reshape(n, n).T

    def features(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.pool).flatten(1)

    @property
    def num_features(self) -> int:
        return self.channels * (self.image_size // self.pool) ** 2


class NEMONConv2d(_ConvLayer):
    r"""NEMON convolutional layer (the paper's single conv layer, section 5).

    \(A x = K_\eta * x + (\gamma - r) \odot x\) with \(r_c = \sum |K_{c}|\) and
    \(K_\eta[c, c'] = K[c, c']\, \eta_c / \eta_{c'}\), so
    \(\mu_{\infty,[\eta]^{-1}}(A) \le \gamma\) for any kernel, padding and image size
    (docs/maths.md#parametrization).
    """

    default_solver = "diagonal"

    def __init__(
        self,
        in_channels: int,
        channels: int,
        image_size: int,
        kernel_size: int = 3,
        gamma: float = 0.95,
        padding: str = "circular",
        activation: str | Activation = "relu",
        learn_eta: bool = False,
        input_kernel_size: int = 3,
        pool: int = 4,
        **kwargs,
    ) -> None:
        super().__init__(
            in_channels,
            channels,
            image_size,
            kernel_size,
            input_kernel_size,
            pool,
            activation=activation,
            **kwargs,
        )
        self.gamma = check_gamma(gamma)
        self._register_gamma(self.gamma)
        self.operator = ConvOperator(padding)
        self.padding = padding
        self.kernel = nn.Parameter(torch.randn(channels, channels, kernel_size, kernel_size) * 0.01)
        log_eta = torch.zeros(channels)
        if learn_eta:
            self.log_eta = nn.Parameter(log_eta)
        else:
            self.register_buffer("log_eta", log_eta)

    def eta(self) -> Tensor:
        """Per-channel weights ``eta_c = exp(d_c)``."""
        return self.log_eta.exp()

    def effective_weights(self) -> tuple[Tensor, Tensor]:
        eta = self.eta()
        eta = checked_weights(eta)  # eta_i / eta_j must not overflow
        scaled = self.kernel * (eta[:, None] / eta[None, :])[:, :, None, None]
        return scaled, conv_shift(scaled, self.gamma, eta)

    def measure(self) -> Tensor:
        r"""Upper bound of \(\mu_{\infty,[\eta]^{-1}}(A)\), about ``gamma + max_c (K_cc0 - |K_cc0|)``.

        Attained for circular padding and image >= kernel; never above ``gamma``.
        """
        kernel, shift = self.effective_weights()
        return capped_measure(
            conv_measure_upper(kernel, shift, self.eta()), self.gamma, kernel.dtype
        )

    def equilibrium(self, weights: tuple[Tensor, ...]) -> Equilibrium:
        fwd, bwd = self.solver_options, self.backward_options
        eta = self.eta().detach()[:, None, None]
        return Equilibrium(
            self.operator, self.activation, fwd, bwd, float(self.measure().detach()), eta
        )

    def interval_bounds(self, u_lo: Tensor, u_hi: Tensor, injection=None):
        """Embedding system with the off-centre taps split by sign (docs/maths.md#intervals)."""
        kernel, shift = self.effective_weights()
        c, centre = self.channels, (self.kernel_size - 1) // 2
        diag = torch.diagonal(kernel[:, :, centre, centre]) + shift
        mask = torch.ones_like(kernel)
        mask[torch.arange(c), torch.arange(c), centre, centre] = 0.0
        K_pos, K_neg = (kernel * mask).clamp(min=0), (kernel * mask).clamp(max=0)
        E = torch.cat([torch.cat([K_pos, K_neg], 1), torch.cat([K_neg, K_pos], 1)], 0)
        Bk_pos, Bk_neg = self.input_kernel.clamp(min=0), self.input_kernel.clamp(max=0)
        bias = self.input_bias[:, None, None]
        z_lo = conv_same(u_lo, Bk_pos, "zeros") + conv_same(u_hi, Bk_neg, "zeros") + bias
        z_hi = conv_same(u_hi, Bk_pos, "zeros") + conv_same(u_lo, Bk_neg, "zeros") + bias
        if injection is not None:
            z_lo, z_hi = torch.maximum(z_lo, injection[0]), torch.minimum(z_hi, injection[1])
        eta2 = torch.cat([self.eta(), self.eta()]).detach()[:, None, None]
        measure = float(self.measure().detach())  # the embedding matrix has the same measure
        weights = (E, torch.cat([diag, diag]))
        z = torch.cat([z_lo, z_hi], 1)
        return self._solve_embedding(ConvOperator(self.padding), weights, z, measure, eta2)

    def lipschitz_terms(self) -> LipschitzTerms:
        eta = self.eta()
        b_norm = (self.input_kernel.abs().sum(dim=(1, 2, 3)) / eta).amax()
        per_feature = (self.image_size // self.pool) ** 2
        return LipschitzTerms(
            norm="inf",
            input_norm=b_norm,
            denominator=1 - self.measure().clamp(min=0),
            feature_eta=eta.repeat_interleave(per_feature),
        )


class MONConv2d(FullPrecision, _ConvLayer):
    r"""Monotone operator conv layer: ``A = gamma I - W^T W - Z + Z^T`` with circular convolutions.

    \(\mu_2(A) \le \gamma\); Peaceman-Rachford (default) or forward-backward splitting, with the
    resolvent applied by FFT. Only circular padding (the FFT diagonalises circular convolutions).
    Parameters are float32 or float64 (`FullPrecision`).
    """

    default_solver = "peaceman_rachford"
    has_resolvent = True
    precision_reason = "torch.linalg.inv, eigvalsh and the FFT"

    def __init__(
        self,
        in_channels: int,
        channels: int,
        image_size: int,
        kernel_size: int = 3,
        gamma: float = 0.95,
        padding: str = "circular",
        activation: str | Activation = "relu",
        input_kernel_size: int = 3,
        pool: int = 4,
        **kwargs,
    ) -> None:
        if padding != "circular":
            raise InputError("MONConv2d supports circular padding only (FFT resolvent)")
        super().__init__(
            in_channels,
            channels,
            image_size,
            kernel_size,
            input_kernel_size,
            pool,
            activation=activation,
            **kwargs,
        )
        self._check_precision(self.input_kernel.dtype)
        self.gamma = check_gamma(gamma)
        self._register_gamma(self.gamma)
        self.operator = MONConvOperator(self.gamma, image_size)
        scale = 1.0 / math.sqrt(channels * kernel_size**2)
        self.W = nn.Parameter(torch.randn(channels, channels, kernel_size, kernel_size) * scale)
        self.Z = nn.Parameter(torch.randn(channels, channels, kernel_size, kernel_size) * scale)

    def effective_weights(self) -> tuple[Tensor, Tensor]:
        return self.W, self.Z

    def measure(self) -> Tensor:
        """``mu_2(A) = gamma - min_f lambda_min(W(f)^H W(f))`` over the FFT frequencies."""
        W_hat = kernel_spectrum(self.W, self.image_size)
        gram = W_hat.conj_physical().transpose(-1, -2) @ W_hat
        return self.gamma - torch.linalg.eigvalsh(gram)[..., 0].min()

    def equilibrium(self, weights: tuple[Tensor, ...]) -> Equilibrium:
        def terms() -> tuple[float, float]:
            A_hat = self.operator.spectrum(tuple(w.detach() for w in weights))
            eye = torch.eye(A_hat.shape[-1], dtype=A_hat.dtype, device=A_hat.device)
            lip = float(torch.linalg.matrix_norm(eye - A_hat, ord=2).max())
            return float(self.measure().detach()), lip

        return self._splitting_equilibrium(terms)

    def lipschitz_terms(self) -> LipschitzTerms:
        """l_2 bound times ``sqrt(c s^2)``; ``||B||_2 <= sum_taps ||K_tap||_2``, ``||pool||_2 = 1/p``."""
        taps = self.input_kernel.permute(2, 3, 0, 1)
        b_norm = torch.linalg.matrix_norm(taps, ord=2).sum()
        return LipschitzTerms(
            norm="l2",
            input_norm=b_norm,
            denominator=1 - self.measure(),
            input_dim_factor=math.sqrt(self.in_channels * self.image_size**2),
            feature_scale=1.0 / self.pool,
        )
