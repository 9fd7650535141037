"""A numpy reference zip of two ReLU MLPs (dense chains), bottom-up, compensated or one-pass.

This is the compensated method end to end on plain weight arrays — the reference the ONNX pipeline's
integration can be compared with, and the engine of ``tools/compensated_experiment.py``. For each
layer, on each task's calibration data (same samples through both paths), the zipped path's input and
the original input feed :class:`~onnx_zip.mtz.comp_stats.DenseMoments`; hidden layers share
``round(share·min(N_A, N_B))`` neurons (greedy on the compensated pair costs, optionally mixing in
within-model merges), shared neurons are fitted jointly, every other neuron (heads included) is refitted.
``method="paper"`` is the one-pass MTZ of mtz-method §2–§5 on the same layout (Hessians of the original
activations restricted to the shared inputs, merged shared weights, original inter and specific weights).

Each task's zipped layer is kept as rows ``(N̄_t, D̃_t)`` in its zipped input coordinates
``[shared ; own ; 1]``; its outputs are ``[shared (pair order) ; own (ascending index, a within pair at
its smaller index)]`` (:func:`~onnx_zip.mtz.comp_embed.zipped_positions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from onnx_zip.errors import InputError
from onnx_zip.mtz.comp_embed import dense_target, embed_rows, zipped_positions
from onnx_zip.mtz.comp_pairs import greedy_mixed_pairs
from onnx_zip.mtz.comp_stats import CompensationStats, DenseMoments
from onnx_zip.mtz.compensated import DEFAULT_RHO, CompensatedLayer, TaskLayer
from onnx_zip.mtz.costs import cost_matrix, pair_operator
from onnx_zip.mtz.layout import dense_rows
from onnx_zip.mtz.matching import greedy_matching
from onnx_zip.mtz.merge import merge_pairs

__all__ = ["ChainZip", "DenseLayer", "forward_rows", "zip_mlp_pair"]

DenseLayer = tuple[np.ndarray, np.ndarray]  # weight (out, in), bias (out,)


@dataclass(frozen=True)
class ChainZip:
    """The zipped pair.

    Attributes:
        nets: Per task, the zipped layers as rows ``(N̄_t, D̃_t)`` (bias last), input to head.
        cross: Per hidden layer, ``(k, 2)`` shared pairs in shared order.
        within: Per hidden layer, per task, ``(m, 2)`` within-model pairs.
        costs: Per hidden layer, the total cost of the chosen merges.
    """

    nets: tuple[list[np.ndarray], list[np.ndarray]]
    cross: list[np.ndarray]
    within: list[tuple[np.ndarray, np.ndarray]]
    costs: list[float]


def forward_rows(rows: Sequence[np.ndarray], x: np.ndarray) -> np.ndarray:
    """Run a chain of row-layout layers (ReLU between, linear last) on ``x (n, d)`` → ``(n, out)``."""
    h = np.asarray(x, dtype=np.float64)
    for li, r in enumerate(rows):
        h = h @ r[:, :-1].T + r[:, -1]
        if li < len(rows) - 1:
            np.maximum(h, 0.0, out=h)
    return h


def _layer_rows(shared: np.ndarray, own_rows: dict[int, np.ndarray],
                pos: np.ndarray) -> np.ndarray:
    """Rows of a zipped layer in output order: shared then own neurons at their zipped positions."""
    out = np.empty((int(pos.max()) + 1,) + shared.shape[1:])
    out[: shared.shape[0]] = shared
    for i, row in own_rows.items():
        out[pos[i]] = row
    return out


def _choose(layer: CompensatedLayer, k: int, within: bool, name: str) -> tuple[np.ndarray, list[np.ndarray], float]:
    cross = layer.pair_costs(0, 1)
    if not within:
        m = greedy_matching(cross, k, layer=name)
        return m.pairs, [np.zeros((0, 2), np.int64)] * 2, m.total_cost
    mp = greedy_mixed_pairs(cross, layer.within_costs(0), layer.within_costs(1), k, layer=name)
    return mp.cross, [mp.within_a, mp.within_b], mp.cost


def fit_layer_pair(layer: CompensatedLayer, k: int, within: bool, name: str, sizes: Sequence[int]) -> tuple:
    """Choose ``k`` merges of a two-task layer and fit it.

    Args:
        layer: The layer's :class:`CompensatedLayer` (tasks 0 and 1).
        k: Merges to take (cross pairs, plus within-model pairs when ``within``).
        within: Allow within-model merges.
        name: Layer name for messages.
        sizes: ``(N_A, N_B)``.

    Returns:
        ``(pairs (k_c, 2), [within_A (m_A, 2), within_B (m_B, 2)], total cost, per task (rows in output
        order ``(N̄_t, ...)``, positions ``(N_t,)``, zipped count))``.
    """
    pairs, wpairs, cost = _choose(layer, k, within, name)
    shared = layer.fit_shared(pairs)
    out = []
    for t in (0, 1):
        pos, count = zipped_positions(sizes[t], pairs[:, t], wpairs[t], layer=name)
        used = set(pairs[:, t].tolist()) | set(wpairs[t].ravel().tolist())
        alone = np.array([i for i in range(sizes[t]) if i not in used], dtype=np.int64)
        own = dict(zip(alone.tolist(), layer.refit(t, alone).rows))
        if wpairs[t].size:
            own.update(zip(wpairs[t].min(axis=1).tolist(), layer.fit_within(t, wpairs[t]).rows))
        out.append((_layer_rows(shared.task_rows[t], own, pos), pos, count))
    return pairs, wpairs, cost, out


def _paper_layer(stats: Sequence[CompensationStats], priors: Sequence[np.ndarray], inv: Sequence[np.ndarray],
                 n_shared: int, k: int, name: str, sizes: Sequence[int]) -> tuple:
    """One-pass MTZ on the zipped layout: H_t restricted to the shared inputs (original order ``inv``)."""
    sb = np.concatenate([np.arange(n_shared), [-1]])
    hs = [st.h[np.ix_(np.append(iv, st.h.shape[0] - 1), np.append(iv, st.h.shape[0] - 1))]
          for st, iv in zip(stats, inv)]
    op = pair_operator(hs[0], hs[1], layer=name)
    ra, rb = priors[0][:, sb], priors[1][:, sb]
    m = greedy_matching(cost_matrix(ra, rb, op, layer=name), k, layer=name)
    merged = merge_pairs(ra, rb, m.pairs, op, layer=name)
    out = []
    for t in (0, 1):
        pos, count = zipped_positions(sizes[t], m.pairs[:, t], layer=name)
        shared = priors[t][m.pairs[:, t]].copy()
        shared[:, :n_shared], shared[:, -1] = merged[:, :-1], merged[:, -1]
        own = {i: priors[t][i] for i in range(sizes[t]) if i not in set(m.pairs[:, t].tolist())}
        out.append((_layer_rows(shared, own, pos), pos, count))
    return m.pairs, [np.zeros((0, 2), np.int64)] * 2, m.total_cost, out


def zip_mlp_pair(
    models: Sequence[Sequence[DenseLayer]],
    calib: Sequence[np.ndarray],
    share: float | Sequence[float],
    *,
    method: Literal["compensated", "paper"] = "compensated",
    rho: float = DEFAULT_RHO,
    within: bool = False,
) -> ChainZip:
    """Zip two ReLU MLPs with the same input width and depth.

    Args:
        models: Two lists of ``(W (out, in), b (out,))``, input to head.
        calib: Per task, calibration inputs ``(n_t, d)``.
        share: Fraction of ``min(N_A, N_B)`` shared per hidden layer (one value or one per hidden layer).
        method: ``"compensated"`` (§10) or ``"paper"`` (one-pass MTZ).
        rho: Relative ridge of the compensated fit.
        within: Also allow within-model merges (compensated only).
    """
    if len(models) != 2 or len(models[0]) != len(models[1]) or len(calib) != 2:
        raise InputError("zip_mlp_pair needs two models of the same depth and two calibration sets")
    depth = len(models[0])
    shares = [float(share)] * (depth - 1) if isinstance(share, (int, float)) else [float(s) for s in share]
    d_in = models[0][0][0].shape[1]
    pos = [np.arange(d_in), np.arange(d_in)]
    counts, n_shared = [d_in, d_in], d_in
    inv = [np.arange(d_in), np.arange(d_in)]
    orig = [np.asarray(c, np.float64) for c in calib]
    zipped = [o.copy() for o in orig]
    nets: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    result: dict[str, list] = {"cross": [], "within": [], "costs": []}
    for li in range(depth):
        name = f"dense{li}"
        stats = [DenseMoments(layer=name).update(zipped[t], orig[t]).stats() for t in (0, 1)]
        rows = [dense_rows(*models[t][li], layer=name) for t in (0, 1)]
        priors = [embed_rows(rows[t], dense_target(pos[t], counts[t]), counts[t] + 1, layer=name) for t in (0, 1)]
        comp = CompensatedLayer([TaskLayer(rows[t], stats[t], priors[t]) for t in (0, 1)], n_shared, rho=rho, layer=name)
        if li == depth - 1:
            for t in (0, 1):
                nets[t].append(comp.refit(t).rows if method == "compensated" else priors[t])
            break
        sizes = [rows[0].shape[0], rows[1].shape[0]]
        k = int(np.floor(shares[li] * min(sizes) + 0.5))
        if method == "compensated":
            pairs, wp, cost, per = fit_layer_pair(comp, k, within, name, sizes)
        else:
            pairs, wp, cost, per = _paper_layer(stats, priors, inv, n_shared, k, name, sizes)
        for t in (0, 1):
            nets[t].append(per[t][0])
            pos[t], counts[t] = per[t][1], per[t][2]
            inv[t] = pairs[:, t]
            orig[t] = np.maximum(orig[t] @ models[t][li][0].T + models[t][li][1], 0.0)
            zipped[t] = np.maximum(zipped[t] @ per[t][0][:, :-1].T + per[t][0][:, -1], 0.0)
        n_shared = pairs.shape[0]
        result["cross"].append(pairs)
        result["within"].append(tuple(wp))
        result["costs"].append(cost)
    return ChainZip(nets=nets, **result)
