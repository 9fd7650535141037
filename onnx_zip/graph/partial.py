"""Partial zipping: zip from the input up to the last layer the zipper supports; the rest stays
task-specific.

A model whose graph holds a construct the op table does not support (an LSTM behind a CNN front
end, a grouped convolution, a branch the rewrite cannot follow...) is zipped up to the hidden
layer before the first blocker: with ``k`` hidden layers zippable, the chain is cut at hidden
layer ``k`` (:meth:`~onnx_zip.graph.layers.LayerChain.truncated`), which becomes the task's head,
so it and everything after it are copied per task. ``until`` (a hidden layer's node) cuts earlier
on request. A cut is only made where no residual group or skip connection crosses it.

Every blocker is reported (:mod:`onnx_zip.graph.blockers`): those met on the layers' paths, the
nodes outside the op table between layers, channel Concats. When not one hidden layer can be zipped
the result has no chain and the caller refuses with the list (never a silent 0%).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnx_zip.errors import ModelError
from onnx_zip.graph import ops
from onnx_zip.graph.blockers import Blocker, nothing_zippable, sorted_blockers
from onnx_zip.graph.cut_layer import with_cut_layer
from onnx_zip.graph.discover import LAYER_OPS, discover_blocked, discover_layers, require_supported_chain
from onnx_zip.graph.layers import LayerChain
from onnx_zip.graph.lookup import consumers, import_graph

logger = logging.getLogger(__name__)

#: Ops never listed as blockers themselves (constants, shape arithmetic feeding other nodes).
_QUIET_OPS = frozenset({"Constant"})


@dataclass(frozen=True)
class PartialChain:
    """What can be zipped of one model.

    Attributes:
        model: The model's label.
        chain: The chain to zip (cut after the zippable layers), or None when no hidden layer is.
        blockers: Every blocker found (sorted; empty when the whole model is supported).
        hidden_total: Hidden layers of the whole model.
        cut: Node of the layer the chain was cut at (it and what follows stay task-specific), or None.
        canonical: The canonical model with a cut layer inserted (:mod:`onnx_zip.graph.cut_layer`),
            which the zipper must then use; None when the input model is used as it is.
    """

    model: str
    chain: LayerChain | None
    blockers: tuple[Blocker, ...]
    hidden_total: int
    cut: str | None
    canonical: onnx.ModelProto | None = field(default=None, repr=False)

    @property
    def zipped_hidden(self) -> int:
        """Hidden layers that will be zipped."""
        return 0 if self.chain is None else len(self.chain.hidden)


def _between_layers(graph: gs.Graph) -> list[gs.Node]:
    """Nodes downstream of a layer and upstream of another (the region the zipper rebuilds)."""
    layer_ids = {id(n) for n in graph.nodes if n.op in LAYER_OPS}
    down: set[int] = set()
    stack = [o for n in graph.nodes if id(n) in layer_ids for o in n.outputs]
    while stack:
        for node in consumers(stack.pop()):
            if id(node) not in down:
                down.add(id(node))
                stack.extend(node.outputs)
    up: set[int] = set()
    stack2 = [n for n in graph.nodes if id(n) in layer_ids]
    while stack2:
        for t in stack2.pop().inputs:
            for node in t.inputs:
                if id(node) not in up:
                    up.add(id(node))
                    stack2.append(node)
    return [n for n in graph.nodes if id(n) in down and id(n) in up and id(n) not in layer_ids]


def _unsupported_nodes(graph: gs.Graph, label: str) -> list[Blocker]:
    """Nodes between layers whose op the table does not hold (LSTM, Transpose, Shape...) and
    grouped convolutions that are not depthwise."""
    positions = {n.name: i for i, n in enumerate(graph.nodes)}
    found = []
    for node in _between_layers(graph):
        if node.op in _QUIET_OPS:
            continue
        if node.op == "Conv" and int(node.attrs.get("group", 1)) != 1:
            why = f"a grouped convolution (group={node.attrs.get('group')}) that is not depthwise"
            fix = "partial zipping stops before it; re-export with dense or depthwise convolutions to zip further"
        elif ops.rule_for(node.op, node.domain or "") is None:
            why = "op not in the op-semantics table (its effect on the channel axis is unknown)"
            fix = "partial zipping keeps it and everything after it task-specific"
        else:
            continue
        found.append(Blocker(label, node.name, node.op, why, fix, positions[node.name]))
    return found


def _concat_blockers(chain: LayerChain, graph: gs.Graph) -> list[Blocker]:
    positions = {n.name: i for i, n in enumerate(graph.nodes)}
    found = []
    for nodes, op_types, layers in zip(chain.group_nodes, chain.group_ops, chain.channel_groups):
        for node, op in zip(nodes, op_types):
            if op not in ("Add", "Mul"):
                found.append(
                    Blocker(
                        chain.model,
                        node,
                        op,
                        f"concatenates the channels of layers {', '.join(layers)}",
                        "the rewrite builds chains, residual Adds and gates; zipping stops before these layers",
                        positions.get(node, -1),
                    )
                )
    return found


def _cut_problem(chain: LayerChain, k: int) -> str | None:
    """Why cutting ``chain`` after ``k`` hidden layers is not possible (None: it is)."""
    zipped = {layer.node for layer in chain.hidden[:k]}
    for layer in chain.layers[k + 1 :]:
        if set(layer.sources) & zipped:
            return f"layer {layer.node!r} reads zipped layers across the cut"
    for group in chain.channel_groups:
        if set(group) & zipped and set(group) - zipped:
            return f"channel group {'+'.join(group)} crosses the cut"
    try:
        require_supported_chain(chain.truncated(k))
    except ModelError as exc:
        return str(exc)
    return None


def _hidden_index(chain: LayerChain, node: str) -> int:
    for i, layer in enumerate(chain.hidden):
        if layer.node == node:
            return i
    hidden = ", ".join(layer.node for layer in chain.hidden)
    raise ModelError(f"{chain.model}: --until {node!r} is not a hidden layer", hint=f"its hidden layers: {hidden}")


def _first_blocked(chain: LayerChain, blocked_layers: Sequence[str], concat: Sequence[Blocker]) -> int:
    """Hidden layers zippable before the first blocked path or Concat group."""
    k = len(chain.hidden)
    for i, layer in enumerate(chain.hidden):
        if layer.node in blocked_layers:
            k = min(k, i)  # its path is cut short: it is where zipping stops (the task's head)
    for group, nodes in zip(chain.channel_groups, chain.group_nodes):
        if any(b.node in nodes for b in concat):
            k = min(k, min(_hidden_index(chain, n) for n in group if not chain.by_node(n).is_head))
    return k


def _cut(chain: LayerChain, k: int) -> tuple[LayerChain | None, int]:
    """The chain cut after ``k`` hidden layers, moving the cut earlier until nothing crosses it."""
    while k > 0:
        if _cut_problem(chain, k) is None:
            return chain.truncated(k), k
        k -= 1
    return None, 0


def discover_partial(model: onnx.ModelProto, *, label: str = "model", until: str | None = None) -> PartialChain:
    """What of a canonical model can be zipped (see the module docstring).

    Args:
        model: A canonical model (:func:`~onnx_zip.graph.canonicalize.canonicalize`).
        label: How to name the model in messages.
        until: Zip at most up to this hidden layer (its node name); the layers after it stay
            task-specific.

    Raises:
        ModelError: no layer at all, or ``until`` is not a hidden layer.
    """
    try:
        chain: LayerChain | None = require_supported_chain(discover_layers(model, label=label))
    except ModelError:
        chain = None
    blockers: list[Blocker] = []
    used: onnx.ModelProto | None = None
    if chain is None:
        chain, walk_blockers = discover_blocked(model, label=label)
        graph = import_graph(model)
        concat = _concat_blockers(chain, graph)
        blockers = sorted_blockers(walk_blockers + concat + _unsupported_nodes(graph, label))
        k = _first_blocked(chain, _blocked_layers(chain, walk_blockers), concat)
        if until is None or k < _hidden_index(chain, until):
            chain, k, used = _with_cut(model, label, chain, walk_blockers, k)
        total = len(discover_blocked(model, label=label)[0].hidden)
    else:
        k = total = len(chain.hidden)
    full = chain
    if until is not None:
        k = min(k, _hidden_index(full, until) + 1)
    if k >= len(full.hidden):
        return PartialChain(label, full, tuple(blockers), total, None, used)
    cut_chain, k = _cut(full, k)
    cut = full.hidden[k].node
    if cut_chain is not None:
        logger.warning(
            "%s: zipping the first %d of %d hidden layers; %s and everything after it stay task-specific",
            label, k, total, cut,
        )
    return PartialChain(label, cut_chain, tuple(blockers), total, cut, used)


def _with_cut(
    model: onnx.ModelProto, label: str, chain: LayerChain, walk_blockers: Sequence[Blocker], k: int
) -> tuple[LayerChain, int, onnx.ModelProto | None]:
    """Zip the first blocked layer too when an identity cut layer can take the tensor before its
    blocker (no Flatten on its path) and, unless nothing else is zippable, the layer holds more
    weights than the identity (``C²``): ``(chain, zippable hidden layers, model with the cut
    layer)``; the inputs unchanged when not."""
    if k >= len(chain.hidden):
        return chain, k, None
    layer = chain.hidden[k]
    blocker = next((b for b in walk_blockers if b.layer == layer.node and b.tensor), None)
    if blocker is None or any(step.effect == "flatten" for step in layer.path):
        return chain, k, None
    weights = layer.neurons * layer.inputs * int(np.prod(layer.kernel_shape or (1,)))
    if k > 0 and weights <= layer.neurons**2:
        return chain, k, None  # the identity (C² per task) would cost more than zipping the layer saves
    cut_model = with_cut_layer(model, blocker.tensor, layer.node)
    if cut_model is None:
        return chain, k, None
    try:
        cut_chain, cut_blockers = discover_blocked(cut_model, label=label)
        concat = _concat_blockers(cut_chain, import_graph(cut_model))
        cut_k = _first_blocked(cut_chain, _blocked_layers(cut_chain, cut_blockers), concat)
    except ModelError:
        return chain, k, None
    if cut_k <= k or _cut_problem(cut_chain, cut_k) is not None:
        return chain, k, None
    return cut_chain, cut_k, cut_model


def _blocked_layers(chain: LayerChain, blockers: Sequence[Blocker]) -> list[str]:
    """The hidden layers whose path was cut short by a blocker."""
    stopped = {b.layer for b in blockers}
    return [layer.node for layer in chain.hidden if layer.node in stopped]


def discover_all(
    models: Sequence[onnx.ModelProto], labels: Sequence[str], *, until: str | None = None
) -> list[PartialChain]:
    """:func:`discover_partial` of every model; one :class:`ModelError` listing every blocker of
    every model when any of them has nothing to zip."""
    results = [discover_partial(m, label=label, until=until) for m, label in zip(models, labels)]
    if any(r.chain is None for r in results):
        raise nothing_zippable([b for r in results for b in r.blockers], [r.model for r in results])
    return results
