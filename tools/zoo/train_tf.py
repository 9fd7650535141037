#!/usr/bin/env python3
"""Train MLPs with LayerNorm in Keras (TensorFlow backend) and export them with tf2onnx (tf venv).

Model: Input (1, 28, 28) -> Flatten (784) -> Dense 128 -> LayerNormalization -> ReLU -> Dense 64 ->
LayerNormalization -> ReLU -> Dense classes. Input ``image`` (N, 1, 28, 28) — or (1, 1, 28, 28) for the
``_b1`` model, whose graph input has a fixed batch dimension of 1 — output ``logits``.

    python tools/zoo/train_tf.py                     # all Keras models
    python tools/zoo/train_tf.py --only keras_mlp_mnist_s0
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo_common as zc  # noqa: E402

OPSET = 17
BATCH = 64
SPECS: dict[str, dict] = {
    "keras_mlp_mnist_s0": dict(data="mnist", seed=0, epochs=8, lr=2e-3, fixed_batch=False),
    "keras_mlp_mnist_s1_b1": dict(data="mnist", seed=1, epochs=8, lr=2e-3, fixed_batch=True),
    "keras_mlp_fashion": dict(data="fashion", seed=0, epochs=5, lr=2e-3, fixed_batch=False),
}
ARCH_DOC = ("Keras MLP: Flatten (784) -> Dense 128 -> LayerNormalization -> ReLU -> Dense 64 -> "
            "LayerNormalization -> ReLU -> Dense (logits).")


def build(n_out: int):
    import keras
    inp = keras.Input(shape=(1, 28, 28), name="image")
    h = keras.layers.Flatten()(inp)
    for width in (128, 64):
        h = keras.layers.Dense(width)(h)
        h = keras.layers.LayerNormalization(epsilon=1e-5)(h)
        h = keras.layers.ReLU()(h)
    return keras.Model(inp, keras.layers.Dense(n_out)(h))


def train(spec: dict, x: np.ndarray, y: np.ndarray):
    import keras
    import tensorflow as tf
    keras.utils.set_random_seed(spec["seed"])
    model = build(int(y.max()) + 1)
    steps = spec["epochs"] * ((len(y) + BATCH - 1) // BATCH)
    lr = keras.optimizers.schedules.CosineDecay(spec["lr"], decay_steps=steps)
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    t0 = time.time()
    model.fit(x, y, batch_size=BATCH, epochs=spec["epochs"], shuffle=True, verbose=2)
    del tf
    return model, time.time() - t0, steps


def export(model, name: str, fixed_batch: bool) -> Path:
    import tensorflow as tf
    import tf2onnx
    path = zc.ZOO / f"{name}.onnx"
    sig = [tf.TensorSpec([1 if fixed_batch else None, 1, 28, 28], tf.float32, name="image")]

    @tf.function(input_signature=sig)
    def forward(image):
        return {"logits": model(image, training=False)}

    tf2onnx.convert.from_function(forward, input_signature=sig, opset=OPSET, output_path=str(path))
    rename_output(path, "logits")
    zc.fix_ir(path)
    return path


def rename_output(path: Path, new: str) -> None:
    """Give the single graph output a stable name (tf2onnx may name it after the TF tensor)."""
    import onnx
    m = onnx.load(str(path))
    old = m.graph.output[0].name
    if old == new:
        return
    for node in m.graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    m.graph.output[0].name = new
    onnx.save(m, str(path))


def run(name: str) -> None:
    import keras
    import tensorflow as tf
    import tf2onnx
    spec = SPECS[name]
    x, y = zc.load_split(spec["data"], "train")
    xt, yt = zc.load_split(spec["data"], "test")
    zc.log(f"{name}: training on {len(x)} samples, {spec['epochs']} epochs of batch {BATCH}")
    model, secs, steps = train(spec, x, y)
    out = model.predict(xt, batch_size=500, verbose=0)
    acc = float((out.argmax(1) == yt).mean())
    zc.log(f"{name}: keras test accuracy {acc:.4f} ({secs:.0f}s)")
    export(model, name, spec["fixed_batch"])
    ref_dir = zc.REPO / ".cache" / "zoo_ref"
    ref_dir.mkdir(parents=True, exist_ok=True)
    np.savez(ref_dir / f"{name}.npz", x=xt[:64], y=out[:64])
    zc.update_manifest(name, {
        "file": f"zoo/{name}.onnx", "family": "keras-mlp-layernorm", "arch": ARCH_DOC,
        "framework": f"tensorflow-cpu {tf.__version__}, keras {keras.__version__}",
        "exporter": f"tf2onnx {tf2onnx.__version__} (from_function, opset {OPSET})",
        "task": spec["data"], "seed": spec["seed"], "data": zc.split_record(spec["data"]),
        "training": {"steps": steps, "epochs": spec["epochs"], "batch": BATCH, "optimizer": "Adam, cosine decay",
                     "max_lr": spec["lr"], "loss": "cross-entropy", "samples": "shuffled epochs of the train split",
                     "threads": 1, "seconds": round(secs, 1)},
        "framework_metric": {"accuracy": acc}, "fixed_batch": spec["fixed_batch"],
    })


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", choices=sorted(SPECS))
    args = ap.parse_args(argv)
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()
    for name in args.only or list(SPECS):
        run(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
