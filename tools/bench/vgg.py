"""Two VGG-16-shaped ONNX models with synthetic He-initialised weights (138 M parameters each)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CONV_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
FC_PLAN = (4096, 4096, 1000)


def build_vgg16(seed: int, *, size: int = 224, classes: int = 1000, width: float = 1.0):
    """VGG-16 (13 convs 3×3 + ReLU, 5 max-pools, Flatten, fc6/fc7 + ReLU, fc8) built with onnx.helper."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x, channels, spatial = "image", 3, size
    conv_i = 0
    block, sub = 1, 1
    for item in CONV_PLAN:
        if item == "M":
            out = f"pool{block}"
            nodes.append(helper.make_node("MaxPool", [x], [out], name=f"/pool{block}/MaxPool", kernel_shape=[2, 2],
                                          strides=[2, 2]))
            x, spatial, block, sub = out, spatial // 2, block + 1, 1
            continue
        n = max(1, int(item * width))
        name = f"conv{block}_{sub}"
        w = (rng.standard_normal((n, channels, 3, 3), dtype=np.float32) * np.float32(np.sqrt(2.0 / (channels * 9))))
        inits += [numpy_helper.from_array(w, f"{name}.weight"),
                  numpy_helper.from_array(np.zeros(n, np.float32), f"{name}.bias")]
        nodes.append(helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [f"{name}_out"],
                                      name=f"/{name}/Conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"{name}_out"], [f"{name}_relu"], name=f"/{name}/Relu"))
        x, channels, sub, conv_i = f"{name}_relu", n, sub + 1, conv_i + 1
    nodes.append(helper.make_node("Flatten", [x], ["flat"], name="/Flatten", axis=1))
    x, features = "flat", channels * spatial * spatial
    for i, units in enumerate(FC_PLAN):
        units = classes if i == len(FC_PLAN) - 1 else max(1, int(units * width))
        name = f"fc{6 + i}"
        w = rng.standard_normal((units, features), dtype=np.float32) * np.float32(np.sqrt(2.0 / features))
        inits += [numpy_helper.from_array(w, f"{name}.weight"),
                  numpy_helper.from_array(np.zeros(units, np.float32), f"{name}.bias")]
        out = "logits" if i == len(FC_PLAN) - 1 else f"{name}_out"
        nodes.append(helper.make_node("Gemm", [x, f"{name}.weight", f"{name}.bias"], [out], name=f"/{name}/Gemm",
                                      transB=1))
        if i < len(FC_PLAN) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"{name}_relu"], name=f"/{name}/Relu"))
            out = f"{name}_relu"
        x, features = out, units
    graph = helper.make_graph(
        nodes, f"vgg16_synthetic_{seed}",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnx_zip benchmark")
    model.ir_version = 8
    return model


def ensure_models(directory: Path, *, size: int = 224, width: float = 1.0) -> list[Path]:
    """Write (once) ``vgg16_a.onnx`` and ``vgg16_b.onnx`` into ``directory`` (a temp/cache dir, never committed)."""
    import onnx

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed, tag in ((1, "a"), (2, "b")):
        path = directory / f"vgg16_{tag}_{size}_{width:g}.onnx"
        if not path.exists():
            model = build_vgg16(seed, size=size, width=width)
            tmp = path.with_suffix(".tmp")
            onnx.save(model, str(tmp))
            tmp.replace(path)
        paths.append(path)
    return paths


def synthetic_images(count: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(100 + seed)
    return rng.standard_normal((count, 3, size, size), dtype=np.float32)
