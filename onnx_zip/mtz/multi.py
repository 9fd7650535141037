"""Adding a further model to an already zipped set (mtz-method §7, "more than two models").

The zipped joint model plays the role of "A": its shared neurons' (merged) vectors are ``A`` and its
effective Hessian is built from the per-task Hessians ``H_t`` (each restricted to the shared inputs):

* ``mode="inverse_sum"`` (released code): ``H_joint⁻¹ = Σ_t H_t⁻¹``, i.e. ``H_joint = (Σ_t H_t⁻¹)⁻¹``
  (softer);
* ``mode="sum"`` (exact for the summed second-order error): ``H_joint = Σ_t H_t``.

The new model is "B", and the ordinary :func:`~onnx_zip.mtz.costs.pair_operator`,
:func:`~onnx_zip.mtz.costs.cost_matrix`, matching and merge apply unchanged. Every shared neuron gets a
partner when the new model has enough neurons (``k = min(N_shared, N_new)``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from onnx_zip.errors import InputError
from onnx_zip.mtz._checks import as_f64, check_square, where
from onnx_zip.mtz._linalg import checked_cholesky, chol_solve, pinv_psd
from onnx_zip.mtz.costs import PairOperator, cost_matrix, damp, pair_operator
from onnx_zip.mtz.matching import Matching, greedy_matching, optimal_matching
from onnx_zip.mtz.merge import merge_pairs

__all__ = ["joint_hessian", "AddModelResult", "add_model"]

logger = logging.getLogger(__name__)


def _inv_psd(h: np.ndarray, what: str, layer: str | None) -> np.ndarray:
    """Inverse of a symmetric PSD matrix; pseudo-inverse (logged) when singular or ill-conditioned."""
    d = h.shape[0]
    low, reason = checked_cholesky(h)
    if low is not None:
        inv = chol_solve(low, np.eye(d))
        return 0.5 * (inv + inv.T)
    logger.warning(
        "%s%s (%dx%d) is singular or ill-conditioned (%s); using the pseudo-inverse", where(layer), what, d, d, reason
    )
    v, inv_w = pinv_psd(h)
    inv = (v * inv_w) @ v.T
    return 0.5 * (inv + inv.T)


def joint_hessian(
    hessians: Sequence[np.ndarray],
    *,
    mode: Literal["inverse_sum", "sum"] = "inverse_sum",
    damping: float = 0.0,
    layer: str | None = None,
) -> np.ndarray:
    """Effective Hessian of the already zipped tasks.

    Args:
        hessians: Per-task Hessians ``H_t`` ``(D, D)`` over the shared inputs, one per zipped task.
        mode: ``"inverse_sum"`` → ``(Σ_t H_t⁻¹)⁻¹`` (released code; pinv fallback, logged);
            ``"sum"`` → ``Σ_t H_t``.
        damping: Relative damping λ applied to each ``H_t`` first.
        layer: Layer name for messages.

    Returns:
        ``(D, D)`` symmetric.
    """
    if len(hessians) == 0:
        raise InputError(f"{where(layer)}joint_hessian needs at least one task Hessian")
    hs = []
    for t, h in enumerate(hessians):
        h = as_f64(h, f"H of zipped task {t}", layer, ndim=2)
        check_square(h, f"H of zipped task {t}", layer)
        if h.shape != np.shape(hessians[0]):
            raise InputError(
                f"{where(layer)}H of zipped task {t} has shape {h.shape}, task 0 has {np.shape(hessians[0])}"
            )
        hs.append(damp(h, damping, layer=layer))
    if mode == "sum":
        return np.sum(hs, axis=0)
    if mode == "inverse_sum":
        if len(hs) == 1:
            return hs[0].copy()
        inv_sum = np.sum([_inv_psd(h, f"H of zipped task {t}", layer) for t, h in enumerate(hs)], axis=0)
        return _inv_psd(inv_sum, "Σ_t H_t⁻¹", layer)
    raise InputError(f"{where(layer)}unknown joint Hessian mode {mode!r}", hint="use 'inverse_sum' or 'sum'")


@dataclass(frozen=True)
class AddModelResult:
    """Outcome of matching a new model against the shared neurons of a zipped set.

    Attributes:
        matching: Pairs ``(shared index, new-model neuron)`` in shared-neuron order of acceptance.
        merged: Merged rows for the pairs, ``(k, D)`` or ``(k, P, D)``.
        operator: The :class:`PairOperator` of ``(H_joint, H_new)``.
        costs: All-pairs costs ``(N_shared, N_new)``.
    """

    matching: Matching
    merged: np.ndarray
    operator: PairOperator
    costs: np.ndarray


def add_model(
    shared_rows: np.ndarray,
    zipped_hessians: Sequence[np.ndarray],
    new_rows: np.ndarray,
    new_hessian: np.ndarray,
    *,
    mode: Literal["inverse_sum", "sum"] = "inverse_sum",
    method: Literal["greedy", "optimal"] = "greedy",
    damping: float = 0.0,
    layer: str | None = None,
) -> AddModelResult:
    """Match a further model's neurons against the shared neurons and merge them.

    Args:
        shared_rows: Shared (merged) neuron rows of the zipped set ``(N_s, D)`` or ``(N_s, P, D)``.
        zipped_hessians: Per-task Hessians of the zipped tasks ``(D, D)`` each.
        new_rows: The new model's neuron rows ``(N_new, D)`` or ``(N_new, P, D)``.
        new_hessian: The new model's Hessian ``(D, D)``.
        mode: Joint Hessian rule (see :func:`joint_hessian`).
        method: ``"greedy"`` or ``"optimal"``; ``k = min(N_s, N_new)`` so every shared neuron gets a
            partner when possible.
        damping: Relative damping (applied once, to each task Hessian and to the new one).
        layer: Layer name for messages.
    """
    h_joint = joint_hessian(zipped_hessians, mode=mode, damping=damping, layer=layer)
    h_new = damp(as_f64(new_hessian, "H of the new model", layer, ndim=2), damping, layer=layer)
    op = pair_operator(h_joint, h_new, layer=layer)
    costs = cost_matrix(shared_rows, new_rows, op, layer=layer)
    if method == "greedy":
        matching = greedy_matching(costs, layer=layer)
    elif method == "optimal":
        matching = optimal_matching(costs, layer=layer)
    else:
        raise InputError(f"{where(layer)}unknown matching method {method!r}", hint="use 'greedy' or 'optimal'")
    merged = merge_pairs(shared_rows, new_rows, matching.pairs, op, layer=layer)
    return AddModelResult(matching=matching, merged=merged, operator=op, costs=costs)
