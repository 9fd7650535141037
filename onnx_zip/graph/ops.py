"""The op-semantics table: per op type, how discovery classifies a node between two layers and how
the rewrite rebuilds it on channel blocks. One entry decides both, so what discovery accepts is
exactly what the rewrite can build (``tests/test_ops_table.py`` proves it entry by entry).

Between two zippable layers the zipped graph carries each task's channels as *blocks*:
``[shared (pair order) ; task-specific (ascending)]`` (see :mod:`onnx_zip.zipper.rewrite`). A node
on that path is rebuilt once per block (``rebuild``), reading the block instead of the whole
tensor. Its effect on the channel axis (:data:`~onnx_zip.graph.layers.PATH_EFFECTS`) says why that
is exact:

* ``elementwise`` / ``spatial``: the op acts on each channel alone (activations, scalar
  arithmetic, pools, spatial Pad): the node is copied per block with its constant inputs;
* ``channel_params``: the op holds one parameter per channel (BatchNormalization, per-channel
  Mul/Add/Sub/Div/PRelu): copied per block with each parameter gathered to the block's channels
  (``params[..., channels, ...]`` along the parameter's channel axis); the block becomes the task's
  own (the tasks' parameters differ even where their neurons are shared);
* ``flatten``: ``(N, C, H, W) → (N, C·H·W)``; flattening each block and concatenating equals
  flattening the concatenated channels (C-major), so each block gets ``Flatten(axis=1)``;
* ``residual``: a binary op between two activations carrying the same channel group (the residual
  Add) *ties* their channels: rebuilt block by block on the two operands (``inputs`` holds both);
* ``channel_norm``: an op across the channel axis (LayerNormalization of ``(N, C)``, Softmax /
  LogSoftmax / LpNormalization over the channels) is computed per task on all of its channels:
  the rewrite concatenates the task's blocks, rebuilds the node once (its per-channel parameters
  gathered to the task's zipped channel order) and splits the result back into blocks. It is
  exact because these ops commute with a permutation of the channels.

Entries added for issue 13: a depthwise Conv (``group == C``, weight ``(C, 1, KH, KW)``) is
``channel_params`` (each filter gathered with its channel, ``group`` set to the block's width);
Resize of the spatial axes is ``spatial``; a Mul of two same-shape activations (a gate ``x·f(x)``)
is a tie like the residual Add. Squeeze-excitation ``x·SE(x)`` broadcasts ``(N, C, 1, 1)`` and is
not (yet) a tie: partial zipping stops before it.

How to extend (Concat blocks, squeeze-excitation, normalisations): write a
``classify`` returning a :class:`~onnx_zip.graph.layers.PathStep` (or None to refuse) and a
``rebuild`` emitting the block's nodes through the :class:`Emitter`, then :func:`register` an
:class:`OpRule`. A new effect name is added to ``PATH_EFFECTS`` (and to :data:`TIE_EFFECTS` for a
binary op that ties two spaces, to :data:`WHOLE_TASK_EFFECTS` for an op that must see all of a
task's channels); the walker and the rewrite dispatch on the table only. Add an example of each
(op, effect) to ``tests/test_ops_table.py``: the test refuses entries without one. For example a
depthwise Conv (not a layer: ``discover._is_layer`` must then skip ``group > 1``) is an entry
``OpRule("Conv", ("channel_params",), classify_depthwise, rebuild_depthwise)`` (now in the table).

Post-processing after a head (the ``output`` effect) is not in the table: a head's output
channels are never permuted, so whatever follows is copied as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnx_graphsurgeon as gs
from numpy.typing import DTypeLike

from onnx_zip.errors import InternalError
from onnx_zip.graph.layers import PATH_EFFECTS, PathStep
from onnx_zip.graph.lookup import (
    activations,
    constant_values,
    consumers,
    is_constant,
    shape_of,
)

#: Effects of binary ops that tie the channel spaces of their two operands (one pairing).
TIE_EFFECTS = frozenset({"residual"})
#: Effects of ops that read all of a task's channels at once: the rewrite concatenates the task's
#: blocks, rebuilds the op once on them (``channels``: the task's zipped order) and splits it back.
WHOLE_TASK_EFFECTS = frozenset({"channel_norm"})


@dataclass(frozen=True)
class PathContext:
    """A node met on the path after a layer, as discovery sees it.

    Attributes:
        node: The node (in the canonical graph).
        tensor: The activation carrying the layer's channels into ``node``.
        channels: The layer's output channels (``N_out``).
        graph_outputs: Names of the graph's outputs.
    """

    node: gs.Node
    tensor: gs.Tensor
    channels: int
    graph_outputs: frozenset[str]


class Emitter(Protocol):
    """Where a rebuild writes: the rewrite's graph builder."""

    def constant(self, name: str, values: np.ndarray) -> gs.Constant: ...

    def variable(self, name: str, dtype: DTypeLike = ...) -> gs.Variable: ...

    def node(
        self, op: str, name: str, inputs: list, outputs: list, attrs: dict | None = None, doc: str = ""
    ) -> gs.Node: ...


