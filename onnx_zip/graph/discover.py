"""Layer discovery: the ordered zippable layers of a canonical model and the paths between them.

A *layer* is a Conv (2-D, constant weight), a Gemm (constant B) or a MatMul (constant 2-D
second input) of a model returned by :func:`onnx_zip.graph.canonicalize.canonicalize`.
Layers are listed in topological order, hidden layers first. A *head* is a layer from
whose output no other layer is reachable; heads are never zipped.

Each layer's ``path`` lists the nodes from its output to the next layer's input, each with
its effect on the channel (neuron) axis (see ``PATH_EFFECTS`` in ``layers.py``):

* ``elementwise``: activations and other channel-agnostic ops (:data:`ELEMENTWISE_OPS`), a
  Mul/Add/Sub/Div/PRelu whose constant holds one value, a residual Add of two activations, a
  Flatten/Reshape/Squeeze of an already rank-2 tensor;
* ``spatial``: pools and a Pad that pads spatial axes only (:data:`SPATIAL_OPS`);
* ``flatten``: Flatten(axis=1), Reshape to ``(N, C·H·W)`` or Squeeze to ``(N, C)`` of a
  ``(N, C, H, W)`` tensor: channel c becomes features ``[c·H·W, (c+1)·H·W)``;
* ``channel_params``: an unfolded BatchNormalization, or a Mul/Add/Sub/Div/PRelu whose constant
  holds one value per channel (the initializer names are listed);
* ``output``: for heads only, every node of the single-consumer chain after the head (Softmax,
  ArgMax, Cast, ai.onnx.ml ops...). At a branch after a head (skl2onnx: probabilities and label
  both computed from the Softmax) the head's path stops; the remaining post-processing nodes are
  left untouched, which is safe because a head's output channels are never permuted.

Residual Adds (two activation inputs) and Concats tie the channels of several layers: they are
reported as ``channel_groups`` (layers) and ``group_nodes`` (the Add/Concat nodes). A hidden
layer's path stops where its output forks into layers and such tying nodes. Any other fork, an
op with no known channel effect, or a hidden activation that is also a graph output raises a
:class:`ModelError` naming the nodes. :func:`require_plain_chain` refuses channel groups (the
rewrite supports plain chains only).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_zip.errors import ModelError
from onnx_zip.graph.layers import ConvGeometry, Layer, LayerChain, PathStep

logger = logging.getLogger(__name__)

ELEMENTWISE_OPS = frozenset(
    {
        "Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Clip", "Elu", "Selu", "Celu", "HardSigmoid",
        "HardSwish", "Softplus", "Softsign", "Mish", "Gelu", "ThresholdedRelu", "Erf", "Abs", "Neg",
        "Exp", "Log", "Sqrt", "Reciprocal", "Identity", "Cast", "Dropout",
    }
)
SPATIAL_OPS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"})
ARITHMETIC_OPS = frozenset({"Mul", "Add", "Sub", "Div"})
FLATTEN_OPS = frozenset({"Flatten", "Reshape", "Squeeze"})
TYING_OPS = frozenset({"Add", "Concat"})


class _Graph:
    """Read-only index of a canonical graph: producers, consumers, constants, shapes."""

    def __init__(self, model: onnx.ModelProto, label: str) -> None:
        graph = model.graph
        self.label = label
        self.nodes = list(graph.node)
        self.constants = {t.name: t for t in graph.initializer}
        for node in self.nodes:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        self.constants[node.output[0]] = attr.t
        self.inputs = [v.name for v in graph.input if v.name not in self.constants]
        self.outputs = [v.name for v in graph.output]
        self.node_by_name = {node.name: node for node in self.nodes}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for name in node.output:
                if name:
                    self.producer[name] = node
            for name in node.input:
                if name and node not in self.consumers[name]:
                    self.consumers[name].append(node)
        self.shapes: dict[str, tuple[int | None, ...]] = {}
        for value in list(graph.value_info) + list(graph.input) + list(graph.output):
            tensor_type = value.type.tensor_type
            if tensor_type.HasField("shape"):
                self.shapes[value.name] = tuple(
                    int(d.dim_value) if d.HasField("dim_value") else None for d in tensor_type.shape.dim
                )
        for name, tensor in self.constants.items():
            self.shapes[name] = tuple(int(d) for d in tensor.dims)
        self._arrays: dict[str, np.ndarray] = {}

    def is_const(self, name: str) -> bool:
        return name in self.constants

    def array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = numpy_helper.to_array(self.constants[name])
        return self._arrays[name]

    def activations(self, node: onnx.NodeProto) -> list[str]:
        """The node's non-empty, non-constant inputs."""
        return [n for n in node.input if n and not self.is_const(n)]


