"""Costs and merged vectors against literal per-pair transcriptions; properties; pinv; bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from onnx_zip.errors import InputError, NumericalError
from onnx_zip.mtz import (
    channel_rows_to_conv,
    conv_channel_rows,
    conv_patch_rows,
    cost_matrix,
    dense_rows,
    greedy_matching,
    merge_pairs,
    merged_vectors,
    optimal_matching,
    pair_operator,
    paired_costs,
    patch_rows_to_conv,
    rows_to_dense,
)

TOL = dict(rtol=1e-10, atol=1e-12)


def spd(rng: np.random.Generator, d: int, n: int | None = None) -> np.ndarray:
    x = rng.normal(size=(n or 3 * d, d)) * rng.uniform(0.5, 2.0, size=d)
    return x.T @ x / len(x)


def lit_m(ha: np.ndarray, hb: np.ndarray) -> np.ndarray:
    return np.linalg.inv(np.linalg.inv(ha) + np.linalg.inv(hb))


def lit_costs(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Literal d(i, j) = ½ Σ_p (a_ip − b_jp)ᵀ M (a_ip − b_jp), one pair at a time."""
    a3 = a.reshape(a.shape[0], -1, m.shape[0])
    b3 = b.reshape(b.shape[0], -1, m.shape[0])
    out = np.zeros((len(a3), len(b3)))
    for i in range(len(a3)):
        for j in range(len(b3)):
            for p in range(a3.shape[1]):
                diff = a3[i, p] - b3[j, p]
                out[i, j] += 0.5 * diff @ m @ diff
    return out


def lit_merge(a: np.ndarray, b: np.ndarray, ha: np.ndarray, hb: np.ndarray) -> np.ndarray:
    return np.linalg.solve(ha + hb, ha @ a + hb @ b)


def test_dense_costs_match_literal_and_properties() -> None:
    rng = np.random.default_rng(0)
    d = 6
    ha, hb = spd(rng, d), spd(rng, d)
    a, b = rng.normal(size=(5, d)), rng.normal(size=(7, d))
    op = pair_operator(ha, hb, layer="fc")
    np.testing.assert_allclose(op.m, lit_m(ha, hb), **TOL)
    np.testing.assert_array_equal(op.m, op.m.T)
    assert not op.pinv_used
    got = cost_matrix(a, b, op)
    np.testing.assert_allclose(got, lit_costs(a, b, lit_m(ha, hb)), rtol=1e-10, atol=1e-12 * np.abs(got).max())
    assert got.shape == (5, 7) and (got >= 0).all()
    np.testing.assert_allclose(cost_matrix(a, b, op.m), got, **TOL)
    self_cost = np.diag(cost_matrix(a, a, op))
    assert np.all(self_cost <= 1e-12 * np.abs(got).max())


def test_channel_reading_costs_and_merge_match_literal() -> None:
    rng = np.random.default_rng(1)
    c, kh, kw = 3, 2, 3
    ha, hb = spd(rng, c + 1), spd(rng, c + 1)
    wa, ba = rng.normal(size=(4, c, kh, kw)), rng.normal(size=4)
    wb, bb = rng.normal(size=(5, c, kh, kw)), rng.normal(size=5)
    ra, rb = conv_channel_rows(wa, ba), conv_channel_rows(wb, bb)
    assert ra.shape == (4, kh * kw, c + 1)
    np.testing.assert_array_equal(ra[2, 1 * kw + 2], np.concatenate([wa[2, :, 1, 2], [ba[2]]]))
    op = pair_operator(ha, hb)
    got = cost_matrix(ra, rb, op)
    m = lit_m(ha, hb)
    lit = np.zeros((4, 5))
    for i in range(4):
        for j in range(5):
            for y in range(kh):
                for x in range(kw):
                    diff = np.concatenate([wa[i, :, y, x] - wb[j, :, y, x], [ba[i] - bb[j]]])
                    lit[i, j] += 0.5 * diff @ m @ diff
    np.testing.assert_allclose(got, lit, rtol=1e-10, atol=1e-12 * lit.max())
    pairs = np.array([[3, 0], [1, 4]])
    w, b = channel_rows_to_conv(merge_pairs(ra, rb, pairs, op), (kh, kw))
    for t, (i, j) in enumerate(pairs):
        biases = []
        for y in range(kh):
            for x in range(kw):
                va = np.concatenate([wa[i, :, y, x], [ba[i]]])
                vb = np.concatenate([wb[j, :, y, x], [bb[j]]])
                mv = lit_merge(va, vb, ha, hb)
                np.testing.assert_allclose(w[t, :, y, x], mv[:c], **TOL)
                biases.append(mv[c])
        np.testing.assert_allclose(b[t], np.mean(biases), **TOL)


