"""Error-compensating MTZ (mtz-method §10): literal transcriptions from raw data, the paper-merge
reduction, permuted copies, shards, conv readings, within-model merges, properties, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnx_zip.errors import DataError, InputError
from onnx_zip.mtz import (
    ConvChannelHessian,
    ConvPatchHessian,
    conv_channel_rows,
    conv_patch_rows,
    cost_matrix,
    dense_rows,
    im2col,
    merge_conv,
    merged_vectors,
    pair_operator,
)
from onnx_zip.mtz.comp_chain import forward_rows, zip_mlp_pair
from onnx_zip.mtz.comp_embed import (
    dense_target,
    embed_rows,
    patch_target,
    zipped_positions,
)
from onnx_zip.mtz.comp_net import NetLayer, zip_net_pair
from onnx_zip.mtz.comp_net import forward as net_forward
from onnx_zip.mtz.comp_pairs import greedy_mixed_pairs
from onnx_zip.mtz.comp_stats import (
    ConvChannelMoments,
    ConvPatchMoments,
    DenseMoments,
    MomentAccumulator,
    moment_accumulator,
)
from onnx_zip.mtz.compensated import CompensatedLayer, TaskLayer

RTOL = 1e-8  # closed forms vs literal solves on raw data (float64, well-conditioned problems)


def aug(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)


# ---------------------------------------------------------------------------------------------------
# Literal transcription: explicit matrices built from the raw samples, np.linalg.solve, per-pair loops
# ---------------------------------------------------------------------------------------------------
class LitTask:
    """One task from raw samples: xt (n, D̃) zipped and x (n, D) original, both augmented."""

    def __init__(self, xt: np.ndarray, x: np.ndarray, rows: np.ndarray, prior: np.ndarray, rho: float) -> None:
        self.xt, self.x, self.rows, self.prior = xt, x, rows, prior
        self.g = xt.T @ xt / len(xt)
        self.c = xt.T @ x / len(xt)
        self.lam = rho * np.mean(np.diag(self.g))

    def err(self, v: np.ndarray, w: np.ndarray) -> float:
        return float(np.mean((self.xt @ v - self.x @ w) ** 2))

    def refit(self, i: int) -> np.ndarray:
        a = self.g + self.lam * np.eye(len(self.g))
        return np.linalg.solve(a, self.c @ self.rows[i] + self.lam * self.prior[i])

    def r(self, i: int) -> float:
        v = self.refit(i)
        return self.err(v, self.rows[i]) + self.lam * float(np.sum((v - self.prior[i]) ** 2))


def lit_place(tasks: list[LitTask], s: int) -> tuple[list[np.ndarray], int]:
    """Explicit placement matrices P_t (Θ, D̃_t), θ = [shared s ; bias ; own_1 ; own_2 ; ...]."""
    theta = s + 1 + sum(len(t.g) - s - 1 for t in tasks)
    mats, off = [], s + 1
    for t in tasks:
        e = len(t.g) - s - 1
        p = np.zeros((theta, len(t.g)))
        p[np.arange(s), np.arange(s)] = 1.0
        p[s, len(t.g) - 1] = 1.0
        p[off + np.arange(e), s + np.arange(e)] = 1.0
        off += e
        mats.append(p)
    return mats, theta


def lit_group(tasks: list[LitTask], neurons: list[int], s: int) -> tuple[np.ndarray, float, list[float]]:
    """θ*, R (error + ridge at θ*) and the per-task errors of one shared neuron."""
    mats, theta = lit_place(tasks, s)
    sb = [np.r_[np.arange(s), len(t.g) - 1] for t in tasks]
    tot = sum(t.g[np.ix_(i, i)] for t, i in zip(tasks, sb))
    merged = np.linalg.solve(tot, sum(t.g[np.ix_(i, i)] @ t.prior[n][i] for t, n, i in zip(tasks, neurons, sb)))
    theta0 = np.zeros(theta)
    theta0[: s + 1] = merged
    for t, n, p in zip(tasks, neurons, mats):
        own = np.arange(s, len(t.g) - 1)
        theta0 += p[:, own] @ t.prior[n][own]
    lam = sum(t.lam for t in tasks)
    g_hat = sum(p @ t.g @ p.T for t, p in zip(tasks, mats))
    u = sum(p @ t.c @ t.rows[n] for t, n, p in zip(tasks, neurons, mats))
    th = np.linalg.solve(g_hat + lam * np.eye(theta), u + lam * theta0)
    errs = [t.err(p.T @ th, t.rows[n]) for t, n, p in zip(tasks, neurons, mats)]
    return th, sum(errs) + lam * float(np.sum((th - theta0) ** 2)), errs


def lit_greedy(costs: np.ndarray, k: int) -> np.ndarray:
    order = sorted((costs[i, j], i, j) for i in range(costs.shape[0]) for j in range(costs.shape[1]))
    used_a, used_b, out = set(), set(), []
    for _, i, j in order:
        if len(out) == k:
            break
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            out.append((i, j))
    return np.array(out, dtype=np.int64).reshape(-1, 2)


# ---------------------------------------------------------------------------------------------------
# Random problems
# ---------------------------------------------------------------------------------------------------
def problem(rng: np.random.Generator, s: int, own: list[int], dims: list[int], neurons: list[int], n: int = 400):
    """Per task: original input x (n, d_t), a zipped input = [s shared ; own_t] correlated with it."""
    lits, layers = [], []
    for e, d, m in zip(own, dims, neurons):
        x = rng.normal(size=(n, d)) * rng.uniform(0.5, 2, size=d) + rng.normal(size=d)
        mix = rng.normal(size=(d, s + e))
        xt = x @ mix / np.sqrt(d) + 0.3 * rng.normal(size=(n, s + e))
        rows = rng.normal(size=(m, d + 1))
        prior = rng.normal(size=(m, s + e + 1))
        lits.append(LitTask(aug(xt), aug(x), rows, prior, 1e-2))
        stats = DenseMoments(layer="fc").update(xt, x).stats()
        layers.append(TaskLayer(rows, stats, prior, name=f"t{len(layers)}"))
    return lits, layers


def test_two_tasks_match_literal_transcription() -> None:
    rng = np.random.default_rng(0)
    lits, layers = problem(rng, s=3, own=[2, 3], dims=[5, 4], neurons=[4, 3])
    comp = CompensatedLayer(layers, n_shared=3, rho=1e-2, layer="fc")
    for t in (0, 1):
        fit = comp.refit(t)
        lit = np.array([lits[t].refit(i) for i in range(len(lits[t].rows))])
        np.testing.assert_allclose(fit.rows, lit, rtol=RTOL, atol=1e-10)
        np.testing.assert_allclose(fit.error, [lits[t].err(v, w) for v, w in zip(lit, lits[t].rows)], rtol=RTOL)
        np.testing.assert_allclose(comp.specific_objective(t), [lits[t].r(i) for i in range(len(lit))], rtol=RTOL)
    costs = comp.pair_costs(clip=False)
    lit_costs = np.array([[lit_group(lits, [i, j], 3)[1] - lits[0].r(i) - lits[1].r(j) for j in range(3)]
                          for i in range(4)])
    np.testing.assert_allclose(costs, lit_costs, rtol=RTOL, atol=1e-10 * np.abs(lit_costs).max())
    pairs = np.array([[2, 0], [0, 2]])
    fs = comp.fit_shared(pairs)
    for row, (i, j) in enumerate(pairs):
        th, _, errs = lit_group(lits, [i, j], 3)
        np.testing.assert_allclose(fs.shared[row], th[:4], rtol=RTOL, atol=1e-10)
        np.testing.assert_allclose(fs.inter[0][row], th[4:6], rtol=RTOL, atol=1e-10)
        np.testing.assert_allclose(fs.inter[1][row], th[6:9], rtol=RTOL, atol=1e-10)
        np.testing.assert_allclose(fs.error[:, row], errs, rtol=RTOL)
        np.testing.assert_allclose(fs.task_rows[0][row], np.r_[th[:3], th[4:6], th[3]], rtol=RTOL, atol=1e-10)


def test_three_tasks_group_costs_match_literal() -> None:
    rng = np.random.default_rng(1)
    lits, layers = problem(rng, s=2, own=[1, 2, 0], dims=[4, 3, 5], neurons=[3, 3, 4])
    comp = CompensatedLayer(layers, n_shared=2, layer="fc")
    groups = np.array([[0, 2], [2, 1], [1, 0]])
    got = comp.group_costs(groups, (0, 1), 2, clip=False)
    for gi, (a, b) in enumerate(groups):
        r2 = lit_group(lits[:2], [a, b], 2)[1]
        for j in range(4):
            want = lit_group(lits, [a, b, j], 2)[1] - r2 - lits[2].r(j)
            assert got[gi, j] == pytest.approx(want, rel=1e-7, abs=1e-9)
    fs = comp.fit_shared(np.array([[0, 2, 3]]))
    np.testing.assert_allclose(fs.shared[0], lit_group(lits, [0, 2, 3], 2)[0][:3], rtol=RTOL, atol=1e-10)
    # the marginal costs telescope: pair cost + marginal cost = total cost of the triple
    total = lit_group(lits, [0, 2, 3], 2)[1] - sum(lt.r(i) for lt, i in zip(lits, [0, 2, 3]))
    assert comp.pair_costs(0, 1, clip=False)[0, 2] + got[0, 3] == pytest.approx(total, rel=1e-7)


def test_within_costs_match_literal() -> None:
    rng = np.random.default_rng(2)
    lits, layers = problem(rng, s=2, own=[2, 1], dims=[4, 3], neurons=[5, 2])
    comp = CompensatedLayer(layers, n_shared=2, layer="fc")
    lt = lits[0]
    w = comp.within_costs(0, clip=False)
    pairs = np.array([[0, 3], [4, 1]])
    fit = comp.fit_within(0, pairs)
    for i in range(5):
        for j in range(5):
            if i == j:
                continue
            g2 = 2 * lt.g + 2 * lt.lam * np.eye(len(lt.g))
            th0 = 0.5 * (lt.prior[i] + lt.prior[j])
            th = np.linalg.solve(g2, lt.c @ (lt.rows[i] + lt.rows[j]) + 2 * lt.lam * th0)
            err = lt.err(th, lt.rows[i]) + lt.err(th, lt.rows[j])
            want = err + 2 * lt.lam * np.sum((th - th0) ** 2) - lt.r(i) - lt.r(j)
            assert w[i, j] == pytest.approx(want, rel=1e-7, abs=1e-9)
            hit = np.flatnonzero((pairs == [i, j]).all(axis=1))
            if hit.size:
                np.testing.assert_allclose(fit.rows[hit[0]], th, rtol=RTOL, atol=1e-10)
                assert fit.error[hit[0]] == pytest.approx(err, rel=RTOL)


# ---------------------------------------------------------------------------------------------------
# §10's check: x̃ = x, every feature shared → the paper's merge and twice its cost (any ρ)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rho", [0.0, 1e-2, 1.0])
def test_identity_inputs_give_the_paper_merge_dense(rho: float) -> None:
    rng = np.random.default_rng(3)
    d = 5
    xa, xb = rng.normal(size=(300, d)), rng.normal(size=(200, d)) * 1.7 + 0.4
    a, b = rng.normal(size=(4, d + 1)), rng.normal(size=(6, d + 1))
    sa, sb = DenseMoments().update(xa, xa).stats(), DenseMoments().update(xb, xb).stats()
    comp = CompensatedLayer([TaskLayer(a, sa, a), TaskLayer(b, sb, b)], n_shared=d, rho=rho)
    op = pair_operator(sa.h, sb.h)
    np.testing.assert_allclose(comp.pair_costs(), 2 * cost_matrix(a, b, op), rtol=1e-9, atol=1e-12)
    pairs = np.array([[0, 5], [3, 1], [2, 2]])
    fs = comp.fit_shared(pairs)
    np.testing.assert_allclose(fs.shared, merged_vectors(a[pairs[:, 0]], b[pairs[:, 1]], op), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(comp.refit(0).rows, a, atol=1e-12)


def conv_data(rng: np.random.Generator, n: int, c: int, hw: int) -> np.ndarray:
    return rng.normal(size=(n, c, hw, hw)) + rng.normal(size=(1, c, 1, 1))


def test_identity_inputs_give_the_paper_merge_conv_patch() -> None:
    rng = np.random.default_rng(4)
    geo = {"kernel_shape": (3, 3), "strides": (1, 1), "pads": (1, 1, 1, 1)}
    xa, xb = conv_data(rng, 6, 2, 5), 1.5 * conv_data(rng, 5, 2, 5)
    wa, ba = rng.normal(size=(4, 2, 3, 3)), rng.normal(size=4)
    wb, bb = rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3)
    sa = ConvPatchMoments(**geo).update(xa, xa).stats()
    sb = ConvPatchMoments(**geo).update(xb, xb).stats()
    np.testing.assert_allclose(sa.h, ConvPatchHessian(**geo).update(xa).hessian(), rtol=1e-12)
    ra, rb = conv_patch_rows(wa, ba), conv_patch_rows(wb, bb)
    comp = CompensatedLayer([TaskLayer(ra, sa, ra), TaskLayer(rb, sb, rb)], n_shared=18)
    op = pair_operator(sa.h, sb.h)
    np.testing.assert_allclose(comp.pair_costs(), 2 * cost_matrix(ra, rb, op), rtol=1e-9, atol=1e-12)
    pairs = np.array([[1, 2], [3, 0]])
    w, bias = merge_conv(wa, ba, wb, bb, pairs, op, "patch")
    fs = comp.fit_shared(pairs)
    np.testing.assert_allclose(fs.shared, conv_patch_rows(w, bias), rtol=1e-9, atol=1e-12)


def lit_channel_refit(x_t: np.ndarray, x: np.ndarray, w: np.ndarray, b: np.ndarray, prior_w: np.ndarray,
                      prior_b: np.ndarray, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """Per tap, literal: pixel moments, bias b/P per tap, conv bias = sum of the tap biases."""
    zt = aug(x_t.transpose(0, 2, 3, 1).reshape(-1, x_t.shape[1]))
    xo = aug(x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1]))
    g, c = zt.T @ zt / len(zt), zt.T @ xo / len(zt)
    lam = rho * np.mean(np.diag(g))
    p = w.shape[2] * w.shape[3]
    out_w, out_b = np.empty((w.shape[0], prior_w.shape[1]) + w.shape[2:]), np.zeros(w.shape[0])
    for n in range(w.shape[0]):
        for kh in range(w.shape[2]):
            for kw in range(w.shape[3]):
                v = np.r_[w[n, :, kh, kw], b[n] / p]
                v0 = np.r_[prior_w[n, :, kh, kw], prior_b[n] / p]
                f = np.linalg.solve(g + lam * np.eye(len(g)), c @ v + lam * v0)
                out_w[n, :, kh, kw] = f[:-1]
                out_b[n] += f[-1]
    return out_w, out_b


def test_channel_reading_refit_matches_literal_and_moments_match_hessian() -> None:
    rng = np.random.default_rng(5)
    x = conv_data(rng, 4, 3, 6)
    xt = np.concatenate([x[:, [2, 0]] + 0.1 * rng.normal(size=(4, 2, 6, 6)), rng.normal(size=(4, 1, 6, 6))], axis=1)
    w, b = rng.normal(size=(5, 3, 3, 3)), rng.normal(size=5)
    acc = ConvChannelMoments(layer="conv").update(xt, x)
    st_ = acc.stats()
    np.testing.assert_allclose(st_.h, ConvChannelHessian().update(x).hessian(), rtol=1e-12)
    target = dense_target([1, -1, 0], 3)
    rows = conv_channel_rows(w, b)
    prior = embed_rows(rows, target, 4)
    comp = CompensatedLayer([TaskLayer(rows, st_, prior)], n_shared=2, rho=1e-2, layer="conv")
    fit = comp.refit(0).rows  # (5, 9, 4), the conv bias repeated at every tap
    pw = np.zeros((5, 3, 3, 3))
    pw[:, 1], pw[:, 0] = w[:, 0], w[:, 2]
    lw, lb = lit_channel_refit(xt, x, w, b, pw, b, 1e-2)
    np.testing.assert_allclose(fit[:, :, :3].transpose(0, 2, 1).reshape(5, 3, 3, 3), lw, rtol=RTOL, atol=1e-10)
    np.testing.assert_allclose(fit[:, :, 3], np.repeat(lb[:, None], 9, axis=1), rtol=RTOL, atol=1e-10)


def test_channel_reading_permuted_conv_copy_is_free_and_recovered() -> None:
    rng = np.random.default_rng(6)
    xa, xb = conv_data(rng, 4, 3, 5), conv_data(rng, 3, 3, 5) * 0.7
    w, b = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
    perm = np.array([2, 0, 3, 1])
    ra, rb = conv_channel_rows(w, b), conv_channel_rows(w[perm], b[perm])
    sa = ConvChannelMoments().update(xa, xa).stats()
    sb = ConvChannelMoments().update(xb, xb).stats()
    comp = CompensatedLayer([TaskLayer(ra, sa, ra), TaskLayer(rb, sb, rb)], n_shared=3)
    costs = comp.pair_costs()
    true = np.argsort(perm)
    assert costs[np.arange(4), true].max() <= 1e-10 * costs.max()
    assert (lit_greedy(costs, 4)[:, 1] == true[lit_greedy(costs, 4)[:, 0]]).all()
    fs = comp.fit_shared(np.c_[np.arange(4), true])
    np.testing.assert_allclose(fs.shared, ra, atol=1e-12)


# ---------------------------------------------------------------------------------------------------
# Accumulators
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["dense", "conv_channel", "conv_patch"])
def test_shards_merge_to_one_pass(kind: str) -> None:
    rng = np.random.default_rng(7)
    if kind == "dense":
        z, x = rng.normal(size=(50, 4)), rng.normal(size=(50, 6))
    else:
        z, x = conv_data(rng, 5, 2, 5), conv_data(rng, 5, 3, 5)
    def make() -> MomentAccumulator:
        return moment_accumulator(kind, kernel_shape=(3, 3), pads=(1, 0, 1, 0), strides=(2, 1), layer="l")  # type: ignore[arg-type]

    one = make().update(z, x).stats()  # type: ignore[attr-defined]
    merged = (make().update(z[:2], x[:2]) + make().update(z[2:], x[2:])).stats()  # type: ignore[attr-defined]
    for attr in ("g", "c", "h"):
        np.testing.assert_allclose(getattr(merged, attr), getattr(one, attr), rtol=1e-12, atol=1e-14)
    assert merged.n_samples == one.n_samples
    if kind == "conv_patch":
        zc = aug(im2col(z, (3, 3), (2, 1), (1, 0, 1, 0)))
        xc = aug(im2col(x, (3, 3), (2, 1), (1, 0, 1, 0)))
        np.testing.assert_allclose(one.c, zc.T @ xc / len(zc), rtol=1e-12, atol=1e-14)


def test_accumulator_bad_input() -> None:
    acc = DenseMoments(layer="fc1")
    with pytest.raises(InputError, match="fc1.*same samples"):
        acc.update(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(DataError, match="fc1.*NaN"):
        acc.update(np.full((3, 2), np.nan), np.zeros((3, 2)))
    acc.update(np.zeros((3, 2)), np.zeros((3, 5)))
    with pytest.raises(InputError, match="fc1.*differ from the accumulated"):
        acc.update(np.zeros((3, 3)), np.zeros((3, 5)))
    with pytest.raises(InputError, match="different settings"):
        acc.merge(ConvChannelMoments())
    with pytest.raises(InputError, match="unknown moment kind"):
        moment_accumulator("lstm")  # type: ignore[arg-type]


def test_layer_bad_input_names_the_layer_and_task() -> None:
    st_ = DenseMoments().update(np.ones((4, 3)), np.ones((4, 2))).stats()
    with pytest.raises(InputError, match="layer 'fc2': task cat: prior has shape"):
        CompensatedLayer([TaskLayer(np.zeros((2, 3)), st_, np.zeros((2, 3)), name="cat")], 1, layer="fc2")
    with pytest.raises(InputError, match="rho"):
        CompensatedLayer([TaskLayer(np.zeros((2, 3)), st_, np.zeros((2, 4)))], 1, rho=-1.0)
    comp = CompensatedLayer([TaskLayer(np.zeros((2, 3)), st_, np.zeros((2, 4)))] * 2, 1)
    with pytest.raises(InputError, match="out of range"):
        comp.fit_shared(np.array([[0, 5]]))


# ---------------------------------------------------------------------------------------------------
# Embedding and positions
# ---------------------------------------------------------------------------------------------------
def test_positions_and_embedding_sum_within_merged_columns() -> None:
    pos, count = zipped_positions(6, shared=[4, 1], within=[[5, 2]])
    assert pos.tolist() == [2, 1, 3, 4, 0, 3] and count == 5
    w = np.arange(14.0).reshape(2, 7)
    out = embed_rows(w, dense_target(pos, count), count + 1)
    assert out[0].tolist() == [4, 1, 0, 2 + 5, 3, 6]
    tgt = patch_target([1, -1], 2, (1, 2))
    assert tgt.tolist() == [2, 3, -1, -1, 4]


# ---------------------------------------------------------------------------------------------------
# Whole MLP pair: permuted copy, and the literal layer-by-layer transcription
# ---------------------------------------------------------------------------------------------------
def mlp(rng: np.random.Generator, sizes: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(rng.normal(size=(sizes[i + 1], sizes[i])) / np.sqrt(sizes[i]), 0.3 * rng.normal(size=sizes[i + 1]))
            for i in range(len(sizes) - 1)]


@pytest.mark.parametrize("within", [False, True])
def test_permuted_mlp_copy_is_recovered_exactly(within: bool) -> None:
    rng = np.random.default_rng(8)
    a = mlp(rng, [6, 7, 5, 3])
    p1, p2 = rng.permutation(7), rng.permutation(5)
    b = [(a[0][0][p1], a[0][1][p1]), (a[1][0][p2][:, p1], a[1][1][p2]), (a[2][0][:, p2], a[2][1])]
    xa, xb = rng.normal(size=(300, 6)), rng.normal(size=(200, 6)) + 0.5
    z = zip_mlp_pair([a, b], [xa, xb], 1.0, within=within)
    assert z.cross[0][:, 1].tolist() == p1.argsort()[z.cross[0][:, 0]].tolist()
    assert z.cross[1][:, 1].tolist() == p2.argsort()[z.cross[1][:, 0]].tolist()
    assert max(z.costs) <= 1e-10 and all(w.size == 0 for ww in z.within for w in ww)
    ref = [dense_rows(*layer) for layer in a]
    for t, x in ((0, xa), (1, xb)):
        assert np.abs(forward_rows(z.nets[t], x) - forward_rows(ref, x)).max() <= 1e-5
    np.testing.assert_allclose(z.nets[0][0], ref[0][z.cross[0][:, 0]], atol=1e-12)


def lit_zip(models: list, calib: list[np.ndarray], share: float, rho: float = 1e-2) -> tuple[list, list]:
    """Layer by layer from raw activations: literal costs (per-pair loops), literal greedy, literal fits."""
    d_in = calib[0].shape[1]
    orig, zipped = [c.copy() for c in calib], [c.copy() for c in calib]
    inv = [np.arange(d_in), np.arange(d_in)]  # original neuron at each zipped position
    nets, all_pairs, s = ([], []), [], d_in
    for li in range(len(models[0])):
        lits = []
        for t in (0, 1):
            rows = dense_rows(*models[t][li])
            prior = np.zeros((rows.shape[0], len(inv[t]) + 1))
            prior[:, :-1], prior[:, -1] = rows[:, inv[t]], rows[:, -1]
            lits.append(LitTask(aug(zipped[t]), aug(orig[t]), rows, prior, rho))
        if li == len(models[0]) - 1:
            for t in (0, 1):
                nets[t].append(np.array([lits[t].refit(i) for i in range(len(lits[t].rows))]))
            break
        na, nb = len(lits[0].rows), len(lits[1].rows)
        costs = np.array([[lit_group(lits, [i, j], s)[1] - lits[0].r(i) - lits[1].r(j) for j in range(nb)]
                          for i in range(na)])
        pairs = lit_greedy(np.maximum(costs, 0), int(np.floor(share * min(na, nb) + 0.5)))
        all_pairs.append(pairs)
        for t in (0, 1):
            mats, _ = lit_place(lits, s)
            shared = np.array([mats[t].T @ lit_group(lits, list(p), s)[0] for p in pairs]).reshape(-1, len(lits[t].g))
            own = [i for i in range(len(lits[t].rows)) if i not in set(pairs[:, t].tolist())]
            layer = np.vstack([shared] + [lits[t].refit(i)[None] for i in own])
            nets[t].append(layer)
            inv[t] = np.r_[pairs[:, t], own].astype(np.int64)
            orig[t] = np.maximum(orig[t] @ models[t][li][0].T + models[t][li][1], 0)
            zipped[t] = np.maximum(aug(zipped[t]) @ layer.T, 0)
        s = len(pairs)
    return nets, all_pairs


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_mlp_pair_matches_literal_transcription(share: float) -> None:
    rng = np.random.default_rng(9)
    a, b = mlp(rng, [5, 6, 4, 3]), mlp(rng, [5, 5, 5, 2])
    xa, xb = rng.normal(size=(250, 5)), rng.normal(size=(180, 5)) * 1.3 + 0.2
    z = zip_mlp_pair([a, b], [xa, xb], share)
    nets, pairs = lit_zip([a, b], [xa, xb], share)
    for got, want in zip(z.cross, pairs):
        assert got.tolist() == want.tolist()
    for t, x in ((0, xa), (1, xb)):
        for got, want in zip(z.nets[t], nets[t]):
            np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)
        test_x = rng.normal(size=(64, 5))
        np.testing.assert_allclose(forward_rows(z.nets[t], test_x), forward_rows(nets[t], test_x), rtol=1e-7, atol=1e-9)


def test_mixed_greedy_takes_cheapest_of_both_kinds() -> None:
    cross = np.array([[5.0, 1.0], [4.0, 6.0]])
    wa = np.array([[0, 0.5], [0.5, 0]])
    wb = np.array([[0, 9.0], [9.0, 0]])
    mp = greedy_mixed_pairs(cross, wa, wb, 1)
    assert mp.within_a.tolist() == [[0, 1]] and mp.cross.size == 0 and mp.within_b.size == 0
    mp = greedy_mixed_pairs(cross, wa, wb, 2)  # A is used up: B's own pair is all that is left
    assert mp.within_b.tolist() == [[0, 1]] and mp.cost == 9.5
    mp = greedy_mixed_pairs(cross, wa * 10, wb, 2)
    assert mp.cross.tolist() == [[0, 1], [1, 0]] and mp.cost == 5.0
    with pytest.raises(InputError):
        greedy_mixed_pairs(cross, wa, wb, 3)


# ---------------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), s=st.integers(0, 3), ea=st.integers(0, 2), eb=st.integers(0, 2))
def test_costs_nonnegative_without_ridge(seed: int, s: int, ea: int, eb: int) -> None:
    """With ρ = 0 sharing can only add error: Δ ≥ −1e-9·scale, within costs too."""
    rng = np.random.default_rng(seed)
    _, layers = problem(rng, s=s, own=[ea, eb], dims=[3, 4], neurons=[3, 4], n=60)
    comp = CompensatedLayer(layers, n_shared=s, rho=0.0)
    scale = max(float(np.abs(comp.specific_objective(0)).max()), float(np.abs(comp.task_terms(0).q).max()), 1.0)
    assert comp.pair_costs(clip=False).min() >= -1e-9 * scale
    assert comp.within_costs(0, clip=False).min() >= -1e-9 * scale


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rho=st.sampled_from([0.0, 1e-3, 1e-2, 0.3]))
def test_identical_rows_cost_nothing_with_identity_inputs(seed: int, rho: float) -> None:
    """x̃ = x and a = b (any data, any ρ): Δ(a, b) = 0 and the fit returns a."""
    rng = np.random.default_rng(seed)
    xa, xb = rng.normal(size=(40, 3)), rng.normal(size=(30, 3)) * 2 + 1
    a = rng.normal(size=(3, 4))
    sa, sb = DenseMoments().update(xa, xa).stats(), DenseMoments().update(xb, xb).stats()
    comp = CompensatedLayer([TaskLayer(a, sa, a), TaskLayer(a, sb, a)], n_shared=3, rho=rho)
    c = comp.pair_costs(clip=False)
    assert np.abs(np.diag(c)).max() <= 1e-9 * max(float(np.abs(c).max()), 1.0)
    np.testing.assert_allclose(comp.fit_shared(np.c_[np.arange(3), np.arange(3)]).shared, a, atol=1e-10)


def test_duplicate_neuron_is_merged_within_its_model_without_error() -> None:
    """A neuron duplicated inside A: the within pair costs 0, is taken first, the next layer sums its
    two columns, and both tasks' outputs are unchanged."""
    rng = np.random.default_rng(10)
    a, b = mlp(rng, [4, 5, 4, 2]), mlp(rng, [4, 6, 3, 2])
    w1, b1 = a[0]
    w1[3], b1[3] = w1[1], b1[1]
    xa, xb = rng.normal(size=(200, 4)), rng.normal(size=(150, 4))
    z = zip_mlp_pair([a, b], [xa, xb], [0.2, 0.0], within=True)  # one merge in layer 1, none in layer 2
    assert z.within[0][0].tolist() == [[1, 3]] and z.cross[0].size == 0
    assert z.nets[0][0].shape[0] == 4 and z.nets[0][1].shape[1] == 5
    for t, (m, x) in enumerate(((a, xa), (b, xb))):
        ref = [dense_rows(*layer) for layer in m]
        assert np.abs(forward_rows(z.nets[t], x) - forward_rows(ref, x)).max() <= 1e-5


