"""Layer discovery: the ordered zippable layers of a canonical model and the paths between them.

A *layer* is a Conv (2-D, constant weight), a Gemm (constant B) or a MatMul (constant 2-D
second input) of a model returned by :func:`onnx_zip.graph.canonicalize.canonicalize`.
Layers are listed in topological order, hidden layers first. A *head* is a layer from
whose output no other layer is reachable; heads are never zipped.

The graph is read as onnx-graphsurgeon (:mod:`onnx_zip.graph.lookup`). Each hidden layer's
``path`` lists the nodes from its output to the next layer's input, each classified by the
op-semantics table (:mod:`onnx_zip.graph.ops`), which also tells the rewrite how to rebuild it:

* ``elementwise``: activations and other channel-agnostic ops, a Mul/Add/Sub/Div/PRelu whose
  constant holds one value, a Flatten/Reshape/Squeeze of an already rank-2 tensor;
* ``spatial``: pools and a Pad that pads spatial axes only;
* ``flatten``: Flatten(axis=1), Reshape to ``(N, C·H·W)`` or Squeeze to ``(N, C)`` of a
  ``(N, C, H, W)`` tensor: channel c becomes features ``[c·H·W, (c+1)·H·W)``;
* ``channel_params``: an unfolded BatchNormalization, or a Mul/Add/Sub/Div/PRelu whose constant
  holds one value per channel (the initializer names are listed);
* ``residual``: an Add of two activations (a skip connection).

A head's ``path`` holds, with the effect ``output``, every node of the single-consumer chain
after it (Softmax, ArgMax, Cast, ai.onnx.ml ops...). At a branch after a head (skl2onnx:
probabilities and label both computed from the Softmax) the head's path stops; the remaining
post-processing nodes are left untouched, which is safe because a head's output channels are
never permuted.

Residual Adds (two activation inputs) and Concats tie the channels of several layers: they are
reported as ``channel_groups`` (layers) and ``group_nodes`` (the Add/Concat nodes). A hidden
layer's path stops where its output forks into layers and such tying nodes. A gate ``x * f(x)``
(SiLU, HardSwish as Clip/Div/Mul: a Mul of two same-shape activations, the ``f`` chain ending at
it) is part of the path. Any other fork, an op outside the table, or a hidden activation that is
also a graph output is a :class:`~onnx_zip.graph.blockers.Blocker` (node, op, why, fix):
:func:`discover_layers` raises it, :func:`discover_blocked` ends the path before it and returns
every blocker, for partial zipping (:mod:`onnx_zip.graph.partial`). A Conv with ``group > 1`` is
not a layer: a depthwise one is a per-channel op of the table, another grouped one a blocker.
:func:`require_supported_chain` refuses Concat groups (the rewrite builds plain chains, residual
Adds and gates).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnx_zip.errors import ModelError
from onnx_zip.graph import ops
from onnx_zip.graph.blockers import Blocker
from onnx_zip.graph.layers import ConvGeometry, Layer, LayerChain, PathStep
from onnx_zip.graph.lookup import (
    activations,
    consumers,
    domain_of,
    import_graph,
    input_names,
    is_constant,
    output_names,
    producer,
    shape_of,
)

logger = logging.getLogger(__name__)

#: Ops that tie the channels of several layers without being rebuildable: reported as channel
#: groups (``require_supported_chain`` refuses them with a hint).
GROUPING_OPS = frozenset({"Concat"})
LAYER_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class _Model:
    """A canonical graph with the label used in messages."""

    graph: gs.Graph
    label: str
    outputs: frozenset[str]
    positions: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, graph: gs.Graph, label: str) -> _Model:
        positions = {n.name: i for i, n in enumerate(graph.nodes)}
        return cls(graph, label, frozenset(output_names(graph)), positions)


def _is_layer(node: gs.Node) -> bool:
    if node.op not in LAYER_OPS or len(node.inputs) < 2:
        return False
    if node.op == "Conv" and int(node.attrs.get("group", 1)) != 1:
        return False  # depthwise: a per-channel op on the path (the op table); grouped: a blocker
    if not is_constant(node.inputs[1]) or is_constant(node.inputs[0]):
        return False
    if node.op == "MatMul":
        return len(shape_of(node.inputs[1]) or ()) == 2
    return True


def _spatial(shape: tuple[int | None, ...] | None) -> tuple[int, ...] | None:
    if shape is None or len(shape) < 3 or any(d is None for d in shape[2:]):
        return None
    return tuple(int(d) for d in shape[2:] if d is not None)


def _matmul_bias(m: _Model, node: gs.Node, n_out: int) -> gs.Node | None:
    out = node.outputs[0]
    readers = consumers(out)
    if out.name in m.outputs or len(readers) != 1 or readers[0].op != "Add":
        return None
    add = readers[0]
    others = [t for t in add.inputs if t is not out]
    if len(others) != 1 or not is_constant(others[0]):
        return None
    return add if shape_of(others[0]) == (n_out,) else None


def _conv_geometry(m: _Model, node: gs.Node, shape: tuple[int | None, ...]) -> ConvGeometry:
    if len(shape) != 4:
        raise ModelError(
            f"{m.label}: Conv {node.name!r} is a {len(shape) - 2}-D convolution; onnx_zip zips 2-D convolutions only"
        )
    attrs = node.attrs
    return ConvGeometry(
        kernel_shape=tuple(int(k) for k in attrs.get("kernel_shape", shape[2:])),
        strides=tuple(int(s) for s in attrs.get("strides", (1, 1))),
        pads=tuple(int(p) for p in attrs.get("pads", (0, 0, 0, 0))),
        dilations=tuple(int(d) for d in attrs.get("dilations", (1, 1))),
        input_spatial=_spatial(shape_of(node.inputs[0])),
        output_spatial=_spatial(shape_of(node.outputs[0])),
    )


def _make_layer(m: _Model, node: gs.Node, index: int) -> Layer:
    weight = node.inputs[1]
    shape = shape_of(weight) or ()
    bias_tensor = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    if bias_tensor is not None and not is_constant(bias_tensor):
        raise ModelError(
            f"{m.label}: layer {node.name!r} has a computed bias {bias_tensor.name!r}; a constant is needed"
        )
    bias = bias_tensor.name if bias_tensor is not None else None
    geometry, trans_b, bias_node, output = None, 1, None, node.outputs[0].name
    if node.op == "Conv":
        geometry = _conv_geometry(m, node, shape)
        neurons, inputs, kind = shape[0], shape[1], "conv"
    elif node.op == "Gemm":
        trans_b = int(node.attrs.get("transB", 0))
        neurons, inputs = (shape[0], shape[1]) if trans_b else (shape[1], shape[0])
        kind = "dense"
    else:
        inputs, neurons, kind, trans_b = shape[0], shape[1], "dense", 0
        add = _matmul_bias(m, node, int(neurons or 0))
        if add is not None:
            bias_node = add.name
            bias = next(t.name for t in add.inputs if t is not node.outputs[0])
            output = add.outputs[0].name
    return Layer(
        index=index, node=node.name, op_type=node.op, kind=kind, weight=weight.name, bias=bias,
        neurons=int(neurons or 0), inputs=int(inputs or 0), input=node.inputs[0].name, output=output,
        is_head=False, conv=geometry, trans_b=trans_b, bias_node=bias_node,
    )


def _is_tying(node: gs.Node) -> bool:
    """A node tying the channels of several activations: a residual Add (in the op table) or a
    Concat (reported as a channel group, refused by :func:`require_supported_chain`)."""
    return ops.is_tie(node) or (node.op in GROUPING_OPS and len(activations(node)) >= 2)


def _head_path(m: _Model, tensor: gs.Tensor) -> tuple[PathStep, ...]:
    """The single-consumer chain after a head (post-processing), up to a fork or a graph output."""
    steps: list[PathStep] = []
    while True:
        readers = consumers(tensor)
        if not readers or len(readers) != 1 or tensor.name in m.outputs:
            return tuple(steps)  # a post-processing branch after a head is left as it is
        node = readers[0]
        steps.append(PathStep(node.name, node.op, "output"))
        outputs = [o for o in node.outputs if o.name]
        if len(outputs) != 1:
            return tuple(steps)
        tensor = outputs[0]


SUPPORTED_HINT = (
    "partial zipping stops before it, the rest stays task-specific; the op table supports activations, pools, "
    "Flatten, spatial Pad/Resize, per-channel parameters, depthwise Conv, residual Add, gates x*f(x), "
    "LayerNormalization/Softmax over the channels"
)


def _blocker(m: _Model, node: gs.Node, why: str, fix: str, layer: Layer, tensor: gs.Tensor) -> Blocker:
    return Blocker(m.label, node.name, node.op, why, fix, m.positions.get(node.name, -1), layer.node, tensor.name)


def _refuse_step(m: _Model, layer: Layer, node: gs.Node, tensor: gs.Tensor) -> Blocker:
    return _blocker(m, node, f"after layer {layer.node!r}: no known effect on the channel axis of {tensor.name!r}",
                    SUPPORTED_HINT, layer, tensor)


def _gate_side(m: _Model, tensor: gs.Tensor, readers: list[gs.Node]) -> gs.Node | None:
    """For a gate ``x * f(x)`` (SiLU, HardSwish spelled Clip/Div/Mul, ...): the first node of the
    ``f`` chain when ``tensor`` is read by exactly a tying Mul and a single-consumer chain of table
    ops that ends at that same Mul; else None."""
    if len(readers) != 2:
        return None
    ties = [r for r in readers if r.op == "Mul" and ops.is_tie(r)]
    if len(ties) != 1:
        return None
    gate = ties[0]
    side = readers[0] if readers[1] is gate else readers[1]
    current, steps = side, 0
    while steps < 16:
        outs = [o for o in current.outputs if o.name]
        if len(outs) != 1 or outs[0].name in m.outputs or ops.rule_for(current.op, current.domain or "") is None:
            return None
        after = consumers(outs[0])
        if len(after) != 1:
            return None
        if after[0] is gate:
            return side
        current, steps = after[0], steps + 1
    return None


def _fork_end(
    m: _Model, layer: Layer, tensor: gs.Tensor, readers: list[gs.Node], layer_nodes: set[str]
) -> tuple[bool, Blocker | None]:
    """``(stop, blocker)`` at ``tensor``: stop at a fork into layers and tying nodes; a blocker for
    other forks and for a hidden activation that is also a graph output."""
    if tensor.name in m.outputs:
        node = readers[0] if readers else producer(tensor)
        assert node is not None
        return True, _blocker(
            m, node, f"tensor {tensor.name!r} after hidden layer {layer.node!r} is a graph output and also feeds "
            f"{', '.join(repr(r.name) for r in readers)}",
            "zipping would change that output; remove the extra output, or zip only up to that layer (--until)",
            layer,
            gs.Variable(""),  # no cut here: the tensor must stay a graph output
        )
    if len(readers) <= 1:
        return False, None
    if all(r.name in layer_nodes or _is_tying(r) for r in readers):
        return True, None  # a fork into layers and residual Adds/Concats: see channel_groups
    if _gate_side(m, tensor, readers) is not None:
        return False, None
    return True, _blocker(
        m, readers[0], f"the output of layer {layer.node!r} branches at tensor {tensor.name!r} into "
        f"{', '.join(f'{r.name!r} ({r.op})' for r in readers)}; onnx_zip follows single-consumer nodes, "
        "residual Adds, Concats and gates x*f(x) between layers",
        "zip up to the layer before this branch (partial zipping, automatic), or re-export without it",
        layer,
        tensor,
    )


def walk_path(m: _Model, layer: Layer, layer_nodes: set[str]) -> tuple[tuple[PathStep, ...], Blocker | None]:
    """A hidden layer's path (the nodes from its output to the next layers, classified by the op
    table), and the blocker where the walk had to stop (None when the path is supported)."""
    steps: list[PathStep] = []
    tensor = m.graph.tensors()[layer.output]
    while True:
        readers = consumers(tensor)
        if not readers:
            return tuple(steps), None
        stop, blocker = _fork_end(m, layer, tensor, readers, layer_nodes)
        if stop:
            return tuple(steps), blocker
        node = readers[0] if len(readers) == 1 else _gate_side(m, tensor, readers)
        assert node is not None
        if node.name in layer_nodes or (node.op in GROUPING_OPS and _is_tying(node)):
            return tuple(steps), None
        ctx = ops.PathContext(node, tensor, layer.neurons, m.outputs)
        step = ops.classify(ctx) if domain_of(node) in ("", "ai.onnx") else None
        if step is None:
            return tuple(steps), _refuse_step(m, layer, node, tensor)
        steps.append(step)
        tensor = node.outputs[0]


def _walk(m: _Model, layer: Layer, layer_nodes: set[str]) -> tuple[PathStep, ...]:
    """:func:`walk_path`, raising the blocker as a :class:`ModelError`."""
    steps, blocker = walk_path(m, layer, layer_nodes)
    if blocker is not None:
        raise blocker.error()
    return steps


def _downstream_layers(start: gs.Tensor, layer_nodes: set[str]) -> bool:
    seen: set[int] = set()
    stack = [start]
    while stack:
        tensor = stack.pop()
        for node in consumers(tensor):
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.name in layer_nodes:
                return True
            stack.extend(o for o in node.outputs if o.name)
    return False


def _reaching_layers(tensor: gs.Tensor, layer_by_output: dict[str, str], tying: set[str]) -> dict[str, set[int]]:
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
        current, factor = stack.pop()
        if (current.name, factor) in seen:
            continue
        seen.add((current.name, factor))
        node = producer(current)
        if node is None:
            continue
        if node.name in layer_by_output:
            found.setdefault(layer_by_output[node.name], set()).add(factor)
            continue
        if node.op in ("Add", "Mul") and node.name in tying:
            stack.extend((t, factor) for t in activations(node))
            continue
        acts = activations(node)
        if len(acts) != 1:
            continue
        if node.op in ops.FLATTEN_OPS:
            shape = shape_of(acts[0])
            if shape is not None and len(shape) > 2 and all(d is not None for d in shape[2:]):
                factor *= int(np.prod([int(d) for d in shape[2:] if d is not None]))
        stack.append((acts[0], factor))
    return found


def _sources(m: _Model, layer: Layer, layer_by_output: dict[str, str], tying: set[str]) -> tuple[set[str], int]:
    """The layers whose channels reach ``layer``'s input, and the features per channel (Flatten)."""
    found = _reaching_layers(m.graph.tensors()[layer.input], layer_by_output, tying)
    factors = set().union(*found.values()) if found else set()
    if len(factors) > 1:
        raise ModelError(
            f"{m.label}: layer {layer.node!r} reads channels flattened in different ways ({sorted(factors)} "
            f"features each)",
            hint="zip models whose residual branches meet before any Flatten",
        )
    return set(found), factors.pop() if factors else 1


