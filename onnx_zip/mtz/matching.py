"""One-to-one pair selection from a cost matrix, and the share-count policies (mtz-method §4).

* :func:`greedy_matching` — the released code's rule: all ``N_A·N_B`` costs in ascending order (stable,
  so ties are broken by ``(cost, i, j)``), pairs taken cheapest first, skipping used neurons. Only a
  block of the cheapest entries is sorted at a time (``np.partition``), then the problem shrinks to the
  free rows × free columns. The scan is vectorised per chunk of the sorted order: within a chunk, an
  entry that comes first both in its row and in its column among the still-free entries is certainly
  accepted; rounds of this rule (with a short plain loop as a fallback for long conflict chains)
  reproduce the sequential scan exactly. Pair order = order of acceptance.
* :func:`optimal_matching` — a minimum-total-cost one-to-one matching of exactly ``k`` pairs
  (k-cardinality assignment) by ``scipy.optimize.linear_sum_assignment`` on the matrix padded with
  ``N_B − k`` dummy rows and ``N_A − k`` dummy columns (dummy↔real cost 0, dummy↔dummy forbidden):
  every perfect matching of the padded matrix leaves exactly ``k`` real↔real pairs. Pair order =
  ascending ``(cost, i, j)``.
* Policies: :class:`ShareCount` (``k`` per layer), :class:`ShareFraction` (``k = round(f·min(N_A, N_B))``,
  halves up) and :class:`ShareThreshold` (every pair of the maximal greedy/optimal matching whose cost
  is ``≤ ε``).

The order of the pairs is the order of the shared neurons in the zipped layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

from onnx_zip.errors import InputError
from onnx_zip.mtz._checks import as_f64, where

__all__ = [
    "Matching",
    "greedy_matching",
    "optimal_matching",
    "ShareCount",
    "ShareFraction",
    "ShareThreshold",
    "SharePolicy",
    "share_count",
    "select_pairs",
]


@dataclass(frozen=True)
class Matching:
    """Chosen pairs of one layer, in shared-neuron order.

    Attributes:
        pairs: ``(k, 2)`` int64, column 0 = neuron of A, column 1 = neuron of B.
        costs: ``(k,)`` float64 cost of each pair.
        method: ``"greedy"`` or ``"optimal"``.
    """

    pairs: np.ndarray
    costs: np.ndarray
    method: str

    def __len__(self) -> int:
        return int(self.pairs.shape[0])

    @property
    def rows(self) -> np.ndarray:
        """``(k,)`` neurons of A, in pair order."""
        return self.pairs[:, 0]

    @property
    def cols(self) -> np.ndarray:
        """``(k,)`` neurons of B, in pair order."""
        return self.pairs[:, 1]

    @property
    def total_cost(self) -> float:
        """Sum of the pair costs."""
        return float(self.costs.sum())

    def to_dict(self) -> dict[str, object]:
        """Plain, JSON-serialisable form."""
        return {"method": self.method, "pairs": self.pairs.tolist(), "costs": self.costs.tolist()}


def _check_costs(costs: np.ndarray, layer: str | None) -> np.ndarray:
    d = as_f64(costs, "cost matrix", layer, ndim=2)
    if d.size and d.min() < 0:
        raise InputError(f"{where(layer)}cost matrix {d.shape} has negative entries (min {d.min():.3g})")
    return d


def _check_k(k: int | None, d: np.ndarray, layer: str | None) -> int:
    kmax = min(d.shape)
    if k is None:
        return kmax
    if isinstance(k, bool) or int(k) != k or k < 0 or k > kmax:
        raise InputError(
            f"{where(layer)}cannot share k={k!r} pairs with {d.shape[0]} neurons in A and {d.shape[1]} in B",
            hint=f"k must be an integer between 0 and {kmax}",
        )
    return int(k)


def _check_threshold(threshold: float | None, layer: str | None) -> None:
    if threshold is not None and not (np.isfinite(threshold) and threshold >= 0):
        raise InputError(f"{where(layer)}cost threshold must be a finite number ≥ 0, got {threshold!r}")


def _empty(method: str) -> Matching:
    return Matching(np.zeros((0, 2), np.int64), np.zeros(0), method)


def _scan(
    order: np.ndarray, nb: int, row_used: np.ndarray, col_used: np.ndarray, limit: int
) -> np.ndarray:
    """Sequential greedy scan of flat indices ``order`` (already sorted), vectorised per chunk.

    Marks accepted rows/columns in ``row_used``/``col_used`` and returns the accepted flat indices in
    acceptance order (at most ``limit``).
    """
    out: list[np.ndarray] = []
    taken = 0
    pos = 0
    step = max(4 * nb, 4096)
    while taken < limit and pos < order.size:
        idx = order[pos : pos + step]
        rank = np.arange(pos, pos + idx.size)
        pos += step
        r, c = np.divmod(idx, nb)
        alive = ~(row_used[r] | col_used[c])
        idx, rank, r, c = idx[alive], rank[alive], r[alive], c[alive]
        got: list[np.ndarray] = []
        rounds = 0
        while idx.size:
            if rounds >= 6:  # long conflict chain: finish the chunk sequentially
                seq = []
                for rk, ri, ci in zip(rank.tolist(), r.tolist(), c.tolist()):
                    if not (row_used[ri] or col_used[ci]):
                        row_used[ri] = col_used[ci] = True
                        seq.append(rk)
                got.append(np.asarray(seq, dtype=np.int64))
                break
            rounds += 1
            # an entry first in its row and first in its column among the free ones is accepted
            first_r = np.zeros(idx.size, dtype=bool)
            first_c = np.zeros(idx.size, dtype=bool)
            first_r[np.unique(r, return_index=True)[1]] = True
            first_c[np.unique(c, return_index=True)[1]] = True
            acc = first_r & first_c
            got.append(rank[acc])
            row_used[r[acc]] = True
            col_used[c[acc]] = True
            alive = ~(row_used[r] | col_used[c])
            idx, rank, r, c = idx[alive], rank[alive], r[alive], c[alive]
        if got:
            ranks = np.sort(np.concatenate(got))  # acceptance order = position in the sorted order
            out.append(order[ranks])
            taken += ranks.size
    if not out:
        return np.zeros(0, dtype=np.int64)
    sel = np.concatenate(out)
    # entries accepted past ``limit`` in the last chunk are dropped; they cannot affect earlier ones
    return sel[:limit]


def greedy_matching(
    costs: np.ndarray, k: int | None = None, *, threshold: float | None = None, layer: str | None = None
) -> Matching:
    """Greedy one-to-one matching, cheapest first (the released code's rule).

    Equivalent to sorting all ``N_A·N_B`` costs (stable, ties by ``(cost, i, j)``) and scanning them,
    but sorts only a block of the cheapest entries at a time (``np.partition``); after each block the
    problem shrinks to the still-free rows × columns, whose remaining costs all exceed the block's.

    Args:
        costs: ``(N_A, N_B)`` non-negative costs.
        k: Number of pairs to take (default ``min(N_A, N_B)``).
        threshold: Only pairs with cost ``≤ threshold`` (the scan stops at the first larger cost).
        layer: Layer name for messages.

    Returns:
        :class:`Matching` in acceptance order.
    """
    d = _check_costs(costs, layer)
    k = _check_k(k, d, layer)
    _check_threshold(threshold, layer)
    if k == 0:
        return _empty("greedy")
    rows = np.arange(d.shape[0])
    cols = np.arange(d.shape[1])
    sub = d
    block = 8 * max(d.shape)
    found_r: list[np.ndarray] = []
    found_c: list[np.ndarray] = []
    taken = 0
    while taken < k and sub.size:
        flat = np.ascontiguousarray(sub).ravel()
        nb = sub.shape[1]
        if block < flat.size:
            cutoff = np.partition(flat, block - 1)[block - 1]
            if threshold is not None:
                cutoff = min(cutoff, threshold)
            cand = np.flatnonzero(flat <= cutoff)
        else:
            cutoff = np.inf
            cand = np.flatnonzero(flat <= threshold) if threshold is not None else np.arange(flat.size)
        order = cand[np.argsort(flat[cand], kind="stable")]
        row_used = np.zeros(sub.shape[0], dtype=bool)
        col_used = np.zeros(nb, dtype=bool)
        sel = _scan(order, nb, row_used, col_used, k - taken)
        r, c = np.divmod(sel, nb)
        found_r.append(rows[r])
        found_c.append(cols[c])
        taken += sel.size
        if cutoff == np.inf or (threshold is not None and cutoff >= threshold):
            break
        # every free×free entry ≤ cutoff was scanned (and would have been taken): recurse on the rest
        rows, cols = rows[~row_used], cols[~col_used]
        sub = sub[np.ix_(~row_used, ~col_used)]
        block *= 2
    pairs = np.stack([np.concatenate(found_r), np.concatenate(found_c)], axis=1).astype(np.int64)
    return Matching(pairs, d[pairs[:, 0], pairs[:, 1]].copy(), "greedy")


def optimal_matching(
    costs: np.ndarray, k: int | None = None, *, threshold: float | None = None, layer: str | None = None
) -> Matching:
    """Minimum-total-cost one-to-one matching of exactly ``k`` pairs.

    Args:
        costs: ``(N_A, N_B)`` non-negative costs.
        k: Number of pairs (default ``min(N_A, N_B)``).
        threshold: Keep only the pairs with cost ``≤ threshold`` of the optimal ``k``-matching
            (with ``k`` defaulting to ``min(N_A, N_B)``).
        layer: Layer name for messages.

    Returns:
        :class:`Matching` in ascending ``(cost, i, j)`` order.
    """
    d = _check_costs(costs, layer)
    k = _check_k(k, d, layer)
    _check_threshold(threshold, layer)
    na, nb = d.shape
    if k == 0:
        return _empty("optimal")
    if k == min(na, nb):
        ri, ci = linear_sum_assignment(d)
    else:
        size = na + nb - k
        big = np.zeros((size, size))
        big[:na, :nb] = d
        big[na:, nb:] = np.inf  # dummy ↔ dummy forbidden
        r_all, c_all = linear_sum_assignment(big)
        real = (r_all < na) & (c_all < nb)
        ri, ci = r_all[real], c_all[real]
    c = d[ri, ci]
    order = np.lexsort((ci, ri, c))
    ri, ci, c = ri[order], ci[order], c[order]
    if threshold is not None:
        keep = c <= threshold
        ri, ci, c = ri[keep], ci[keep], c[keep]
    return Matching(np.stack([ri, ci], axis=1).astype(np.int64), c.copy(), "optimal")


@dataclass(frozen=True)
class ShareCount:
    """Share exactly ``count`` pairs in the layer."""

    count: int


@dataclass(frozen=True)
class ShareFraction:
    """Share ``round(fraction · min(N_A, N_B))`` pairs (halves rounded up); ``0 ≤ fraction ≤ 1``."""

    fraction: float


@dataclass(frozen=True)
class ShareThreshold:
    """Share every pair of the maximal matching whose cost is ``≤ epsilon`` (``epsilon ≥ 0``)."""

    epsilon: float


SharePolicy = ShareCount | ShareFraction | ShareThreshold


def share_count(policy: SharePolicy, n_a: int, n_b: int, *, layer: str | None = None) -> int | None:
    """Number of pairs a count/fraction policy asks for (``None`` for a threshold policy).

    Raises:
        InputError: Count above ``min(n_a, n_b)`` or negative; fraction outside ``[0, 1]``;
            negative threshold; unknown policy.
    """
    m = min(int(n_a), int(n_b))
    if isinstance(policy, ShareCount):
        k = policy.count
        if isinstance(k, bool) or int(k) != k or not 0 <= k <= m:
            raise InputError(
                f"{where(layer)}cannot share {k!r} pairs with {n_a} neurons in A and {n_b} in B",
                hint=f"use a count between 0 and {m}",
            )
        return int(k)
    if isinstance(policy, ShareFraction):
        f = float(policy.fraction)
        if not 0.0 <= f <= 1.0:
            raise InputError(f"{where(layer)}share fraction must be within [0, 1], got {policy.fraction!r}")
        return int(math.floor(f * m + 0.5))
    if isinstance(policy, ShareThreshold):
        _check_threshold(policy.epsilon, layer)
        return None
    raise InputError(f"{where(layer)}unknown share policy {policy!r}")


def select_pairs(
    costs: np.ndarray,
    policy: SharePolicy,
    *,
    method: Literal["greedy", "optimal"] = "greedy",
    layer: str | None = None,
) -> Matching:
    """Apply a share policy with the chosen matching method.

    Args:
        costs: ``(N_A, N_B)`` costs.
        policy: :class:`ShareCount`, :class:`ShareFraction` or :class:`ShareThreshold`.
        method: ``"greedy"`` (released code) or ``"optimal"``.
        layer: Layer name for messages.
    """
    d = np.asarray(costs)
    if d.ndim != 2:
        raise InputError(f"{where(layer)}cost matrix must be 2-D, got shape {d.shape}")
    k = share_count(policy, d.shape[0], d.shape[1], layer=layer)
    thr = policy.epsilon if isinstance(policy, ShareThreshold) else None
    if method == "greedy":
        return greedy_matching(d, k, threshold=thr, layer=layer)
    if method == "optimal":
        return optimal_matching(d, k, threshold=thr, layer=layer)
    raise InputError(f"{where(layer)}unknown matching method {method!r}", hint="use 'greedy' or 'optimal'")