def _attr(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _is_layer(g: _Graph, node: onnx.NodeProto) -> bool:
    if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
        return False
    if not g.is_const(node.input[1]) or g.is_const(node.input[0]):
        return False
    if node.op_type == "MatMul":
        return len(g.constants[node.input[1]].dims) == 2
    return True


def _spatial(shape: tuple[int | None, ...] | None) -> tuple[int, ...] | None:
    if shape is None or len(shape) < 3 or any(d is None for d in shape[2:]):
        return None
    return tuple(int(d) for d in shape[2:])


def _matmul_bias(g: _Graph, node: onnx.NodeProto, n_out: int) -> onnx.NodeProto | None:
    out = node.output[0]
    readers = g.consumers.get(out, [])
    if out in g.outputs or len(readers) != 1 or readers[0].op_type != "Add":
        return None
    add = readers[0]
    others = [n for n in add.input if n != out]
    if len(others) != 1 or not g.is_const(others[0]):
        return None
    return add if g.shapes[others[0]] == (n_out,) else None


def _make_layer(g: _Graph, node: onnx.NodeProto, index: int) -> Layer:
    weight = node.input[1]
    shape = g.shapes[weight]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is not None and not g.is_const(bias):
        raise ModelError(f"{g.label}: layer {node.name!r} has a computed bias {bias!r}; a constant is needed")
    geometry = None
    trans_b = 1
    bias_node = None
    output = node.output[0]
    if node.op_type == "Conv":
        if len(shape) != 4:
            raise ModelError(
                f"{g.label}: Conv {node.name!r} is a {len(shape) - 2}-D convolution; onnx_zip zips 2-D convolutions only"
            )
        neurons, inputs, kind = shape[0], shape[1], "conv"
        geometry = ConvGeometry(
            kernel_shape=tuple(int(k) for k in _attr(node, "kernel_shape", shape[2:])),
            strides=tuple(int(s) for s in _attr(node, "strides", (1, 1))),
            pads=tuple(int(p) for p in _attr(node, "pads", (0, 0, 0, 0))),
            dilations=tuple(int(d) for d in _attr(node, "dilations", (1, 1))),
            input_spatial=_spatial(g.shapes.get(node.input[0])),
            output_spatial=_spatial(g.shapes.get(node.output[0])),
        )
    elif node.op_type == "Gemm":
        trans_b = int(_attr(node, "transB", 0))
        neurons, inputs = (shape[0], shape[1]) if trans_b else (shape[1], shape[0])
        kind = "dense"
    else:
        inputs, neurons, kind, trans_b = shape[0], shape[1], "dense", 0
        add = _matmul_bias(g, node, neurons)
        if add is not None:
            bias_node = add.name
            bias = next(n for n in add.input if n != node.output[0])
            output = add.output[0]
    return Layer(
        index=index,
        node=node.name,
        op_type=node.op_type,
        kind=kind,
        weight=weight,
        bias=bias,
        neurons=int(neurons),
        inputs=int(inputs),
        input=node.input[0],
        output=output,
        is_head=False,
        conv=geometry,
        trans_b=trans_b,
        bias_node=bias_node,
    )


def _is_tying(g: _Graph, node: onnx.NodeProto) -> bool:
    return node.op_type in TYING_OPS and len(g.activations(node)) >= 2


def _per_channel(g: _Graph, name: str, channels: int, rank: int | None) -> str:
    """'scalar', 'channel' or 'other' for a constant broadcast against a tensor of the given rank."""
    shape = g.shapes[name]
    size = int(np.prod(shape)) if shape else 1
    if size == 1:
        return "scalar"
    if size != channels or rank is None:
        return "other"
    channel_axis = 1 if rank > 2 else rank - 1
    # right-aligned broadcasting: the constant's non-1 axis must land on the channel axis
    non_one = [i for i, d in enumerate(shape) if d != 1]
    if len(non_one) == 1 and rank - len(shape) + non_one[0] == channel_axis:
        return "channel"
    return "other"


def _step(g: _Graph, node: onnx.NodeProto, tensor: str, channels: int) -> PathStep | None:
    """The channel effect of ``node`` reading activation ``tensor``; None when unknown."""
    op = node.op_type
    shape = g.shapes.get(tensor)
    rank = None if shape is None else len(shape)
    extra_outputs = [o for o in node.output[1:] if o and (g.consumers.get(o) or o in g.outputs)]
    if extra_outputs:
        return None
    if op in ELEMENTWISE_OPS and op != "PRelu":
        return PathStep(node.name, op, "elementwise")
    if op in SPATIAL_OPS:
        return PathStep(node.name, op, "spatial")
    if op == "Pad":
        pads = node.input[1] if len(node.input) > 1 else ""
        axes = node.input[3] if len(node.input) > 3 else ""
        if pads and g.is_const(pads) and not axes and rank is not None:
            values = g.array(pads).reshape(2, -1)
            if not values[:, :2].any():
                return PathStep(node.name, op, "spatial")
        return None
    if op in FLATTEN_OPS:
        out_shape = g.shapes.get(node.output[0])
        if rank == 2:
            return PathStep(node.name, op, "elementwise")
        if rank is None or out_shape is None or len(out_shape) != 2 or rank < 3:
            return None
        if op == "Flatten" and int(_attr(node, "axis", 1)) != 1:
            return None
        spatial = shape[2:]
        if shape[1] is None or any(d is None for d in spatial):
            return None
        per_channel = int(np.prod(spatial))
        if out_shape[1] is not None and out_shape[1] != shape[1] * per_channel:
            return None
        return PathStep(node.name, op, "flatten", features_per_channel=per_channel)
    if op == "BatchNormalization":
        if int(_attr(node, "training_mode", 0)) or not all(g.is_const(n) for n in node.input[1:5]):
            return None
        return PathStep(node.name, op, "channel_params", channel_params=tuple(node.input[1:5]))
    if op in ARITHMETIC_OPS or op == "PRelu":
        constants = [n for n in node.input if n and g.is_const(n)]
        if len(constants) != 1 or len(g.activations(node)) != 1:
            return None
        if op in ("Sub", "Div") and g.is_const(node.input[0]):
            return None  # c - x, c / x: still elementwise per channel, but keep it simple
        kind = _per_channel(g, constants[0], channels, rank)
        if kind == "scalar":
            return PathStep(node.name, op, "elementwise")
        if kind == "channel":
            return PathStep(node.name, op, "channel_params", channel_params=(constants[0],))
    return None


def _walk(g: _Graph, layer: Layer, layer_nodes: set[str], is_head: bool) -> tuple[PathStep, ...]:
    steps: list[PathStep] = []
    tensor = layer.output
    while True:
        readers = g.consumers.get(tensor, [])
        if not readers:
            break
        if is_head:
            if len(readers) != 1 or tensor in g.outputs:
                break  # post-processing branch after a head: left as it is
            node = readers[0]
            steps.append(PathStep(node.name, node.op_type, "output"))
            outputs = [o for o in node.output if o]
            if len(outputs) != 1:
                break
            tensor = outputs[0]
            continue
        if tensor in g.outputs:
            raise ModelError(
                f"{g.label}: tensor {tensor!r} after hidden layer {layer.node!r} is a graph output and also "
                f"feeds {', '.join(repr(r.name) for r in readers)}",
                hint="zipping would change that output; remove the extra output before zipping",
            )
        if len(readers) > 1:
            if all(r.name in layer_nodes or _is_tying(g, r) for r in readers):
                break  # a fork into layers and residual Adds/Concats: see channel_groups
            raise ModelError(
                f"{g.label}: the output of layer {layer.node!r} branches at tensor {tensor!r} into "
                f"{', '.join(f'{r.name!r} ({r.op_type})' for r in readers)}; onnx_zip follows chains of "
                "single-consumer nodes between layers",
                hint="only residual Adds/Concats may share a layer's output with other layers",
            )
        node = readers[0]
        if node.name in layer_nodes:
            break
        if node.op_type == "Concat" and _is_tying(g, node):
            break
        if node.op_type == "Add" and _is_tying(g, node):
            steps.append(PathStep(node.name, node.op_type, "residual"))
        else:
            if node.domain not in ("", "ai.onnx"):
                step = None
            else:
                step = _step(g, node, tensor, layer.neurons)
            if step is None:
                raise ModelError(
                    f"{g.label}: node {node.name!r} ({node.op_type}) after layer {layer.node!r} has no known "
                    f"effect on the channel axis of {tensor!r}",
                    hint="supported between layers: activations, pools, Flatten/Reshape to (N, -1), spatial Pad, "
                    "BatchNormalization, per-channel or scalar Mul/Add/Sub/Div",
                )
            steps.append(step)
        tensor = node.output[0]
    return tuple(steps)


def _downstream_layers(g: _Graph, start: str, layer_nodes: set[str]) -> bool:
    seen: set[str] = set()
    stack = [start]
    while stack:
        tensor = stack.pop()
        for node in g.consumers.get(tensor, []):
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.name in layer_nodes:
                return True
            stack.extend(o for o in node.output if o)
    return False


def _reaching_layers(
    g: _Graph, tensor: str, layer_by_output: dict[str, str], tying: set[str]
) -> dict[str, set[int]]:
    """The layers whose channels reach ``tensor`` through channel-preserving nodes and residual
    Adds, each with the features per channel it arrives as (``H·W`` across a Flatten, else 1).

    Args:
        layer_by_output: Node writing a layer's output (the layer itself, or a MatMul's bias Add)
            → the layer's node.
        tying: The residual Add/Concat nodes.
    """
    found: dict[str, set[int]] = {}
    stack, seen = [(tensor, 1)], set()
    while stack:
        name, factor = stack.pop()
        if (name, factor) in seen:
            continue
        seen.add((name, factor))
        node = g.producer.get(name)
        if node is None:
            continue
        if node.name in layer_by_output:
            found.setdefault(layer_by_output[node.name], set()).add(factor)
            continue
        if node.op_type == "Add" and node.name in tying:
            stack.extend((t, factor) for t in g.activations(node))
            continue
        acts = g.activations(node)
        if len(acts) != 1:
            continue
        if node.op_type in FLATTEN_OPS:
            shape = g.shapes.get(acts[0])
            if shape is not None and len(shape) > 2 and all(d is not None for d in shape[2:]):
                factor *= int(np.prod(shape[2:]))
        stack.append((acts[0], factor))
    return found


def _sources(
    g: _Graph, layer: Layer, layer_by_output: dict[str, str], tying: set[str]
) -> tuple[set[str], int]:
    """The layers whose channels reach ``layer``'s input, and the features per channel (Flatten)."""
    found = _reaching_layers(g, layer.input, layer_by_output, tying)
    factors = set().union(*found.values()) if found else set()
    if len(factors) > 1:
        raise ModelError(
            f"{g.label}: layer {layer.node!r} reads channels flattened in different ways ({sorted(factors)} features each)",
            hint="zip models whose residual branches meet before any Flatten",
        )
    return set(found), factors.pop() if factors else 1


def _layer_writers(layers: Sequence[Layer]) -> dict[str, str]:
    """Node writing each layer's output (the layer, or a MatMul's bias Add) → the layer's node."""
    writers = {layer.node: layer.node for layer in layers}
    writers.update({layer.bias_node: layer.node for layer in layers if layer.bias_node})
    return writers


def _channel_groups(
    g: _Graph, layers: list[Layer], tying: set[str]
) -> tuple[tuple[tuple[str, ...], ...], tuple[tuple[str, ...], ...]]:
    by_node = _layer_writers(layers)
    order = {layer.node: layer.index for layer in layers}
    groups: list[tuple[set[str], set[str]]] = []
    for node in g.nodes:
        if node.name not in tying:
            continue
        members: set[str] = set()
        for tensor in g.activations(node):
            members |= set(_reaching_layers(g, tensor, by_node, tying))
        if not members:
            continue
        merged = (set(members), {node.name})
        rest = []
        for group in groups:
            if group[0] & merged[0]:
                merged[0].update(group[0])
                merged[1].update(group[1])
            else:
                rest.append(group)
        groups = rest + [merged]
    node_order = {n.name: i for i, n in enumerate(g.nodes)}
    groups.sort(key=lambda grp: min(order[m] for m in grp[0]))
    return (
        tuple(tuple(sorted(grp[0], key=order.__getitem__)) for grp in groups),
        tuple(tuple(sorted(grp[1], key=node_order.__getitem__)) for grp in groups),
    )


def _chain_input(g: _Graph, tensor: str) -> str:
    stack, seen = [tensor], set()
    found: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in g.inputs:
            found.add(name)
        node = g.producer.get(name)
        if node is not None:
            stack.extend(g.activations(node))
    for name in g.inputs:
        if name in found:
            return name
    raise ModelError(f"{g.label}: the first layer's input {tensor!r} does not depend on any graph input")


def discover_layers(model: onnx.ModelProto, *, label: str = "model") -> LayerChain:
    """The ordered zippable layers of a canonical model, with their paths and channel groups.

    Args:
        model: A model returned by :func:`~onnx_zip.graph.canonicalize.canonicalize`.
        label: How to name the model in messages.

    Returns:
        The :class:`LayerChain` (hidden layers first, heads last, each in topological order).

    Raises:
        ModelError: no zippable layer, an unsupported op or a branch between layers, a hidden
            activation exposed as a graph output (the message names the nodes).
    """
    g = _Graph(model, label)
    candidates = [n for n in g.nodes if _is_layer(g, n)]
    if not candidates:
        raise ModelError(
            f"{label}: no zippable layer (Conv, Gemm or MatMul with a constant weight) found",
            hint="was the model canonicalised? are its weights initializers?",
        )
    layers = [_make_layer(g, node, i) for i, node in enumerate(candidates)]
    layer_nodes = {layer.node for layer in layers}
    heads = {layer.node for layer in layers if not _downstream_layers(g, layer.output, layer_nodes)}
    ordered = [layer for layer in layers if layer.node not in heads] + [
        layer for layer in layers if layer.node in heads
    ]
    final = []
    for index, layer in enumerate(ordered):
        is_head = layer.node in heads
        path = _walk(g, layer, layer_nodes, is_head)
        final.append(
            Layer(**{**layer.__dict__, "index": index, "is_head": is_head, "path": path})
        )
    tying = {n.name for n in g.nodes if _is_tying(g, n)}
    groups, group_nodes = _channel_groups(g, final, tying)
    by_output = _layer_writers(final)
    order = {layer.node: layer.index for layer in final}
    with_sources = []
    for layer in final:
        found, features = _sources(g, layer, by_output, tying)
        sources = tuple(sorted(found, key=order.__getitem__))
        with_sources.append(Layer(**{**layer.__dict__, "sources": sources, "source_features": features}))
    final = with_sources
    chain = LayerChain(
        model=label,
        layers=tuple(final),
        input=_chain_input(g, final[0].input),
        outputs=tuple(g.outputs),
        channel_groups=groups,
        group_nodes=group_nodes,
        group_ops=tuple(tuple(g.node_by_name[n].op_type for n in nodes) for nodes in group_nodes),
    )
    logger.info(
        "%s: %d layers (%d hidden, heads %s)%s",
        label,
        len(final),
        len(chain.hidden),
        ", ".join(h.node for h in chain.heads),
        f", {len(groups)} channel group(s)" if groups else "",
    )
    return chain


def require_plain_chain(chain: LayerChain) -> LayerChain:
    """Return ``chain`` if it is a plain chain; refuse channel groups (residual Adds, Concats).

    Raises:
        ModelError: the chain has channel groups; the message names the Add/Concat nodes.
    """
    if chain.channel_groups:
        parts = []
        for layers, nodes in zip(chain.channel_groups, chain.group_nodes or ((),) * len(chain.channel_groups)):
            parts.append(f"{', '.join(nodes) or '?'} tie the channels of layers {', '.join(layers)}")
        raise ModelError(
            f"{chain.model}: residual Adds/Concats tie layer channels together ({'; '.join(parts)}); "
            "the rewrite supports plain chains only",
            hint="zip a model without skip connections, or wait for residual support",
        )
    return chain


def require_supported_chain(chain: LayerChain) -> LayerChain:
    """Return ``chain`` if the zipper can rewrite it: a plain chain, or residual Adds.

    Residual Adds tie the channels of the layers they sum (a channel group, zipped with one
    pairing). Concats are refused, as is a layer reading channels of more than one group.

    Raises:
        ModelError: naming the Concat nodes, or the layer and the groups it mixes.
    """
    count = len(chain.channel_groups)
    for layers, nodes, ops in zip(chain.channel_groups, chain.group_nodes or ((),) * count, chain.group_ops or ((),) * count):
        if not ops or any(op != "Add" for op in ops):
            raise ModelError(
                f"{chain.model}: {', '.join(nodes) or 'a node'} concatenate the channels of layers {', '.join(layers)}; "
                "the rewrite supports plain chains and residual Adds",
                hint="zip models without channel Concats",
            )
    for layer in chain.layers:
        groups = {chain.group_of(source) for source in layer.sources}
        if len(groups) > 1:
            raise ModelError(
                f"{chain.model}: layer {layer.node!r} reads the channels of unrelated layers "
                f"{', '.join(layer.sources)} (no residual Add ties them)",
                hint="zip chains and residual networks; other multi-branch graphs are not supported",
            )
    return chain
