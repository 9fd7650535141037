"""The numerical core of Multi-Task Zipping, in pure numpy/scipy (no ONNX import).

Conventions (the rest of onnx_zip depends on them):

* Neuron vectors are ROWS. A dense layer's neuron ``n`` is ``[W[n] (d) ; b[n]]`` — bias LAST — and its
  Hessian is over ``[x ; 1]`` (1 last), shape ``(d+1, d+1)``; without a bias both lose the last entry.
* Conv, patch (paper) reading: the vector is ``W[n].ravel()`` in ``(c, kh, kw)`` C-major order, then the
  bias; the im2col patch uses the same order with 1 last; H is ``(C·KH·KW+1)²``.
* Conv, per-channel (released code) reading: per kernel position ``p = kh·KW + kw`` a vector
  ``[W[n, :, kh, kw] (C) ; b[n]]``, rows shaped ``(N, KH·KW, C+1)``; one ``(C+1)²`` Hessian over the
  unpadded input's pixels (1 last) serves all positions; a pair's cost is the sum over positions, each
  position is merged separately and the merged bias is the mean of the per-position bias entries.
* Hessians are float64 means ``(1/n) Σ x xᵀ`` accumulated per batch (``update``/``merge``/``hessian``).
* ``M = H_A (H_A + H_B)⁻¹ H_B``; ``d(i, j) = ½ (a_i − b_j)ᵀ M (a_i − b_j)``; merged vector
  ``(H_A + H_B)⁻¹ (H_A a + H_B b)``; pinv fallback (logged) when ``H_A + H_B`` is singular; optional
  relative damping ``λ·mean(diag(H))·I``.
* Matchings are :class:`Matching` objects whose ``pairs (k, 2)`` are ``(i of A, j of B)`` in the order of
  the shared neurons: acceptance order (greedy) or ascending cost (optimal).
* Errors: :class:`onnx_zip.errors.InputError` (shapes, arguments), ``DataError`` (NaN/Inf activations),
  ``NumericalError`` (NaN/Inf weights or statistics); messages name the layer (``layer=`` argument) and
  the array.
"""

from onnx_zip.mtz.costs import (
    PairOperator,
    cost_matrix,
    damp,
    pair_operator,
    paired_costs,
)
from onnx_zip.mtz.hessian import (
    ConvChannelHessian,
    ConvPatchHessian,
    DenseHessian,
    HessianAccumulator,
    conv_output_size,
    dense_keep_index,
    im2col,
    patch_keep_index,
    restrict,
)
from onnx_zip.mtz.layout import (
    channel_rows_to_conv,
    conv_channel_rows,
    conv_patch_rows,
    dense_rows,
    patch_rows_to_conv,
    rows_to_dense,
)
from onnx_zip.mtz.matching import (
    Matching,
    ShareCount,
    ShareFraction,
    SharePolicy,
    ShareThreshold,
    greedy_matching,
    optimal_matching,
    select_pairs,
    share_count,
)
from onnx_zip.mtz.merge import merge_pairs, merged_vectors

__all__ = [
    "HessianAccumulator", "DenseHessian", "ConvChannelHessian", "ConvPatchHessian",
    "im2col", "conv_output_size", "restrict", "dense_keep_index", "patch_keep_index",
    "dense_rows", "rows_to_dense", "conv_patch_rows", "patch_rows_to_conv", "conv_channel_rows",
    "channel_rows_to_conv",
    "PairOperator", "damp", "pair_operator", "cost_matrix", "paired_costs",
    "merged_vectors", "merge_pairs",
    "Matching", "greedy_matching", "optimal_matching", "ShareCount", "ShareFraction", "ShareThreshold",
    "SharePolicy", "share_count", "select_pairs",
]
