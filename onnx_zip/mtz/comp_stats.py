"""Streaming second moments for error-compensating MTZ (mtz-method §10), in float64.

For one layer and one task, calibration runs the zipped model (task path) and the original model on the
SAME samples; ``x̃`` is the layer's input in the zipped model, ``x`` in the original one, both augmented
with a constant 1 LAST when ``bias=True``. The accumulators keep

    G = E[x̃ x̃ᵀ]  (D̃, D̃)      C = E[x̃ xᵀ]  (D̃, D)      H = E[x xᵀ]  (D, D)  (today's Hessian)

through the running sums ``Σ x̃ x̃ᵀ, Σ x̃ xᵀ, Σ x xᵀ, Σ x̃, Σ x`` and the count, so batches are never stored
and ``a + b`` (or ``a.merge(b)``) equals one pass over both streams (shards merge by addition).

Three readings, matching :mod:`onnx_zip.mtz.hessian`:

* :class:`DenseMoments` — batches ``(N, d̃)`` and ``(N, d)``; the two widths may differ (fictive inputs,
  within-model merges below).
* :class:`ConvPatchMoments` — the paper's reading: one vector per im2col patch of the zero-padded input,
  ``(c, kh, kw)`` C-major then the 1; both inputs use the same kernel geometry and must have the same
  spatial size (a patch of ``x̃`` and of ``x`` at the same output position form one sample).
* :class:`ConvChannelMoments` — the released code's reading: one vector per pixel of the UNPADDED input
  (the C channel values, then the 1), averaged over samples and positions. Used for every kernel tap,
  this is a block-diagonal approximation of the patch moments: the cross-tap blocks are dropped and every
  diagonal (tap) block is replaced by the pixel moments (equal up to the border pixels that padding and
  stride include or skip). It is ``KH·KW`` times smaller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from onnx_zip.errors import InputError, NumericalError
from onnx_zip.mtz._checks import as_f64, where
from onnx_zip.mtz.hessian import _conv_params, im2col_columns

__all__ = [
    "CompensationStats",
    "ConvChannelMoments",
    "ConvPatchMoments",
    "DenseMoments",
    "MomentAccumulator",
    "moment_accumulator",
]

_CHUNK_BYTES = 64 * 2**20  # bound on the two float64 im2col buffers per step


@dataclass(frozen=True)
class CompensationStats:
    """The second moments of one layer for one task (means over the calibration vectors).

    Attributes:
        g: ``G = E[x̃ x̃ᵀ]`` ``(D̃, D̃)``, symmetric PSD (zipped input; 1 last with bias).
        c: ``C = E[x̃ xᵀ]`` ``(D̃, D)`` (zipped × original input).
        h: ``H = E[x xᵀ]`` ``(D, D)``, symmetric PSD (original input: the paper's Hessian).
        n_samples: Vectors averaged (samples × positions for convolutions).
        bias: Whether both inputs end with the constant 1.
        layer: Layer name for messages.
    """

    g: np.ndarray
    c: np.ndarray
    h: np.ndarray
    n_samples: int
    bias: bool = True
    layer: str | None = None

    @property
    def zipped_size(self) -> int:
        """``D̃``."""
        return int(self.g.shape[0])

    @property
    def original_size(self) -> int:
        """``D``."""
        return int(self.h.shape[0])


class MomentAccumulator:
    """Base class: running sums over pairs of vectors ``(x̃, x)`` of lengths ``(d̃, d)`` (un-augmented).

    Subclasses turn a pair of batches into column blocks ``(d̃, n)``, ``(d, n)`` via :meth:`update`.

    Args:
        bias: Augment both vectors with a constant 1 (last).
        layer: Layer name for messages.
    """

    def __init__(self, *, bias: bool = True, layer: str | None = None) -> None:
        self.bias = bool(bias)
        self.layer = layer
        self._dims: tuple[int, int] | None = None  # None until the first batch fixes the sizes
        self._zz = self._zx = self._xx = np.zeros((0, 0))
        self._sz = self._sx = np.zeros(0)
        self._n = 0

    def _config(self) -> tuple:
        return (type(self), self.bias)

    def _empty_like(self) -> MomentAccumulator:
        return type(self)(bias=self.bias, layer=self.layer)

    @property
    def n_samples(self) -> int:
        """Vectors accumulated so far."""
        return self._n

    @property
    def dims(self) -> tuple[int, int] | None:
        """``(d̃, d)`` un-augmented lengths, ``None`` before the first batch."""
        return self._dims

    def _add_columns(self, zt: np.ndarray, xt: np.ndarray) -> None:
        """Add vectors given as columns: ``zt (d̃, n)`` zipped, ``xt (d, n)`` original."""
        dims = (zt.shape[0], xt.shape[0])
        if self._dims is None:
            self._dims = dims
            self._zz = np.zeros((dims[0], dims[0]))
            self._zx = np.zeros(dims)
            self._xx = np.zeros((dims[1], dims[1]))
            self._sz = np.zeros(dims[0])
            self._sx = np.zeros(dims[1])
        elif dims != self._dims:
            raise InputError(
                f"{where(self.layer)}input sizes (zipped {dims[0]}, original {dims[1]}) differ from the "
                f"accumulated ones (zipped {self._dims[0]}, original {self._dims[1]})"
            )
        self._zz += zt @ zt.T
        self._zx += zt @ xt.T
        self._xx += xt @ xt.T
        self._sz += zt.sum(axis=1)
        self._sx += xt.sum(axis=1)
        self._n += zt.shape[1]

    def merge(self, other: MomentAccumulator) -> MomentAccumulator:
        """A new accumulator holding both streams (equal to one pass over both).

        Raises:
            InputError: Different readings, settings or sizes.
        """
        if self._config() != other._config() or (
            self._dims is not None and other._dims is not None and self._dims != other._dims
        ):
            raise InputError(
                f"{where(self.layer)}cannot merge moment accumulators with different settings: "
                f"{self._config()} dims={self._dims} vs {other._config()} dims={other._dims}"
            )
        out = self._empty_like()
        for acc in (self, other):
            if acc._dims is None:
                continue
            if out._dims is None:
                out._dims = acc._dims
                out._zz, out._zx, out._xx = acc._zz.copy(), acc._zx.copy(), acc._xx.copy()
                out._sz, out._sx = acc._sz.copy(), acc._sx.copy()
            else:
                out._zz += acc._zz
                out._zx += acc._zx
                out._xx += acc._xx
                out._sz += acc._sz
                out._sx += acc._sx
            out._n += acc._n
        return out

    def __add__(self, other: MomentAccumulator) -> MomentAccumulator:
        return self.merge(other)

    def stats(self) -> CompensationStats:
        """The means ``G, C, H`` (augmented with the 1 last when ``bias``).

        Raises:
            NumericalError: Nothing was accumulated.
        """
        if self._n == 0 or self._dims is None:
            raise NumericalError(f"{where(self.layer)}no calibration data accumulated for the compensated fit")
        n = float(self._n)
        b = int(self.bias)
        (dz, dx) = self._dims
        g, c, h = np.empty((dz + b, dz + b)), np.empty((dz + b, dx + b)), np.empty((dx + b, dx + b))
        g[:dz, :dz], c[:dz, :dx], h[:dx, :dx] = self._zz / n, self._zx / n, self._xx / n
        if b:
            mz, mx = self._sz / n, self._sx / n
            g[:dz, dz] = g[dz, :dz] = mz
            h[:dx, dx] = h[dx, :dx] = mx
            c[:dz, dx], c[dz, :dx] = mz, mx
            g[dz, dz] = h[dx, dx] = c[dz, dx] = 1.0
        return CompensationStats(
            g=0.5 * (g + g.T), c=c, h=0.5 * (h + h.T), n_samples=self._n, bias=self.bias, layer=self.layer
        )

    def _pair(self, zipped: np.ndarray, original: np.ndarray, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        z = as_f64(zipped, "zipped activation batch", self.layer, ndim=ndim, data=True)
        x = as_f64(original, "original activation batch", self.layer, ndim=ndim, data=True)
        if z.shape[0] != x.shape[0] or z.shape[2:] != x.shape[2:]:
            raise InputError(
                f"{where(self.layer)}zipped batch {z.shape} and original batch {x.shape} must hold the same "
                "samples (same batch size and spatial size)",
                hint="feed both models the same calibration batch",
            )
        return z, x


class DenseMoments(MomentAccumulator):
    """Dense (Gemm/MatMul) layer: batches ``zipped (N, d̃)`` and ``original (N, d)``."""

    def update(self, zipped: np.ndarray, original: np.ndarray) -> DenseMoments:
        """Add one batch pair (same samples in the same order). Returns ``self``."""
        z, x = self._pair(zipped, original, 2)
        self._add_columns(z.T, x.T)
        return self


class ConvChannelMoments(MomentAccumulator):
    """Per-channel (block-diagonal) reading: batches ``(N, C̃, H, W)`` and ``(N, C, H, W)``; one vector per
    pixel of the unpadded inputs."""

    def update(self, zipped: np.ndarray, original: np.ndarray) -> ConvChannelMoments:
        """Add one batch pair (same samples, same spatial size). Returns ``self``."""
        z, x = self._pair(zipped, original, 4)
        zt = np.ascontiguousarray(z.transpose(1, 0, 2, 3)).reshape(z.shape[1], -1)
        xt = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).reshape(x.shape[1], -1)
        self._add_columns(zt, xt)
        return self


class ConvPatchMoments(MomentAccumulator):
    """Patch (im2col) reading: batches ``(N, C̃, H, W)`` and ``(N, C, H, W)`` read with one kernel geometry.

    Args:
        kernel_shape: ``(KH, KW)``.
        strides, pads, dilations: ONNX conv attributes (pads ``[h_begin, w_begin, h_end, w_end]``).
        bias: Append the constant 1.
        layer: Layer name for messages.
    """

    def __init__(
        self,
        kernel_shape: Sequence[int],
        strides: Sequence[int] | None = None,
        pads: Sequence[int] | None = None,
        dilations: Sequence[int] | None = None,
        *,
        bias: bool = True,
        layer: str | None = None,
    ) -> None:
        super().__init__(bias=bias, layer=layer)
        self.geometry = _conv_params(kernel_shape, strides, pads, dilations, layer)

    def _config(self) -> tuple:
        return (type(self), self.bias, self.geometry)

    def _empty_like(self) -> ConvPatchMoments:
        return ConvPatchMoments(*self.geometry, bias=self.bias, layer=self.layer)

    def update(self, zipped: np.ndarray, original: np.ndarray) -> ConvPatchMoments:
        """Add one batch pair, in chunks bounding the im2col buffers. Returns ``self``."""
        z, x = self._pair(zipped, original, 4)
        k2 = self.geometry[0][0] * self.geometry[0][1]
        per_sample = 8 * (z.shape[1] + x.shape[1]) * z.shape[2] * z.shape[3] * k2
        step = max(1, _CHUNK_BYTES // max(per_sample, 1))
        for s in range(0, z.shape[0], step):
            zt = im2col_columns(z[s : s + step], *self.geometry, layer=self.layer)
            xt = im2col_columns(x[s : s + step], *self.geometry, layer=self.layer)
            self._add_columns(zt, xt)
        return self


def moment_accumulator(
    kind: Literal["dense", "conv_channel", "conv_patch"],
    *,
    bias: bool = True,
    kernel_shape: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    layer: str | None = None,
) -> MomentAccumulator:
    """Build the accumulator for a layer description (the same ``kind`` names as
    :func:`~onnx_zip.mtz.hessian.hessian_accumulator`).

    Raises:
        InputError: Unknown ``kind`` or ``conv_patch`` without ``kernel_shape``.
    """
    if kind == "dense":
        return DenseMoments(bias=bias, layer=layer)
    if kind == "conv_channel":
        return ConvChannelMoments(bias=bias, layer=layer)
    if kind == "conv_patch":
        if kernel_shape is None:
            raise InputError(f"{where(layer)}the conv_patch moments need kernel_shape")
        return ConvPatchMoments(kernel_shape, strides, pads, dilations, bias=bias, layer=layer)
    raise InputError(
        f"{where(layer)}unknown moment kind {kind!r}", hint="use 'dense', 'conv_channel' or 'conv_patch'"
    )
