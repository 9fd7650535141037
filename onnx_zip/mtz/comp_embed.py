"""Where each original input feature sits in the zipped model's input: the ridge target of the fit.

The compensated fit (mtz-method §10) expresses a neuron in the ZIPPED input's coordinates. Its ridge
target is the original neuron "moved" into those coordinates: if the layer below put task t's original
neuron ``i`` at zipped position ``target[i]``, the weight ``w[i]`` moves to column ``target[i]``; two
original neurons merged into one zipped neuron (a within-model merge below) add their weights in the
same column (the next layer sums their columns); a zipped feature no original one maps to (the fictive
inputs of a narrower first layer, mtz-method §7) gets weight 0; ``target[i] = -1`` drops a feature.

Zipped input order, for every reading: ``[shared (S) ; task t's own (E_t) ; 1]``. :func:`zipped_positions`
builds the map from a layer's plan with the convention the rewrite must follow: shared neurons in pair
order, then the task's remaining neurons in ascending original index, a within-model pair occupying the
position of its smaller index.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnx_zip.errors import InputError
from onnx_zip.mtz._checks import as_f64, where

__all__ = ["dense_target", "embed_rows", "patch_target", "zipped_positions"]


def _index(arr: object, name: str, layer: str | None, ndim: int) -> np.ndarray:
    out = np.asarray(arr, dtype=np.int64)
    if out.ndim != ndim:
        raise InputError(f"{where(layer)}{name} must have rank {ndim}, got shape {out.shape}")
    return out


def zipped_positions(
    n_neurons: int,
    shared: Sequence[int] | np.ndarray,
    within: Sequence[Sequence[int]] | np.ndarray | None = None,
    *,
    layer: str | None = None,
) -> tuple[np.ndarray, int]:
    """Zipped position of each of task t's neurons of the layer below.

    Args:
        n_neurons: Task t's neurons in that layer (original count).
        shared: ``(k,)`` task t's neurons that are shared, in shared (pair) order → positions ``0..k-1``.
        within: ``(m, 2)`` pairs of task t's own neurons merged together (within-model merges).
        layer: Layer name for messages.

    Returns:
        ``(positions (n_neurons,), zipped_count)``: position of every original neuron, and the number of
        zipped features of task t (``k`` + its own).
    """
    sh = _index(shared, "shared neurons", layer, 1)
    pairs = _index(np.zeros((0, 2)) if within is None else within, "within pairs", layer, 2)
    used = np.concatenate([sh, pairs.ravel()])
    if used.size and (used.min() < 0 or used.max() >= n_neurons or np.unique(used).size != used.size):
        raise InputError(
            f"{where(layer)}shared neurons and within pairs must be distinct neurons in 0..{n_neurons - 1}"
        )
    pos = np.full(n_neurons, -1, dtype=np.int64)
    pos[sh] = np.arange(sh.size)
    partner = np.full(n_neurons, -1, dtype=np.int64)
    if pairs.size:
        lo, hi = pairs.min(axis=1), pairs.max(axis=1)
        partner[hi] = lo
    nxt = sh.size
    for i in range(n_neurons):
        if pos[i] >= 0:
            continue
        if partner[i] >= 0:
            pos[i] = pos[partner[i]]
        else:
            pos[i] = nxt
            nxt += 1
    return pos, nxt


def dense_target(
    positions: Sequence[int] | np.ndarray, zipped_features: int, *, bias: bool = True, layer: str | None = None
) -> np.ndarray:
    """Target map of a dense (or per-channel conv) vector: ``positions`` then the bias onto the zipped bias.

    Args:
        positions: ``(d,)`` zipped position of each original input feature / channel (``-1`` = none).
        zipped_features: ``d̃``, zipped input features / channels.
        bias: Whether both vectors end with the bias entry.

    Returns:
        ``(d + bias,)`` int64.
    """
    pos = _index(positions, "positions", layer, 1)
    if pos.size and (pos.min() < -1 or pos.max() >= zipped_features):
        raise InputError(f"{where(layer)}positions must lie in -1..{zipped_features - 1}")
    return np.concatenate([pos, [zipped_features]]) if bias else pos.copy()


def patch_target(
    channel_positions: Sequence[int] | np.ndarray,
    zipped_channels: int,
    kernel_shape: Sequence[int],
    *,
    bias: bool = True,
    layer: str | None = None,
) -> np.ndarray:
    """Target map of a patch (im2col) vector, ``(c, kh, kw)`` C-major then the bias.

    Args:
        channel_positions: ``(C,)`` zipped channel of each original input channel (``-1`` = none).
        zipped_channels: ``C̃``.
        kernel_shape: ``(KH, KW)``.
        bias: Whether both vectors end with the bias entry.

    Returns:
        ``(C·KH·KW + bias,)`` int64.
    """
    pos = _index(channel_positions, "channel positions", layer, 1)
    if pos.size and (pos.min() < -1 or pos.max() >= zipped_channels):
        raise InputError(f"{where(layer)}channel positions must lie in -1..{zipped_channels - 1}")
    k2 = int(kernel_shape[0]) * int(kernel_shape[1])
    taps = np.arange(k2)
    out = np.where(pos[:, None] >= 0, pos[:, None] * k2 + taps[None, :], -1).ravel()
    return np.concatenate([out, [zipped_channels * k2]]) if bias else out


def embed_rows(
    rows: np.ndarray, target: Sequence[int] | np.ndarray, zipped_size: int, *, layer: str | None = None
) -> np.ndarray:
    """Move neuron rows into the zipped coordinates: ``out[..., target[j]] += rows[..., j]``.

    Args:
        rows: ``(N, D)`` or ``(N, P, D)`` (per-channel reading) in the original coordinates.
        target: ``(D,)`` from :func:`dense_target` / :func:`patch_target` (``-1`` entries are dropped).
        zipped_size: ``D̃``.

    Returns:
        ``(N, D̃)`` or ``(N, P, D̃)`` float64.
    """
    w = as_f64(rows, "weights", layer, ndim=(2, 3))
    tgt = _index(target, "target map", layer, 1)
    if tgt.size != w.shape[-1]:
        raise InputError(f"{where(layer)}target map has {tgt.size} entries, the rows have {w.shape[-1]}")
    if tgt.size and (tgt.min() < -1 or tgt.max() >= zipped_size):
        raise InputError(f"{where(layer)}target map entries must lie in -1..{zipped_size - 1}")
    out = np.zeros(w.shape[:-1] + (zipped_size,))
    keep = tgt >= 0
    flat = out.reshape(-1, zipped_size)
    np.add.at(flat.T, tgt[keep], w.reshape(-1, w.shape[-1])[:, keep].T)
    return flat.reshape(out.shape)
