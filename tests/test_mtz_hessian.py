"""Hessian accumulators: brute-force transcriptions, streaming/merging, restriction, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_zip.errors import DataError, InputError, NumericalError
from onnx_zip.mtz import (
    ConvChannelHessian,
    ConvPatchHessian,
    DenseHessian,
    conv_output_size,
    dense_keep_index,
    im2col,
    patch_keep_index,
    restrict,
)

TOL = dict(rtol=1e-10, atol=1e-12)


def _aug(x: np.ndarray, bias: bool) -> np.ndarray:
    return np.concatenate([x, [1.0]]) if bias else x


def _assert_psd(h: np.ndarray) -> None:
    np.testing.assert_array_equal(h, h.T)
    assert np.linalg.eigvalsh(h).min() >= -1e-10 * max(1.0, np.abs(h).max())


@pytest.mark.parametrize("bias", [True, False])
def test_dense_matches_literal_mean_and_chunks(bias: bool) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 5)).astype(np.float32)
    lit = sum(np.outer(_aug(v, bias), _aug(v, bias)) for v in x.astype(np.float64)) / len(x)
    one = DenseHessian(5, bias=bias).update(x)
    np.testing.assert_allclose(one.hessian(), lit, **TOL)
    assert one.n_samples == 37 and one.hessian().dtype == np.float64
    _assert_psd(one.hessian())
    chunked = DenseHessian(bias=bias)
    for s in range(0, 37, 10):
        chunked.update(x[s : s + 10])
    np.testing.assert_allclose(chunked.hessian(), one.hessian(), **TOL)
    a, b = DenseHessian(bias=bias).update(x[:20]), DenseHessian(bias=bias).update(x[20:])
    merged = a.merge(b)
    assert merged.n_samples == 37 and a.n_samples == 20
    np.testing.assert_allclose(merged.hessian(), one.hessian(), **TOL)
    assert DenseHessian(bias=bias).merge(one).n_samples == 37


@pytest.mark.parametrize("bias", [True, False])
def test_channel_matches_literal_positions(bias: bool) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4, 5, 6))
    vecs = [_aug(x[n, :, i, j], bias) for n in range(3) for i in range(5) for j in range(6)]
    lit = sum(np.outer(v, v) for v in vecs) / len(vecs)
    acc = ConvChannelHessian(4, bias=bias).update(x[:2]).update(x[2:])
    assert acc.n_samples == 3 * 5 * 6
    np.testing.assert_allclose(acc.hessian(), lit, **TOL)
    _assert_psd(acc.hessian())


def _brute_patches(x, ks, st, pads, dl):
    """Explicit zero padding, loop over output positions, (c, kh, kw) order."""
    n, c, h, w = x.shape
    pt, pl, pb, pr = pads
    xp = np.zeros((n, c, h + pt + pb, w + pl + pr))
    xp[:, :, pt : pt + h, pl : pl + w] = x
    oh = (h + pt + pb - dl[0] * (ks[0] - 1) - 1) // st[0] + 1
    ow = (w + pl + pr - dl[1] * (ks[1] - 1) - 1) // st[1] + 1
    out = []
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                patch = np.empty((c, ks[0], ks[1]))
                for ci in range(c):
                    for a in range(ks[0]):
                        for e in range(ks[1]):
                            patch[ci, a, e] = xp[b, ci, i * st[0] + a * dl[0], j * st[1] + e * dl[1]]
                out.append(patch.ravel())
    return np.array(out), oh, ow


COMBOS = [
    ((3, 3), (1, 1), (0, 0, 0, 0), (1, 1)),
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((3, 2), (2, 1), (1, 0, 2, 1), (1, 1)),
    ((2, 3), (1, 2), (0, 2, 1, 0), (2, 1)),
    ((3, 3), (2, 2), (2, 1, 0, 2), (2, 2)),
    ((1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
]


@pytest.mark.parametrize("ks,st,pads,dl", COMBOS)
def test_patch_hessian_matches_bruteforce(ks, st, pads, dl) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 7, 8))
    p, oh, ow = _brute_patches(x, ks, st, pads, dl)
    assert (oh, ow) == (conv_output_size(7, ks[0], st[0], pads[0], pads[2], dl[0]),
                        conv_output_size(8, ks[1], st[1], pads[1], pads[3], dl[1]))
    np.testing.assert_array_equal(im2col(x, ks, st, pads, dl), p)
    aug = np.concatenate([p, np.ones((len(p), 1))], axis=1)
    lit = aug.T @ aug / len(aug)
    acc = ConvPatchHessian(ks, st, pads, dl, bias=True).update(x[:1]).update(x[1:])
    assert acc.n_samples == 2 * oh * ow
    np.testing.assert_allclose(acc.hessian(), lit, **TOL)
    _assert_psd(acc.hessian())


def test_im2col_rows_dot_weight_give_conv_output() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 2, 5, 5))
    w = rng.normal(size=(4, 2, 3, 3))
    cols = im2col(x, (3, 3), (1, 1), (1, 1, 1, 1))
    y = (cols @ w.reshape(4, -1).T).reshape(5, 5, 4)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.array(
        [[[np.sum(xp[0, :, i : i + 3, j : j + 3] * w[m]) for m in range(4)] for j in range(5)] for i in range(5)]
    )
    np.testing.assert_allclose(y, ref, **TOL)


def test_patch_chunking_small_buffer(monkeypatch) -> None:
    import onnx_zip.mtz.hessian as hm

    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 2, 4, 4))
    full = ConvPatchHessian((3, 3), pads=(1, 1, 1, 1)).update(x).hessian()
    monkeypatch.setattr(hm, "_CHUNK_BYTES", 1)
    np.testing.assert_allclose(ConvPatchHessian((3, 3), pads=(1, 1, 1, 1)).update(x).hessian(), full, **TOL)


def test_restriction() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 4, 5, 5))
    keep = np.array([2, 0])
    acc = ConvPatchHessian((2, 2), pads=(1, 0, 0, 1), channels=4, layer="c1")
    sub = ConvPatchHessian((2, 2), pads=(1, 0, 0, 1), layer="c1")
    h_full = acc.update(x).hessian()
    h_sub = sub.update(x[:, keep]).hessian()
    idx = patch_keep_index(keep, 4, (2, 2))
    assert idx[-1] == 16 and list(idx[:4]) == [8, 9, 10, 11]
    np.testing.assert_allclose(restrict(h_full, idx), h_sub, **TOL)
    hc = ConvChannelHessian().update(x).hessian()
    np.testing.assert_allclose(
        restrict(hc, dense_keep_index(keep, 4)), ConvChannelHessian().update(x[:, keep]).hessian(), **TOL
    )
    assert list(dense_keep_index([1], 3, bias=False)) == [1]
    with pytest.raises(InputError, match="out of range"):
        patch_keep_index([4], 4, (2, 2))


def test_bad_input_names_layer_and_array() -> None:
    x = np.ones((4, 3))
    x[1, 2] = np.nan
    with pytest.raises(DataError, match=r"layer 'fc1'.*activation batch"):
        DenseHessian(3, layer="fc1").update(x)
    x[1, 2] = np.inf
    with pytest.raises(DataError, match="fc1"):
        ConvChannelHessian(layer="fc1").update(x.reshape(1, 3, 2, 2))
    with pytest.raises(InputError, match=r"layer 'fc1'.*4 input"):
        DenseHessian(3, layer="fc1").update(np.ones((2, 4)))
    with pytest.raises(InputError, match="rank"):
        DenseHessian(layer="fc1").update(np.ones((2, 4, 1)))
    with pytest.raises(InputError, match="channels"):
        ConvPatchHessian((3, 3), channels=2, layer="c").update(np.ones((1, 3, 4, 4)))
    with pytest.raises(InputError, match="different settings"):
        ConvPatchHessian((3, 3)).merge(ConvPatchHessian((3, 3), strides=(2, 2)))
    with pytest.raises(InputError, match="different settings"):
        DenseHessian(3).merge(DenseHessian(4))
    with pytest.raises(NumericalError, match="no calibration data"):
        DenseHessian(3, layer="fc1").hessian()
    with pytest.raises(InputError, match="smaller than"):
        ConvPatchHessian((5, 5)).update(np.ones((1, 1, 3, 3)))
    with pytest.raises(InputError, match="2-D convolution"):
        ConvPatchHessian((3,))


@pytest.mark.parametrize("args", [((3, 3), None, None, None), ((3, 2), (2, 1), (1, 0, 2, 1), (1, 2))])
def test_im2col_columns_is_the_transpose_of_im2col(args):
    from onnx_zip.mtz.hessian import im2col_columns

    x = np.random.default_rng(0).random((3, 4, 9, 8))
    np.testing.assert_array_equal(im2col_columns(x, *args), im2col(x, *args).T)
