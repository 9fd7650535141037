"""Streaming layer-wise Hessians H = mean(x xᵀ) of a layer's (augmented) input, in float64.

Three accumulators, one per reading of a layer (see ``docs``/mtz-method §2):

* :class:`DenseHessian` — Gemm/MatMul input batches ``(N, d)``; H is ``(d+1, d+1)`` with the constant
  1 LAST when ``bias=True``.
* :class:`ConvChannelHessian` — the released code's per-channel reading: ``x`` is the C channel values
  at one spatial position of the UNPADDED input, averaged over samples and positions; H is
  ``(C+1, C+1)``.
* :class:`ConvPatchHessian` — the paper's reading: ``x`` is one im2col patch of the (zero-)padded input
  in ``(c, kh, kw)`` C-major order (the order of ``W[n].ravel()``), 1 last; H is ``(C·KH·KW+1)²``.

Each accumulator keeps only ``Σ x xᵀ``, ``Σ x`` and the count, so batches are never stored, and
``a.merge(b)`` equals one pass over both streams (calibration can be split across processes).
``restrict`` and the ``*_keep_index`` helpers cut a Hessian down to the inputs that stay shared.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from onnx_zip.errors import InputError, NumericalError
from onnx_zip.mtz._checks import as_f64, check_square, where

__all__ = [
    "HessianAccumulator",
    "DenseHessian",
    "ConvChannelHessian",
    "ConvPatchHessian",
    "im2col",
    "im2col_columns",
    "conv_output_size",
    "restrict",
    "dense_keep_index",
    "patch_keep_index",
]

_CHUNK_BYTES = 64 * 2**20  # bound on the float64 im2col buffer per step


class HessianAccumulator:
    """Base class: running ``Σ x xᵀ``, ``Σ x`` and count over vectors ``x`` of length ``dim``.

    Subclasses turn a batch into rows ``X (n, dim)`` via :meth:`_rows`.

    Args:
        dim: Length of the un-augmented input vector; ``None`` infers it from the first batch.
        bias: Augment with a constant 1 (last) — set when the layer has, or will get, a bias.
        layer: Layer name used in error messages.
    """

    def __init__(self, dim: int | None = None, *, bias: bool = True, layer: str | None = None) -> None:
        self.bias = bool(bias)
        self.layer = layer
        self._dim = None if dim is None else int(dim)
        self._xtx: np.ndarray | None = None
        self._sum: np.ndarray | None = None
        self._n = 0

    # -- subclass hooks -------------------------------------------------------------------------
    def _rows(self, batch: np.ndarray) -> list[np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _config(self) -> tuple:
        return (type(self), self.bias)

    def _empty_like(self) -> HessianAccumulator:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- public API -----------------------------------------------------------------------------
    @property
    def dim(self) -> int | None:
        """Length of the un-augmented vector (``None`` until known)."""
        return self._dim

    @property
    def size(self) -> int | None:
        """Side of the Hessian: ``dim + 1`` with bias, else ``dim`` (``None`` until known)."""
        return None if self._dim is None else self._dim + int(self.bias)

    @property
    def n_samples(self) -> int:
        """Number of vectors averaged so far (for convolutions: samples × positions)."""
        return self._n

    def _add(self, x: np.ndarray) -> None:
        if self._dim is None:
            self._dim = x.shape[1]
        if self._xtx is None:
            self._xtx = np.zeros((self._dim, self._dim))
            self._sum = np.zeros(self._dim)
        self._xtx += x.T @ x
        self._sum += x.sum(axis=0)
        self._n += x.shape[0]

    def _add_columns(self, xt: np.ndarray) -> None:
        """Like :meth:`_add` for the transposed rows ``xt (dim, n)`` (one vector per column)."""
        if self._dim is None:
            self._dim = xt.shape[0]
        if self._xtx is None:
            self._xtx = np.zeros((self._dim, self._dim))
            self._sum = np.zeros(self._dim)
        self._xtx += xt @ xt.T
        self._sum += xt.sum(axis=1)
        self._n += xt.shape[1]

    def update(self, batch: np.ndarray) -> HessianAccumulator:
        """Add one batch of layer inputs (converted to float64; not kept).

        Args:
            batch: Dense ``(N, d)`` or convolution ``(N, C, H, W)`` input, per subclass.

        Returns:
            ``self``, so calls chain.

        Raises:
            DataError: NaN or Inf in ``batch``.
            InputError: Wrong rank or size.
        """
        for x in self._rows(batch):
            self._add(x)
        return self

    def merge(self, other: HessianAccumulator) -> HessianAccumulator:
        """Return a new accumulator holding both streams (equal to one pass over both).

        Raises:
            InputError: The accumulators have different readings, sizes or settings.
        """
        if self._config() != other._config() or (
            self._dim is not None and other._dim is not None and self._dim != other._dim
        ):
            raise InputError(
                f"{where(self.layer)}cannot merge Hessian accumulators with different settings: "
                f"{self._config()} dim={self._dim} vs {other._config()} dim={other._dim}"
            )
        out = self._empty_like()
        for acc in (self, other):
            if acc._xtx is not None:
                if out._xtx is None:
                    out._dim = acc._dim
                    out._xtx = acc._xtx.copy()
                    out._sum = acc._sum.copy()
                else:
                    out._xtx += acc._xtx
                    out._sum += acc._sum
                out._n += acc._n
        return out

    def hessian(self) -> np.ndarray:
        """The mean ``H = (1/n) Σ x xᵀ`` over the augmented vectors.

        Returns:
            Symmetric PSD float64 array ``(D, D)``, ``D = dim + 1`` (1 last) with bias, else ``dim``.

        Raises:
            NumericalError: No data was accumulated.
        """
        if self._n == 0 or self._xtx is None:
            raise NumericalError(f"{where(self.layer)}no calibration data accumulated for the Hessian")
        d = self._dim
        n = float(self._n)
        h = np.empty((d + int(self.bias),) * 2)
        h[:d, :d] = self._xtx / n
        if self.bias:
            h[:d, d] = h[d, :d] = self._sum / n
            h[d, d] = 1.0
        return 0.5 * (h + h.T)

    def _check_dim(self, dim: int, name: str) -> None:
        if self._dim is not None and dim != self._dim:
            raise InputError(
                f"{where(self.layer)}{name} has {dim} input features/channels, the accumulator "
                f"expects {self._dim}"
            )


class DenseHessian(HessianAccumulator):
    """Hessian of a dense (Gemm/MatMul) layer's input: batches ``(N, d)``; H ``(d+bias)²``.

    Args:
        n_inputs: Input features ``d`` (``None`` = infer from the first batch).
        bias: Append the constant 1 (last).
        layer: Layer name for messages.
    """

    def __init__(self, n_inputs: int | None = None, *, bias: bool = True, layer: str | None = None) -> None:
        super().__init__(n_inputs, bias=bias, layer=layer)

    def _rows(self, batch: np.ndarray) -> list[np.ndarray]:
        x = as_f64(batch, "activation batch", self.layer, ndim=2, data=True)
        self._check_dim(x.shape[1], f"activation batch {x.shape}")
        return [x]

    def _empty_like(self) -> DenseHessian:
        return DenseHessian(self._dim, bias=self.bias, layer=self.layer)


class ConvChannelHessian(HessianAccumulator):
    """Per-channel (released code) Hessian of a conv input: batches ``(N, C, H, W)``; H ``(C+bias)²``.

    ``x`` is the C channel values at one position of the unpadded input; ``n_samples = N·H·W``.

    Args:
        channels: Input channels ``C`` (``None`` = infer).
        bias: Append the constant 1 (last).
        layer: Layer name for messages.
    """

    def __init__(self, channels: int | None = None, *, bias: bool = True, layer: str | None = None) -> None:
        super().__init__(channels, bias=bias, layer=layer)

    def update(self, batch: np.ndarray) -> ConvChannelHessian:
        """Add a batch ``(N, C, H, W)``; every pixel is one vector (channel-major copy, one GEMM)."""
        x = as_f64(batch, "activation batch", self.layer, ndim=4, data=True)
        self._check_dim(x.shape[1], f"activation batch {x.shape}")
        self._add_columns(np.ascontiguousarray(x.transpose(1, 0, 2, 3)).reshape(x.shape[1], -1))
        return self

    def _empty_like(self) -> ConvChannelHessian:
        return ConvChannelHessian(self._dim, bias=self.bias, layer=self.layer)


def conv_output_size(
    size: int, kernel: int, stride: int = 1, pad_begin: int = 0, pad_end: int = 0, dilation: int = 1
) -> int:
    """Output length along one spatial axis (ONNX Conv, explicit pads, floor rounding)."""
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def _conv_params(
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None,
    pads: Sequence[int] | None,
    dilations: Sequence[int] | None,
    layer: str | None,
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int], tuple[int, int]]:
    ks = tuple(int(k) for k in kernel_shape)
    st = tuple(int(s) for s in (strides if strides is not None else (1, 1)))
    pd = tuple(int(p) for p in (pads if pads is not None else (0, 0, 0, 0)))
    dl = tuple(int(d) for d in (dilations if dilations is not None else (1, 1)))
    if len(ks) != 2 or len(st) != 2 or len(pd) != 4 or len(dl) != 2:
        raise InputError(
            f"{where(layer)}2-D convolution expected: kernel_shape {ks}, strides {st}, pads {pd} "
            f"([h_begin, w_begin, h_end, w_end]), dilations {dl}"
        )
    if min(ks) < 1 or min(st) < 1 or min(dl) < 1 or min(pd) < 0:
        raise InputError(
            f"{where(layer)}invalid conv parameters kernel_shape {ks}, strides {st}, pads {pd}, dilations {dl}"
        )
    return ks, st, pd, dl  # type: ignore[return-value]


def _windows(
    x: np.ndarray,
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None,
    pads: Sequence[int] | None,
    dilations: Sequence[int] | None,
    layer: str | None,
) -> tuple[tuple[int, int, int, int, int, int], Iterator[tuple[int, int, np.ndarray]]]:
    """Geometry ``(N, C, KH, KW, OH, OW)`` and the strided views ``(i, j, window (N, C, OH, OW))``
    of the zero-padded input, one per kernel position."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise InputError(f"{where(layer)}conv input must be (N, C, H, W), got shape {x.shape}")
    (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = _conv_params(kernel_shape, strides, pads, dilations, layer)
    n, c, h, w = x.shape
    oh = conv_output_size(h, kh, sh, pt, pb, dh)
    ow = conv_output_size(w, kw, sw, pl, pr, dw)
    if oh < 1 or ow < 1:
        raise InputError(f"{where(layer)}input {x.shape} is smaller than the dilated kernel {kernel_shape}")
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if (pt or pb or pl or pr) else x

    def views() -> Iterator[tuple[int, int, np.ndarray]]:
        for i in range(kh):
            for j in range(kw):
                r0, c0 = i * dh, j * dw
                yield i, j, xp[:, :, r0 : r0 + sh * (oh - 1) + 1 : sh, c0 : c0 + sw * (ow - 1) + 1 : sw]

    return (n, c, kh, kw, oh, ow), views()


def im2col(
    x: np.ndarray,
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    *,
    layer: str | None = None,
) -> np.ndarray:
    """Patch matrix of a 2-D convolution input (explicit zero padding).

    Args:
        x: Input ``(N, C, H, W)``.
        kernel_shape: ``(KH, KW)``.
        strides: ``(sh, sw)``, default ``(1, 1)``.
        pads: ONNX pads ``[h_begin, w_begin, h_end, w_end]``, default zeros.
        dilations: ``(dh, dw)``, default ``(1, 1)``.
        layer: Layer name for messages.

    Returns:
        ``(N·OH·OW, C·KH·KW)`` with rows ordered (n, oh, ow) and columns in (c, kh, kw) C-major order,
        i.e. row ``r`` dotted with ``W[m].ravel()`` is the conv output (without bias) at that position.
    """
    (n, c, kh, kw, oh, ow), views = _windows(x, kernel_shape, strides, pads, dilations, layer)
    cols = np.empty((n, oh, ow, c, kh, kw), dtype=np.asarray(x).dtype)
    for i, j, win in views:
        cols[:, :, :, :, i, j] = win.transpose(0, 2, 3, 1)
    return cols.reshape(n * oh * ow, c * kh * kw)


def im2col_columns(
    x: np.ndarray,
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    *,
    layer: str | None = None,
) -> np.ndarray:
    """The transpose of :func:`im2col`, built directly: ``(C·KH·KW, N·OH·OW)``.

    Every ``(c, kh, kw)`` row is a contiguous copy of one strided window, which is several times
    faster than scattering into :func:`im2col`'s ``(positions, C·KH·KW)`` layout; ``cols @ cols.T``
    is then one GEMM.
    """
    (n, c, kh, kw, oh, ow), views = _windows(x, kernel_shape, strides, pads, dilations, layer)
    cols = np.empty((c, kh, kw, n, oh, ow), dtype=np.asarray(x).dtype)
    for i, j, win in views:
        cols[:, i, j] = win.transpose(1, 0, 2, 3)
    return cols.reshape(c * kh * kw, n * oh * ow)


class ConvPatchHessian(HessianAccumulator):
    """Patch (paper, im2col) Hessian of a conv input: batches ``(N, C, H, W)``; H ``(C·KH·KW+bias)²``.

    ``x`` is one im2col patch of the zero-padded input in ``(c, kh, kw)`` order; ``n_samples`` counts
    samples × output positions. Batches are processed in chunks bounding the float64 patch buffer.

    Args:
        kernel_shape: ``(KH, KW)``.
        strides: ``(sh, sw)``.
        pads: ONNX ``[h_begin, w_begin, h_end, w_end]``.
        dilations: ``(dh, dw)``.
        channels: Input channels ``C`` (``None`` = infer).
        bias: Append the constant 1 (last).
        layer: Layer name for messages.
    """

    def __init__(
        self,
        kernel_shape: Sequence[int],
        strides: Sequence[int] | None = None,
        pads: Sequence[int] | None = None,
        dilations: Sequence[int] | None = None,
        *,
        channels: int | None = None,
        bias: bool = True,
        layer: str | None = None,
    ) -> None:
        self.kernel_shape, self.strides, self.pads, self.dilations = _conv_params(
            kernel_shape, strides, pads, dilations, layer
        )
        self.channels = None if channels is None else int(channels)
        k2 = self.kernel_shape[0] * self.kernel_shape[1]
        super().__init__(None if channels is None else int(channels) * k2, bias=bias, layer=layer)

    def _config(self) -> tuple:
        return (type(self), self.bias, self.kernel_shape, self.strides, self.pads, self.dilations)

    def update(self, batch: np.ndarray) -> ConvPatchHessian:
        """Add a batch ``(N, C, H, W)``: transposed im2col chunks (bounded memory), one GEMM each."""
        x = as_f64(batch, "activation batch", self.layer, ndim=4, data=True)
        if self.channels is not None and x.shape[1] != self.channels:
            raise InputError(
                f"{where(self.layer)}activation batch {x.shape} has {x.shape[1]} channels, "
                f"the accumulator expects {self.channels}"
            )
        self.channels = x.shape[1]
        per_sample = 8 * x.shape[1] * x.shape[2] * x.shape[3] * self.kernel_shape[0] * self.kernel_shape[1]
        step = max(1, _CHUNK_BYTES // max(per_sample, 1))
        for s in range(0, x.shape[0], step):
            self._add_columns(
                im2col_columns(x[s : s + step], self.kernel_shape, self.strides, self.pads, self.dilations, layer=self.layer)
            )
        return self

    def _empty_like(self) -> ConvPatchHessian:
        return ConvPatchHessian(
            self.kernel_shape, self.strides, self.pads, self.dilations,
            channels=self.channels, bias=self.bias, layer=self.layer,
        )


def restrict(h: np.ndarray, keep_index: Sequence[int] | np.ndarray, *, layer: str | None = None) -> np.ndarray:
    """Rows and columns ``keep_index`` of ``h``: the Hessian over the kept inputs only.

    Args:
        h: Hessian ``(D, D)``.
        keep_index: Row indices to keep, in the desired order (from :func:`dense_keep_index` or
            :func:`patch_keep_index`; include the bias row).

    Returns:
        ``(len(keep_index), len(keep_index))``.
    """
    h = as_f64(h, "H", layer, ndim=2)
    check_square(h, "H", layer)
    idx = np.asarray(keep_index, dtype=np.int64).ravel()
    if idx.size and (idx.min() < 0 or idx.max() >= h.shape[0]):
        raise InputError(f"{where(layer)}keep_index out of range for H of shape {h.shape}")
    return h[np.ix_(idx, idx)]


def _kept(keep: Sequence[int] | np.ndarray, n: int, what: str, layer: str | None) -> np.ndarray:
    k = np.asarray(keep, dtype=np.int64).ravel()
    if k.size and (k.min() < 0 or k.max() >= n):
        raise InputError(f"{where(layer)}kept {what} {k.tolist()[:8]}... out of range 0..{n - 1}")
    if np.unique(k).size != k.size:
        raise InputError(f"{where(layer)}kept {what} contain duplicates")
    return k


def dense_keep_index(
    keep_inputs: Sequence[int] | np.ndarray, n_inputs: int, *, bias: bool = True, layer: str | None = None
) -> np.ndarray:
    """Rows of a dense or per-channel Hessian for the kept inputs: ``keep_inputs`` then the bias row.

    Args:
        keep_inputs: Kept input features / channels, in the order wanted.
        n_inputs: ``d`` (dense) or ``C`` (per-channel conv).
        bias: Whether the Hessian has the bias row (index ``n_inputs``), which is always kept.
    """
    k = _kept(keep_inputs, n_inputs, "inputs", layer)
    return np.concatenate([k, [n_inputs]]) if bias else k


def patch_keep_index(
    keep_channels: Sequence[int] | np.ndarray,
    channels: int,
    kernel_shape: Sequence[int],
    *,
    bias: bool = True,
    layer: str | None = None,
) -> np.ndarray:
    """Rows of a patch (im2col) Hessian / vector for kept input channels, (c, kh, kw) order, bias last.

    Args:
        keep_channels: Kept input channels, in the order wanted.
        channels: ``C``.
        kernel_shape: ``(KH, KW)``.
        bias: Whether the bias row (index ``C·KH·KW``) exists; it is always kept.

    Returns:
        ``(len(keep_channels)·KH·KW [+1],)`` int64 indices.
    """
    k = _kept(keep_channels, channels, "channels", layer)
    k2 = int(kernel_shape[0]) * int(kernel_shape[1])
    rows = (k[:, None] * k2 + np.arange(k2)[None, :]).ravel()
    return np.concatenate([rows, [channels * k2]]) if bias else rows