@dataclass(frozen=True)
class BlockStep:
    """One path node to rebuild on one channel block.

    Attributes:
        emit: The graph builder.
        node: The original node (in the task's canonical graph).
        step: Its :class:`PathStep` from discovery.
        inputs: The block tensor (for a tie: the two operands' blocks, in the node's input order).
        channels: ``(units,)`` original channel index of each channel of the block (this task's).
        prefix: Name prefix of everything built, ``<owner>/<layer tag>/<part>``.
        position: The step's index on its run of the path (keeps constant names unique).
    """

    emit: Emitter
    node: gs.Node
    step: PathStep
    inputs: tuple[gs.Tensor, ...]
    channels: np.ndarray
    prefix: str
    position: int


Classify = Callable[[PathContext], "PathStep | None"]
Rebuild = Callable[[BlockStep], gs.Variable]


@dataclass(frozen=True)
class OpRule:
    """How one op type behaves between two layers.

    Attributes:
        op_type: ONNX op type (default domain).
        effects: The effects ``classify`` may return (each must be in ``PATH_EFFECTS``).
        classify: The node's :class:`PathStep`, or None when this node is not supported (e.g. a
            Mul by a full tensor): discovery then refuses it, naming the node.
        rebuild: Builds the node on one channel block and returns the block's new tensor.
    """

    op_type: str
    effects: tuple[str, ...]
    classify: Classify
    rebuild: Rebuild


OP_RULES: dict[str, OpRule] = {}


def register(rule: OpRule) -> OpRule:
    """Add ``rule`` to the table.

    Raises:
        ValueError: the op type is already in the table, or an effect is unknown.
    """
    if rule.op_type in OP_RULES:
        raise ValueError(f"op {rule.op_type} is already in the op-semantics table")
    unknown = [e for e in rule.effects if e not in PATH_EFFECTS or e == "output"]
    if unknown or not rule.effects:
        raise ValueError(f"op {rule.op_type}: unknown path effects {unknown}; known: {PATH_EFFECTS}")
    OP_RULES[rule.op_type] = rule
    return rule


def rule_for(op_type: str, domain: str = "") -> OpRule | None:
    """The table entry of an op, or None (unknown op or non-default domain)."""
    if domain not in ("", "ai.onnx"):
        return None
    return OP_RULES.get(op_type)


def classify(ctx: PathContext) -> PathStep | None:
    """The node's effect on the channels it carries, or None when the table does not support it."""
    rule = rule_for(ctx.node.op, ctx.node.domain or "")
    if rule is None or _has_extra_outputs(ctx):
        return None
    step = rule.classify(ctx)
    if step is not None and step.effect not in rule.effects:
        raise InternalError(f"op {rule.op_type} classified as {step.effect}, not one of its effects {rule.effects}")
    return step


def is_tie(node: gs.Node) -> bool:
    """True when the node ties the channels of two activations (a residual Add, a gate Mul of two
    same-shape tensors)."""
    rule = rule_for(node.op, node.domain or "")
    acts = activations(node)
    if rule is None or not TIE_EFFECTS & set(rule.effects) or len(acts) < 2:
        return False
    return node.op != "Mul" or _same_shapes(acts)


def rebuild(block: BlockStep) -> gs.Variable:
    """Build one path node on one block through its table entry."""
    rule = rule_for(block.node.op, block.node.domain or "")
    if rule is None:
        raise InternalError(f"node {block.step.node} ({block.step.op_type}) is not in the op table")
    return rule.rebuild(block)


