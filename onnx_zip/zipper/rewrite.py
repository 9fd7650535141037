"""Build the one multi-task graph from the tasks' canonical graphs and the layer blocks.

Layout of the zipped graph (names are deterministic and say whose a tensor is):

* inputs: one shared input (the tasks' inputs have the same signature), or ``<task>/<input>``;
* everything of task ``t`` outside the zipped chain (pre- and post-processing) is copied with
  the prefix ``<task>/``; its outputs are named ``<task>/<original output name>``;
* each aligned hidden layer becomes, for task ``t``, up to two activation *blocks*:

  - the shared block: ``Op(shared inputs, shared/<layer>/weight, shared/<layer>/bias)``, plus
    ``Op(task-specific inputs, <t>/<layer>/inter_weight)`` when task ``t`` has task-specific
    inputs. When the shared inputs are one tensor for every task and no task adds inter
    weights, the block is computed once for all tasks (``shared/<layer>/...`` nodes);
  - the task-specific block: ``Op(Concat(all input blocks), <t>/<layer>/weight, <t>/<layer>/bias)``;

  and the nodes between two layers are rebuilt on the blocks as the op-semantics table
  (:mod:`onnx_zip.graph.ops`) says: activations, pools and Flatten per block, per-channel
  parameters gathered to each task's blocks, residual Adds block by block, ops across the
  channels per task (see :mod:`onnx_zip.zipper.paths`);
* heads read the concatenation of the last layer's blocks with their input axis re-ordered.

Channel order of a layer's output for task ``t``: ``[shared (pair order) ; specific (ascending)]``,
exactly the order :mod:`onnx_zip.zipper.plan` used for the next layer's weights. Concatenating the
flattened blocks equals flattening the concatenated channels (C-major), so Flatten is per block.

Stages: graph inputs → pre-processing shared by every task (built once) → everything outside the
zipped segment copied per task → each zipped layer's blocks (:mod:`onnx_zip.zipper.layer_blocks`)
and its path (:mod:`onnx_zip.zipper.paths`) → export.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnx_zip.data import model_inputs
from onnx_zip.errors import InputError
from onnx_zip.graph.layers import LayerChain, neuron_axis
from onnx_zip.zipper.graph_builder import (
    SHARED,
    GraphBuilder,
    TaskCopier,
    block_names,
    task_prefix,
)
from onnx_zip.zipper.layer_blocks import LayerSite, input_blocks, layer_blocks
from onnx_zip.zipper.paths import PathState, build_path
from onnx_zip.zipper.plan import LayerZip

__all__ = ["SHARED", "block_names", "build_zipped_model", "check_task_names", "inputs_match"]


def _upstream(graph: gs.Graph, tensor: str) -> list[gs.Node]:
    """The nodes ``tensor`` depends on, in the graph's (topological) order."""
    producers = {out.name: node for node in graph.nodes for out in node.outputs}
    needed: set[int] = set()
    stack = [tensor]
    while stack:
        node = producers.get(stack.pop())
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        stack.extend(t.name for t in node.inputs if not isinstance(t, gs.Constant))
    return [node for node in graph.nodes if id(node) in needed]


def _signature(graph: gs.Graph, nodes: Sequence[gs.Node]) -> list[tuple]:
    """A structural fingerprint of a subgraph: ops, attributes, constants and wiring."""
    inputs = {t.name: i for i, t in enumerate(graph.inputs)}
    produced = {out.name: (j, k) for j, node in enumerate(nodes) for k, out in enumerate(node.outputs)}
    sig: list[tuple] = []
    for node in nodes:
        refs: list[tuple] = []
        for t in node.inputs:
            if isinstance(t, gs.Constant):
                values = np.asarray(t.values)
                refs.append(("const", values.dtype.str, values.shape, values.tobytes()))
            elif t.name in inputs:
                refs.append(("input", inputs[t.name]))
            elif t.name in produced:
                refs.append(("node", produced[t.name]))
            else:
                refs.append(("other", t.name == ""))
        sig.append((node.op, node.domain, repr(sorted(node.attrs.items())), tuple(refs), len(node.outputs)))
    return sig


