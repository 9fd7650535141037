#!/usr/bin/env python3
"""Train a PP-LCNet-style classifier in PaddlePaddle and export it with paddle2onnx (paddle venv).

Model: Conv 3x3 s2 16 + BN + HardSwish (14x14), depthwise 3x3 + BN + HardSwish, pointwise 32 + BN +
HardSwish, depthwise 3x3 s2 (7x7) + BN + HardSwish, pointwise 64 + BN + HardSwish, GAP, Flatten,
Linear. Input ``image`` (N, 1, 28, 28), output ``logits`` (N, classes). paddle2onnx stores every weight
in a Constant node (no initializers; see the manifest's ``weights_in_constant_nodes``).

    python tools/zoo/train_paddle.py                  # both models
    python tools/zoo/train_paddle.py --only paddle_lcnet_mnist
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo_common as zc  # noqa: E402

OPSET = 17
BATCH = 64
# paddle2onnx's default optimize_tool "polygraphy" constant-folds the weights into initializers (and
# pip-installs its own dependencies at run time); "onnxoptimizer" keeps the converter's Constant nodes.
OPTIMIZE_TOOL = "onnxoptimizer"
SPECS: dict[str, dict] = {
    "paddle_lcnet_mnist": dict(data="mnist", seed=0, steps=1000, lr=3e-3),
    "paddle_lcnet_fashion": dict(data="fashion", seed=0, steps=1000, lr=3e-3),
}
ARCH_DOC = ("PP-LCNet-like: Conv 3x3 s2 16 + BN + HardSwish (14x14); depthwise 3x3 16 + BN + HardSwish; "
            "pointwise 32 + BN + HardSwish; depthwise 3x3 s2 32 (7x7) + BN + HardSwish; pointwise 64 + BN + "
            "HardSwish; GAP; Flatten; Linear.")


def build(n_out: int):
    import paddle.nn as nn

    def cbh(cin: int, cout: int, k: int, s: int = 1, groups: int = 1):
        return [nn.Conv2D(cin, cout, k, s, k // 2, groups=groups, bias_attr=False), nn.BatchNorm2D(cout),
                nn.Hardswish()]

    return nn.Sequential(*cbh(1, 16, 3, 2), *cbh(16, 16, 3, 1, 16), *cbh(16, 32, 1), *cbh(32, 32, 3, 2, 32),
                         *cbh(32, 64, 1), nn.AdaptiveAvgPool2D(1), nn.Flatten(), nn.Linear(64, n_out))


def train(spec: dict, x: np.ndarray, y: np.ndarray):
    import paddle
    import paddle.nn.functional as F
    zc.seed_python(spec["seed"])
    paddle.seed(spec["seed"])
    model = build(int(y.max()) + 1)
    sched = paddle.optimizer.lr.OneCycleLR(max_learning_rate=spec["lr"], total_steps=spec["steps"],
                                           phase_pct=0.15)
    opt = paddle.optimizer.Adam(learning_rate=sched, parameters=model.parameters())
    rng = np.random.default_rng(spec["seed"])
    t0 = time.time()
    model.train()
    for step in range(spec["steps"]):
        idx = rng.integers(0, len(y), BATCH)
        loss = F.cross_entropy(model(paddle.to_tensor(x[idx])), paddle.to_tensor(y[idx]))
        opt.clear_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 200 == 0:
            zc.log(f"  step {step + 1}/{spec['steps']} loss {float(loss):.4f}")
    model.eval()
    return model, time.time() - t0


def predict(model, x: np.ndarray, bs: int = 500) -> np.ndarray:
    import paddle
    with paddle.no_grad():
        return np.concatenate([model(paddle.to_tensor(x[i:i + bs])).numpy() for i in range(0, len(x), bs)])


def export(model, name: str) -> Path:
    import paddle
    import paddle2onnx
    path = zc.ZOO / f"{name}.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, name)
        spec = [paddle.static.InputSpec([None, 1, 28, 28], "float32", "image")]
        paddle.jit.save(paddle.jit.to_static(model, input_spec=spec, full_graph=True), prefix, input_spec=spec)
        model_file = prefix + (".json" if os.path.exists(prefix + ".json") else ".pdmodel")
        paddle2onnx.export(model_file, prefix + ".pdiparams", str(path), opset_version=OPSET,
                           auto_upgrade_opset=False, enable_onnx_checker=True, optimize_tool=OPTIMIZE_TOOL)
    if not path.is_file():
        raise RuntimeError(f"paddle2onnx wrote no {path}")
    rename_output(path, "logits")
    zc.fix_ir(path)
    return path


def rename_output(path: Path, new: str) -> None:
    """Give the single graph output a stable name (paddle2onnx names it after an internal variable)."""
    import onnx
    m = onnx.load(str(path))
    old = m.graph.output[0].name
    for node in m.graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    m.graph.output[0].name = new
    onnx.save(m, str(path))


def run(name: str) -> None:
    import paddle
    import paddle2onnx
    spec = SPECS[name]
    x, y = zc.load_split(spec["data"], "train")
    xt, yt = zc.load_split(spec["data"], "test")
    zc.log(f"{name}: training on {len(x)} samples, {spec['steps']} steps of {BATCH}")
    model, secs = train(spec, x, y)
    acc = float((predict(model, xt).argmax(1) == yt).mean())
    zc.log(f"{name}: paddle test accuracy {acc:.4f} ({secs:.0f}s)")
    export(model, name)
    ref_dir = zc.REPO / ".cache" / "zoo_ref"
    ref_dir.mkdir(parents=True, exist_ok=True)
    np.savez(ref_dir / f"{name}.npz", x=xt[:64], y=predict(model, xt[:64]))
    zc.update_manifest(name, {
        "file": f"zoo/{name}.onnx", "family": "paddle-lcnet", "arch": ARCH_DOC,
        "framework": f"paddlepaddle {paddle.__version__}",
        "exporter": f"paddle2onnx {paddle2onnx.__version__} (opset {OPSET}, optimize_tool={OPTIMIZE_TOOL}, from paddle.jit.save)",
        "task": spec["data"], "seed": spec["seed"], "data": zc.split_record(spec["data"]),
        "training": {"steps": spec["steps"], "batch": BATCH, "optimizer": "Adam, one-cycle LR",
                     "max_lr": spec["lr"], "loss": "cross-entropy",
                     "samples": "uniform with replacement from the train split", "threads": 1,
                     "seconds": round(secs, 1)},
        "framework_metric": {"accuracy": acc}, "fixed_batch": False,
    })


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", choices=sorted(SPECS))
    args = ap.parse_args(argv)
    import paddle
    paddle.set_device("cpu")
    for name in args.only or list(SPECS):
        run(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
