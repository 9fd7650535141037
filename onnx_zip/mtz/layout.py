"""Conversions between layer weights and MTZ neuron-vector layouts (neuron vectors are ROWS).

* Dense: weight ``W (N, d)`` (output × input — the registry transposes Gemm/MatMul weights into this)
  and bias ``b (N,)`` → rows ``[W[n] ; b[n]]`` of shape ``(N, d+1)`` (bias LAST).
* Conv, patch reading: ``W (N, C, KH, KW)``, ``b (N,)`` → rows ``[W[n].ravel() ; b[n]]`` of shape
  ``(N, C·KH·KW + 1)``, (c, kh, kw) C-major order — the im2col order of :func:`~onnx_zip.mtz.hessian.im2col`.
* Conv, per-channel reading: → ``(N, KH·KW, C+1)``; entry ``[n, p]`` with ``p = kh·KW + kw`` is
  ``[W[n, :, kh, kw] ; b[n]]`` (the bias repeated at every kernel position). Back to a conv, the bias is
  the mean of the per-position bias entries (what the released code does after merging).

Without a bias (``b=None``) the trailing bias entry is simply absent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnx_zip.errors import InputError
from onnx_zip.mtz._checks import as_f64, where

__all__ = [
    "dense_rows",
    "rows_to_dense",
    "conv_patch_rows",
    "patch_rows_to_conv",
    "conv_channel_rows",
    "channel_rows_to_conv",
]


def _bias(b: np.ndarray | None, n: int, layer: str | None) -> np.ndarray | None:
    if b is None:
        return None
    b = as_f64(b, "bias", layer, ndim=1)
    if b.shape[0] != n:
        raise InputError(f"{where(layer)}bias has shape {b.shape}, expected ({n},) to match the weight")
    return b


def dense_rows(w: np.ndarray, b: np.ndarray | None = None, *, layer: str | None = None) -> np.ndarray:
    """Dense weight ``(N, d)`` and bias ``(N,)`` → neuron rows ``(N, d[+1])``, bias last."""
    w = as_f64(w, "weight", layer, ndim=2)
    b = _bias(b, w.shape[0], layer)
    return w.copy() if b is None else np.concatenate([w, b[:, None]], axis=1)


def rows_to_dense(
    rows: np.ndarray, *, bias: bool = True, layer: str | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Neuron rows ``(N, d[+1])`` → weight ``(N, d)`` and bias ``(N,)`` (``None`` if ``bias=False``)."""
    rows = as_f64(rows, "rows", layer, ndim=2)
    if bias:
        return rows[:, :-1].copy(), rows[:, -1].copy()
    return rows.copy(), None


def conv_patch_rows(w: np.ndarray, b: np.ndarray | None = None, *, layer: str | None = None) -> np.ndarray:
    """Conv weight ``(N, C, KH, KW)`` + bias ``(N,)`` → patch rows ``(N, C·KH·KW[+1])``, bias last."""
    w = as_f64(w, "weight", layer, ndim=4)
    b = _bias(b, w.shape[0], layer)
    flat = w.reshape(w.shape[0], -1)
    return flat.copy() if b is None else np.concatenate([flat, b[:, None]], axis=1)


def patch_rows_to_conv(
    rows: np.ndarray, channels: int, kernel_shape: Sequence[int], *, bias: bool = True, layer: str | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Patch rows ``(N, C·KH·KW[+1])`` → conv weight ``(N, C, KH, KW)`` and bias ``(N,)`` or ``None``."""
    rows = as_f64(rows, "rows", layer, ndim=2)
    kh, kw = (int(k) for k in kernel_shape)
    want = channels * kh * kw + int(bias)
    if rows.shape[1] != want:
        raise InputError(f"{where(layer)}patch rows have shape {rows.shape}, expected (N, {want})")
    w = rows[:, : channels * kh * kw].reshape(rows.shape[0], channels, kh, kw).copy()
    return w, (rows[:, -1].copy() if bias else None)


def conv_channel_rows(w: np.ndarray, b: np.ndarray | None = None, *, layer: str | None = None) -> np.ndarray:
    """Conv weight ``(N, C, KH, KW)`` + bias → per-channel rows ``(N, KH·KW, C[+1])``.

    Entry ``[n, kh·KW + kw]`` is ``[W[n, :, kh, kw] ; b[n]]``.
    """
    w = as_f64(w, "weight", layer, ndim=4)
    n, c, kh, kw = w.shape
    b = _bias(b, n, layer)
    per = w.reshape(n, c, kh * kw).transpose(0, 2, 1)
    if b is None:
        return np.ascontiguousarray(per)
    out = np.empty((n, kh * kw, c + 1))
    out[:, :, :c] = per
    out[:, :, c] = b[:, None]
    return out


def channel_rows_to_conv(
    rows: np.ndarray, kernel_shape: Sequence[int], *, bias: bool = True, layer: str | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-channel rows ``(N, KH·KW, C[+1])`` → conv weight ``(N, C, KH, KW)`` and bias ``(N,)``.

    The bias is the mean over kernel positions of the per-position bias entries.
    """
    rows = as_f64(rows, "rows", layer, ndim=3)
    kh, kw = (int(k) for k in kernel_shape)
    if rows.shape[1] != kh * kw:
        raise InputError(f"{where(layer)}channel rows have shape {rows.shape}, expected (N, {kh * kw}, C[+1])")
    n = rows.shape[0]
    c = rows.shape[2] - int(bias)
    w = rows[:, :, :c].transpose(0, 2, 1).reshape(n, c, kh, kw).copy()
    return w, (rows[:, :, c].mean(axis=1) if bias else None)
