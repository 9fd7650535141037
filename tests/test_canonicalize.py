"""Canonicalisation keeps outputs, normalises layers, and refuses what the tool cannot read."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import builders
from conftest import zoo_model
from onnx_zip import data as data_mod
from onnx_zip import model_io, runtime
from onnx_zip.errors import ModelError
from onnx_zip.graph.canonicalize import canonicalize

ZOO_NAMES = [
    "lenet300_mnist_s0", "lenet300_mnist_s1", "lenet5_mnist_s0", "lenet5_mnist_s1", "lenet5_fashion",
    "lenet5_fashion_super4", "resnet_mnist", "resnet_fashion", "mlp_mnist_sklearn_s0", "mlp_mnist_sklearn_s1",
]


def run_ref(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ReferenceEvaluator(model).run(None, feeds)


def assert_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, atol: float = 1e-6, seed: int = 0) -> None:
    feeds = builders.random_inputs(a, 7, seed)
    for x, y in zip(run_ref(a, feeds), run_ref(b, feeds)):
        np.testing.assert_allclose(y, x, atol=atol, rtol=1e-5)


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


@pytest.mark.parametrize(
    "model",
    [
        builders.mlp([8, 6, 4, 3]),
        builders.mlp([8, 6, 3], use_matmul=True),
        builders.mlp([8, 6, 3], bias=False, use_matmul=True),
        builders.cnn(),
        builders.cnn(flatten="Reshape"),
        builders.residual(),
        builders.with_constant_weights(builders.cnn()),
        builders.with_batchnorm(builders.cnn()),
        builders.with_batchnorm(builders.mlp([8, 6, 3]), ["fc0"]),
        builders.mlp([8, 6, 3], opset=13),
    ],
    ids=["mlp", "matmul", "matmul-nobias", "cnn", "cnn-reshape", "residual", "constants", "bn-conv", "bn-gemm",
         "opset13"],
)
def test_outputs_unchanged_and_valid(model: onnx.ModelProto) -> None:
    out = canonicalize(model)
    onnx.checker.check_model(out, full_check=True)
    assert_same_outputs(model, out)
    assert 17 <= model_io.default_opset(out) <= 21
    assert out.ir_version == model_io.IR_FOR_OPSET[model_io.default_opset(out)]
    names = [n.name for n in out.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert not {"Identity", "Dropout", "Constant", "BatchNormalization"} & set(ops(out))
    assert {v.name for v in out.graph.output} == {v.name for v in model.graph.output}


def test_deterministic_and_input_untouched() -> None:
    model = builders.with_batchnorm(builders.cnn())
    before = model.SerializeToString(deterministic=True)
    a = model_io.serialize(canonicalize(model))
    b = model_io.serialize(canonicalize(model))
    assert a == b
    assert model.SerializeToString(deterministic=True) == before


def test_intermediate_shapes_inferred() -> None:
    out = canonicalize(builders.cnn())
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in out.graph.value_info}
    assert shapes["conv1_out"] == ["N", 6, 4, 4]
    assert shapes["flat_out"] == ["N", 96]


def test_matmul_becomes_gemm_with_transposed_weight() -> None:
    model = builders.mlp([8, 6, 3], use_matmul=True)
    out = canonicalize(model)
    assert ops(out) == ["Gemm", "Relu", "Gemm"]
    gemm = out.graph.node[0]
    assert gemm.name == "fc0" and attrs(gemm) == {"transB": 1}
    np.testing.assert_array_equal(init(out, gemm.input[1]), init(model, "fc0.weight").T)
    assert init(out, gemm.input[2]).shape == (6,)


def test_rank3_matmul_stays_matmul_with_1d_bias() -> None:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.arange(3, dtype=np.float32).reshape(1, 1, 3), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"), helper.make_node("Add", ["m", "b"], ["y"], name="add")]
    model = builders.make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 3])], [w, b])
    out = canonicalize(model)
    assert ops(out) == ["MatMul", "Add"]
    assert init(out, "b").shape == (3,)
    assert_same_outputs(model, out)


def test_gemm_alpha_beta_transa_normalised() -> None:
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((3, 5)).astype(np.float32), "w")  # transB=0: (in, out)
    c = numpy_helper.from_array(rng.standard_normal((1, 5)).astype(np.float32), "c")
    node = helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="g", alpha=0.5, beta=2.0, transA=1)
    model = builders.make_model(
        [node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 5])], [w, c])
    out = canonicalize(model)
    gemm = next(n for n in out.graph.node if n.op_type == "Gemm")
    assert attrs(gemm) == {}
    assert init(out, gemm.input[2]).shape == (5,)
    assert ops(out) == ["Transpose", "Gemm"]
    assert_same_outputs(model, out)


def test_batchnorm_fold_formula() -> None:
    model = builders.with_batchnorm(builders.cnn(), ["conv0"])
    out = canonicalize(model)
    gamma, beta, mean, var = (init(model, f"bn_conv0.{k}").astype(np.float64) for k in ("scale", "B", "mean", "var"))
    sigma = np.sqrt(var + 1e-5)
    conv = out.graph.node[0]
    np.testing.assert_allclose(init(out, conv.input[1]), init(model, "conv0.weight") * (gamma / sigma)[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(init(out, conv.input[2]), (init(model, "conv0.bias") - mean) * gamma / sigma + beta, rtol=1e-6, atol=1e-7)
    kept = canonicalize(model, fold_batchnorm=False)
    assert "BatchNormalization" in ops(kept)
    assert_same_outputs(model, kept)


def test_auto_pad_resolved() -> None:
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", auto_pad="SAME_UPPER", strides=[2, 2])
    model = builders.make_model(
        [node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 7, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4, 4])], [w])
    out = canonicalize(model)
    a = attrs(out.graph.node[0])
    assert "auto_pad" not in a and a["kernel_shape"] == [3, 3] and a["strides"] == [2, 2] and a["dilations"] == [1, 1]
    assert a["pads"] == [1, 0, 1, 1]
    assert_same_outputs(model, out)


def test_identity_dropout_removed_and_names_filled() -> None:
    model = builders.mlp([6, 4, 3])
    graph = model.graph
    relu = next(n for n in graph.node if n.op_type == "Relu")
    relu.output[0] = "relu_raw"
    extra = [
        helper.make_node("Identity", ["relu_raw"], ["id_out"]),
        helper.make_node("Dropout", ["id_out"], ["relu0_out"]),
    ]
    last = graph.node[-1]
    last.output[0] = "pre_y"
    tail = helper.make_node("Identity", ["pre_y"], ["y"])
    for node in graph.node:
        node.name = ""
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes[:2] + extra + nodes[2:] + [tail])
    out = canonicalize(model)
    assert ops(out) == ["Gemm", "Relu", "Gemm"]
    assert [n.name for n in out.graph.node] == ["Gemm_0", "Relu_0", "Gemm_1"]
    assert out.graph.output[0].name == "y"
    assert_same_outputs(model, out)


def test_scalar_constants_and_initializer_inputs_lifted() -> None:
    """``value_float``/``value_ints`` Constant nodes become initializers; an initializer listed as a
    graph input (old exporters) is a constant only; a Constant feeding a graph output still works."""
    model = builders.mlp([4, 3, 2])
    model.graph.input.append(helper.make_tensor_value_info("fc0.weight", TensorProto.FLOAT, [3, 4]))
    model.graph.node.insert(0, helper.make_node("Constant", [], ["k"], name="k", value_float=2.0))
    model.graph.node.insert(0, helper.make_node("Constant", [], ["shape"], name="shape", value_ints=[-1, 2]))
    model.graph.node.extend([helper.make_node("Mul", ["y", "k"], ["scaled"], name="mul"),
                             helper.make_node("Reshape", ["scaled", "shape"], ["y2"], name="reshape")])
    model.graph.output[0].name = "y2"
    out = canonicalize(model)
    assert "Constant" not in ops(out) and [i.name for i in out.graph.input] == ["x"]
    assert init(out, "k") == np.float32(2.0) and init(out, "shape").tolist() == [-1, 2]
    x = builders.random_inputs(builders.mlp([4, 3, 2]), 5)
    expected = run_ref(builders.mlp([4, 3, 2]), x)[0] * 2
    np.testing.assert_allclose(runtime.make_session(out).run(None, x)[0], expected, rtol=0, atol=1e-6)


def test_duplicate_names_made_unique() -> None:
    model = builders.mlp([6, 4, 3])
    for node in model.graph.node:
        node.name = "same"
    names = [n.name for n in canonicalize(model).graph.node]
    assert names == ["same", "same_0", "same_1"]


def _single_node_model(node: onnx.NodeProto, inits=(), opset: int = 17, extra=()) -> onnx.ModelProto:
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra])
    model.ir_version = 8
    return model


def test_refuses_control_flow() -> None:
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    cond = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("If", ["cond"], ["y"], name="branchy", then_branch=then, else_branch=then)
    with pytest.raises(ModelError, match="'branchy'.*control flow"):
        canonicalize(_single_node_model(node, [cond]), label="cf")


def test_refuses_quantized() -> None:
    scale = numpy_helper.from_array(np.array(0.1, dtype=np.float32), "s")
    node = helper.make_node("QuantizeLinear", ["x", "s"], ["y"], name="q0")
    with pytest.raises(ModelError, match="'q0'.*quantized"):
        canonicalize(_single_node_model(node, [scale]), label="q")


def test_refuses_unknown_domain_and_new_opset_and_groups() -> None:
    node = helper.make_node("Fancy", ["x"], ["y"], name="custom", domain="com.vendor")
    with pytest.raises(ModelError, match="'custom'.*com.vendor"):
        canonicalize(_single_node_model(node, extra=[helper.make_opsetid("com.vendor", 1)]))
    with pytest.raises(ModelError, match="opset 23"):
        canonicalize(_single_node_model(helper.make_node("Relu", ["x"], ["y"]), opset=23))
    with pytest.raises(ModelError, match="opset 9"):
        canonicalize(_single_node_model(helper.make_node("Relu", ["x"], ["y"]), opset=9))
    w = numpy_helper.from_array(np.ones((4, 1, 3, 3), dtype=np.float32), "w")
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="dw", group=4, kernel_shape=[3, 3])
    model = builders.make_model([conv], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])],
                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 3, 3])], [w])
    with pytest.raises(ModelError, match="'dw'.*group=4"):
        canonicalize(model)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_outputs_unchanged(zoo, name: str) -> None:
    entry = zoo_model(zoo, name)
    model = model_io.load_model(entry["file"])
    out = canonicalize(model, label=name)
    dataset = data_mod.load_dataset(entry["data"]["test"], model).take(500)
    before = runtime.make_session(model, optimize=False).run(None, dataset.inputs)
    after = runtime.make_session(out, optimize=False).run(None, dataset.inputs)
    assert [o.name for o in out.graph.output] == [o.name for o in model.graph.output]
    for x, y in zip(before, after):
        if np.issubdtype(np.asarray(x).dtype, np.floating):
            np.testing.assert_allclose(y, x, atol=1e-5, rtol=1e-5)
        else:
            np.testing.assert_array_equal(y, x)


def test_sklearn_style_opset15_with_ml_postprocessing() -> None:
    """skl2onnx-like: MatMul/Add layers, Softmax → ArgMax → ai.onnx.ml ArrayFeatureExtractor → label."""
    model = builders.mlp([6, 5, 3], use_matmul=True, output_name="logits", opset=15)
    model.graph.initializer.extend([numpy_helper.from_array(np.array([0, 1, 2], dtype=np.int64), "classes"),
                                    numpy_helper.from_array(np.array([-1], dtype=np.int64), "shp")])
    model.graph.node.extend([
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["am"], name="argmax", axis=1),
        helper.make_node("ArrayFeatureExtractor", ["classes", "am"], ["lab"], name="afe", domain="ai.onnx.ml"),
        helper.make_node("Reshape", ["lab", "shp"], ["label"], name="reshape"),
    ])
    del model.graph.output[:]
    model.graph.output.extend([helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
                               helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])])
    model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 1))
    out = canonicalize(model)
    assert model_io.default_opset(out) == 17
    assert ops(out) == ["Gemm", "Relu", "Gemm", "Softmax", "ArgMax", "ArrayFeatureExtractor", "Reshape"]
    assert_same_outputs(model, out)
