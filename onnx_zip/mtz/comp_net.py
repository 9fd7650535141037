"""A numpy reference compensated zip of two sequential conv/dense networks (LeNet-5-like), streamed.

Layers are :class:`NetLayer` (conv or dense, then optional ReLU, 2-D max-pool and flatten, all applied
channel by channel, so they commute with the zipped channel order). For each layer bottom-up and each
task, calibration batches run through the original layers below and the zipped layers below (the same
samples), feeding the task's :mod:`~onnx_zip.mtz.comp_stats` accumulator in the chosen conv reading;
then :func:`~onnx_zip.mtz.comp_chain.fit_layer_pair` chooses and fits. At a flatten boundary each
channel's zipped position expands to its ``H·W`` features (channel-major), so the shared features of the
dense layer are the first ``S·H·W``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from onnx_zip.errors import InputError
from onnx_zip.mtz.comp_chain import fit_layer_pair
from onnx_zip.mtz.comp_embed import dense_target, embed_rows, patch_target
from onnx_zip.mtz.comp_stats import MomentAccumulator, moment_accumulator
from onnx_zip.mtz.compensated import DEFAULT_RHO, CompensatedLayer, TaskLayer
from onnx_zip.mtz.hessian import im2col
from onnx_zip.mtz.layout import (
    channel_rows_to_conv,
    conv_channel_rows,
    conv_patch_rows,
    dense_rows,
    patch_rows_to_conv,
    rows_to_dense,
)

__all__ = ["NetLayer", "NetZip", "forward", "zip_net_pair"]


@dataclass(frozen=True)
class NetLayer:
    """One layer: ``weight`` dense ``(out, in)`` or conv ``(out, C, KH, KW)`` (no padding, stride 1), bias
    ``(out,)``, then ReLU, ``pool``×``pool`` max-pool (stride ``pool``, 0 = none), flatten."""

    kind: Literal["dense", "conv"]
    weight: np.ndarray
    bias: np.ndarray
    relu: bool = True
    pool: int = 0
    flatten: bool = False


@dataclass(frozen=True)
class NetZip:
    """Per task the zipped layers; per hidden layer the cross pairs, within pairs and total cost."""

    nets: tuple[list[NetLayer], list[NetLayer]]
    cross: list[np.ndarray]
    within: list[tuple[np.ndarray, np.ndarray]]
    costs: list[float]


def _apply(layer: NetLayer, x: np.ndarray) -> np.ndarray:
    if layer.kind == "dense":
        y = x @ layer.weight.T + layer.bias
    else:
        n, _, h, w = x.shape
        o, _, kh, kw = layer.weight.shape
        cols = im2col(x, (kh, kw))
        oh, ow = h - kh + 1, w - kw + 1
        y = (cols @ layer.weight.reshape(o, -1).T + layer.bias).reshape(n, oh, ow, o).transpose(0, 3, 1, 2)
    if layer.relu:
        y = np.maximum(y, 0.0)
    if layer.pool:
        p = layer.pool
        n, c, h, w = y.shape
        y = y[:, :, : h // p * p, : w // p * p].reshape(n, c, h // p, p, w // p, p).max(axis=(3, 5))
    return y.reshape(y.shape[0], -1) if layer.flatten else y


def forward(layers: Sequence[NetLayer], x: np.ndarray) -> np.ndarray:
    """Run ``layers`` on ``x`` (float64)."""
    h = np.asarray(x, dtype=np.float64)
    for layer in layers:
        h = _apply(layer, h)
    return h


def _batches(x: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for s in range(0, len(x), size):
        yield x[s : s + size]


def _moments(kind: str, layer: NetLayer, orig: Sequence[NetLayer], zipped: Sequence[NetLayer],
             calib: np.ndarray, batch: int, name: str) -> MomentAccumulator:
    acc = moment_accumulator(kind, kernel_shape=layer.weight.shape[2:] if layer.kind == "conv" else None,  # type: ignore[arg-type]
                             layer=name)
    for xb in _batches(calib, batch):
        acc.update(forward(zipped, xb), forward(orig, xb))  # type: ignore[attr-defined]
    return acc


def _task_layer(layer: NetLayer, reading: str, pos: np.ndarray, count: int, stats: object, name: str) -> TaskLayer:
    """Rows and prior of one task's layer in the reading's layout."""
    if layer.kind == "dense":
        rows = dense_rows(layer.weight, layer.bias, layer=name)
        prior = embed_rows(rows, dense_target(pos, count), count + 1, layer=name)
    elif reading == "patch":
        rows = conv_patch_rows(layer.weight, layer.bias, layer=name)
        k2 = layer.weight.shape[2] * layer.weight.shape[3]
        prior = embed_rows(rows, patch_target(pos, count, layer.weight.shape[2:]), count * k2 + 1, layer=name)
    else:
        rows = conv_channel_rows(layer.weight, layer.bias, layer=name)
        prior = embed_rows(rows, dense_target(pos, count), count + 1, layer=name)
    return TaskLayer(rows, stats, prior)  # type: ignore[arg-type]


def _to_layer(layer: NetLayer, rows: np.ndarray, reading: str, count: int) -> NetLayer:
    if layer.kind == "dense":
        w, b = rows_to_dense(rows)
    elif reading == "patch":
        w, b = patch_rows_to_conv(rows, count, layer.weight.shape[2:])
    else:
        w, b = channel_rows_to_conv(rows, layer.weight.shape[2:])
    return replace(layer, weight=w, bias=b)  # type: ignore[arg-type]


def _expand(pos: np.ndarray, count: int, n_shared: int, per: int) -> tuple[np.ndarray, int, int]:
    """Channel positions → flattened feature positions (channel-major, ``per`` features per channel)."""
    feat = np.where(pos[:, None] >= 0, pos[:, None] * per + np.arange(per)[None, :], -1).ravel()
    return feat, count * per, n_shared * per


def zip_net_pair(
    models: Sequence[Sequence[NetLayer]],
    calib: Sequence[np.ndarray],
    share: float | Sequence[float],
    *,
    reading: Literal["patch", "channel"] = "patch",
    rho: float = DEFAULT_RHO,
    within: bool = False,
    batch: int = 256,
) -> NetZip:
    """Zip two networks of the same depth and input shape with the compensated fit.

    Args:
        models: Two lists of :class:`NetLayer`, input to head (same kinds in the same order).
        calib: Per task, calibration inputs (``(n, C, H, W)`` or ``(n, d)``).
        share: Fraction of ``min(N_A, N_B)`` merged per hidden layer (one value or one per hidden layer).
        reading: Conv reading of the moments, ``"patch"`` or ``"channel"``.
        rho: Relative ridge.
        within: Allow within-model merges.
        batch: Calibration batch size.
    """
    if len(models) != 2 or len(models[0]) != len(models[1]):
        raise InputError("zip_net_pair needs two models of the same depth")
    depth = len(models[0])
    shares = [float(share)] * (depth - 1) if isinstance(share, (int, float)) else [float(s) for s in share]
    c_in = int(np.shape(calib[0])[1])
    pos, counts, n_shared = [np.arange(c_in)] * 2, [c_in, c_in], c_in
    nets: tuple[list[NetLayer], list[NetLayer]] = ([], [])
    out: dict[str, list] = {"cross": [], "within": [], "costs": []}
    for li in range(depth):
        name = f"layer{li}"
        layers = [models[t][li] for t in (0, 1)]
        if layers[0].kind == "dense" and li and models[0][li - 1].flatten:
            per = layers[0].weight.shape[1] // models[0][li - 1].weight.shape[0]
            expanded = [_expand(pos[t], counts[t], n_shared, per) for t in (0, 1)]
            pos = [e[0] for e in expanded]
            counts = [e[1] for e in expanded]
            n_shared = expanded[0][2]
        kind = "dense" if layers[0].kind == "dense" else f"conv_{reading}"
        stats = [_moments(kind, layers[t], models[t][:li], nets[t], calib[t], batch, name).stats() for t in (0, 1)]
        tasks = [_task_layer(layers[t], reading, pos[t], counts[t], stats[t], name) for t in (0, 1)]
        k2 = 1 if layers[0].kind == "dense" or reading == "channel" else int(np.prod(layers[0].weight.shape[2:]))
        comp = CompensatedLayer(tasks, n_shared * k2, rho=rho, layer=name)
        if li == depth - 1:
            for t in (0, 1):
                nets[t].append(_to_layer(layers[t], comp.refit(t).rows, reading, counts[t]))
            break
        sizes = [layers[0].weight.shape[0], layers[1].weight.shape[0]]
        k = int(np.floor(shares[li] * min(sizes) + 0.5))
        pairs, wp, cost, per_task = fit_layer_pair(comp, k, within, name, sizes)
        for t in (0, 1):
            nets[t].append(_to_layer(layers[t], per_task[t][0], reading, counts[t]))
            pos[t], counts[t] = per_task[t][1], per_task[t][2]
        n_shared = pairs.shape[0]
        out["cross"].append(pairs)
        out["within"].append(tuple(wp))
        out["costs"].append(cost)
    return NetZip(nets=nets, **out)
