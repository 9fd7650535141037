"""Layer discovery: layers, counts, geometry, paths with channel effects, heads, groups, refusals."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import builders
from conftest import zoo_model
from onnx_zip import model_io
from onnx_zip.errors import ModelError
from onnx_zip.graph.canonicalize import canonicalize
from onnx_zip.graph.discover import discover_layers, require_supported_chain


def chain_of(model: onnx.ModelProto, **kwargs):
    return discover_layers(canonicalize(model, **kwargs), label="m")


def effects(layer) -> list[tuple[str, str]]:
    return [(s.op_type, s.effect) for s in layer.path]


def test_mlp_chain() -> None:
    chain = chain_of(builders.mlp([8, 6, 4, 3]))
    assert [lay.node for lay in chain.layers] == ["fc0", "fc1", "fc2"]
    assert [(lay.neurons, lay.inputs) for lay in chain.layers] == [(6, 8), (4, 6), (3, 4)]
    assert [lay.is_head for lay in chain.layers] == [False, False, True]
    assert chain.input == "x" and chain.outputs == ("y",)
    assert effects(chain.layers[0]) == [("Relu", "elementwise")]
    assert chain.layers[2].path == ()
    assert all(lay.kind == "dense" and lay.trans_b == 1 and lay.bias == f"{lay.node}.bias" for lay in chain.layers)
    assert chain.channel_groups == () and require_supported_chain(chain) is chain


def test_matmul_mlp_same_chain_as_gemm() -> None:
    chain = chain_of(builders.mlp([8, 6, 3], use_matmul=True, bias=False))
    assert [(lay.op_type, lay.neurons, lay.inputs, lay.bias) for lay in chain.layers] == [
        ("Gemm", 6, 8, None),
        ("Gemm", 3, 6, None),
    ]


@pytest.mark.parametrize("flatten", ["Flatten", "Reshape"])
def test_cnn_paths(flatten: str) -> None:
    chain = chain_of(builders.cnn(flatten=flatten))
    conv0, conv1, fc0, fc1 = chain.layers
    assert (conv0.kind, conv0.neurons, conv0.inputs) == ("conv", 4, 1)
    assert conv0.conv.kernel_shape == (3, 3) and conv0.conv.pads == (1, 1, 1, 1)
    assert conv0.conv.strides == (1, 1) and conv0.conv.dilations == (1, 1)
    assert conv0.conv.input_spatial == (12, 12) and conv1.conv.output_spatial == (4, 4)
    assert effects(conv0) == [("Relu", "elementwise"), ("MaxPool", "spatial")]
    assert effects(conv1) == [("Relu", "elementwise"), (flatten, "flatten")]
    assert conv1.path[-1].features_per_channel == 16
    assert fc0.inputs == 6 * 16 and fc1.is_head
    assert conv0.input == "x" and conv0.output == "conv0_out" and conv1.input == "pool0_out"


def test_unfolded_batchnorm_is_channel_params() -> None:
    chain = chain_of(builders.with_batchnorm(builders.cnn()), fold_batchnorm=False)
    step = chain.layers[0].path[0]
    assert step.effect == "channel_params"
    assert step.channel_params == tuple(f"bn_conv0.{k}" for k in ("scale", "B", "mean", "var"))
    folded = chain_of(builders.with_batchnorm(builders.cnn()))
    assert effects(folded.layers[0]) == [("Relu", "elementwise"), ("MaxPool", "spatial")]
    assert folded.layers[0].bias is not None


def _insert_after(model: onnx.ModelProto, tensor: str, nodes, inits=()) -> onnx.ModelProto:
    """Insert nodes reading ``tensor`` and writing ``tensor`` (renaming the original producer output)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        for i, name in enumerate(node.output):
            if name == tensor:
                node.output[i] = f"{tensor}_pre"
    position = next(i for i, n in enumerate(out.graph.node) if f"{tensor}_pre" in n.output) + 1
    all_nodes = list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(all_nodes[:position] + list(nodes) + all_nodes[position:])
    out.graph.initializer.extend(inits)
    onnx.checker.check_model(out)
    return out


