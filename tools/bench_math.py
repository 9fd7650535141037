#!/usr/bin/env python
"""Benchmark the MTZ numerics on VGG-16-sized layers against a per-pair loop transcription.

For each layer: M (from two random SPD Hessians X^T X / n), all-pairs costs, greedy matching of all
min(N_A, N_B) pairs and the merged vectors of every pair — timed, with the peak memory the vectorised
path allocates (tracemalloc; numpy reports its buffers to it). The reference is a literal per-pair
loop over the same formula (and over kernel positions in the per-channel reading, as the released code
does), run on a slice of pairs for a few seconds and extrapolated to all N_A·N_B pairs.

Usage:
    python tools/bench_math.py            # the three VGG-16 layers
    python tools/bench_math.py --quick    # small sizes, a smoke test
    python tools/bench_math.py --optimal  # also time optimal (linear_sum_assignment) matching
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnx_zip.mtz import cost_matrix, greedy_matching, merge_pairs, optimal_matching, pair_operator  # noqa: E402


@dataclass
class Case:
    name: str
    n_a: int
    n_b: int
    positions: int  # kernel positions sharing one Hessian (1 = dense / patch reading)
    dim: int  # Hessian side (with the bias row)
    target_s: float | None


def random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    """X^T X / n with a constant-1 last column (bias) and n = dim + 64 samples (built in float32)."""
    n = dim + 64
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x[:, -1] = 1.0
    x[:, :-1] += rng.standard_normal(dim - 1, dtype=np.float32)  # non-zero means, like ReLU outputs
    return (x.T @ x).astype(np.float64) / n


def loop_costs(a: np.ndarray, b: np.ndarray, m: np.ndarray, budget_s: float) -> tuple[float, int]:
    """Per-pair transcription ½ Σ_p (a_ip − b_jp)ᵀ M (a_ip − b_jp); returns (seconds, pairs done)."""
    t0 = time.perf_counter()
    done = 0
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            d = 0.0
            for p in range(a.shape[1]):
                diff = a[i, p] - b[j, p]
                d += 0.5 * diff @ m @ diff
            done += 1
            if time.perf_counter() - t0 > budget_s:
                return time.perf_counter() - t0, done
    return time.perf_counter() - t0, done


def run(case: Case, optimal: bool, loop_budget: float, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    h_a, h_b = random_spd(rng, case.dim), random_spd(rng, case.dim)
    shape = (case.positions, case.dim) if case.positions > 1 else (case.dim,)
    a = rng.standard_normal((case.n_a, *shape)) * 0.05
    b = rng.standard_normal((case.n_b, *shape)) * 0.05

    tracemalloc.start()
    tracemalloc.reset_peak()
    t0 = time.perf_counter()
    op = pair_operator(h_a, h_b, layer=case.name)
    t1 = time.perf_counter()
    d = cost_matrix(a, b, op)
    t2 = time.perf_counter()
    m = greedy_matching(d)
    t3 = time.perf_counter()
    merge_pairs(a, b, m.pairs, op)
    t4 = time.perf_counter()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    out = {"M": t1 - t0, "costs": t2 - t1, "greedy": t3 - t2, "merge": t4 - t3, "total": t4 - t0}
    out["peak_mib"] = peak / 2**20
    if optimal:
        t = time.perf_counter()
        optimal_matching(d)
        out["optimal"] = time.perf_counter() - t
    a3 = a.reshape(case.n_a, case.positions, case.dim)
    b3 = b.reshape(case.n_b, case.positions, case.dim)
    secs, done = loop_costs(a3, b3, op.m, loop_budget)
    out["loop_est"] = t1 - t0 + secs / done * case.n_a * case.n_b
    out["loop_pairs"] = done
    out["ratio"] = out["loop_est"] / out["total"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--optimal", action="store_true", help="also time optimal matching")
    ap.add_argument("--loop-seconds", type=float, default=3.0, help="time budget of the per-pair loop slice")
    args = ap.parse_args(argv)
    if args.quick:
        cases = [
            Case("conv 64x64 3x3 C=64 per-channel", 64, 64, 9, 65, None),
            Case("conv 64x64 3x3 C=64 patch", 64, 64, 1, 64 * 9 + 1, None),
            Case("fc 256x256 d=257", 256, 256, 1, 257, None),
        ]
    else:
        cases = [
            Case("conv 512x512 3x3 C=512 per-channel", 512, 512, 9, 513, 2.0),
            Case("conv 512x512 3x3 C=512 patch", 512, 512, 1, 512 * 9 + 1, None),
            Case("fc 4096x4096 d=4097", 4096, 4096, 1, 4097, 60.0),
        ]
    cols = ["M", "costs", "greedy", "merge", "total"] + (["optimal"] if args.optimal else [])
    head = f"{'layer':38s}" + "".join(f"{c:>9s}" for c in cols)
    head += f"{'peak MiB':>10s}{'loop est s':>12s}{'ratio':>9s}  target"
    print(head)
    print("-" * len(head))
    for case in cases:
        r = run(case, args.optimal, args.loop_seconds)
        ok = ""
        if case.target_s is not None:
            ok = f"≤{case.target_s:g}s " + ("OK" if r["total"] <= case.target_s else "MISSED")
        print(
            f"{case.name:38s}" + "".join(f"{r[c]:9.2f}" for c in cols)
            + f"{r['peak_mib']:10.0f}{r['loop_est']:12.0f}{r['ratio']:9.0f}x  {ok}",
            flush=True,
        )
    print(f"process max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print("times in seconds; loop est = M + per-pair cost loop extrapolated from a slice")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