def test_patch_reading_costs_and_merge_match_literal() -> None:
    rng = np.random.default_rng(2)
    c, k = 2, 2
    dim = c * k * k + 1
    ha, hb = spd(rng, dim), spd(rng, dim)
    wa, ba = rng.normal(size=(3, c, k, k)), rng.normal(size=3)
    wb, bb = rng.normal(size=(4, c, k, k)), rng.normal(size=4)
    op = pair_operator(ha, hb)
    ra, rb = conv_patch_rows(wa, ba), conv_patch_rows(wb, bb)
    np.testing.assert_array_equal(ra[1], np.concatenate([wa[1].ravel(), [ba[1]]]))
    lit = np.array([[0.5 * (u - v) @ lit_m(ha, hb) @ (u - v) for v in rb] for u in ra])
    np.testing.assert_allclose(cost_matrix(ra, rb, op), lit, rtol=1e-10, atol=1e-12 * lit.max())
    pairs = np.array([[2, 1], [0, 3], [1, 0]])
    w, b = patch_rows_to_conv(merge_pairs(ra, rb, pairs, op), c, (k, k))
    for t, (i, j) in enumerate(pairs):
        mv = lit_merge(ra[i], rb[j], ha, hb)
        np.testing.assert_allclose(w[t].ravel(), mv[:-1], **TOL)
        np.testing.assert_allclose(b[t], mv[-1], **TOL)


@pytest.mark.parametrize("shape", [(7, 5), (7, 4, 5)])
def test_paired_costs_are_the_literal_costs_of_the_given_pairs(shape) -> None:
    rng = np.random.default_rng(3)
    d = shape[-1]
    ha, hb = spd(rng, d), spd(rng, d)
    a, b = rng.normal(size=shape), rng.normal(size=shape)
    got = paired_costs(a, b, pair_operator(ha, hb))
    np.testing.assert_allclose(got, np.diag(lit_costs(a, b, lit_m(ha, hb))), **TOL)
    with pytest.raises(InputError, match="differ in shape"):
        paired_costs(a, b[:3], pair_operator(ha, hb))


def test_layout_roundtrips() -> None:
    rng = np.random.default_rng(3)
    w, b = rng.normal(size=(4, 3, 2, 3)), rng.normal(size=4)
    for fwd, back in (
        (conv_patch_rows, lambda r, bias: patch_rows_to_conv(r, 3, (2, 3), bias=bias)),
        (conv_channel_rows, lambda r, bias: channel_rows_to_conv(r, (2, 3), bias=bias)),
    ):
        w2, b2 = back(fwd(w, b), True)
        np.testing.assert_array_equal(w2, w)
        np.testing.assert_allclose(b2, b, **TOL)
        w3, b3 = back(fwd(w), False)
        np.testing.assert_array_equal(w3, w)
        assert b3 is None
    wd, bd = rng.normal(size=(4, 5)), rng.normal(size=4)
    w4, b4 = rows_to_dense(dense_rows(wd, bd))
    np.testing.assert_array_equal(w4, wd)
    np.testing.assert_array_equal(b4, bd)
    assert rows_to_dense(dense_rows(wd), bias=False)[1] is None


def test_equal_hessians_give_average_and_quarter_cost() -> None:
    rng = np.random.default_rng(4)
    h = spd(rng, 5)
    a, b = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    op = pair_operator(h, h)
    np.testing.assert_allclose(merged_vectors(a, b, op), 0.5 * (a + b), **TOL)
    quarter = np.array([[0.25 * (u - v) @ h @ (u - v) for v in b] for u in a])
    np.testing.assert_allclose(cost_matrix(a, b, op), quarter, rtol=1e-10, atol=1e-12 * quarter.max())