def _layer_writers(layers: Sequence[Layer]) -> dict[str, str]:
    """Node writing each layer's output (the layer, or a MatMul's bias Add) → the layer's node."""
    writers = {layer.node: layer.node for layer in layers}
    writers.update({layer.bias_node: layer.node for layer in layers if layer.bias_node})
    return writers


def _channel_groups(
    m: _Model, layers: list[Layer], tying: set[str]
) -> tuple[tuple[tuple[str, ...], ...], tuple[tuple[str, ...], ...]]:
    by_node = _layer_writers(layers)
    order = {layer.node: layer.index for layer in layers}
    groups: list[tuple[set[str], set[str]]] = []
    for node in m.graph.nodes:
        if node.name not in tying:
            continue
        members: set[str] = set()
        for tensor in activations(node):
            members |= set(_reaching_layers(tensor, by_node, tying))
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
    node_order = {n.name: i for i, n in enumerate(m.graph.nodes)}
    groups.sort(key=lambda grp: min(order[name] for name in grp[0]))
    return (
        tuple(tuple(sorted(grp[0], key=order.__getitem__)) for grp in groups),
        tuple(tuple(sorted(grp[1], key=node_order.__getitem__)) for grp in groups),
    )


def _chain_input(m: _Model, tensor: gs.Tensor) -> str:
    stack, seen = [tensor], set()
    found: set[str] = set()
    inputs = input_names(m.graph)
    while stack:
        current = stack.pop()
        if current.name in seen:
            continue
        seen.add(current.name)
        if current.name in inputs:
            found.add(current.name)
        node = producer(current)
        if node is not None:
            stack.extend(activations(node))
    for name in inputs:
        if name in found:
            return name
    raise ModelError(f"{m.label}: the first layer's input {tensor.name!r} does not depend on any graph input")