def test_per_channel_and_scalar_mul() -> None:
    model = builders.cnn()
    scale = numpy_helper.from_array(np.linspace(0.5, 1.5, 4, dtype=np.float32).reshape(4, 1, 1), "chan_scale")
    half = numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half")
    model = _insert_after(
        model,
        "conv0_out",
        [
            helper.make_node("Mul", ["conv0_out_pre", "chan_scale"], ["scaled"], name="chan_mul"),
            helper.make_node("Mul", ["scaled", "half"], ["conv0_out"], name="scalar_mul"),
        ],
        [scale, half],
    )
    chain = chain_of(model)
    assert [(s.node, s.effect, s.channel_params) for s in chain.layers[0].path[:2]] == [
        ("chan_mul", "channel_params", ("chan_scale",)),
        ("scalar_mul", "elementwise", ()),
    ]


def test_unsupported_op_on_path_named() -> None:
    model = _insert_after(
        builders.cnn(), "relu0_out", [helper.make_node("LRN", ["relu0_out_pre"], ["relu0_out"], name="my_lrn", size=3)]
    )
    with pytest.raises(ModelError, match="'my_lrn' \\(LRN\\): after layer 'conv0'"):
        chain_of(model)


def test_branch_named() -> None:
    # conv0's output forks into Sigmoid and Tanh, summed again: not a gate x * f(x)
    model = _insert_after(
        builders.cnn(),
        "relu0_out",
        [
            helper.make_node("Sigmoid", ["relu0_out_pre"], ["sig"], name="sig"),
            helper.make_node("Tanh", ["relu0_out_pre"], ["tanh"], name="tanh"),
            helper.make_node("Add", ["tanh", "sig"], ["relu0_out"], name="sum"),
        ],
    )
    with pytest.raises(ModelError, match="branches.*'sig' \\(Sigmoid\\).*'tanh' \\(Tanh\\)"):
        chain_of(model)


def test_gate_is_a_path() -> None:
    # SiLU: x * sigmoid(x) forks conv0's output into Sigmoid and Mul: the gate is on the path
    model = _insert_after(
        builders.cnn(),
        "relu0_out",
        [
            helper.make_node("Sigmoid", ["relu0_out_pre"], ["sig"], name="sig"),
            helper.make_node("Mul", ["relu0_out_pre", "sig"], ["relu0_out"], name="silu_mul"),
        ],
    )
    steps = [(s.op_type, s.effect) for s in chain_of(model).hidden[0].path]
    assert ("Sigmoid", "elementwise") in steps and ("Mul", "residual") in steps


def test_residual_groups_and_plain_chain_refusal() -> None:
    chain = chain_of(builders.residual())
    assert [lay.node for lay in chain.layers] == ["stem", "conv_a", "conv_b", "fc"]
    assert chain.channel_groups == (("stem", "conv_b"),)
    assert chain.group_nodes == (("add",),)
    assert effects(chain.by_node("conv_b"))[:2] == [("Add", "residual"), ("Relu", "elementwise")]
    assert effects(chain.by_node("conv_b"))[-1] == ("Flatten", "flatten")
    # Each layer's sources: the layers whose channels reach its input (the Add sums stem and conv_b).
    assert [(lay.node, lay.sources) for lay in chain.layers] == [
        ("stem", ()),
        ("conv_a", ("stem",)),
        ("conv_b", ("conv_a",)),
        ("fc", ("stem", "conv_b")),
    ]
    assert require_supported_chain(chain) is chain
    assert chain.group_ops == (("Add",),)


def test_sources_carry_the_flatten_features() -> None:
    chain = chain_of(builders.cnn(seed=1, size=12, channels=(4, 6), hidden=16))
    fc0 = chain.by_node("fc0")
    assert fc0.sources == ("conv1",) and fc0.source_features == fc0.inputs // 6


def test_head_post_processing_and_branch_after_head() -> None:
    model = builders.mlp([6, 4, 3], output_name="logits")
    model.graph.node.extend(
        [
            helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
            helper.make_node("ArgMax", ["probabilities"], ["label"], name="argmax", axis=1, keepdims=0),
        ]
    )
    del model.graph.output[:]
    model.graph.output.extend(
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
        ]
    )
    head = chain_of(model).heads[0]
    assert head.node == "fc1"
    assert [(s.node, s.effect) for s in head.path] == [("softmax", "output")]  # stops at the fork