def check_task_names(names: Sequence[str], count: int) -> list[str]:
    """Validate task names: ``count`` of them, unique, non-empty, no ``/``, not ``shared``."""
    names = [str(n) for n in names]
    if len(names) != count:
        raise InputError(f"{len(names)} task names for {count} models", hint=f"give {count} names, e.g. --names a,b")
    for name in names:
        if not name or "/" in name or name == SHARED or name.strip() != name:
            raise InputError(
                f"task name {name!r} is not usable", hint="use short names without '/' or spaces, not 'shared'"
            )
    if len(set(names)) != len(names):
        raise InputError(f"task names {names} repeat", hint="give each model its own name")
    return names


def inputs_match(models: Sequence[onnx.ModelProto]) -> bool:
    """True when every model has the same number of inputs with equal dtypes and static dims."""
    specs = [model_inputs(m) for m in models]
    first = specs[0]
    for other in specs[1:]:
        if len(other) != len(first):
            return False
        for a, b in zip(first, other):
            if a.dtype != b.dtype or a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
                return False
            if any(x != y and x is not None and y is not None for x, y in zip(a.shape[1:], b.shape[1:])):
                return False
    return True


def _input_variable(builder: GraphBuilder, name: str, spec) -> gs.Variable:
    shape = [d if d is not None else "N" for d in spec.shape] if spec.shape else None
    return gs.Variable(builder.unique(name), dtype=spec.dtype, shape=shape)


def _graph_inputs(
    builder: GraphBuilder, tasks: Sequence[str], models: Sequence[onnx.ModelProto], shared_input: bool
) -> tuple[list[gs.Variable], list[dict[str, gs.Variable]]]:
    """The zipped graph's inputs, and per task its input names → those inputs.

    Raises:
        InputError: ``shared_input`` while the models' inputs differ.
    """
    specs = [model_inputs(m) for m in models]
    if not shared_input:
        graph_inputs: list[gs.Variable] = []
        per_task: list[dict[str, gs.Variable]] = []
        for task, task_specs in zip(tasks, specs):
            mapping = {s.name: _input_variable(builder, task_prefix(task, s.name), s) for s in task_specs}
            graph_inputs.extend(mapping.values())
            per_task.append(mapping)
        return graph_inputs, per_task
    if not inputs_match(models):
        raise InputError(
            "the models' inputs differ: "
            + "; ".join(f"{t}: {', '.join(s.describe() for s in task_specs)}" for t, task_specs in zip(tasks, specs)),
            hint="pass --separate-inputs to give each task its own input",
        )
    names = [[s.name for s in task_specs] for task_specs in specs]
    graph_inputs = []
    for position, spec in enumerate(specs[0]):
        same_name = all(n[position] == spec.name for n in names)
        name = spec.name if same_name else ("input" if len(specs[0]) == 1 else f"input_{position}")
        graph_inputs.append(_input_variable(builder, name, spec))
    return graph_inputs, [{s.name: graph_inputs[i] for i, s in enumerate(task_specs)} for task_specs in specs]


def _segment_nodes(zips: Sequence[LayerZip], tasks: int) -> list[set[str]]:
    """Per task, the nodes the zipped segment rebuilds (layers, MatMul bias Adds, hidden paths)."""
    segment: list[set[str]] = [set() for _ in range(tasks)]
    for z in zips:
        for t, layer in enumerate(z.layers):
            segment[t].add(layer.node)
            if layer.bias_node is not None:  # a rank > 2 MatMul's separate bias Add is part of the layer
                segment[t].add(layer.bias_node)
            if not layer.is_head:
                segment[t].update(step.node for step in layer.path)
    return segment