def test_patch_reading_partially_shared_permuted_copy() -> None:
    """Second conv of a permuted copy when the layer below shared 2 of its 3 channels: the true pairs cost
    0 and the fit returns the original kernels, own channels in the inter weights."""
    rng = np.random.default_rng(11)
    geo = {"kernel_shape": (2, 2), "pads": (0, 0, 1, 1)}
    x = conv_data(rng, 5, 3, 5)  # original input of A's conv (channels 0, 1, 2)
    w, bias = rng.normal(size=(4, 3, 2, 2)), rng.normal(size=4)
    perm_in, perm_out = np.array([2, 0, 1]), np.array([1, 3, 0, 2])
    xb = x[:, perm_in]  # B's channel i is A's channel perm_in[i]
    wb, bb = w[perm_out][:, perm_in], bias[perm_out]
    # layer below: A's channels 2, 0 shared (in that order) with B's 0, 1; own: A's 1, B's 2
    pos_a, pos_b = np.array([1, 2, 0]), np.array([0, 1, 2])
    zipped = x[:, [2, 0, 1]]  # both tasks' zipped input: [shared 2 ; own 1]
    layers = []
    for rows_w, rows_b, xo, pos in ((w, bias, x, pos_a), (wb, bb, xb, pos_b)):
        rows = conv_patch_rows(rows_w, rows_b)
        prior = embed_rows(rows, patch_target(pos, 3, (2, 2)), 13)
        stats = ConvPatchMoments(**geo).update(zipped, xo).stats()
        layers.append(TaskLayer(rows, stats, prior))
    comp = CompensatedLayer(layers, n_shared=8, layer="conv2")
    costs = comp.pair_costs()
    true = np.argsort(perm_out)
    assert costs[np.arange(4), true].max() <= 1e-9 * costs.max()
    fs = comp.fit_shared(np.c_[np.arange(4), true])
    np.testing.assert_allclose(fs.shared[:, :8].reshape(4, 2, 2, 2), w[:, [2, 0]], atol=1e-9)
    np.testing.assert_allclose(fs.shared[:, 8], bias, atol=1e-9)
    np.testing.assert_allclose(fs.inter[0].reshape(4, 1, 2, 2), w[:, [1]], atol=1e-9)
    np.testing.assert_allclose(fs.inter[1].reshape(4, 1, 2, 2), w[:, [1]], atol=1e-9)


