"""Models of different depths, image sizes and input widths (mtz-method §7): the first ``m`` hidden layers are zipped (``m`` the
fewest); a deeper model's next layer becomes its head, so it and every layer after it stay
task-specific."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import builders
from conftest import run_cli
from onnx_zip.errors import ModelError
from onnx_zip.zipper.api import zip_models
from test_zip import initializers, run_model, with_initializers


def _deeper_equivalent(a, seed: int = 4):
    """``a`` = mlp [6, 10, 8, 3] → a 5-layer MLP computing the same function, hidden units permuted,
    with an extra identity layer (after a ReLU, relu(I·h) = h) before the head."""
    rng = np.random.default_rng(seed)
    w = initializers(a)
    p0, p1 = rng.permutation(10), rng.permutation(8)
    b = builders.mlp([6, 10, 8, 8, 3], seed=9)
    return with_initializers(b, {
        "fc0.weight": w["fc0.weight"][p0], "fc0.bias": w["fc0.bias"][p0],
        "fc1.weight": w["fc1.weight"][p1][:, p0], "fc1.bias": w["fc1.bias"][p1],
        "fc2.weight": np.eye(8, dtype=np.float32), "fc2.bias": np.zeros(8, np.float32),
        "fc3.weight": w["fc2.weight"][:, p1], "fc3.bias": w["fc2.bias"],
    }), (p0, p1)


def test_share_zero_reproduces_both_depths():
    a, b = builders.mlp([6, 10, 8, 3], seed=1), builders.mlp([6, 10, 8, 7, 5, 3], seed=2)
    x = builders.random_inputs(a, 40, seed=3)
    result = zip_models([a, b], [x, x], share=0.0)
    out = run_model(result.model, x)
    for model, got in zip((a, b), out):
        np.testing.assert_allclose(got, run_model(model, x)[0], rtol=0, atol=1e-6)
    assert [layer["layer"] for layer in result.report["layers"]] == ["layer1_dense", "layer2_dense"]


def test_a_deeper_permuted_equivalent_is_recovered_and_its_extra_layer_kept():
    a = builders.mlp([6, 10, 8, 3], seed=1)
    b, perms = _deeper_equivalent(a)
    calib = builders.random_inputs(a, 300, seed=1)
    result = zip_models([b, a], [calib, calib], names=["deep", "shallow"], share=1.0)
    for layer, perm in zip(result.report["layers"], perms):
        pairs = np.array(layer["pairs"])
        np.testing.assert_array_equal(perm[pairs[:, 0]], pairs[:, 1])
    x = builders.random_inputs(a, 30, seed=2)
    (y,) = run_model(a, x)
    deep, shallow = run_model(result.model, x)
    np.testing.assert_allclose(shallow, y, rtol=0, atol=1e-5)
    np.testing.assert_allclose(deep, y, rtol=0, atol=1e-5)
    names = {t.name for t in result.model.graph.initializer}
    assert {"deep/head/weight", "deep/fc3.weight", "shallow/head/weight"} <= names  # the extra layers, copied


def _one_conv(seed: int = 0):
    rng = np.random.default_rng(seed)
    inits = [
        builders._init("c.weight", rng.standard_normal((4, 1, 3, 3)) * 0.3), builders._init("c.bias", np.zeros(4)),
        builders._init("fc.weight", rng.standard_normal((10, 4)) * 0.3), builders._init("fc.bias", np.zeros(10)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "c.weight", "c.bias"], ["c_out"], name="c", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c_out"], ["r_out"], name="r"),
        helper.make_node("GlobalAveragePool", ["r_out"], ["g_out"], name="g"),
        helper.make_node("Flatten", ["g_out"], ["f_out"], name="f", axis=1),
        helper.make_node("Gemm", ["f_out", "fc.weight", "fc.bias"], ["y"], name="fc", transB=1),
    ]
    return builders.make_model(nodes, [builders._tensor("x", ["N", 1, 8, 8])], [builders._tensor("y", ["N", 10])], inits)


def test_a_skip_connection_across_the_cut_is_refused_with_the_layers_named():
    deep, shallow = builders.residual(seed=1), _one_conv()
    with pytest.raises(ModelError, match="reads stem directly"):
        zip_models([deep, shallow], None, pairing="l2")


def test_align_says_which_layers_are_zipped(tmp_path):
    paths = []
    for name, model in (("a", builders.mlp([6, 10, 8, 3], seed=1)), ("b", builders.mlp([6, 10, 8, 7, 3], seed=2))):
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(model.SerializeToString())
        paths.append(str(path))
    done = run_cli("align", *paths)
    assert done.returncode == 0, done.stderr
    assert "different depths (2, 3 hidden layers): the first 2 are zipped" in done.stdout
    assert "fc2 7<-8" in done.stdout and "head" in done.stdout


def test_convolutional_models_of_different_image_sizes_zip_with_separate_inputs():
    a, b = builders.residual(seed=1, size=8), builders.residual(seed=2, size=12)
    xa, xb = builders.random_inputs(a, 30, seed=3), builders.random_inputs(b, 30, seed=4)
    with pytest.raises(Exception, match="separate-inputs"):
        zip_models([a, b], [xa, xb], share=0.0)
    result = zip_models([a, b], [xa, xb], share=0.0, separate_inputs=True)
    out = run_model(result.model, {"a/x": xa["x"], "b/x": xb["x"]})
    np.testing.assert_allclose(out[0], run_model(a, xa)[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out[1], run_model(b, xb)[0], rtol=0, atol=1e-6)
    half = zip_models([a, b], [xa, xb], share=0.5, separate_inputs=True)
    assert [layer["shared"] for layer in half.report["layers"]] == [2, 2, 2]


def test_a_narrower_dense_input_gets_fictive_zero_weights_and_a_permuted_equivalent_is_recovered():
    a = builders.mlp([6, 10, 8, 3], seed=1)
    w = initializers(a)
    rng = np.random.default_rng(2)
    p0, p1 = rng.permutation(10), rng.permutation(8)
    b = with_initializers(builders.mlp([4, 10, 8, 3], seed=5), {  # a without its last two input features
        "fc0.weight": w["fc0.weight"][p0][:, :4], "fc0.bias": w["fc0.bias"][p0],
        "fc1.weight": w["fc1.weight"][p1][:, p0], "fc1.bias": w["fc1.bias"][p1],
        "fc2.weight": w["fc2.weight"][:, p1], "fc2.bias": w["fc2.bias"],
    })
    xa = builders.random_inputs(a, 300, seed=1)
    xa["x"][:, 4:] = 0.0  # a's extra features never vary: b computes the same function
    xb = {"x": np.ascontiguousarray(xa["x"][:, :4])}
    with pytest.raises(Exception, match="separate-inputs"):
        zip_models([a, b], [xa, xb], share=1.0)
    result = zip_models([a, b], [xa, xb], share=1.0, separate_inputs=True)
    for layer, perm in zip(result.report["layers"], (p0, p1)):
        pairs = np.array(layer["pairs"])
        np.testing.assert_array_equal(perm[pairs[:, 1]], pairs[:, 0])
    test = builders.random_inputs(a, 30, seed=7)
    test["x"][:, 4:] = 0.0
    (y,) = run_model(a, test)
    got = run_model(result.model, {"a/x": test["x"], "b/x": np.ascontiguousarray(test["x"][:, :4])})
    np.testing.assert_allclose(got[0], y, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[1], y, rtol=0, atol=1e-5)
    assert any(n.op_type == "Slice" and n.name == "b/layer1_dense/shared_weight_Slice" for n in result.model.graph.node)
    # At 0% each model is reproduced whatever its extra features hold.
    full = builders.random_inputs(a, 20, seed=8)
    zero = zip_models([a, b], [xa, xb], share=0.0, separate_inputs=True)
    out = run_model(zero.model, {"a/x": full["x"], "b/x": np.ascontiguousarray(full["x"][:, :4])})
    np.testing.assert_allclose(out[0], run_model(a, full)[0], rtol=0, atol=1e-6)


def test_first_convs_with_different_input_channels_are_refused():
    a = builders.cnn(seed=1, in_channels=1)
    b = builders.cnn(seed=2, in_channels=3)
    with pytest.raises(ModelError, match="input size differs"):
        zip_models([a, b], None, pairing="l2", separate_inputs=True)