# ---------------------------------------------------------------- classification helpers


def _has_extra_outputs(ctx: PathContext) -> bool:
    """True when a second output (MaxPool indices, Dropout mask...) is read or is a graph output."""
    return any(o.name and (consumers(o) or o.name in ctx.graph_outputs) for o in ctx.node.outputs[1:])


def _unary(ctx: PathContext) -> bool:
    """The node reads the path tensor as its only activation, first, and constants otherwise."""
    acts = activations(ctx.node)
    return len(acts) == 1 and ctx.node.inputs[0] is ctx.tensor


def _rank(ctx: PathContext) -> int | None:
    shape = shape_of(ctx.tensor)
    return None if shape is None else len(shape)


def channel_axis(rank: int) -> int:
    """The channel axis of an activation of this rank: 1 for ``(N, C, ...)``, the last for ``(N, C)``."""
    return 1 if rank > 2 else rank - 1


def per_channel(values_shape: tuple[int | None, ...], channels: int, rank: int | None) -> str:
    """``scalar``, ``channel`` or ``other`` for a constant broadcast against a tensor of ``rank``.

    ``channel``: right-aligned broadcasting puts the constant's one non-1 axis, of size
    ``channels``, on the tensor's channel axis.
    """
    size = int(np.prod([d or 0 for d in values_shape])) if values_shape else 1
    if size == 1:
        return "scalar"
    if size != channels or rank is None:
        return "other"
    non_one = [i for i, d in enumerate(values_shape) if d != 1]
    if len(non_one) == 1 and rank - len(values_shape) + non_one[0] == channel_axis(rank):
        return "channel"
    return "other"


def _step(ctx: PathContext, effect: str, **kwargs) -> PathStep:
    return PathStep(ctx.node.name, ctx.node.op, effect, **kwargs)


def classify_elementwise(ctx: PathContext) -> PathStep | None:
    """Channel-agnostic ops (activations): elementwise when every other input is a constant."""
    return _step(ctx, "elementwise") if _unary(ctx) else None


def classify_spatial(ctx: PathContext) -> PathStep | None:
    """Pools: per channel on the spatial axes."""
    return _step(ctx, "spatial") if _unary(ctx) else None


def classify_pad(ctx: PathContext) -> PathStep | None:
    """A Pad with constant pads that pads spatial axes only (no ``axes`` input)."""
    inputs = ctx.node.inputs
    pads = inputs[1] if len(inputs) > 1 else None
    axes = inputs[3] if len(inputs) > 3 else None
    if not _unary(ctx) or pads is None or not pads.name or (axes is not None and axes.name) or _rank(ctx) is None:
        return None
    values = constant_values(pads).reshape(2, -1)
    return None if values[:, :2].any() else _step(ctx, "spatial")


def _keeps_flat(node: gs.Node, shape: tuple[int | None, ...], out_shape: tuple[int | None, ...] | None) -> bool:
    """A Flatten(axis=1) of ``(N, C)``, or a Reshape whose output is ``(N, C)`` again (a Squeeze of
    ``(N, C)`` could drop the batch axis: refused)."""
    if node.op == "Flatten":
        return int(node.attrs.get("axis", 1)) == 1
    if node.op != "Reshape" or out_shape is None or len(out_shape) != 2:
        return False
    return out_shape[1] is not None and out_shape[1] == shape[1]


def classify_flatten(ctx: PathContext) -> PathStep | None:
    """Flatten(axis=1) / Reshape / Squeeze of ``(N, C, *S)`` to ``(N, C·prod(S))``; a Flatten or
    Reshape of a rank-2 tensor: elementwise."""
    shape = shape_of(ctx.tensor)
    rank = None if shape is None else len(shape)
    if not _unary(ctx):
        return None
    out_shape = shape_of(ctx.node.outputs[0])
    if shape is not None and rank == 2:
        return _step(ctx, "elementwise") if _keeps_flat(ctx.node, shape, out_shape) else None
    if shape is None or rank is None or out_shape is None or len(out_shape) != 2 or rank < 3:
        return None
    if ctx.node.op == "Flatten" and int(ctx.node.attrs.get("axis", 1)) != 1:
        return None
    spatial = shape[2:]
    if shape[1] is None or any(d is None for d in spatial):
        return None
    features = int(np.prod([int(d) for d in spatial if d is not None]))
    if out_shape[1] is not None and out_shape[1] != shape[1] * features:
        return None
    return _step(ctx, "flatten", features_per_channel=features)


