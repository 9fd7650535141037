"""All-pairs MTZ merge costs for one layer (mtz-method §3), with 2-D matrix products only.

For Hessians ``H_A``, ``H_B`` (``(D, D)``) let ``S = H_A + H_B`` and

    M = (H_A⁻¹ + H_B⁻¹)⁻¹ = H_A S⁻¹ H_B        (the second form needs no inverse of H_A, H_B)
    d(i, j) = ½ (a_i − b_j)ᵀ M (a_i − b_j)

With neuron vectors as rows of ``A (N_A, D)`` and ``B (N_B, D)``:

    D = ½ ( rowsum((A M) ∘ A)[:, None] + rowsum((B M) ∘ B)[None, :] − 2 (A M) Bᵀ )

clipped at 0 (rounding). The per-channel conv reading passes ``A (N_A, P, c)``: the ``P = KH·KW``
positions share one ``(c, c)`` matrix and the pair cost is the sum over positions, obtained by the
reshape ``(N_A·P, c) @ M → (N_A, P·c) @ B(N_B, P·c)ᵀ`` — never an ``N_A×N_B×D`` intermediate.

``S`` is factored once by Cholesky; when it is singular or its reciprocal condition number is below
``D·eps`` the pseudo-inverse (by symmetric eigendecomposition) is used instead and a warning is logged.
Optional relative damping adds ``λ·mean(diag(H))·I`` to each Hessian first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from onnx_zip.errors import InputError, NumericalError
from onnx_zip.mtz._checks import as_f64, check_square, where
from onnx_zip.mtz._linalg import checked_cholesky, chol_solve, lower_solve, pinv_psd

__all__ = ["PairOperator", "damp", "pair_operator", "cost_matrix"]

logger = logging.getLogger(__name__)


def damp(h: np.ndarray, damping: float, *, layer: str | None = None, name: str = "H") -> np.ndarray:
    """Return ``H + λ·mean(diag(H))·I`` (a copy; ``H`` itself when ``λ = 0``).

    Args:
        h: Hessian ``(D, D)``.
        damping: Relative damping ``λ ≥ 0``.
    """
    if not np.isfinite(damping) or damping < 0:
        raise InputError(f"{where(layer)}damping must be a finite number ≥ 0, got {damping!r}")
    if damping == 0:
        return h
    out = h.copy()
    out[np.diag_indices_from(out)] += damping * float(np.mean(np.diag(h)))
    return out


@dataclass(frozen=True)
class PairOperator:
    """Everything derived from one pair of Hessians ``(H_A, H_B)`` of a layer.

    Attributes:
        m: ``M = H_A (H_A + H_B)⁻¹ H_B``, symmetric ``(D, D)``.
        h_a: Damped ``H_A`` ``(D, D)``.
        h_b: Damped ``H_B`` ``(D, D)``.
        pinv_used: Whether ``H_A + H_B`` was (pseudo-)inverted by the pinv fallback.
        layer: Layer name for messages.
    """

    m: np.ndarray
    h_a: np.ndarray
    h_b: np.ndarray
    pinv_used: bool
    layer: str | None = None
    _chol: np.ndarray | None = field(default=None, repr=False)
    _pinv: np.ndarray | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        """``D``, the length of a neuron vector (per kernel position in the per-channel reading)."""
        return self.m.shape[0]

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """Apply ``(H_A + H_B)⁻¹`` (or its pseudo-inverse) to ``rhs`` ``(D,)`` or ``(D, k)``."""
        if self._chol is not None:
            return chol_solve(self._chol, rhs)
        assert self._pinv is not None
        return self._pinv @ rhs


def pair_operator(
    h_a: np.ndarray, h_b: np.ndarray, *, damping: float = 0.0, layer: str | None = None
) -> PairOperator:
    """Compute ``M = H_A (H_A + H_B)⁻¹ H_B`` and keep the factorisation of ``H_A + H_B`` for merging.

    Args:
        h_a: Hessian of model A ``(D, D)`` (symmetric PSD).
        h_b: Hessian of model B ``(D, D)``.
        damping: Relative damping λ: each ``H += λ·mean(diag(H))·I`` first.
        layer: Layer name for messages and the pinv warning.

    Returns:
        The :class:`PairOperator`.

    Raises:
        InputError: Shapes differ or are not square.
        NumericalError: NaN or Inf in a Hessian.
    """
    h_a = as_f64(h_a, "H_A", layer, ndim=2)
    h_b = as_f64(h_b, "H_B", layer, ndim=2)
    check_square(h_a, "H_A", layer)
    check_square(h_b, "H_B", layer)
    if h_a.shape != h_b.shape:
        raise InputError(f"{where(layer)}H_A has shape {h_a.shape} but H_B has shape {h_b.shape}")
    h_a = damp(h_a, damping, layer=layer)
    h_b = damp(h_b, damping, layer=layer)
    s = h_a + h_b
    d = s.shape[0]
    low, reason = checked_cholesky(s)
    pinv = None
    if low is not None:
        # M = (L⁻¹ H_A)ᵀ (L⁻¹ H_B) with S = L Lᵀ: two triangular solves and one product.
        m = lower_solve(low, h_a).T @ lower_solve(low, h_b)
    else:
        logger.warning(
            "%sH_A + H_B (%dx%d) is singular or ill-conditioned (%s); using the pseudo-inverse "
            "(usual when some inputs never vary, such as always-black border pixels; damping > 0 regularises it)",
            where(layer), d, d, reason,
        )
        v, inv_w = pinv_psd(s)
        m = ((h_a @ v) * inv_w) @ (v.T @ h_b)
        pinv = (v * inv_w) @ v.T
    m = 0.5 * (m + m.T)
    if not np.isfinite(m).all():
        raise NumericalError(f"{where(layer)}the merge matrix M is not finite", hint="try damping > 0")
    return PairOperator(m=m, h_a=h_a, h_b=h_b, pinv_used=low is None, layer=layer, _chol=low, _pinv=pinv)


def _as_2d(x: np.ndarray, name: str, layer: str | None, size: int) -> np.ndarray:
    if x.shape[-1] != size:
        raise InputError(
            f"{where(layer)}{name} has shape {x.shape}; its last axis must match the Hessian size {size}"
        )
    return x.reshape(x.shape[0], -1)


def cost_matrix(
    a: np.ndarray, b: np.ndarray, op: PairOperator | np.ndarray, *, layer: str | None = None
) -> np.ndarray:
    """All-pairs merge costs ``d(i, j) = ½ Σ_p (a_ip − b_jp)ᵀ M (a_ip − b_jp)``.

    Args:
        a: Neuron rows of A: ``(N_A, D)`` (dense / patch reading) or ``(N_A, P, D)`` (per-channel
            reading, ``P = KH·KW`` positions).
        b: Neuron rows of B, same trailing shape as ``a``: ``(N_B, D)`` or ``(N_B, P, D)``.
        op: A :class:`PairOperator` or the matrix ``M`` ``(D, D)`` itself.
        layer: Layer name for messages.

    Returns:
        ``(N_A, N_B)`` float64 costs, ≥ 0.

    Raises:
        InputError: Shapes that do not fit.
        NumericalError: NaN or Inf in the weights.
    """
    m = op.m if isinstance(op, PairOperator) else as_f64(op, "M", layer, ndim=2)
    layer = layer or (op.layer if isinstance(op, PairOperator) else None)
    a = as_f64(a, "weights of A", layer, ndim=(2, 3))
    b = as_f64(b, "weights of B", layer, ndim=(2, 3))
    if a.shape[1:] != b.shape[1:]:
        raise InputError(f"{where(layer)}weights of A {a.shape} and of B {b.shape} differ in neuron layout")
    size = m.shape[0]
    a2 = _as_2d(a, "weights of A", layer, size)
    b2 = _as_2d(b, "weights of B", layer, size)
    am = (a.reshape(-1, size) @ m).reshape(a2.shape)
    qa = np.einsum("ij,ij->i", am, a2)
    qb = np.einsum("ij,ij->i", (b.reshape(-1, size) @ m).reshape(b2.shape), b2)
    out = am @ b2.T
    out *= -2.0
    out += qa[:, None]
    out += qb[None, :]
    out *= 0.5
    np.maximum(out, 0.0, out=out)
    return out


def paired_costs(a: np.ndarray, b: np.ndarray, op: PairOperator, *, layer: str | None = None) -> np.ndarray:
    """Costs of given pairs ``d(a_i, b_i) = ½ Σ_p (a_ip − b_ip)ᵀ M (a_ip − b_ip)`` (the diagonal of
    :func:`cost_matrix` for rows already paired up).

    Args:
        a: Rows ``(k, D)`` or ``(k, P, D)``.
        b: Their partners, same shape.
        op: The :class:`PairOperator`.

    Returns:
        ``(k,)`` float64 costs, ≥ 0.
    """
    layer = layer or op.layer
    a = as_f64(a, "weights of A", layer, ndim=(2, 3))
    b = as_f64(b, "weights of B", layer, ndim=(2, 3))
    if a.shape != b.shape:
        raise InputError(f"{where(layer)}paired weights of A {a.shape} and of B {b.shape} differ in shape")
    size = op.m.shape[0]
    diff = _as_2d(a - b, "weights of A", layer, size).reshape(-1, size)
    q = np.einsum("ij,ij->i", diff @ op.m, diff).reshape(a.shape[0], -1).sum(axis=1)
    return 0.5 * np.maximum(q, 0.0)
