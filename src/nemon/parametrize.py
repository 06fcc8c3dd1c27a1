"""Constraints by construction (docs/maths.md#parametrization).

Each dense constraint is an ``nn.Module`` usable with ``torch.nn.utils.parametrize``: its
``forward`` maps free parameters onto the constraint set and ``right_inverse`` maps a feasible
matrix back to parameters, so ``layer.A = A0`` initialises from a given matrix.

- `MuInfConstraint`: ``A = [eta] (T - diag(|T| 1) + gamma I) [eta]^-1``, eq. (17), so that
  ``mu_{inf,[eta]^-1}(A) <= gamma`` for every ``T`` and every ``eta = exp(d) > 0`` (within
  ``[e^-22, e^22]`` in float32, `check_weights`).
- `conv_shift`: the per-channel diagonal shift that gives the same bound for convolutions.
- `MONConstraint`: ``A = gamma I - W^T W - Z + Z^T`` (``mu_2(A) <= gamma``).
- `IDLConstraint`: ``A = gamma T / max(gamma, ||T||_inf)`` (``||A||_inf <= gamma``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .errors import InputError
from .guards import check_weights, checked_weights, log_eta_max
from .norms import (
    abs_row_sums_upper,
    measure_upper,
    mu_inf,
    norm_inf,
    norm_inf_upper,
    round_to,
)

__all__ = [
    "check_gamma",
    "mu_inf_param",
    "check_weights",
    "checked_weights",
    "log_eta_max",
    "mu_inf_right_inverse",
    "MuInfConstraint",
    "conv_shift",
    "conv_measure_upper",
    "MONConstraint",
    "IDLConstraint",
]


GAMMA_MIN = -1e6  # far below any useful bound; keeps gamma * I representable next to |T|


def check_gamma(gamma: float, *, allow_negative: bool = True) -> float:
    """Validate a contraction bound ``gamma < 1`` (well-posedness needs it strictly)."""
    gamma = float(gamma)
    if not (math.isfinite(gamma) and GAMMA_MIN <= gamma < 1.0):
        raise InputError(
            f"gamma must be in [{GAMMA_MIN:g}, 1) for a well-posed implicit layer, got {gamma}"
        )
    if not allow_negative and gamma < 0:
        raise InputError(f"gamma must be in [0, 1), got {gamma}")
    return gamma


def mu_inf_param(T: Tensor, gamma: float, eta: Tensor | None = None) -> Tensor:
    """Eq. (17): ``[eta] (T - diag(|T| 1) + gamma I) [eta]^-1``, with ``mu_{inf,[eta]^-1} <= gamma``.

    Exactly so in floating point: the off-diagonal entries are stored first and each diagonal
    entry ``gamma + 2 min(t_ii, 0) - sum_{j!=i} |a_ij| eta_j / eta_i`` is formed from an upper bound
    of the exact weighted sum of the *stored* off-diagonal entries and rounded down, so the exact
    measure of the returned matrix is at most ``gamma`` for every ``T`` and ``eta`` (the diagonal
    moves by a few units in the last place; the naive float32 form exceeded gamma by 0.18 at
    ``|T| ~ 1e3``). ``eta`` must pass `check_weights` (one line otherwise).
    """
    if eta is None:
        return _MuInfParam.apply(T, float(gamma))
    n = T.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=T.device)
    off = T.masked_fill(eye, 0.0)
    eta = checked_weights(eta.to(T.dtype))
    off = eta[:, None] * off / eta[None, :]
    return off + torch.diag_embed(_sound_diagonal(torch.diagonal(T), off, gamma, eta))


class _MuInfParam(torch.autograd.Function):
    """Eq. (17) with unit weights as one autograd node: the forward does `mu_inf_param`'s
    arithmetic (bit for bit the weighted form's at ``eta = 1``) without recording a graph, the
    backward is its exact derivative in closed form (about 40 small operators fewer a step)."""

    @staticmethod
    def forward(ctx, T: Tensor, gamma: float) -> Tensor:
        A = T.clone()
        A.diagonal().zero_()
        diagonal = _sound_diagonal(torch.diagonal(T), A, gamma, None)
        A.diagonal().copy_(diagonal)
        ctx.save_for_backward(T)
        return A

    @staticmethod
    def backward(ctx, grad_A: Tensor):
        """With ``head = 2 min(t_ii, 0)`` and ``row_i = c sum_{j!=i} |t_ij|`` (``c`` the inflation of
        `abs_row_sums_upper`), the diagonal ``gamma + head - row - 3u (|gamma| + |head| + row)``
        (rounding passes gradients through) gives ``d/dt_ii = (1 + 3u) (1 - sign t_ii)`` where
        ``t_ii < 0`` (1 at 0, as autograd's subgradient) and ``d/dt_ij = -(1 + 3u) c sign t_ij``."""
        (T,) = ctx.saved_tensors
        u = 2.0**-53
        t = torch.diagonal(T).to(torch.float64)
        head = t - t.abs()
        g = torch.diagonal(grad_A).to(torch.float64)
        grad_diag = g * (1 - 3 * u * head.sign()) * (1 - t.sign())
        inflate = 1.0 + 2.0 * (T.shape[1] + 2) * u
        grad_row = (g * (-(1 + 3 * u) * inflate)).to(T.dtype)
        grad_T = torch.addcmul(grad_A, grad_row[:, None], T.sign())
        grad_T.diagonal().copy_(grad_diag)
        return grad_T, None


def _sound_diagonal(t_diag: Tensor, off: Tensor, gamma: float, eta: Tensor | None) -> Tensor:
    """``gamma + 2 min(t_ii, 0) - (weighted off-diagonal row sum)``, rounded down (see above)."""
    row = abs_row_sums_upper(off, eta, eta)
    t = t_diag.to(torch.float64)
    head = t - t.abs()  # 2 min(t_ii, 0), with autograd's subgradient 1 at the kink t_ii = 0
    value = gamma + head - row
    value = value - 3 * 2.0**-53 * (
        abs(gamma) + head.abs() + row
    )  # float64 rounding of the line above
    return round_to(value, t_diag.dtype, "down")


RIGHT_INVERSE_RTOL = 1e-5  # round-off allowed in a matrix handed to a right inverse, relative


def _within(value: float, bound: float, scale: float) -> bool:
    """``value <= bound`` up to the caller's round-off, relative to ``max(1, scale)``."""
    return value <= bound + RIGHT_INVERSE_RTOL * max(1.0, scale)


def mu_inf_right_inverse(A: Tensor, gamma: float) -> Tensor:
    """A ``T`` with ``mu_inf_param(T, gamma) == A``, for any ``A`` with ``mu_inf(A) <= gamma``.

    Off the diagonal ``t_ij = a_ij``; on it ``t_ii = (a_ii - gamma + sum_{j!=i} |a_ij|) / 2 <= 0``,
    which solves ``t_ii - |t_ii| - off_i + gamma = a_ii``.
    """
    measure = float(mu_inf(A))
    if not _within(measure, gamma, float(norm_inf(A))):
        raise InputError(f"mu_inf(A) = {measure:.6g} exceeds gamma = {gamma}: no T maps onto A")
    diag = torch.diagonal(A)
    off = A.abs().sum(dim=1) - diag.abs()
    T = A.clone()
    T.diagonal().copy_(((diag - gamma + off) / 2).clamp(max=0.0))
    return T


class MuInfConstraint(nn.Module):
    """``mu_{inf,[eta]^-1}(A) <= gamma`` by construction, eq. (17) with weights.

    ``A = [eta] M [eta]^-1`` with ``M = T - diag(|T| 1) + gamma I``; the similarity keeps
    ``a_ii = m_ii`` and gives ``mu_{inf,[eta]^-1}(A) = mu_inf(M) <= gamma`` (docs/maths.md#parametrization).
    With ``learn_eta=True`` the originals are ``(T, d)`` and ``eta = exp(d)``; otherwise ``eta``
    is fixed (a buffer, all ones by default) and the only original is ``T``. Weights outside
    ``[e^-L, e^L]`` (``L = log_eta_max(dtype)``, 22.2 in float32) are refused in one line
    (`check_weights`): at construction when fixed, when ``A`` is formed when learned.
    """

    def __init__(self, gamma: float = 0.95, eta: Tensor | None = None, learn_eta: bool = False):
        super().__init__()
        self.gamma = check_gamma(gamma)
        self.learn_eta = learn_eta
        if eta is not None:
            eta = torch.as_tensor(eta, dtype=torch.get_default_dtype())
            if eta.dim() != 1 or not bool(torch.all(eta > 0)):
                raise InputError("eta must be a 1-D tensor of strictly positive weights")
            check_weights(eta)
        self.register_buffer("log_eta", None if eta is None else eta.log())

    def forward(self, T: Tensor, d: Tensor | None = None) -> Tensor:
        """``A`` from ``T`` and the log-weights ``d`` (learned, else the fixed ones)."""
        if d is None:
            d = self.log_eta
        return mu_inf_param(T, self.gamma, None if d is None else d.exp())

    def right_inverse(self, A: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Parameters for a given ``A`` (learnable weights restart at ``eta = 1``)."""
        if self.log_eta is not None and not self.learn_eta:
            eta = self.log_eta.exp().to(A.dtype)
            A = A * eta[None, :] / eta[:, None]  # back to M = [eta]^-1 A [eta]
        T = mu_inf_right_inverse(A, self.gamma)
        if self.learn_eta:
            return T, torch.zeros(A.shape[0], dtype=A.dtype, device=A.device)
        return T


def conv_shift(kernel: Tensor, gamma: float, eta: Tensor | None = None) -> Tensor:
    """Per-channel diagonal shift ``gamma - r_c`` with ``r_c = sum_{c',dy,dx} |K[c,c',dy,dx]|``.

    ``A x = conv(x, K) + (gamma - r) * x`` satisfies ``mu_{inf,[eta]^-1}(A) <= gamma`` for any
    padding and image size (docs/maths.md#parametrization), because every row of the matrix of ``conv(., K)``
    for output channel ``c`` has weighted absolute sum at most ``r_c``. ``kernel`` is the stored
    (already ``eta``-scaled) kernel and ``r_c`` its weighted sum ``sum |K[c,c',.]| eta_c' / eta_c``,
    bounded above in floating point; the shift is rounded down, so the bound holds exactly.
    """
    r = _kernel_row_sums_upper(kernel, eta)
    value = gamma - r - 3 * 2.0**-53 * (abs(gamma) + r)
    return round_to(value, kernel.dtype, "down")


def _kernel_row_sums_upper(kernel: Tensor, eta: Tensor | None) -> Tensor:
    """Upper bound of ``sum_{c',dy,dx} |K[c,c',dy,dx]| eta_c' / eta_c`` per output channel."""
    c_out, c_in, kh, kw = kernel.shape
    col = None if eta is None else eta.repeat_interleave(kh * kw)
    return abs_row_sums_upper(kernel.reshape(c_out, c_in * kh * kw), col, eta)


def conv_measure_upper(kernel: Tensor, shift: Tensor, eta: Tensor | None = None) -> Tensor:
    """Upper bound (float64) of ``mu_{inf,[eta]^-1}`` of ``x -> conv(x, K) + shift * x``.

    Row ``c``: diagonal ``K[c,c,centre] + shift_c`` plus the weighted sum of the other taps,
    at most ``r_c - |K[c,c,centre]|`` (equal for circular padding and images >= kernel).
    """
    centre = (kernel.shape[-1] - 1) // 2
    k0 = torch.diagonal(kernel[:, :, centre, centre]).to(torch.float64)
    off = _kernel_row_sums_upper(kernel, eta) - k0.abs()
    return measure_upper(k0 + shift.to(torch.float64), off.clamp(min=0.0))


class MONConstraint(nn.Module):
    """``A = gamma I - W^T W - Z + Z^T``, so ``mu_2(A) <= gamma`` (Winston and Kolter, 2020)."""

    def __init__(self, gamma: float = 0.95) -> None:
        super().__init__()
        self.gamma = check_gamma(gamma)

    def forward(self, W: Tensor, Z: Tensor) -> Tensor:
        eye = torch.eye(W.shape[1], dtype=W.dtype, device=W.device)
        return self.gamma * eye - W.T @ W - Z + Z.T

    def right_inverse(self, A: Tensor) -> tuple[Tensor, Tensor]:
        """``W`` from a Cholesky-type factor of the symmetric part, ``Z`` from the skew part."""
        sym = self.gamma * torch.eye(A.shape[0], dtype=A.dtype, device=A.device) - (A + A.T) / 2
        evals, evecs = torch.linalg.eigh(sym)
        if not _within(-float(evals.min()), 0.0, float(evals.abs().max())):
            raise InputError("mu_2(A) exceeds gamma: no (W, Z) maps onto A")
        W = (evecs * evals.clamp(min=0).sqrt()).T
        Z = -(A - A.T) / 4
        return W, Z


class IDLConstraint(nn.Module):
    """``A = gamma T / max(gamma, ||T||_inf)``, so ``||A||_inf <= gamma`` (El Ghaoui et al., 2021)."""

    def __init__(self, gamma: float = 0.95) -> None:
        super().__init__()
        self.gamma = check_gamma(gamma, allow_negative=False)

    def forward(self, T: Tensor) -> Tensor:
        """The scale is rounded so that the stored ``A`` has ``||A||_inf <= gamma`` exactly.

        The scale is formed in float64 from the upper bound of ``||T||_inf``, which is at least
        float64's smallest normal number: finite for every ``T``, exactly 0 when ``gamma = 0``
        (even at ``T = 0``, where a float32 division by a subnormal norm gave ``0 * inf``), and
        its derivative ``-scale / ||T||`` is formed without squaring ``||T||``."""
        norm = norm_inf_upper(T)
        shrink = 1.0 - 2.0 * torch.finfo(T.dtype).eps  # covers the rounding of scale and product
        cap = torch.clamp(norm, min=self.gamma)
        scale = self.gamma * shrink / cap.detach()
        scale = scale - (scale.detach() / cap.detach()) * (cap - cap.detach())  # d/dcap, finite
        return T * round_to(scale, T.dtype, "down")

    def right_inverse(self, A: Tensor) -> Tensor:
        if not _within(float(norm_inf(A)), self.gamma, float(norm_inf(A))):
            raise InputError(f"||A||_inf exceeds gamma = {self.gamma}: no T maps onto A")
        return A.clone()
