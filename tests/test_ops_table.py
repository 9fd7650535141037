"""The op-semantics table, entry by entry: what discovery accepts between two layers, the rewrite
builds exactly.

For every (op, effect) the table declares, a tiny two-layer model puts that op between a hidden
layer and the head. Zipped with a neuron-permuted copy of itself (share 1.0, and 0.5 where
each task's channels split into a shared and a specific block) both tasks reproduce the original
(the permutation moves the op's per-channel parameters with the channels), and at share 0 both
reproduce themselves, within 1e-5. An op outside the table is refused at discovery,
naming the node. Adding a table entry without an example here fails :func:`test_every_entry_has_an_example`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import builders
from onnx_zip import runtime
from onnx_zip.errors import ModelError
from onnx_zip.graph import ops
from onnx_zip.graph.canonicalize import canonicalize
from onnx_zip.graph.discover import discover_layers
from onnx_zip.pipeline import zip_models

ATOL = 1e-5
C, N_OUT = 4, 5


def _f(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


def _i(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


#: An example: (nodes from tensor "h" to tensor "z", their initializers, layout, opset).
#: Layout "conv": x (N,3,6,6) → conv0 (4 ch) → h … z → conv1 1×1 (head); "flat": conv0 → h … z (N, F)
#: → fc head; "dense": x (N,8) → fc0 (4) → h … z → fc1 (head); "residual": conv0 → h, conv_a(h) → a,
#: then the example reads h and a.
Example = tuple[list[onnx.NodeProto], list[onnx.TensorProto], str, int]


def _unary(op: str, before: str | None = None, **attrs) -> Callable[[], Example]:
    def build() -> Example:
        nodes = []
        source = "h"
        if before:
            nodes.append(helper.make_node(before, ["h"], ["pre"], name="pre"))
            source = "pre"
        nodes.append(helper.make_node(op, [source], ["z"], name="op", **attrs))
        return nodes, [], "conv", 20 if op == "Gelu" else 18

    return build


def _with_consts(
    op: str, consts: list[onnx.TensorProto], layout: str = "conv", first: bool = False, **attrs
) -> Callable[[], Example]:
    def build() -> Example:
        names = [c.name for c in consts]
        inputs = [*names, "h"] if first else ["h", *names]
        return [helper.make_node(op, inputs, ["z"], name="op", **attrs)], list(consts), layout, 18

    return build


def _chain(layout: str, *nodes: onnx.NodeProto, inits: tuple = ()) -> Callable[[], Example]:
    return lambda: (list(nodes), list(inits), layout, 18)


CHANNEL = np.linspace(0.5, 1.5, C).reshape(C, 1, 1)
SCALAR = np.array(0.75)

EXAMPLES: dict[tuple[str, str], Callable[[], Example]] = {
    **{
        (op, "elementwise"): _unary(op)
        for op in (
            "Relu",
            "LeakyRelu",
            "Sigmoid",
            "Tanh",
            "Elu",
            "Selu",
            "Celu",
            "HardSigmoid",
            "HardSwish",
            "Softplus",
            "Softsign",
            "Mish",
            "Gelu",
            "Erf",
            "Abs",
            "Neg",
            "Exp",
            "Identity",
            "Dropout",
        )
    },
    ("ThresholdedRelu", "elementwise"): _unary("ThresholdedRelu", alpha=0.1),
    ("Cast", "elementwise"): _unary("Cast", to=TensorProto.FLOAT),
    **{(op, "elementwise"): _unary(op, before="Sigmoid") for op in ("Log", "Sqrt", "Reciprocal")},
    ("Clip", "elementwise"): _with_consts("Clip", [_f("lo", -0.5), _f("hi", 0.5)]),
    ("MaxPool", "spatial"): _unary("MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
    ("AveragePool", "spatial"): _unary("AveragePool", kernel_shape=[2, 2], strides=[2, 2]),
    ("LpPool", "spatial"): _unary("LpPool", kernel_shape=[2, 2], strides=[2, 2]),
    **{(op, "spatial"): _unary(op) for op in ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")},
    ("Pad", "spatial"): _with_consts("Pad", [_i("pads", [0, 0, 1, 1, 0, 0, 1, 1])]),
    ("Flatten", "flatten"): _chain("flat", helper.make_node("Flatten", ["h"], ["z"], name="op", axis=1)),
    ("Reshape", "flatten"): _chain(
        "flat", helper.make_node("Reshape", ["h", "shape"], ["z"], name="op"), inits=(_i("shape", [0, -1]),)
    ),
    ("Squeeze", "flatten"): _chain(
        "flat",
        helper.make_node("GlobalAveragePool", ["h"], ["g"], name="gap"),
        helper.make_node("Squeeze", ["g", "axes"], ["z"], name="op"),
        inits=(_i("axes", [2, 3]),),
    ),
    ("Flatten", "elementwise"): _chain("dense", helper.make_node("Flatten", ["h"], ["z"], name="op", axis=1)),
    ("Reshape", "elementwise"): _chain(
        "dense", helper.make_node("Reshape", ["h", "shape"], ["z"], name="op"), inits=(_i("shape", [-1, C]),)
    ),  # a fixed width: not copied per block
    ("BatchNormalization", "channel_params"): _chain(
        "conv",
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("BatchNormalization", ["r", "g", "b", "m", "v"], ["z"], name="op"),
        inits=(
            _f("g", np.linspace(0.5, 2, C)),
            _f("b", np.linspace(-1, 1, C)),
            _f("m", np.linspace(-0.2, 0.3, C)),
            _f("v", np.linspace(0.5, 1.5, C)),
        ),
    ),
    **{(op, "elementwise"): _with_consts(op, [_f("k", SCALAR)]) for op in ("Mul", "Add", "Sub", "Div")},
    **{(op, "channel_params"): _with_consts(op, [_f("k", CHANNEL)]) for op in ("Mul", "Add", "Sub", "Div")},
    ("PRelu", "elementwise"): _with_consts("PRelu", [_f("k", [0.2])]),
    ("PRelu", "channel_params"): _with_consts("PRelu", [_f("k", CHANNEL * 0.3)]),
    ("Add", "residual"): _chain("residual", helper.make_node("Add", ["a", "h"], ["z"], name="op")),
    ("Softmax", "channel_norm"): _unary("Softmax", axis=1),
    ("LogSoftmax", "channel_norm"): _unary("LogSoftmax", axis=1),
    ("LpNormalization", "channel_norm"): _unary("LpNormalization", axis=1, p=2),
    ("LayerNormalization", "channel_norm"): _with_consts(
        "LayerNormalization",
        [_f("ln_scale", np.linspace(0.5, 1.5, C)), _f("ln_bias", np.linspace(-0.3, 0.3, C))],
        layout="dense",
        axis=-1,
    ),
    ("Conv", "channel_params"): _with_consts(  # depthwise: each filter follows its channel
        "Conv",
        [_f("dw_w", np.linspace(-1, 1, C * 9).reshape(C, 1, 3, 3)), _f("dw_b", np.linspace(-0.2, 0.2, C))],
        group=C,
        kernel_shape=[3, 3],
        pads=[1, 1, 1, 1],
    ),
    ("Mul", "residual"): _chain(  # a gate x * f(x) (SiLU): both operands carry the same channels
        "conv",
        helper.make_node("Sigmoid", ["h"], ["s"], name="sig"),
        helper.make_node("Mul", ["h", "s"], ["z"], name="op"),
    ),
    ("Resize", "spatial"): _chain(
        "conv",
        helper.make_node("Resize", ["h", "", "scales"], ["z"], name="op", mode="nearest"),
        inits=(_f("scales", [1, 1, 2, 2]),),
    ),
}
#: Per-channel parameters on a dense layer's path (rank 2) and a constant first: same rules.
EXTRA: dict[str, Callable[[], Example]] = {
    "dense per-channel Mul": _with_consts("Mul", [_f("k", np.linspace(0.5, 1.5, C))], layout="dense"),
    "Mul constant first": _with_consts("Mul", [_f("k", CHANNEL)], first=True),
    "HardSwish as x * Clip(x + 3, 0, 6) / 6": _chain(
        "conv",
        helper.make_node("Add", ["h", "three"], ["a3"], name="add3"),
        helper.make_node("Clip", ["a3", "lo", "hi"], ["c"], name="clip"),
        helper.make_node("Div", ["c", "six"], ["d"], name="div6"),
        helper.make_node("Mul", ["h", "d"], ["z"], name="op"),
        inits=(_f("three", 3.0), _f("lo", 0.0), _f("hi", 6.0), _f("six", 6.0)),
    ),
    "depthwise Conv then BatchNormalization and HardSwish": _chain(
        "conv",
        helper.make_node("Conv", ["h", "dw_w"], ["d"], name="dw", group=C, kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["d", "g", "b", "m0", "v"], ["bn"], name="bn"),
        helper.make_node("HardSwish", ["bn"], ["z"], name="op"),
        inits=(
            _f("dw_w", np.linspace(-1, 1, C * 9).reshape(C, 1, 3, 3)),
            _f("g", np.linspace(0.5, 2, C)),
            _f("b", np.linspace(-1, 1, C)),
            _f("m0", np.linspace(-0.1, 0.1, C)),
            _f("v", np.ones(C)),
        ),
    ),
    "Mul then BatchNormalization": _chain(
        "conv",
        helper.make_node("Mul", ["h", "k"], ["m"], name="mul"),
        helper.make_node("Relu", ["m"], ["r"], name="relu"),
        helper.make_node("BatchNormalization", ["r", "g", "b", "m0", "v"], ["z"], name="op"),
        inits=(
            _f("k", CHANNEL),
            _f("g", np.linspace(0.5, 2, C)),
            _f("b", np.linspace(-1, 1, C)),
            _f("m0", np.zeros(C)),
            _f("v", np.ones(C)),
        ),
    ),
}


def _weights(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))


def build_model(example: Example, seed: int = 0) -> onnx.ModelProto:
    """The two-layer model around an example (see :data:`Example`)."""
    nodes, inits, layout, opset = example
    rng = np.random.default_rng(seed)
    dense = layout == "dense"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8] if dense else ["N", 3, 6, 6])
    if dense:
        front = [helper.make_node("Gemm", ["x", "w0", "b0"], ["h"], name="fc0", transB=1)]
        weights = [_f("w0", _weights(rng, C, 8)), _f("b0", rng.standard_normal(C) * 0.1)]
    else:
        front = [
            helper.make_node("Conv", ["x", "w0", "b0"], ["h"], name="conv0", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        ]
        weights = [_f("w0", _weights(rng, C, 3, 3, 3)), _f("b0", rng.standard_normal(C) * 0.1)]
    if layout == "residual":
        front.append(
            helper.make_node("Conv", ["h", "wa", "ba"], ["a"], name="conv_a", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        )
        weights += [_f("wa", _weights(rng, C, C, 3, 3)), _f("ba", rng.standard_normal(C) * 0.1)]
    if layout == "flat":
        head = helper.make_node("Gemm", ["z", "w1", "b1"], ["y"], name="head", transB=1)
        features = 1 if any(n.op_type == "GlobalAveragePool" for n in nodes) else 36
        weights += [_f("w1", _weights(rng, N_OUT, C * features)), _f("b1", rng.standard_normal(N_OUT) * 0.1)]
    elif dense:
        head = helper.make_node("Gemm", ["z", "w1", "b1"], ["y"], name="head", transB=1)
        weights += [_f("w1", _weights(rng, N_OUT, C)), _f("b1", rng.standard_normal(N_OUT) * 0.1)]
    else:
        head = helper.make_node("Conv", ["z", "w1", "b1"], ["y"], name="head", kernel_shape=[1, 1])
        weights += [_f("w1", _weights(rng, N_OUT, C, 1, 1)), _f("b1", rng.standard_normal(N_OUT) * 0.1)]
    y_shape = ["N", N_OUT] if layout in ("flat", "dense") else ["N", N_OUT, "H", "W"]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)
    return builders.make_model([*front, *nodes, head], [x], [y], [*weights, *inits], opset=opset)


def permuted(model: onnx.ModelProto, seed: int = 3) -> onnx.ModelProto:
    """The canonical model with every channel group's neurons permuted, and the per-channel
    parameters on the paths with them: the same function."""
    canonical = canonicalize(model)
    chain = discover_layers(canonical)
    rng = np.random.default_rng(seed)
    values = {t.name: numpy_helper.to_array(t).copy() for t in canonical.graph.initializer}
    perms: dict[str, np.ndarray] = {}
    for layer in chain.hidden:
        group = chain.group_of(layer.node)
        perm = perms.get(group[0], rng.permutation(layer.neurons))
        perms.update({node: perm for node in group})
    moved: set[str] = set()
    for layer in chain.layers:
        w = values[layer.weight]
        if not layer.is_head:
            p = perms[layer.node]
            w = w[p]
            if layer.bias is not None:
                values[layer.bias] = values[layer.bias][p]
            for param in {name for step in layer.path for name in step.channel_params} - moved:
                values[param] = ops.gather_channels(values[param], p)
                moved.add(param)
        if layer.sources:
            p, f = perms[layer.sources[0]], layer.source_features
            w = w[:, (p[:, None] * f + np.arange(f)).ravel()]
        values[layer.weight] = w
    out = onnx.ModelProto()
    out.CopyFrom(canonical)
    for i, t in enumerate(out.graph.initializer):
        out.graph.initializer[i].CopyFrom(numpy_helper.from_array(values[t.name], t.name))
    return out


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return runtime.make_session(model).run(None, {"x": x})


def _inputs(model: onnx.ModelProto, count: int, seed: int) -> np.ndarray:
    return builders.random_inputs(model, count, seed=seed)["x"]


def check_example(example: Example) -> None:
    a = build_model(example)
    b = permuted(a)
    x = _inputs(a, 16, seed=2)
    (y,) = _run(a, x)
    np.testing.assert_allclose(_run(b, x)[0], y, rtol=0, atol=ATOL)  # the copy is the same function
    calib = {"x": _inputs(a, 200, seed=1)}
    for share in (1.0, 0.5, 0.0):
        zipped = zip_models([a, b], [calib, calib], names=["a", "b"], share=share).model
        for out in _run(zipped, x):
            np.testing.assert_allclose(out, y, rtol=0, atol=ATOL)


def test_every_entry_has_an_example() -> None:
    declared = {(op, effect) for op, effects in ops.effects_table().items() for effect in effects}
    assert declared == set(EXAMPLES), (sorted(declared - set(EXAMPLES)), sorted(set(EXAMPLES) - declared))


@pytest.mark.parametrize("key", sorted(EXAMPLES), ids=lambda k: f"{k[0]}-{k[1]}")
def test_table_entry_is_rebuilt_exactly(key: tuple[str, str]) -> None:
    example = EXAMPLES[key]()
    op, effect = key
    chain = discover_layers(canonicalize(build_model(example)))
    steps = [(s.op_type, s.effect) for layer in chain.hidden for s in layer.path]
    if op not in ("Identity", "Dropout"):  # canonicalisation removes these before discovery
        assert (op, effect) in steps, steps
    check_example(example)


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_more_channel_parameter_layouts(name: str) -> None:
    check_example(EXTRA[name]())


@pytest.mark.parametrize("op", ["LRN", "Sin", "Round", "Hardmax"])
def test_op_outside_the_table_refused_naming_the_node(op: str) -> None:
    attrs = {"size": 3} if op == "LRN" else {}
    model = build_model(([helper.make_node(op, ["h"], ["z"], name="odd_node", **attrs)], [], "conv", 18))
    assert ops.rule_for(op) is None
    with pytest.raises(ModelError, match=f"node 'odd_node' \\({op}\\): after layer 'conv0'"):
        discover_layers(canonicalize(model))


def test_register_refuses_duplicates_and_unknown_effects() -> None:
    with pytest.raises(ValueError, match="already"):
        ops.register(ops.OpRule("Relu", ("elementwise",), ops.classify_elementwise, ops.rebuild_copy))
    with pytest.raises(ValueError, match="unknown path effects"):
        ops.register(ops.OpRule("NewOp", ("teleport",), ops.classify_elementwise, ops.rebuild_copy))
    assert "NewOp" not in ops.OP_RULES


def test_broken_invariants_of_the_rewrite_are_internal_errors() -> None:
    """A bug, not the user's input: exit 1 and "please report" (the CLI), never an InputError."""
    from onnx_zip.errors import InputError, InternalError  # noqa: PLC0415
    from onnx_zip.graph.layers import Layer, neuron_weights  # noqa: PLC0415
    from onnx_zip.zipper.graph_builder import GraphBuilder  # noqa: PLC0415

    emit = GraphBuilder()
    emit.constant("shared/fc0/weight", np.zeros((2, 2), np.float32))
    with pytest.raises(InternalError, match="created twice") as info:
        emit.constant("shared/fc0/weight", np.zeros((2, 2), np.float32))
    assert not isinstance(info.value, InputError)
    odd = Layer(0, "n", "Add", "dense", "w", None, 2, 2, "x", "y", False)
    with pytest.raises(InternalError, match="no weight layout for op Add"):
        neuron_weights(odd, np.zeros((2, 2)))
