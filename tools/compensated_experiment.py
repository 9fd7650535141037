#!/usr/bin/env python
"""Numpy-only check of error-compensating MTZ (mtz-method §10) on the bundled LeNet-300-100 pair.

Reads the two committed models' weights (onnx.numpy_helper; the graph is Flatten → Gemm → Relu → Gemm →
Relu → Gemm, transB=1), zips them bottom-up with :func:`onnx_zip.mtz.comp_chain.zip_mlp_pair` — the
paper's one-pass MTZ and the compensated fit (optionally with within-model merges) at several shares —
and prints MNIST test accuracy of each task's zipped path (forward in numpy), with the zip time.

Usage:
    python tools/compensated_experiment.py                    # shares 0.5 and 1.0, 4,096 calibration images
    python tools/compensated_experiment.py --shares 0.5 0.75 1.0 --calib 2048 --rho 0.01
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnx_zip.mtz.comp_chain import forward_rows, zip_mlp_pair
from onnx_zip.mtz.layout import dense_rows


def load_mlp(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (W (out, in), b (out,)) of every Gemm (transB=1), in graph order."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            w = init[node.input[1]]
            layers.append((w if trans_b else w.T, init[node.input[2]]))
    return layers


def accuracy(rows: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return 100.0 * float(np.mean(forward_rows(rows, x).argmax(axis=1) == y))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shares", type=float, nargs="+", default=[0.5, 1.0])
    ap.add_argument("--calib", type=int, default=4096, help="calibration images (from the train split)")
    ap.add_argument("--rho", type=float, default=1e-2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    models = [load_mlp(ROOT / "models" / f"lenet300_mnist_s{s}.onnx") for s in (0, 1)]
    train = np.load(ROOT / "models" / "data" / "mnist_flat_train.npz")
    test = np.load(ROOT / "models" / "data" / "mnist_flat_test.npz")
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(len(train["input"]), size=args.calib, replace=False)
    calib = train["input"][idx].astype(np.float64)
    xt, yt = test["input"].astype(np.float64), test["label"]
    orig = [accuracy([dense_rows(w, b) for w, b in m], xt, yt) for m in models]
    print(f"calibration {args.calib} train images (seed {args.seed}), test {len(yt)} images, rho {args.rho}")
    print(f"{'method':<24}{'share':>6}{'s0 acc':>9}{'s1 acc':>9}{'zip s':>8}")
    print(f"{'original':<24}{'-':>6}{orig[0]:>9.2f}{orig[1]:>9.2f}{'-':>8}")
    runs = [("paper one-pass", "paper", False), ("compensated", "compensated", False),
            ("compensated + within", "compensated", True)]
    for share in args.shares:
        for label, method, within in runs:
            t0 = time.perf_counter()
            z = zip_mlp_pair(models, [calib, calib], share, method=method, rho=args.rho, within=within)  # type: ignore[arg-type]
            dt = time.perf_counter() - t0
            acc = [accuracy(z.nets[t], xt, yt) for t in (0, 1)]
            extra = ""
            if within:
                extra = "  within pairs per layer: " + ", ".join(
                    f"{len(a)}+{len(b)}" for a, b in z.within
                )
            print(f"{label:<24}{share:>6.2f}{acc[0]:>9.2f}{acc[1]:>9.2f}{dt:>8.1f}{extra}")


if __name__ == "__main__":
    main()
