"""Merged incoming weights for chosen pairs (mtz-method §3).

The merged vector minimising ``½ δaᵀ H_A δa + ½ δbᵀ H_B δb`` subject to ``a + δa = b + δb`` is

    w = (H_A + H_B)⁻¹ (H_A a + H_B b) = ½ (a + b) + ½ (H_A + H_B)⁻¹ (H_A − H_B)(a − b)

The second (used) form is identical when ``S = H_A + H_B`` is invertible; when ``S`` is singular
(pinv fallback) it leaves the directions no calibration input reaches at the plain average instead of
zero. With ``H_A = H_B`` it is exactly the plain average.

Per-channel conv reading: rows ``(k, P, C+1)``, each kernel position merged separately with the same
``(C+1)²`` operator; :func:`~onnx_zip.mtz.layout.channel_rows_to_conv` then takes the mean of the
per-position merged bias entries, as the released code does.
"""

from __future__ import annotations

import numpy as np

from onnx_zip.errors import InputError
from onnx_zip.mtz._checks import as_f64, where
from onnx_zip.mtz.costs import PairOperator

__all__ = ["merged_vectors", "merge_pairs"]


def merged_vectors(a: np.ndarray, b: np.ndarray, op: PairOperator, *, layer: str | None = None) -> np.ndarray:
    """Merge row ``a[t]`` with row ``b[t]`` for every ``t``.

    Args:
        a: Rows of A ``(k, D)`` or ``(k, P, D)`` (per-channel reading).
        b: Rows of B, same shape as ``a``.
        op: The layer's :class:`~onnx_zip.mtz.costs.PairOperator`.
        layer: Layer name for messages.

    Returns:
        Merged rows, same shape as ``a``.
    """
    layer = layer or op.layer
    a = as_f64(a, "weights of A", layer, ndim=(2, 3))
    b = as_f64(b, "weights of B", layer, ndim=(2, 3))
    if a.shape != b.shape or a.shape[-1] != op.size:
        raise InputError(
            f"{where(layer)}cannot merge weights of A {a.shape} with weights of B {b.shape} "
            f"using a Hessian of size {op.size}"
        )
    a2 = a.reshape(-1, op.size)
    b2 = b.reshape(-1, op.size)
    diff = (a2 - b2) @ (op.h_a - op.h_b)  # rows (H_A − H_B)(a − b), Hessians symmetric
    corr = op.solve(diff.T).T
    return (0.5 * (a2 + b2 + corr)).reshape(a.shape)


def _pairs(pairs: np.ndarray, n_a: int, n_b: int, layer: str | None) -> np.ndarray:
    p = np.asarray(pairs, dtype=np.int64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise InputError(f"{where(layer)}pairs must have shape (k, 2), got {p.shape}")
    if p.size and (p.min() < 0 or p[:, 0].max() >= n_a or p[:, 1].max() >= n_b):
        raise InputError(f"{where(layer)}pairs index out of range for {n_a} neurons of A and {n_b} of B")
    return p


def merge_pairs(
    a: np.ndarray, b: np.ndarray, pairs: np.ndarray, op: PairOperator, *, layer: str | None = None
) -> np.ndarray:
    """Merged rows for the chosen pairs, in pair order.

    Args:
        a: All rows of A ``(N_A, D)`` or ``(N_A, P, D)``.
        b: All rows of B ``(N_B, D)`` or ``(N_B, P, D)``.
        pairs: ``(k, 2)`` int ``(i, j)`` pairs (e.g. ``Matching.pairs``).
        op: The layer's operator.

    Returns:
        ``(k, D)`` or ``(k, P, D)``.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    p = _pairs(pairs, a.shape[0], b.shape[0], layer or op.layer)
    return merged_vectors(a[p[:, 0]], b[p[:, 1]], op, layer=layer)
