"""The readings of a layer (mtz-method §2) as one table: how its neurons become vectors, which
Hessian coordinates a set of kept inputs selects, and how merged vectors become weights again.

``dense`` (Gemm, MatMul): rows ``(N, d + 1)``; ``patch`` (the paper's conv reading): rows
``(N, C·KH·KW + 1)``; ``channel`` (the released code's): rows ``(N, KH·KW, C + 1)``. The names are
those of :data:`onnx_zip.config.READINGS`; a test checks that both tables agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnx_zip import mtz
from onnx_zip.config import AUTO_READING, READINGS
from onnx_zip.graph.layers import Layer

#: Largest patch-reading vector size ``C·KH·KW + 1`` used by ``conv_hessian="auto"``. Beyond it the
#: per-channel reading is used: the patch Hessian costs about ``D / N_out`` conv forward passes to
#: accumulate and ``O(D³)`` to factor, against ``(C+1)²`` for the per-channel one.
PATCH_MAX_SIZE = 1024


@dataclass(frozen=True)
class ReadingOps:
    """What a reading does to weights and Hessians.

    Attributes:
        rows: ``(layer, w (N, S, *kernel), b (N,) | None) → rows`` over the shared inputs.
        keep_index: ``(layer, kept original inputs (S,), bias) → Hessian coordinates`` to keep.
        to_weights: ``(layer, merged rows (k, ...), S, bias) → (weight (k, S, *kernel), bias (k,) | None)``.
    """

    rows: Callable[[Layer, np.ndarray, np.ndarray | None], np.ndarray]
    keep_index: Callable[[Layer, np.ndarray, bool], np.ndarray]
    to_weights: Callable[[Layer, np.ndarray, int, bool], tuple[np.ndarray, np.ndarray | None]]


def _dense_keep(layer: Layer, kept: np.ndarray, bias: bool) -> np.ndarray:
    return mtz.dense_keep_index(kept, layer.inputs, bias=bias, layer=layer.node)


#: The operations of each reading, by name.
OPS: dict[str, ReadingOps] = {
    "dense": ReadingOps(
        rows=lambda layer, w, b: mtz.dense_rows(w, b, layer=layer.node),
        keep_index=_dense_keep,
        to_weights=lambda layer, rows, s, bias: mtz.rows_to_dense(rows, bias=bias, layer=layer.node),
    ),
    "patch": ReadingOps(
        rows=lambda layer, w, b: mtz.conv_patch_rows(w, b, layer=layer.node),
        keep_index=lambda layer, kept, bias: mtz.patch_keep_index(
            kept, layer.inputs, layer.kernel_shape, bias=bias, layer=layer.node
        ),
        to_weights=lambda layer, rows, s, bias: mtz.patch_rows_to_conv(
            rows, s, layer.kernel_shape, bias=bias, layer=layer.node
        ),
    ),
    "channel": ReadingOps(
        rows=lambda layer, w, b: mtz.conv_channel_rows(w, b, layer=layer.node),
        keep_index=_dense_keep,
        to_weights=lambda layer, rows, s, bias: mtz.channel_rows_to_conv(
            rows, layer.kernel_shape, bias=bias, layer=layer.node
        ),
    ),
}


def reading_of(layer: Layer, conv_hessian: str = AUTO_READING) -> str:
    """The reading of a layer: ``dense`` for a dense layer; for a conv the configured one, or with
    ``auto`` ``patch`` while ``C·KH·KW + 1 ≤`` :data:`PATCH_MAX_SIZE`, else ``channel``."""
    if layer.kind != "conv":
        return "dense"
    if conv_hessian != AUTO_READING:
        return READINGS.get(conv_hessian).name
    kh, kw = layer.kernel_shape
    return "patch" if layer.inputs * kh * kw + 1 <= PATCH_MAX_SIZE else "channel"


def ops_of(reading: str) -> ReadingOps:
    """The operations of a reading (``dense``, ``patch``, ``channel``)."""
    return OPS[READINGS.get(reading).name]