def test_dense_merge_matches_literal() -> None:
    rng = np.random.default_rng(5)
    ha, hb = spd(rng, 4), spd(rng, 4)
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(5, 4))
    op = pair_operator(ha, hb)
    pairs = np.array([[5, 0], [0, 4], [2, 2]])
    got = merge_pairs(a, b, pairs, op)
    for t, (i, j) in enumerate(pairs):
        np.testing.assert_allclose(got[t], lit_merge(a[i], b[j], ha, hb), **TOL)
        # the other closed form, w_A + H_A⁻¹ M (w_B − w_A)
        alt = a[i] + np.linalg.solve(ha, lit_m(ha, hb) @ (b[j] - a[i]))
        np.testing.assert_allclose(got[t], alt, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("reading", ["dense", "patch", "channel"])
@pytest.mark.parametrize("matcher", [greedy_matching, optimal_matching])
def test_permuted_copy_recovered_with_zero_cost(reading: str, matcher) -> None:
    rng = np.random.default_rng(6)
    n, c = 12, 3
    perm = rng.permutation(n)
    if reading == "dense":
        a = dense_rows(rng.normal(size=(n, 7)), rng.normal(size=n))
        dim = 8
    else:
        w, b = rng.normal(size=(n, c, 3, 3)), rng.normal(size=n)
        a = conv_patch_rows(w, b) if reading == "patch" else conv_channel_rows(w, b)
        dim = c * 9 + 1 if reading == "patch" else c + 1
    op = pair_operator(spd(rng, dim), spd(rng, dim))
    b_rows = a[perm]  # B neuron j is A neuron perm[j]
    m = matcher(cost_matrix(a, b_rows, op))
    assert len(m) == n
    got = dict(zip(m.cols.tolist(), m.rows.tolist()))
    assert all(got[j] == perm[j] for j in range(n))
    assert m.costs.max() <= 1e-10
    np.testing.assert_allclose(merge_pairs(a, b_rows, m.pairs, op), a[m.rows], rtol=1e-9, atol=1e-11)


def test_singular_hessians_use_pinv_and_warn(caplog) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(30, 4))
    x[:, 1] = 0.0  # a dead input in both models
    ya = rng.normal(size=(30, 4))
    ya[:, 1] = 0.0
    ha, hb = x.T @ x / 30, ya.T @ ya / 30
    with caplog.at_level(logging.WARNING, logger="onnx_zip.mtz.costs"):
        op = pair_operator(ha, hb, layer="conv3")
    assert op.pinv_used
    assert any("conv3" in r.getMessage() and "pseudo-inverse" in r.getMessage() for r in caplog.records)
    s_pinv = np.linalg.pinv(ha + hb)
    np.testing.assert_allclose(op.m, ha @ s_pinv @ hb, rtol=1e-9, atol=1e-12)
    a, b = rng.normal(size=(3, 4)), rng.normal(size=(2, 4))
    np.testing.assert_allclose(cost_matrix(a, b, op), lit_costs(a, b, ha @ s_pinv @ hb), rtol=1e-9, atol=1e-12)
    merged = merged_vectors(a[:2], b, op)
    # unreached input: plain average there; elsewhere the usual formula
    np.testing.assert_allclose(merged[:, 1], 0.5 * (a[:2, 1] + b[:, 1]), **TOL)
    keep = [0, 2, 3]
    ref = [lit_merge(a[t, keep], b[t, keep], ha[np.ix_(keep, keep)], hb[np.ix_(keep, keep)]) for t in range(2)]
    np.testing.assert_allclose(merged[:, keep], ref, rtol=1e-9, atol=1e-11)
    # damping makes it regular
    op_d = pair_operator(ha, hb, damping=1e-3)
    assert not op_d.pinv_used
    np.testing.assert_allclose(op_d.h_a, ha + 1e-3 * np.mean(np.diag(ha)) * np.eye(4), **TOL)


def test_bad_input_errors_name_layer_and_array() -> None:
    rng = np.random.default_rng(8)
    h = spd(rng, 3)
    op = pair_operator(h, h, layer="fc2")
    a = rng.normal(size=(2, 3))
    bad = a.copy()
    bad[0, 0] = np.nan
    with pytest.raises(NumericalError, match=r"layer 'fc2'.*weights of B"):
        cost_matrix(a, bad, op)
    with pytest.raises(NumericalError, match=r"layer 'fc2'.*weights of A"):
        cost_matrix(np.full((2, 3), np.inf), a, op)
    with pytest.raises(InputError, match="last axis"):
        cost_matrix(rng.normal(size=(2, 4)), rng.normal(size=(2, 4)), op)
    with pytest.raises(InputError, match="differ"):
        cost_matrix(a, rng.normal(size=(2, 4)), op)
    with pytest.raises(InputError, match=r"layer 'x'.*H_B"):
        pair_operator(h, np.eye(4), layer="x")
    with pytest.raises(InputError, match="square"):
        pair_operator(np.ones((2, 3)), np.ones((2, 3)), layer="x")
    hb = h.copy()
    hb[0, 0] = np.nan
    with pytest.raises(NumericalError, match=r"layer 'x'.*H_B"):
        pair_operator(h, hb, layer="x")
    with pytest.raises(InputError, match="damping"):
        pair_operator(h, h, damping=-1.0)
    with pytest.raises(InputError, match="out of range"):
        merge_pairs(a, a, np.array([[0, 5]]), op)
