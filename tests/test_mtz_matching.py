"""Greedy vs a literal sequential scan, optimal vs brute force, share policies, bad input."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from onnx_zip.errors import InputError, NumericalError
from onnx_zip.mtz import (
    ShareCount,
    ShareFraction,
    ShareThreshold,
    greedy_matching,
    optimal_matching,
    select_pairs,
    share_count,
)


def lit_greedy(d: np.ndarray, k: int | None = None, thr: float | None = None) -> list[tuple[int, int]]:
    """The released code's rule, literally: sort by (cost, i, j), take, skip used."""
    entries = sorted((d[i, j], i, j) for i in range(d.shape[0]) for j in range(d.shape[1]))
    k = min(d.shape) if k is None else k
    used_r, used_c, out = set(), set(), []
    for c, i, j in entries:
        if len(out) == k or (thr is not None and c > thr):
            break
        if i not in used_r and j not in used_c:
            used_r.add(i)
            used_c.add(j)
            out.append((i, j))
    return out


def brute_min(d: np.ndarray, k: int) -> float:
    best = np.inf
    for rows in itertools.combinations(range(d.shape[0]), k):
        for cols in itertools.permutations(range(d.shape[1]), k):
            best = min(best, sum(d[r, c] for r, c in zip(rows, cols)))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_greedy_equals_literal_scan_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    na, nb = rng.integers(1, 9, size=2)
    d = rng.integers(0, 4, size=(na, nb)).astype(float)  # many ties
    for k in range(min(na, nb) + 1):
        m = greedy_matching(d, k)
        assert [tuple(p) for p in m.pairs.tolist()] == lit_greedy(d, k)
        np.testing.assert_array_equal(m.costs, d[m.rows, m.cols])
    for thr in (0.0, 1.0, 2.5):
        m = greedy_matching(d, threshold=thr)
        assert [tuple(p) for p in m.pairs.tolist()] == lit_greedy(d, thr=thr)


def test_greedy_large_random_and_conflict_chain() -> None:
    rng = np.random.default_rng(10)
    d = rng.random((150, 230))
    assert [tuple(p) for p in greedy_matching(d).pairs.tolist()] == lit_greedy(d)
    # a chain (0,0) < (0,1) < (1,1) < (1,2) < ... forces many rounds → the sequential fallback
    n = 40
    d = np.full((n, n), 1e6)
    for i in range(n):
        d[i, i] = 2 * i
        if i + 1 < n:
            d[i, i + 1] = 2 * i + 1
    d += rng.random((n, n)) * 1e-3
    assert [tuple(p) for p in greedy_matching(d).pairs.tolist()] == lit_greedy(d)
    assert [tuple(p) for p in greedy_matching(d, 17).pairs.tolist()] == lit_greedy(d, 17)


@pytest.mark.parametrize("seed", range(8))
def test_optimal_k_cardinality_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    na, nb = rng.integers(1, 5, size=2)
    d = rng.random((na, nb)) if seed % 2 else rng.integers(0, 3, size=(na, nb)).astype(float)
    for k in range(min(na, nb) + 1):
        m = optimal_matching(d, k)
        assert len(m) == k
        assert len(set(m.rows.tolist())) == k and len(set(m.cols.tolist())) == k
        assert m.total_cost == pytest.approx(brute_min(d, k), abs=1e-12)
        assert m.total_cost <= greedy_matching(d, k).total_cost + 1e-12
        keys = list(zip(m.costs.tolist(), m.rows.tolist(), m.cols.tolist()))
        assert keys == sorted(keys)


def test_optimal_beats_greedy_on_classic_case() -> None:
    d = np.array([[1.0, 2.0], [2.0, 100.0]])
    assert greedy_matching(d).total_cost == 101.0
    m = optimal_matching(d)
    assert m.total_cost == 4.0 and m.pairs.tolist() == [[0, 1], [1, 0]]
    m1 = optimal_matching(np.array([[5.0, 1.0, 9.0], [0.5, 7.0, 8.0], [3.0, 3.0, 3.0]]), 2)
    assert m1.total_cost == 1.5