def small_convnet(rng: np.random.Generator) -> list[NetLayer]:
    return [NetLayer("conv", rng.normal(size=(4, 2, 3, 3)) / 3, 0.1 * rng.normal(size=4), pool=2),
            NetLayer("conv", rng.normal(size=(5, 4, 2, 2)) / 4, 0.1 * rng.normal(size=5), flatten=True),
            NetLayer("dense", rng.normal(size=(6, 20)) / 4, 0.1 * rng.normal(size=6)),
            NetLayer("dense", rng.normal(size=(3, 6)) / 2, 0.1 * rng.normal(size=3), relu=False)]


@pytest.mark.parametrize("reading", ["patch", "channel"])
@pytest.mark.parametrize("share", [0.5, 1.0])
def test_permuted_convnet_copy_is_recovered_exactly(reading: str, share: float) -> None:
    """Conv → pool → conv → flatten → dense → head, streamed calibration, both conv readings."""
    rng = np.random.default_rng(12)
    a = small_convnet(rng)
    p1, p2, p3 = rng.permutation(4), rng.permutation(5), rng.permutation(6)
    b = [NetLayer("conv", a[0].weight[p1], a[0].bias[p1], pool=2),
         NetLayer("conv", a[1].weight[p2][:, p1], a[1].bias[p2], flatten=True),
         NetLayer("dense", a[2].weight[p3].reshape(6, 5, 4)[:, p2].reshape(6, 20), a[2].bias[p3]),
         NetLayer("dense", a[3].weight[:, p3], a[3].bias, relu=False)]
    xa, xb = rng.normal(size=(64, 2, 9, 9)), rng.normal(size=(50, 2, 9, 9)) + 0.3
    z = zip_net_pair([a, b], [xa, xb], share, reading=reading, batch=20)  # type: ignore[arg-type]
    assert max(z.costs) <= 1e-10
    assert z.cross[1][:, 1].tolist() == p2.argsort()[z.cross[1][:, 0]].tolist()
    for t, x in ((0, xa), (1, xb)):
        assert np.abs(net_forward(z.nets[t], x) - net_forward(a, x)).max() <= 1e-5
