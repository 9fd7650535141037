"""Per-channel parameters between layers (a per-channel Mul, an unfolded BatchNormalization).

Before the op table, a per-channel Mul between two layers passed discovery and calibration, then
the rewrite refused it ("holds per-channel parameters", with a BatchNormalization hint). Now each
task's parameters are gathered to its channel blocks: the zip succeeds, share 0 reproduces every
task, and the task views (the layer-wise loop's single-model equivalents) carry the parameters in
the zipped order.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import builders
from onnx_zip import runtime
from onnx_zip.config import ZipConfig
from onnx_zip.pipeline import prepare, zip_models
from onnx_zip.zipper.views import task_views

ATOL = 1e-5


def with_channel_mul(
    model: onnx.ModelProto, tensor: str = "conv0_out", channels: int = 4, seed: int = 0
) -> onnx.ModelProto:
    """``model`` with ``tensor`` multiplied by one positive value per channel (shape (C, 1, 1))."""
    scale = np.random.default_rng(seed).uniform(0.5, 1.5, (channels, 1, 1)).astype(np.float32)
    mul = helper.make_node("Mul", [f"{tensor}_pre", "chan_scale"], [tensor], name="chan_mul")
    return inserted(model, tensor, mul, [numpy_helper.from_array(scale, "chan_scale")])


def with_layer_norm(model: onnx.ModelProto, tensor: str, channels: int, seed: int = 0) -> onnx.ModelProto:
    """``model`` with a LayerNormalization over the features of ``tensor`` ``(N, C)``."""
    rng = np.random.default_rng(seed)
    params = [numpy_helper.from_array(rng.uniform(0.5, 1.5, channels).astype(np.float32), "ln_scale"),
              numpy_helper.from_array(rng.uniform(-0.5, 0.5, channels).astype(np.float32), "ln_bias")]
    norm = helper.make_node("LayerNormalization", [f"{tensor}_pre", "ln_scale", "ln_bias"], [tensor], name="ln",
                            axis=-1)
    return inserted(model, tensor, norm, params)


def inserted(model: onnx.ModelProto, tensor: str, node: onnx.NodeProto, inits: list) -> onnx.ModelProto:
    """``model`` with ``node`` reading ``<tensor>_pre`` (the producer's renamed output) and writing ``tensor``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for existing in out.graph.node:
        for i, name in enumerate(existing.output):
            if name == tensor:
                existing.output[i] = f"{tensor}_pre"
    position = next(i for i, n in enumerate(out.graph.node) if f"{tensor}_pre" in n.output) + 1
    nodes = list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes[:position] + [node] + nodes[position:])
    out.graph.initializer.extend(inits)
    onnx.checker.check_model(out)
    return out


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return runtime.make_session(model).run(None, feeds)


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_per_channel_mul_between_layers_is_zipped(share: float) -> None:
    a = with_channel_mul(builders.cnn(seed=1), seed=1)
    b = with_channel_mul(builders.cnn(seed=2), seed=2)
    calib = [builders.random_inputs(a, 100, seed=1), builders.random_inputs(b, 100, seed=2)]
    result = zip_models([a, b], calib, share=share)  # 6652cf6: ModelError "holds per-channel parameters"
    x = builders.random_inputs(a, 8, seed=3)
    zipped = _run(result.model, x)
    if share == 0.0:
        for t, original in enumerate((a, b)):
            np.testing.assert_allclose(zipped[t], _run(original, x)[0], rtol=0, atol=ATOL)
    names = {t.name for t in result.model.graph.initializer}
    parts = (["shared"] if share else []) + (["specific"] if share < 1 else [])
    assert {f"{t}/layer1_conv/{part}/chan_scale" for t in "ab" for part in parts} <= names
    job = prepare([a, b], calib, config=ZipConfig.from_mapping({"share": share}))
    views = task_views(result.model, job.tasks, [p.canonical for p in job.prepared], result.layers)
    for t, view in enumerate(views):
        np.testing.assert_allclose(_run(view, x)[0], zipped[t], rtol=0, atol=ATOL)


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_unfolded_batchnorm_in_a_residual_net_is_zipped(share: float) -> None:
    a = builders.with_batchnorm(builders.residual(seed=1), seed=1)
    b = builders.with_batchnorm(builders.residual(seed=2), seed=2)
    calib = [builders.random_inputs(a, 100, seed=1), builders.random_inputs(b, 100, seed=2)]
    result = zip_models([a, b], calib, share=share, fold_batchnorm=False)
    assert any(n.op_type == "BatchNormalization" for n in result.model.graph.node)
    x = builders.random_inputs(a, 8, seed=3)
    zipped = _run(result.model, x)
    if share == 0.0:
        for t, original in enumerate((a, b)):
            np.testing.assert_allclose(zipped[t], _run(original, x)[0], rtol=0, atol=ATOL)
    job = prepare([a, b], calib, config=ZipConfig.from_mapping({"share": share, "fold_batchnorm": False}))
    views = task_views(result.model, job.tasks, [p.canonical for p in job.prepared], result.layers)
    for t, view in enumerate(views):
        np.testing.assert_allclose(_run(view, x)[0], zipped[t], rtol=0, atol=ATOL)


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_layer_norm_between_dense_layers_is_zipped_per_task(share: float) -> None:
    a = with_layer_norm(builders.mlp([8, 6, 4, 3], seed=1), "fc0_out", 6, seed=1)
    b = with_layer_norm(builders.mlp([8, 6, 4, 3], seed=2), "fc0_out", 6, seed=2)
    calib = [builders.random_inputs(a, 100, seed=1), builders.random_inputs(b, 100, seed=2)]
    result = zip_models([a, b], calib, share=share)
    x = builders.random_inputs(a, 8, seed=3)
    zipped = _run(result.model, x)
    if share == 0.0:
        for t, original in enumerate((a, b)):
            np.testing.assert_allclose(zipped[t], _run(original, x)[0], rtol=0, atol=ATOL)
    assert {"a/layer1_dense/all/ln_scale", "b/layer1_dense/all/ln_bias"} <= {
        t.name for t in result.model.graph.initializer
    }
    job = prepare([a, b], calib, config=ZipConfig.from_mapping({"share": share}))
    views = task_views(result.model, job.tasks, [p.canonical for p in job.prepared], result.layers)
    for t, view in enumerate(views):
        np.testing.assert_allclose(_run(view, x)[0], zipped[t], rtol=0, atol=ATOL)
