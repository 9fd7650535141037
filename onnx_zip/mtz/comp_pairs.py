"""Greedy pairing that mixes cross-model pairs and within-model merges (issue 14, item 2).

A cross pair ``(i of A, j of B)`` becomes one shared neuron; a within pair ``(i, j)`` of one model becomes
one neuron of that model whose output feeds the next layer through the SUM of the two original columns
(ZipIt!-style). Both remove one neuron, and their compensated costs
(:meth:`~onnx_zip.mtz.compensated.CompensatedLayer.pair_costs` and
:meth:`~onnx_zip.mtz.compensated.CompensatedLayer.within_costs`) are both extra squared output errors, so
one greedy scan over all candidates, cheapest first (stable: ties by kind cross < within A < within B,
then by index), taking a pair when both its neurons are still free, chooses among them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx_zip.errors import InputError
from onnx_zip.mtz._checks import as_f64, where

__all__ = ["MixedPairs", "greedy_mixed_pairs"]


@dataclass(frozen=True)
class MixedPairs:
    """The chosen merges of one layer.

    Attributes:
        cross: ``(k_c, 2)`` ``(i of A, j of B)`` in acceptance order (the shared neurons' order).
        within_a: ``(k_a, 2)`` pairs of A's neurons, ``i < j``, in acceptance order.
        within_b: ``(k_b, 2)`` pairs of B's neurons, ``i < j``.
        cost: Total cost of the accepted pairs.
    """

    cross: np.ndarray
    within_a: np.ndarray
    within_b: np.ndarray
    cost: float

    def __len__(self) -> int:
        return int(self.cross.shape[0] + self.within_a.shape[0] + self.within_b.shape[0])


def _candidates(cross: np.ndarray, wa: np.ndarray, wb: np.ndarray) -> tuple[np.ndarray, ...]:
    """All candidates as flat arrays ``(cost, kind, i, j)``; kind 0 cross, 1 within A, 2 within B."""
    n_a, n_b = cross.shape
    ii, jj = np.meshgrid(np.arange(n_a), np.arange(n_b), indexing="ij")
    ua = np.triu_indices(n_a, 1)
    ub = np.triu_indices(n_b, 1)
    cost = np.concatenate([cross.ravel(), wa[ua], wb[ub]])
    kind = np.concatenate([np.zeros(cross.size), np.ones(ua[0].size), np.full(ub[0].size, 2)]).astype(np.int64)
    i = np.concatenate([ii.ravel(), ua[0], ub[0]])
    j = np.concatenate([jj.ravel(), ua[1], ub[1]])
    return cost, kind, i, j


def greedy_mixed_pairs(
    cross: np.ndarray, within_a: np.ndarray, within_b: np.ndarray, k: int, *, layer: str | None = None
) -> MixedPairs:
    """Take ``k`` merges, cheapest first, among cross pairs and within-model pairs.

    Args:
        cross: ``(N_A, N_B)`` cross-model costs.
        within_a: ``(N_A, N_A)`` symmetric within-A costs (only ``i < j`` is read).
        within_b: ``(N_B, N_B)`` symmetric within-B costs.
        k: Merges to take (``0 ≤ k ≤ (N_A + N_B) // 2``).
        layer: Layer name for messages.

    Returns:
        :class:`MixedPairs`.
    """
    c = as_f64(cross, "cross cost matrix", layer, ndim=2)
    wa = as_f64(within_a, "within-A cost matrix", layer, ndim=2)
    wb = as_f64(within_b, "within-B cost matrix", layer, ndim=2)
    n_a, n_b = c.shape
    if wa.shape != (n_a, n_a) or wb.shape != (n_b, n_b):
        raise InputError(f"{where(layer)}within costs {wa.shape}, {wb.shape} do not fit cross costs {c.shape}")
    if not 0 <= k <= (n_a + n_b) // 2:
        raise InputError(f"{where(layer)}cannot take {k} merges from {n_a} + {n_b} neurons")
    cost, kind, i, j = _candidates(c, wa, wb)
    order = np.lexsort((j, i, kind, cost))
    free = [np.ones(n_a, bool), np.ones(n_b, bool)]
    taken: list[list[tuple[int, int]]] = [[], [], []]
    total = 0.0
    for e in order:
        if sum(len(x) for x in taken) == k:
            break
        kd, a, b = int(kind[e]), int(i[e]), int(j[e])
        first, second = (free[0], free[1]) if kd == 0 else (free[kd - 1], free[kd - 1])
        if first[a] and second[b]:
            first[a] = False
            second[b] = False
            taken[kd].append((a, b))
            total += float(cost[e])
    arrays = [np.asarray(t, dtype=np.int64).reshape(-1, 2) for t in taken]
    return MixedPairs(cross=arrays[0], within_a=arrays[1], within_b=arrays[2], cost=total)