def test_share_policies() -> None:
    rng = np.random.default_rng(20)
    d = rng.random((6, 9))
    assert share_count(ShareCount(4), 6, 9) == 4
    assert share_count(ShareFraction(0.5), 6, 9) == 3
    assert share_count(ShareFraction(0.25), 6, 9) == 2  # 1.5 rounds up
    assert share_count(ShareFraction(1.0), 6, 9) == 6
    assert share_count(ShareThreshold(0.1), 6, 9) is None
    for method in ("greedy", "optimal"):
        assert len(select_pairs(d, ShareCount(4), method=method)) == 4
        assert len(select_pairs(d, ShareFraction(0.0), method=method)) == 0
        m = select_pairs(d, ShareThreshold(0.3), method=method)
        assert (m.costs <= 0.3).all()
    full = greedy_matching(d)
    thr = select_pairs(d, ShareThreshold(0.3))
    np.testing.assert_array_equal(thr.pairs, full.pairs[full.costs <= 0.3])
    fullo = optimal_matching(d)
    np.testing.assert_array_equal(select_pairs(d, ShareThreshold(0.3), method="optimal").pairs,
                                  fullo.pairs[fullo.costs <= 0.3])
    assert json.loads(json.dumps(full.to_dict()))["method"] == "greedy"


def test_matching_bad_input() -> None:
    d = np.ones((3, 4))
    with pytest.raises(InputError, match=r"layer 'fc1'.*k=4.*3 neurons in A"):
        greedy_matching(d, 4, layer="fc1")
    with pytest.raises(InputError, match="fc1"):
        optimal_matching(d, 5, layer="fc1")
    with pytest.raises(InputError, match=r"layer 'fc1'.*threshold"):
        greedy_matching(d, threshold=-1.0, layer="fc1")
    with pytest.raises(InputError, match="threshold"):
        select_pairs(d, ShareThreshold(-0.5), layer="fc1")
    with pytest.raises(InputError, match="cannot share 7"):
        select_pairs(d, ShareCount(7), layer="fc1")
    with pytest.raises(InputError, match="fraction"):
        share_count(ShareFraction(1.5), 3, 4)
    with pytest.raises(InputError, match="method"):
        select_pairs(d, ShareCount(1), method="hungarian")  # type: ignore[arg-type]
    bad = d.copy()
    bad[0, 1] = np.nan
    with pytest.raises(NumericalError, match=r"layer 'fc1'.*cost matrix"):
        greedy_matching(bad, layer="fc1")
    with pytest.raises(InputError, match="negative"):
        optimal_matching(-d)
    assert len(greedy_matching(np.zeros((0, 3)))) == 0


@pytest.mark.parametrize("seed", range(3))
def test_greedy_blocks_with_ties_thresholds_and_k(seed: int) -> None:
    rng = np.random.default_rng(50 + seed)
    d = rng.integers(0, 40, size=(60, 90)).astype(float)  # ties across block cut-offs
    for k in (None, 1, 37, 60):
        assert [tuple(p) for p in greedy_matching(d, k).pairs.tolist()] == lit_greedy(d, k)
    for thr in (0.0, 3.0, 20.0, 39.0):
        assert [tuple(p) for p in greedy_matching(d, threshold=thr).pairs.tolist()] == lit_greedy(d, thr=thr)
        assert [tuple(p) for p in greedy_matching(d.T, 25, threshold=thr).pairs.tolist()] == lit_greedy(d.T, 25, thr)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(1, 7), st.integers(1, 7)), elements=st.sampled_from([0.0, 0.5, 2.0, 3.25]))
)
def test_greedy_property_equals_literal(d: np.ndarray) -> None:
    m = greedy_matching(d)
    assert [tuple(p) for p in m.pairs.tolist()] == lit_greedy(d)
    o = optimal_matching(d)
    assert o.total_cost <= m.total_cost + 1e-12
