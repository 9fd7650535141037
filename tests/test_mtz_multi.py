"""Adding a further model to a zipped set: joint Hessian rules, matching every shared neuron."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_zip.errors import InputError
from onnx_zip.mtz import add_model, conv_channel_rows, joint_hessian

TOL = dict(rtol=1e-10, atol=1e-12)


def spd(rng: np.random.Generator, d: int) -> np.ndarray:
    x = rng.normal(size=(4 * d, d))
    return x.T @ x / len(x)


def test_joint_hessian_rules_match_literal() -> None:
    rng = np.random.default_rng(0)
    hs = [spd(rng, 4) for _ in range(3)]
    np.testing.assert_allclose(joint_hessian(hs, mode="sum"), hs[0] + hs[1] + hs[2], **TOL)
    lit = np.linalg.inv(sum(np.linalg.inv(h) for h in hs))
    np.testing.assert_allclose(joint_hessian(hs, mode="inverse_sum"), lit, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(joint_hessian(hs[:1]), hs[0], **TOL)
    lam = 0.1
    damped = [h + lam * np.mean(np.diag(h)) * np.eye(4) for h in hs]
    np.testing.assert_allclose(joint_hessian(hs, mode="sum", damping=lam), sum(damped), **TOL)


@pytest.mark.parametrize("mode", ["inverse_sum", "sum"])
def test_add_model_operator_matches_literal(mode: str) -> None:
    rng = np.random.default_rng(1)
    hs, hc = [spd(rng, 5), spd(rng, 5)], spd(rng, 5)
    shared, new = rng.normal(size=(6, 5)), rng.normal(size=(8, 5))
    res = add_model(shared, hs, new, hc, mode=mode)
    inv_joint = sum(np.linalg.inv(h) for h in hs) if mode == "inverse_sum" else np.linalg.inv(hs[0] + hs[1])
    m_lit = np.linalg.inv(inv_joint + np.linalg.inv(hc))
    np.testing.assert_allclose(res.operator.m, m_lit, rtol=1e-9, atol=1e-12)
    lit = np.array([[0.5 * (a - b) @ m_lit @ (a - b) for b in new] for a in shared])
    np.testing.assert_allclose(res.costs, lit, rtol=1e-9, atol=1e-12 * lit.max())
    assert len(res.matching) == 6  # every shared neuron gets a partner
    hj = np.linalg.inv(inv_joint)
    for t, (i, j) in enumerate(res.matching.pairs):
        want = np.linalg.solve(hj + hc, hj @ shared[i] + hc @ new[j])
        np.testing.assert_allclose(res.merged[t], want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("method", ["greedy", "optimal"])
def test_add_permuted_copy_channel_reading(method: str) -> None:
    rng = np.random.default_rng(2)
    w, b = rng.normal(size=(10, 3, 3, 3)), rng.normal(size=10)
    shared = conv_channel_rows(w, b)
    perm = rng.permutation(10)
    res = add_model(shared, [spd(rng, 4), spd(rng, 4)], shared[perm], spd(rng, 4), method=method)
    assert len(res.matching) == 10
    assert all(perm[j] == i for i, j in res.matching.pairs.tolist())
    assert res.matching.costs.max() <= 1e-10
    # fewer new neurons than shared ones: all new ones are used
    res2 = add_model(shared, [spd(rng, 4)], shared[perm[:4]], spd(rng, 4), method=method)
    assert sorted(res2.matching.cols.tolist()) == [0, 1, 2, 3]


def test_add_model_bad_input() -> None:
    rng = np.random.default_rng(3)
    h = spd(rng, 3)
    with pytest.raises(InputError, match="at least one"):
        joint_hessian([])
    with pytest.raises(InputError, match=r"layer 'l2'.*task 1"):
        joint_hessian([h, np.eye(4)], layer="l2")
    with pytest.raises(InputError, match="mode"):
        joint_hessian([h, h], mode="max")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="method"):
        add_model(np.ones((2, 3)), [h], np.ones((2, 3)), h, method="best")  # type: ignore[arg-type]


def test_inverse_sum_with_singular_task_hessian_warns(caplog) -> None:
    import logging

    rng = np.random.default_rng(4)
    x = rng.normal(size=(20, 3))
    x[:, 0] = 0.0
    h_sing = x.T @ x / 20
    with caplog.at_level(logging.WARNING, logger="onnx_zip.mtz.multi"):
        hj = joint_hessian([h_sing, spd(rng, 3)], layer="l4")
    assert any("l4" in r.getMessage() and "pseudo-inverse" in r.getMessage() for r in caplog.records)
    assert np.isfinite(hj).all()
    np.testing.assert_allclose(hj, hj.T, **TOL)