def _ordered_layers(m: _Model, *, strict: bool = True) -> tuple[list[Layer], list[Blocker]]:
    """The layers with hidden ones first, each with its path, and the blockers met on the paths
    (``strict``: the first blocker is raised; otherwise a blocked path ends before its blocker)."""
    candidates = [n for n in m.graph.nodes if _is_layer(n)]
    if not candidates:
        raise ModelError(
            f"{m.label}: no zippable layer (Conv, Gemm or MatMul with a constant weight) found",
            hint="was the model canonicalised? are its weights initializers?",
        )
    layers = [_make_layer(m, node, i) for i, node in enumerate(candidates)]
    layer_nodes = {layer.node for layer in layers}
    tensors = m.graph.tensors()
    heads = {layer.node for layer in layers if not _downstream_layers(tensors[layer.output], layer_nodes)}
    ordered = [layer for layer in layers if layer.node not in heads] + [
        layer for layer in layers if layer.node in heads
    ]
    final, blockers = [], []
    for index, layer in enumerate(ordered):
        is_head = layer.node in heads
        if is_head:
            path = _head_path(m, tensors[layer.output])
        elif strict:
            path = _walk(m, layer, layer_nodes)
        else:
            path, blocker = walk_path(m, layer, layer_nodes)
            blockers.extend([blocker] if blocker is not None else [])
        final.append(replace(layer, index=index, is_head=is_head, path=path))
    return final, blockers