def _share_preprocessing(
    site: LayerSite, zips: Sequence[LayerZip], inputs: dict[str, gs.Variable], segment: list[set[str]]
) -> None:
    """Pre-processing identical in every task (e.g. a Flatten of the shared input) is built once,
    so that the first layer's shared neurons can be computed once too."""
    graphs = site.graphs
    upstream = [_upstream(graph, layer.input) for graph, layer in zip(graphs, zips[0].layers)]
    signatures = [_signature(graph, nodes) for graph, nodes in zip(graphs, upstream)]
    if not upstream[0] or any(sig != signatures[0] for sig in signatures[1:]):
        return
    common = TaskCopier(site.builder, SHARED, graphs[0], inputs)
    for node in upstream[0]:
        common.copy(node)
    for t, nodes in enumerate(upstream):
        for node, node0 in zip(nodes, upstream[0]):
            for out, out0 in zip(node.outputs, node0.outputs):
                site.copiers[t].tensors[out.name] = common.tensors[out0.name]
            segment[t].add(node.name)


def _export(
    site: LayerSite, graph_inputs: list[gs.Variable], models: Sequence[onnx.ModelProto], opset: int
) -> onnx.ModelProto:
    """The assembled graph, cleaned up and sorted, as a model."""
    outputs = [site.copiers[t].tensor(out) for t, graph in enumerate(site.graphs) for out in graph.outputs]
    graph = gs.Graph(
        nodes=site.builder.nodes,
        inputs=graph_inputs,
        outputs=outputs,
        name="onnx_zip",
        opset=opset,
        import_domains=_domains(models, opset),
    )
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return gs.export_onnx(graph, do_type_check=True)


def _build_segment(site: LayerSite, zips: Sequence[LayerZip]) -> None:
    """Every zipped layer bottom-up, each followed by its path to the next layers."""
    state = PathState.of(site.builder, site.graphs)
    for z in zips:
        blocks = layer_blocks(z, site, input_blocks(z, site, state.blocked))
        if z.is_head:
            continue
        for t, (task, layer) in enumerate(zip(site.tasks, z.layers)):
            build_path(state, (t, task, z.tag), layer.path, layer.output, blocks[t], z.shared, neuron_axis(layer))


def build_zipped_model(
    tasks: Sequence[str],
    models: Sequence[onnx.ModelProto],
    chains: Sequence[LayerChain],
    zips: Sequence[LayerZip],
    *,
    shared_input: bool,
    opset: int,
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The zipped multi-task model (without metadata) and its nodes' doc strings.

    Args:
        tasks: Task names, one per model.
        models: Canonical models, all at ``opset``.
        chains: Their layer chains.
        zips: The planned layers (hidden layers, then heads).
        shared_input: One input for all tasks (their inputs must match).
        opset: Default-domain opset of the output.
    """
    builder = GraphBuilder()
    graphs = [gs.import_onnx(m) for m in models]
    graph_inputs, per_task_inputs = _graph_inputs(builder, tasks, models, shared_input)
    copiers = [
        TaskCopier(builder, task, graph, per_task_inputs[t]) for t, (task, graph) in enumerate(zip(tasks, graphs))
    ]
    site = LayerSite(builder, tuple(tasks), graphs, copiers)
    segment = _segment_nodes(zips, len(tasks))
    if shared_input:
        _share_preprocessing(site, zips, per_task_inputs[0], segment)
    # Everything else outside the segment (pre- and post-processing) is copied per task; tensors
    # are created on first use, so the order of copying does not matter.
    for t, (graph, copier) in enumerate(zip(graphs, copiers)):
        for node in graph.nodes:
            if node.name not in segment[t]:
                copier.copy(node)
    _build_segment(site, zips)
    return _export(site, graph_inputs, models, opset), builder.docs


def _domains(models: Sequence[onnx.ModelProto], opset: int) -> list[onnx.OperatorSetIdProto]:
    versions: dict[str, int] = {"": opset}
    for m in models:
        for entry in m.opset_import:
            if entry.domain in ("", "ai.onnx"):
                continue
            versions[entry.domain] = max(versions.get(entry.domain, 0), int(entry.version))
    return [onnx.helper.make_opsetid(d, v) for d, v in sorted(versions.items())]