def classify_batchnorm(ctx: PathContext) -> PathStep | None:
    """An inference-mode BatchNormalization with constant parameters: four per-channel parameters."""
    node = ctx.node
    if int(node.attrs.get("training_mode", 0)) or not _unary(ctx) or len(node.inputs) < 5:
        return None
    if not all(is_constant(t) for t in node.inputs[1:5]):
        return None
    return _step(ctx, "channel_params", channel_params=tuple(t.name for t in node.inputs[1:5]))


def _on_channel_axis(ctx: PathContext, default: int) -> bool:
    """The node's ``axis`` attribute names the channel axis of the path tensor."""
    rank = _rank(ctx)
    if rank is None:
        return False
    axis = int(ctx.node.attrs.get("axis", default))
    return (axis + rank if axis < 0 else axis) == channel_axis(rank)


def classify_channel_norm(ctx: PathContext) -> PathStep | None:
    """Softmax, LogSoftmax, LpNormalization over the channel axis (no parameters)."""
    return _step(ctx, "channel_norm") if _unary(ctx) and _on_channel_axis(ctx, -1) else None


def classify_layer_norm(ctx: PathContext) -> PathStep | None:
    """LayerNormalization of ``(N, C)`` over C with constant ``(C,)`` scale and bias."""
    node = ctx.node
    if not _unary(ctx) or _rank(ctx) != 2 or not _on_channel_axis(ctx, -1):
        return None
    params = [t for t in node.inputs[1:3] if t.name]
    if any(shape_of(t) != (ctx.channels,) for t in params):
        return None
    return _step(ctx, "channel_norm", channel_params=tuple(t.name for t in params))


def _same_shapes(acts: list[gs.Tensor]) -> bool:
    """Two activations of one known shape (a residual Add, a gate ``x * f(x)``): no broadcasting."""
    shapes = [shape_of(t) for t in acts]
    return len(acts) == 2 and shapes[0] is not None and shapes[0] == shapes[1]


def classify_arithmetic(ctx: PathContext) -> PathStep | None:
    """Mul/Add/Sub/Div/PRelu with one constant: scalar → elementwise, one value per channel →
    channel parameters; an Add of two activations → residual (ties their channels)."""
    node = ctx.node
    acts = activations(node)
    if node.op == "Add" and len(acts) >= 2:
        return _step(ctx, "residual")
    if node.op == "Mul" and len(acts) >= 2:  # a gate x * f(x); x * SE(x) broadcasts: not (yet) a tie
        return _step(ctx, "residual") if _same_shapes(acts) else None
    constants = [t for t in node.inputs if t.name and is_constant(t)]
    if len(constants) != 1 or len(acts) != 1:
        return None
    if node.op in ("Sub", "Div") and is_constant(node.inputs[0]):
        return None  # c - x, c / x: kept out of the table (refused) until someone needs them
    kind = per_channel(shape_of(constants[0]) or (), ctx.channels, _rank(ctx))
    if kind == "scalar":
        return _step(ctx, "elementwise")
    if kind == "channel":
        return _step(ctx, "channel_params", channel_params=(constants[0].name,))
    return None


def classify_depthwise(ctx: PathContext) -> PathStep | None:
    """A depthwise Conv (``group == C``, weight ``(C, 1, KH, KW)``, constant weight and bias): one
    filter per channel, so per-channel parameters (each filter follows its channel)."""
    node = ctx.node
    if not _unary(ctx) or len(node.inputs) < 2 or not is_constant(node.inputs[1]):
        return None
    weight = shape_of(node.inputs[1])
    if weight is None or len(weight) != 4 or weight[:2] != (ctx.channels, 1):
        return None
    if int(node.attrs.get("group", 1)) != ctx.channels or ctx.channels < 2:
        return None
    params = [t for t in node.inputs[1:3] if t.name]
    if not all(is_constant(t) for t in params):
        return None
    return _step(ctx, "channel_params", channel_params=tuple(t.name for t in params))