def _assemble(m: _Model, final: list[Layer]) -> LayerChain:
    """The chain of the ordered layers: sources, channel groups, graph input and outputs."""
    graph = m.graph
    tying = {n.name for n in graph.nodes if _is_tying(n)}
    groups, group_nodes = _channel_groups(m, final, tying)
    by_output = _layer_writers(final)
    order = {layer.node: layer.index for layer in final}
    with_sources = []
    for layer in final:
        found, features = _sources(m, layer, by_output, tying)
        sources = tuple(sorted(found, key=order.__getitem__))
        with_sources.append(replace(layer, sources=sources, source_features=features))
    ops_by_name = {n.name: n.op for n in graph.nodes}
    return LayerChain(
        model=m.label,
        layers=tuple(with_sources),
        input=_chain_input(m, graph.tensors()[with_sources[0].input]),
        outputs=output_names(graph),
        channel_groups=groups,
        group_nodes=group_nodes,
        group_ops=tuple(tuple(ops_by_name[n] for n in nodes) for nodes in group_nodes),
    )


def discover_blocked(model: onnx.ModelProto | gs.Graph, *, label: str = "model") -> tuple[LayerChain, list[Blocker]]:
    """Like :func:`discover_layers`, but a hidden layer's path stops before its first blocker
    instead of raising: the chain (paths possibly cut short) and every blocker met on the paths.
    For :mod:`onnx_zip.graph.partial`, which decides where zipping stops."""
    m = _Model.of(import_graph(model), label)
    final, blockers = _ordered_layers(m, strict=False)
    return _assemble(m, final), blockers