def test_hidden_output_exposed_refused() -> None:
    model = builders.mlp([6, 4, 3])
    model.graph.output.append(helper.make_tensor_value_info("relu0_out", TensorProto.FLOAT, ["N", 4]))
    with pytest.raises(ModelError, match="'relu0_out'.*graph output"):
        chain_of(model)


def test_rank3_matmul_bias_node() -> None:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
        for n, s in (("w0", (4, 5)), ("b0", (5,)), ("w1", (5, 2)))
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["m0"], name="mm0"),
        helper.make_node("Add", ["m0", "b0"], ["a0"], name="add0"),
        helper.make_node("Relu", ["a0"], ["r0"], name="relu0"),
        helper.make_node("MatMul", ["r0", "w1"], ["y"], name="mm1"),
    ]
    model = builders.make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 7, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 7, 2])],
        inits,
    )
    chain = chain_of(model)
    mm0 = chain.by_node("mm0")
    assert (mm0.op_type, mm0.neurons, mm0.inputs, mm0.bias, mm0.bias_node, mm0.output) == (
        "MatMul",
        5,
        4,
        "b0",
        "add0",
        "a0",
    )
    assert effects(mm0) == [("Relu", "elementwise")] and mm0.trans_b == 0


def test_to_dict_serialisable() -> None:
    import json

    chain = chain_of(builders.cnn())
    json.dumps([lay.to_dict() for lay in chain.layers])


EXPECTED = {
    "lenet300": [(300, 784), (100, 300), (10, 100)],
}


@pytest.mark.parametrize(
    "name",
    [
        "lenet300_mnist_s0",
        "lenet300_mnist_s1",
        "lenet5_mnist_s0",
        "lenet5_fashion",
        "lenet5_fashion_super4",
        "resnet_mnist",
        "mlp_mnist_sklearn_s0",
    ],
)
def test_zoo_discovery(zoo, name: str) -> None:
    entry = zoo_model(zoo, name)
    chain = discover_layers(canonicalize(model_io.load_model(entry["file"]), label=name), label=name)
    assert chain.layers[-1].is_head and sum(lay.is_head for lay in chain.layers) == 1
    assert chain.input == entry["input"]
    if entry.get("arch") in EXPECTED:
        assert [(lay.neurons, lay.inputs) for lay in chain.layers] == EXPECTED[entry["arch"]]
    if name.startswith("resnet"):
        assert chain.channel_groups
    else:
        assert chain.channel_groups == ()
    if chain.channel_groups:
        # Residual nets are not chains: every layer reads a tensor some earlier layer (or Add) wrote.
        def per_channel(layer):
            return max([1] + [s.features_per_channel for s in layer.path if s.effect == "flatten"])

        assert all(
            any(lay.inputs == other.neurons * per_channel(other) for other in chain.layers[: lay.index])
            for lay in chain.layers[1:]
        )
        return
    for before, after in zip(chain.layers, chain.layers[1:]):
        flat = [s.features_per_channel for s in before.path if s.effect == "flatten"]
        per = flat[0] if flat else 1
        assert after.inputs == before.neurons * per, (before.node, after.node)


@pytest.mark.parametrize("fold", [True, False])
def test_residual_with_batchnorm(fold: bool) -> None:
    chain = chain_of(builders.with_batchnorm(builders.residual()), fold_batchnorm=fold)
    assert chain.channel_groups == (("stem", "conv_b"),)
    first = effects(chain.by_node("conv_b"))[0]
    assert first == (("Add", "residual") if fold else ("BatchNormalization", "channel_params"))


def test_discovery_reads_a_graphsurgeon_graph_too() -> None:
    import onnx_graphsurgeon as gs

    canonical = canonicalize(builders.residual())
    graph = gs.import_onnx(canonical)
    assert discover_layers(graph, label="m") == discover_layers(canonical, label="m")
    assert len(graph.nodes) == len(canonical.graph.node)  # not modified
