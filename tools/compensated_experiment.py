#!/usr/bin/env python
"""Numpy-only check of error-compensating MTZ (mtz-method §10) on bundled model pairs.

``--model lenet300``: the two LeNet-300-100 MNIST models (seeds 0, 1; Flatten → Gemm → Relu → Gemm → Relu →
Gemm), zipped with :func:`onnx_zip.mtz.comp_chain.zip_mlp_pair`: the paper's one-pass MTZ, the compensated
fit, and the compensated fit with within-model merges. ``--model lenet5``: LeNet-5 MNIST + LeNet-5 Fashion
(Conv → Relu → MaxPool ×2 → Flatten → Gemm → Relu → Gemm), zipped with
:func:`onnx_zip.mtz.comp_net.zip_net_pair` (compensated, patch and channel readings, ± within merges).
Weights are read with onnx.numpy_helper, every forward pass is numpy; prints each task's test accuracy
and the zip time.

Usage:
    python tools/compensated_experiment.py                       # LeNet-300, shares 0.5 and 1.0
    python tools/compensated_experiment.py --model lenet5 --shares 0.5 1.0
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
from onnx_zip.mtz.comp_net import NetLayer, zip_net_pair
from onnx_zip.mtz.comp_net import forward as net_forward
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


def load_lenet5(path: Path) -> list[NetLayer]:
    """conv1, conv2 (each then ReLU and 2×2 max-pool; conv2 flattened), fc1 (ReLU), fc2."""
    import onnx
    from onnx import numpy_helper

    init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in onnx.load(str(path)).graph.initializer}
    return [
        NetLayer("conv", init["conv1.weight"], init["conv1.bias"], pool=2),
        NetLayer("conv", init["conv2.weight"], init["conv2.bias"], pool=2, flatten=True),
        NetLayer("dense", init["fc1.weight"], init["fc1.bias"]),
        NetLayer("dense", init["fc2.weight"], init["fc2.bias"], relu=False),
    ]


def accuracy(rows: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return 100.0 * float(np.mean(forward_rows(rows, x).argmax(axis=1) == y))


def net_accuracy(layers: list[NetLayer], x: np.ndarray, y: np.ndarray) -> float:
    logits = np.concatenate([net_forward(layers, x[s : s + 1000]) for s in range(0, len(x), 1000)])
    return 100.0 * float(np.mean(logits.argmax(axis=1) == y))


def run_lenet5(args: argparse.Namespace) -> None:
    models = [load_lenet5(ROOT / "models" / f) for f in ("lenet5_mnist_s0.onnx", "lenet5_fashion.onnx")]
    data = [np.load(ROOT / "models" / "data" / f"{n}_{s}.npz") for n in ("mnist", "fashion") for s in ("train", "test")]
    rng = np.random.default_rng(args.seed)
    calib = [d["image"][rng.choice(len(d["image"]), size=args.calib, replace=False)].astype(np.float64)
             for d in (data[0], data[2])]
    tests = [(data[1]["image"].astype(np.float64), data[1]["label"]), (data[3]["image"].astype(np.float64), data[3]["label"])]
    orig = [net_accuracy(models[t], *tests[t]) for t in (0, 1)]
    print(f"LeNet-5 MNIST + Fashion: calibration {args.calib} train images per task (seed {args.seed}), "
          f"test {len(tests[0][1])} / {len(tests[1][1])} images, rho {args.rho}")
    print(f"{'method':<30}{'share':>6}{'MNIST':>9}{'Fashion':>9}{'zip s':>8}")
    print(f"{'original':<30}{'-':>6}{orig[0]:>9.2f}{orig[1]:>9.2f}{'-':>8}")
    for share in args.shares:
        for reading in args.readings:
            for within in (False, True):
                t0 = time.perf_counter()
                z = zip_net_pair(models, calib, share, reading=reading, rho=args.rho, within=within)
                dt = time.perf_counter() - t0
                acc = [net_accuracy(z.nets[t], *tests[t]) for t in (0, 1)]
                label = f"compensated {reading}" + (" + within" if within else "")
                extra = ("  within pairs per layer: " + ", ".join(f"{len(a)}+{len(b)}" for a, b in z.within)) if within else ""
                print(f"{label:<30}{share:>6.2f}{acc[0]:>9.2f}{acc[1]:>9.2f}{dt:>8.1f}{extra}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shares", type=float, nargs="+", default=[0.5, 1.0])
    ap.add_argument("--calib", type=int, default=4096, help="calibration images (from the train split)")
    ap.add_argument("--rho", type=float, default=1e-2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", choices=["lenet300", "lenet5"], default="lenet300")
    ap.add_argument("--readings", nargs="+", choices=["patch", "channel"], default=["patch", "channel"])
    args = ap.parse_args()
    if args.model == "lenet5":
        run_lenet5(args)
        return

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