def _resize_keeps_channels(ctx: PathContext) -> bool:
    """Resize with constant scales of 1 on N and C (or constant sizes keeping N and C); the opset
    conversion of canonicalisation turns the older Upsample into a Resize."""
    node, shape = ctx.node, shape_of(ctx.tensor)
    if "axes" in node.attrs or shape is None or len(shape) < 3:
        return False
    named = [t for t in node.inputs[1:] if t.name]
    if not all(is_constant(t) for t in named):
        return False
    scales = node.inputs[2] if len(node.inputs) > 2 else None
    if scales is not None and scales.name and constant_values(scales).size:
        values = constant_values(scales)
        return values.size == len(shape) and bool(np.all(values[:2] == 1))
    sizes = node.inputs[3] if len(node.inputs) > 3 else None
    if sizes is None or not sizes.name:
        return False
    values = constant_values(sizes)
    return values.size == len(shape) and values[1] == ctx.channels and (shape[0] is None or values[0] == shape[0])


def classify_resize(ctx: PathContext) -> PathStep | None:
    """Resize of the spatial axes only: per channel."""
    return _step(ctx, "spatial") if _unary(ctx) and _resize_keeps_channels(ctx) else None


# ---------------------------------------------------------------- rebuild helpers


def gather_channels(values: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """A per-channel parameter restricted to ``channels`` (in that order), along its one non-1 axis.

    Args:
        values: ``(C,)`` or broadcast-shaped (``(C, 1, 1)``, ``(1, C)``...).
        channels: ``(units,)`` channel indices.
    """
    axes = [i for i, d in enumerate(values.shape) if d != 1]
    axis = axes[0] if axes else max(values.ndim - 1, 0)
    if values.ndim == 0:
        return values
    return np.ascontiguousarray(np.take(values, channels, axis=axis))


def channel_param_name(prefix: str, param: str) -> str:
    """Name of a per-channel parameter gathered to one block: ``<owner>/<tag>/<part>/<param>``."""
    return f"{prefix}/{param.lstrip('/')}"


def rebuild_copy(block: BlockStep) -> gs.Variable:
    """The node on the block: the path input replaced by the block, constants copied (parameters
    listed in ``step.channel_params`` gathered to the block's channels), input positions kept."""
    emit, node, step = block.emit, block.node, block.step
    op = step.op_type
    out = emit.variable(f"{block.prefix}/{op.lower()}")
    inputs: list[gs.Tensor] = []
    count = 0  # constants and empty inputs so far: names them as the path's i-th step's j-th constant
    for t in node.inputs:
        if t.name == "":
            inputs.append(gs.Variable.empty())
            count += 1
        elif is_constant(t):
            if t.name in step.channel_params:
                values = gather_channels(constant_values(t), block.channels)
                inputs.append(emit.constant(channel_param_name(block.prefix, t.name), values))
            else:
                name = f"{block.prefix}/{op.lower()}_{block.position}_{count}"
                inputs.append(emit.constant(name, constant_values(t)))
            count += 1
        elif not any(i is block.inputs[0] for i in inputs):
            inputs.append(block.inputs[0])
        else:
            raise InternalError(f"node {step.node}: input {t.name} is not a constant; cannot apply it per block")
    emit.node(op, f"{block.prefix}/{op}", inputs, [out], attrs=node.attrs)
    return out


def rebuild_flatten(block: BlockStep) -> gs.Variable:
    """``Flatten(axis=1)`` of the block: ``(N, C_b, *S) → (N, C_b·prod(S))``; of a rank-2 block (an
    ``elementwise`` Flatten/Reshape keeping ``(N, C)``) the identity, whatever the block's width."""
    out = block.emit.variable(f"{block.prefix}/{block.step.op_type.lower()}")
    block.emit.node("Flatten", f"{block.prefix}/Flatten", [block.inputs[0]], [out], attrs={"axis": 1})
    return out


def rebuild_arithmetic(block: BlockStep) -> gs.Variable:
    """A tie: the op on the two operands' blocks; otherwise the node copied on the block."""
    if block.step.effect not in TIE_EFFECTS:
        return rebuild_copy(block)
    op, effect = block.step.op_type, block.step.effect
    out = block.emit.variable(f"{block.prefix}/{op.lower()}")
    block.emit.node(
        op,
        f"{block.prefix}/{effect}_{op}",
        list(block.inputs),
        [out],
        doc=f"{effect} {op} {block.step.node}, on the {block.prefix.rsplit('/', 1)[-1]} channels",
    )
    return out


def rebuild_depthwise(block: BlockStep) -> gs.Variable:
    """A depthwise Conv on the block: its channels' filters and biases, ``group`` = the block's width."""
    emit, node = block.emit, block.node
    out = emit.variable(f"{block.prefix}/conv")
    inputs: list[gs.Tensor] = [block.inputs[0]]
    for t in node.inputs[1:3]:
        if t.name:
            values = np.ascontiguousarray(np.take(constant_values(t), block.channels, axis=0))
            inputs.append(emit.constant(channel_param_name(block.prefix, t.name), values))
    attrs = {**node.attrs, "group": len(block.channels)}
    emit.node("Conv", f"{block.prefix}/Conv", inputs, [out], attrs=attrs, doc=f"depthwise Conv {node.name}")
    return out


def rebuild_resize(block: BlockStep) -> gs.Variable:
    """Resize on the block; a constant ``sizes`` gets the block's width on the channel axis."""
    node = block.node
    sizes = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3].name else None
    if sizes is None:
        return rebuild_copy(block)
    emit = block.emit
    values = constant_values(sizes).copy()
    values[1] = len(block.channels)
    out = emit.variable(f"{block.prefix}/resize")
    name = f"{block.prefix}/resize_{block.position}"
    inputs = (
        [block.inputs[0]]
        + [
            gs.Variable.empty() if not t.name else emit.constant(f"{name}_{i}", constant_values(t))
            for i, t in enumerate(node.inputs[1:3], start=1)
        ]
        + [emit.constant(f"{name}_sizes", values)]
    )
    emit.node("Resize", f"{block.prefix}/Resize", inputs, [out], attrs=node.attrs)
    return out


