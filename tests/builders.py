"""Tiny ONNX models with seeded weights, built with ``onnx.helper`` for the tests.

Every builder sets the opset and the matching ``ir_version`` explicitly (opset 17 → IR 8),
uses a dynamic batch dimension ``"N"`` and float32 tensors, and names every node and tensor
deterministically, so the same arguments give the same bytes.

Builders: :func:`mlp`, :func:`cnn`, :func:`residual`; transformers of a built model:
:func:`with_constant_weights`, :func:`with_batchnorm`; data: :func:`random_inputs`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_FOR_OPSET = {11: 6, 12: 7, 13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}
BATCH = "N"


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto],
    *,
    opset: int = 17,
    name: str = "test",
    extra_opsets: Sequence[tuple[str, int]] = (),
) -> onnx.ModelProto:
    """Wrap nodes into a checked model with an explicit opset and IR version."""
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    model = helper.make_model(graph, opset_imports=imports, producer_name="tests.builders")
    model.ir_version = IR_FOR_OPSET[opset]
    onnx.checker.check_model(model)
    return model


def _tensor(name: str, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name)


def _weights(rng: np.random.Generator, shape: Sequence[int], fan_in: int) -> np.ndarray:
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def mlp(
    sizes: Sequence[int],
    seed: int = 0,
    *,
    input_name: str = "x",
    output_name: str = "y",
    bias: bool = True,
    use_matmul: bool = False,
    opset: int = 17,
) -> onnx.ModelProto:
    """A fully connected net ``sizes[0] → sizes[1] → … → sizes[-1]`` with Relu between layers.

    Args:
        sizes: Features per layer, input first (at least two entries).
        seed: Weight seed.
        input_name, output_name: Graph input ``(N, sizes[0])`` and output ``(N, sizes[-1])``.
        bias: Give every layer a bias.
        use_matmul: ``MatMul(x, W (in, out)) [+ Add(b)]`` (skl2onnx style) instead of
            ``Gemm(transB=1, W (out, in))`` (torch style).
        opset: Default-domain opset.

    Nodes are named ``fc<i>`` (the layers), ``relu<i>``, ``bias<i>`` (the Adds of ``use_matmul``).
    """
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = input_name
    count = len(sizes) - 1
    for i in range(count):
        n_in, n_out = sizes[i], sizes[i + 1]
        w = _weights(rng, (n_out, n_in), n_in)
        b = (rng.standard_normal(n_out) * 0.1).astype(np.float32)
        out = output_name if i == count - 1 else f"fc{i}_out"
        if use_matmul:
            inits.append(_init(f"fc{i}.weight", w.T))
            mm_out = f"fc{i}_mm" if bias else out
            nodes.append(helper.make_node("MatMul", [current, f"fc{i}.weight"], [mm_out], name=f"fc{i}"))
            if bias:
                inits.append(_init(f"fc{i}.bias", b))
                nodes.append(helper.make_node("Add", [mm_out, f"fc{i}.bias"], [out], name=f"bias{i}"))
        else:
            inits.append(_init(f"fc{i}.weight", w))
            ins = [current, f"fc{i}.weight"]
            if bias:
                inits.append(_init(f"fc{i}.bias", b))
                ins.append(f"fc{i}.bias")
            nodes.append(helper.make_node("Gemm", ins, [out], name=f"fc{i}", transB=1))
        current = out
        if i < count - 1:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}_out"], name=f"relu{i}"))
            current = f"relu{i}_out"
    return make_model(
        nodes,
        [_tensor(input_name, [BATCH, sizes[0]])],
        [_tensor(output_name, [BATCH, sizes[-1]])],
        inits,
        opset=opset,
        name="mlp",
    )


def cnn(
    seed: int = 0,
    *,
    in_channels: int = 1,
    size: int = 12,
    channels: Sequence[int] = (4, 6),
    hidden: int = 16,
    classes: int = 10,
    input_name: str = "x",
    output_name: str = "y",
    flatten: str = "Flatten",
    opset: int = 17,
) -> onnx.ModelProto:
    """``conv0(3×3, pad 1) → Relu → MaxPool 2 → conv1(3×3) → Relu → Flatten → fc0 → Relu → fc1``.

    Args:
        seed: Weight seed.
        in_channels, size: Input ``(N, in_channels, size, size)`` (``size`` even, ≥ 6).
        channels: Output channels of conv0 and conv1.
        hidden: Units of the hidden Gemm ``fc0``.
        classes: Units of the head ``fc1``.
        flatten: ``"Flatten"`` or ``"Reshape"`` (to ``(N, -1)`` with ``shape = [0, -1]``).
        opset: Default-domain opset.

    conv1's output is ``(N, channels[1], size/2 - 2, size/2 - 2)``, so fc0 has
    ``channels[1]·(size/2 - 2)²`` inputs.
    """
    rng = np.random.default_rng(seed)
    c0, c1 = channels
    spatial = size // 2 - 2
    flat = c1 * spatial * spatial
    inits = [
        _init("conv0.weight", _weights(rng, (c0, in_channels, 3, 3), in_channels * 9)),
        _init("conv0.bias", rng.standard_normal(c0) * 0.1),
        _init("conv1.weight", _weights(rng, (c1, c0, 3, 3), c0 * 9)),
        _init("conv1.bias", rng.standard_normal(c1) * 0.1),
        _init("fc0.weight", _weights(rng, (hidden, flat), flat)),
        _init("fc0.bias", rng.standard_normal(hidden) * 0.1),
        _init("fc1.weight", _weights(rng, (classes, hidden), hidden)),
        _init("fc1.bias", rng.standard_normal(classes) * 0.1),
    ]
    nodes = [
        helper.make_node("Conv", [input_name, "conv0.weight", "conv0.bias"], ["conv0_out"], name="conv0",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv0_out"], ["relu0_out"], name="relu0"),
        helper.make_node("MaxPool", ["relu0_out"], ["pool0_out"], name="pool0", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool0_out", "conv1.weight", "conv1.bias"], ["conv1_out"], name="conv1",
                         kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv1_out"], ["relu1_out"], name="relu1"),
    ]
    if flatten == "Flatten":
        nodes.append(helper.make_node("Flatten", ["relu1_out"], ["flat_out"], name="flatten", axis=1))
    elif flatten == "Reshape":
        inits.append(numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "flat_shape"))
        nodes.append(helper.make_node("Reshape", ["relu1_out", "flat_shape"], ["flat_out"], name="flatten"))
    else:
        raise ValueError(f"flatten must be 'Flatten' or 'Reshape', got {flatten!r}")
    nodes += [
        helper.make_node("Gemm", ["flat_out", "fc0.weight", "fc0.bias"], ["fc0_out"], name="fc0", transB=1),
        helper.make_node("Relu", ["fc0_out"], ["relu2_out"], name="relu2"),
        helper.make_node("Gemm", ["relu2_out", "fc1.weight", "fc1.bias"], [output_name], name="fc1", transB=1),
    ]
    return make_model(
        nodes,
        [_tensor(input_name, [BATCH, in_channels, size, size])],
        [_tensor(output_name, [BATCH, classes])],
        inits,
        opset=opset,
        name="cnn",
    )


def residual(
    seed: int = 0,
    *,
    in_channels: int = 1,
    size: int = 8,
    channels: int = 4,
    classes: int = 10,
    input_name: str = "x",
    output_name: str = "y",
    opset: int = 17,
) -> onnx.ModelProto:
    """``stem → Relu → [conv_a → Relu → conv_b] + shortcut → Relu → GlobalAveragePool → Flatten → fc``.

    The residual ``Add`` (node ``add``) ties the channels of ``stem`` and ``conv_b``.
    """
    rng = np.random.default_rng(seed)
    c = channels
    inits = [
        _init("stem.weight", _weights(rng, (c, in_channels, 3, 3), in_channels * 9)),
        _init("stem.bias", rng.standard_normal(c) * 0.1),
        _init("conv_a.weight", _weights(rng, (c, c, 3, 3), c * 9)),
        _init("conv_a.bias", rng.standard_normal(c) * 0.1),
        _init("conv_b.weight", _weights(rng, (c, c, 3, 3), c * 9)),
        _init("conv_b.bias", rng.standard_normal(c) * 0.1),
        _init("fc.weight", _weights(rng, (classes, c), c)),
        _init("fc.bias", rng.standard_normal(classes) * 0.1),
    ]
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", [input_name, "stem.weight", "stem.bias"], ["stem_out"], name="stem", **conv),
        helper.make_node("Relu", ["stem_out"], ["relu0_out"], name="relu0"),
        helper.make_node("Conv", ["relu0_out", "conv_a.weight", "conv_a.bias"], ["conv_a_out"], name="conv_a", **conv),
        helper.make_node("Relu", ["conv_a_out"], ["relu1_out"], name="relu1"),
        helper.make_node("Conv", ["relu1_out", "conv_b.weight", "conv_b.bias"], ["conv_b_out"], name="conv_b", **conv),
        helper.make_node("Add", ["conv_b_out", "relu0_out"], ["add_out"], name="add"),
        helper.make_node("Relu", ["add_out"], ["relu2_out"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["relu2_out"], ["gap_out"], name="gap"),
        helper.make_node("Flatten", ["gap_out"], ["flat_out"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat_out", "fc.weight", "fc.bias"], [output_name], name="fc", transB=1),
    ]
    return make_model(
        nodes,
        [_tensor(input_name, [BATCH, in_channels, size, size])],
        [_tensor(output_name, [BATCH, classes])],
        inits,
        opset=opset,
        name="residual",
    )


def with_constant_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every float initializer moved into a ``Constant`` node (paddle2onnx style)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    constants = [
        helper.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t)
        for t in out.graph.initializer
        if t.data_type == TensorProto.FLOAT
    ]
    kept = [t for t in out.graph.initializer if t.data_type != TensorProto.FLOAT]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    nodes = list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(constants + nodes)
    onnx.checker.check_model(out)
    return out


def with_batchnorm(model: onnx.ModelProto, nodes: Sequence[str] | None = None, seed: int = 1) -> onnx.ModelProto:
    """A copy with an inference-mode BatchNormalization ``bn_<node>`` after each named layer.

    Args:
        model: A built model.
        nodes: Names of Conv/Gemm nodes to follow with a BN (default: every Conv).
        seed: Seed of the BN statistics (γ in [0.5, 1.5], β, μ normal, var in [0.5, 2]).
    """
    rng = np.random.default_rng(seed)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    targets = [n.name for n in graph.node if n.op_type == "Conv"] if nodes is None else list(nodes)
    new_nodes = []
    for node in graph.node:
        if node.name not in targets:
            new_nodes.append(node)
            continue
        weight = next(t for t in graph.initializer if t.name == node.input[1])
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        channels = weight.dims[0] if node.op_type == "Conv" or trans_b else weight.dims[1]
        stats = {
            "scale": rng.uniform(0.5, 1.5, channels),
            "B": rng.standard_normal(channels) * 0.1,
            "mean": rng.standard_normal(channels) * 0.1,
            "var": rng.uniform(0.5, 2.0, channels),
        }
        names = [f"bn_{node.name}.{k}" for k in stats]
        graph.initializer.extend(_init(n, v) for n, v in zip(names, stats.values()))
        original = node.output[0]
        node.output[0] = f"{original}_prebn"
        new_nodes.append(node)
        new_nodes.append(
            helper.make_node("BatchNormalization", [node.output[0], *names], [original], name=f"bn_{node.name}",
                             epsilon=1e-5)
        )
    del graph.node[:]
    graph.node.extend(new_nodes)
    onnx.checker.check_model(out)
    return out


def random_inputs(model: onnx.ModelProto, count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded float32 inputs for every graph input (dynamic dims set to ``count``)."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    arrays = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else count for d in value.type.tensor_type.shape.dim]
        arrays[value.name] = rng.standard_normal(dims).astype(np.float32)
    return arrays


def permuted_copy(model: onnx.ModelProto, seed: int = 7) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A copy of a *canonical* model (Conv / Gemm ``transB=1`` layers, BN folded) with the hidden
    neurons of every channel group permuted; its outputs are unchanged.

    Layers tied by residual Adds get one permutation; every other hidden layer its own. Returns the
    model and, per hidden layer node, ``p`` such that the copy's neuron ``j`` is the original's ``p[j]``.
    """
    from onnx_zip.graph.discover import discover_layers

    chain = discover_layers(model)
    rng = np.random.default_rng(seed)
    perms: dict[str, np.ndarray] = {}
    for layer in chain.hidden:
        group = chain.group_of(layer.node)
        if group[0] not in perms:
            perm = rng.permutation(layer.neurons)
            for node in group:
                perms[node] = perm
    values = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    for layer in chain.layers:
        if layer.op_type == "Gemm" and not layer.trans_b or layer.op_type == "MatMul":
            raise ValueError(f"permuted_copy handles Conv and Gemm transB=1, not {layer.node}")
        w = values[layer.weight]
        if not layer.is_head:
            w = w[perms[layer.node]]
            if layer.bias is not None:
                values[layer.bias] = values[layer.bias][perms[layer.node]]
        if layer.sources:
            p = perms[layer.sources[0]]
            f = layer.source_features
            w = w[:, (p[:, None] * f + np.arange(f)).ravel()]
        values[layer.weight] = w
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, t in enumerate(out.graph.initializer):
        out.graph.initializer[i].CopyFrom(numpy_helper.from_array(values[t.name].astype(np.float32), t.name))
    return out, perms