def discover_layers(model: onnx.ModelProto | gs.Graph, *, label: str = "model") -> LayerChain:
    """The ordered zippable layers of a canonical model, with their paths and channel groups.

    Args:
        model: A model returned by :func:`~onnx_zip.graph.canonicalize.canonicalize` (or its
            graphsurgeon graph; it is not modified).
        label: How to name the model in messages.

    Returns:
        The :class:`LayerChain` (hidden layers first, heads last, each in topological order).

    Raises:
        ModelError: no zippable layer, an op outside the op table or a branch between layers, a
            hidden activation exposed as a graph output (the message names the nodes).
    """
    m = _Model.of(import_graph(model), label)
    final, _ = _ordered_layers(m)
    chain = _assemble(m, final)
    logger.info(
        "%s: %d layers (%d hidden, heads %s)%s",
        label,
        len(chain.layers),
        len(chain.hidden),
        ", ".join(h.node for h in chain.heads),
        f", {len(chain.channel_groups)} channel group(s)" if chain.channel_groups else "",
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
    for layers, nodes, op_types in zip(
        chain.channel_groups, chain.group_nodes or ((),) * count, chain.group_ops or ((),) * count
    ):
        if not op_types or any(op not in ("Add", "Mul") for op in op_types):
            raise ModelError(
                f"{chain.model}: {', '.join(nodes) or 'a node'} concatenate the channels of layers "
                f"{', '.join(layers)}; "
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