# ---------------------------------------------------------------- the table

ELEMENTWISE_OPS = (
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "Elu", "Selu", "Celu", "HardSigmoid",
    "HardSwish", "Softplus", "Softsign", "Mish", "Gelu", "ThresholdedRelu", "Erf", "Abs", "Neg",
    "Exp", "Log", "Sqrt", "Reciprocal", "Identity", "Cast", "Dropout",
)  # fmt: skip
SPATIAL_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool")
FLATTEN_OPS = ("Flatten", "Reshape", "Squeeze")
ARITHMETIC_OPS = ("Mul", "Add", "Sub", "Div")


def _register_all(rules: Iterable[OpRule]) -> None:
    for rule in rules:
        register(rule)


_register_all(
    [OpRule(op, ("elementwise",), classify_elementwise, rebuild_copy) for op in ELEMENTWISE_OPS]
    + [OpRule(op, ("spatial",), classify_spatial, rebuild_copy) for op in SPATIAL_OPS]
    + [OpRule("Pad", ("spatial",), classify_pad, rebuild_copy)]
    + [OpRule(op, ("flatten", "elementwise"), classify_flatten, rebuild_flatten) for op in ("Flatten", "Reshape")]
    + [OpRule("Squeeze", ("flatten",), classify_flatten, rebuild_flatten)]
    + [OpRule("BatchNormalization", ("channel_params",), classify_batchnorm, rebuild_copy)]
    + [OpRule(op, ("elementwise", "channel_params"), classify_arithmetic, rebuild_copy) for op in ("Sub", "Div")]
    + [
        OpRule(op, ("elementwise", "channel_params", "residual"), classify_arithmetic, rebuild_arithmetic)
        for op in ("Add", "Mul")
    ]
    + [OpRule("PRelu", ("elementwise", "channel_params"), classify_arithmetic, rebuild_copy)]
    + [
        OpRule(op, ("channel_norm",), classify_channel_norm, rebuild_copy)
        for op in ("Softmax", "LogSoftmax", "LpNormalization")
    ]
    + [OpRule("LayerNormalization", ("channel_norm",), classify_layer_norm, rebuild_copy)]
    + [OpRule("Conv", ("channel_params",), classify_depthwise, rebuild_depthwise)]
    + [OpRule("Resize", ("spatial",), classify_resize, rebuild_resize)]
)


def effects_table() -> Mapping[str, tuple[str, ...]]:
    """Op type → the effects it may have between layers (for docs and the table test)."""
    return {op: rule.effects for op, rule in sorted(OP_RULES.items())}
