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

  and the nodes between two layers (activations, pooling, Flatten) are applied to each block;
* heads read the concatenation of the last layer's blocks with their input axis re-ordered.

Channel order of a layer's output for task ``t``: ``[shared (pair order) ; specific (ascending)]``,
exactly the order :mod:`onnx_zip.zipper.plan` used for the next layer's weights. Concatenating the
flattened blocks equals flattening the concatenated channels (C-major), so Flatten is per block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnx_zip.data import model_inputs
from onnx_zip.errors import InputError, ModelError
from onnx_zip.graph.layers import Layer, LayerChain, PathStep, neuron_axis, stored_weights
from onnx_zip.zipper.plan import LayerZip

SHARED = "shared"


def block_names(owner: str, tag: str, part: str) -> tuple[str, str]:
    """Initializer names (weight, bias) of one block: ``shared/<layer>/weight``, ``<task>/<layer>/weight``
    (task-specific neurons) or ``<task>/<layer>/inter_weight`` (inter weights; no bias)."""
    if part in ("specific", "shared"):
        return f"{owner}/{tag}/weight", f"{owner}/{tag}/bias"
    return f"{owner}/{tag}/{part}_weight", f"{owner}/{tag}/{part}_bias"


@dataclass
class _Block:
    """A group of consecutive channels of a layer's output for one task."""

    tensor: gs.Variable
    units: int
    common: bool  # the same tensor for every task


@dataclass
class _Builder:
    """Accumulates nodes, tensors and doc strings of the zipped graph."""

    nodes: list[gs.Node] = field(default_factory=list)
    docs: dict[str, str] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)
    constants: dict[str, gs.Constant] = field(default_factory=dict)

    def unique(self, name: str) -> str:
        if name not in self.names:
            self.names.add(name)
            return name
        i = 1
        while f"{name}_{i}" in self.names:
            i += 1
        self.names.add(f"{name}_{i}")
        return f"{name}_{i}"

    def constant(self, name: str, values: np.ndarray) -> gs.Constant:
        if name in self.constants:
            raise ModelError(f"internal error: initializer {name} created twice")
        const = gs.Constant(name, np.ascontiguousarray(values))
        self.constants[name] = const
        return const

    def variable(self, name: str, dtype: np.dtype = np.float32) -> gs.Variable:
        return gs.Variable(self.unique(name), dtype=dtype)

    def node(self, op: str, name: str, inputs: list, outputs: list, attrs: dict | None = None, doc: str = "") -> gs.Node:
        node = gs.Node(op, self.unique(name), attrs=dict(attrs or {}), inputs=inputs, outputs=outputs)
        self.nodes.append(node)
        if doc:
            self.docs[node.name] = doc
        return node


def _task_prefix(task: str, name: str) -> str:
    """``<task>/<name>``, without the leading ``/`` some exporters put on every name."""
    return f"{task}/{name.lstrip('/')}"


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
    sig = []
    for node in nodes:
        refs = []
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
            raise InputError(f"task name {name!r} is not usable", hint="use short names without '/' or spaces, not 'shared'")
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


class _TaskCopier:
    """Copies one task's graph outside the zipped chain, renaming tensors with ``<task>/``."""

    def __init__(self, builder: _Builder, task: str, graph: gs.Graph, inputs: dict[str, gs.Variable]) -> None:
        self.builder = builder
        self.task = task
        self.graph = graph
        self.tensors: dict[str, gs.Tensor] = dict(inputs)

    def tensor(self, original: gs.Tensor) -> gs.Tensor:
        if original.name == "":
            return gs.Variable.empty()
        if original.name not in self.tensors:
            name = _task_prefix(self.task, original.name)
            if isinstance(original, gs.Constant):
                self.tensors[original.name] = self.builder.constant(name, original.values)
            else:
                self.tensors[original.name] = gs.Variable(self.builder.unique(name), dtype=original.dtype, shape=original.shape)
        return self.tensors[original.name]

    def copy(self, node: gs.Node) -> None:
        self.builder.node(
            node.op,
            _task_prefix(self.task, node.name),
            [self.tensor(t) for t in node.inputs],
            [self.tensor(t) for t in node.outputs],
            attrs=node.attrs,
        )
        self.builder.nodes[-1].domain = node.domain


def _layer_attrs(graph: gs.Graph, layer: Layer) -> dict:
    node = next(n for n in graph.nodes if n.name == layer.node)
    return dict(node.attrs)


def _apply_layer(
    builder: _Builder,
    layer: Layer,
    attrs: dict,
    x: gs.Variable,
    weight: np.ndarray,
    bias: np.ndarray | None,
    owner: str,
    tag: str,
    part: str,
    doc: str,
    *,
    weight_const: gs.Constant | None = None,
    bias_const: gs.Constant | None = None,
    out: gs.Variable | None = None,
) -> gs.Variable:
    """``Op(x, weight, bias)`` in the layer's own op and layout; creates the initializers.

    Writes into ``out`` when given (a head writes its original, prefixed output tensor).
    """
    weight_name, bias_name = block_names(owner, tag, part)
    if weight_const is None:
        weight_const = builder.constant(weight_name, stored_weights(layer, weight))
    if bias_const is None and bias is not None:
        bias_const = builder.constant(bias_name, bias)
    if out is None:
        out = builder.variable(f"{owner}/{tag}/{part}", dtype=np.float32)
    if layer.op_type == "MatMul":
        mm_out = out if bias_const is None else builder.variable(f"{owner}/{tag}/{part}_matmul")
        builder.node("MatMul", f"{owner}/{tag}/{part}_MatMul", [x, weight_const], [mm_out], doc=doc)
        if bias_const is not None:
            builder.node("Add", f"{owner}/{tag}/{part}_bias_Add", [mm_out, bias_const], [out], doc=doc)
        return out
    inputs = [x, weight_const] + ([bias_const] if bias_const is not None else [])
    builder.node(layer.op_type, f"{owner}/{tag}/{part}_{layer.op_type}", inputs, [out], attrs=attrs, doc=doc)
    return out


def _apply_path(
    builder: _Builder,
    graph: gs.Graph,
    steps: Sequence[PathStep],
    x: gs.Variable,
    owner: str,
    tag: str,
    part: str,
) -> gs.Variable:
    """The nodes between two layers, applied to one block (Flatten per block)."""
    for i, step in enumerate(steps):
        node = next(n for n in graph.nodes if n.name == step.node)
        out = builder.variable(f"{owner}/{tag}/{part}/{step.op_type.lower()}")
        if step.effect == "flatten":
            builder.node("Flatten", f"{owner}/{tag}/{part}/Flatten", [x], [out], attrs={"axis": 1})
        elif step.effect in ("elementwise", "spatial"):
            extra = []
            for t in node.inputs[1:]:
                if isinstance(t, gs.Constant):
                    extra.append(builder.constant(f"{owner}/{tag}/{part}/{step.op_type.lower()}_{i}_{len(extra)}", t.values))
                elif t.name == "":
                    extra.append(gs.Variable.empty())
                else:
                    raise ModelError(f"node {step.node}: input {t.name} is not a constant; cannot apply it per block")
            builder.node(step.op_type, f"{owner}/{tag}/{part}/{step.op_type}", [x, *extra], [out], attrs=node.attrs)
        else:
            raise ModelError(
                f"node {step.node} ({step.op_type}) between layers holds per-channel parameters",
                hint="fold BatchNormalization into the layer (the default) before zipping",
            )
        x = out
    return x


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
    builder = _Builder()
    graphs = [gs.import_onnx(m) for m in models]
    input_specs = [model_inputs(m) for m in models]
    # Graph inputs.
    graph_inputs: list[gs.Variable] = []
    per_task_inputs: list[dict[str, gs.Variable]] = []
    if shared_input:
        if not inputs_match(models):
            raise InputError(
                "the models' inputs differ: " + "; ".join(
                    f"{t}: {', '.join(s.describe() for s in specs)}" for t, specs in zip(tasks, input_specs)
                ),
                hint="pass --separate-inputs to give each task its own input",
            )
        names = [[s.name for s in specs] for specs in input_specs]
        for position, spec in enumerate(input_specs[0]):
            same_name = all(n[position] == spec.name for n in names)
            name = spec.name if same_name else ("input" if len(input_specs[0]) == 1 else f"input_{position}")
            shape = [d if d is not None else "N" for d in spec.shape] if spec.shape else None
            graph_inputs.append(gs.Variable(builder.unique(name), dtype=spec.dtype, shape=shape))
        for specs in input_specs:
            per_task_inputs.append({s.name: graph_inputs[i] for i, s in enumerate(specs)})
    else:
        for task, specs in zip(tasks, input_specs):
            mapping = {}
            for s in specs:
                shape = [d if d is not None else "N" for d in s.shape] if s.shape else None
                var = gs.Variable(builder.unique(_task_prefix(task, s.name)), dtype=s.dtype, shape=shape)
                graph_inputs.append(var)
                mapping[s.name] = var
            per_task_inputs.append(mapping)

    copiers = [_TaskCopier(builder, task, graph, per_task_inputs[t]) for t, (task, graph) in enumerate(zip(tasks, graphs))]
    segment_nodes = [set() for _ in tasks]
    for z in zips:
        for t, layer in enumerate(z.layers):
            segment_nodes[t].add(layer.node)
            if layer.bias_node is not None:  # a rank > 2 MatMul's separate bias Add is part of the layer
                segment_nodes[t].add(layer.bias_node)
            if not layer.is_head:
                segment_nodes[t].update(step.node for step in layer.path)
    # Pre-processing identical in every task (e.g. a Flatten of the shared input) is built once,
    # so that the first layer's shared neurons can be computed once too.
    if shared_input:
        upstream = [_upstream(graph, z_layer.input) for graph, z_layer in zip(graphs, zips[0].layers)]
        signatures = [_signature(graph, nodes) for graph, nodes in zip(graphs, upstream)]
        if upstream[0] and all(sig == signatures[0] for sig in signatures[1:]):
            common = _TaskCopier(builder, SHARED, graphs[0], per_task_inputs[0])
            for node in upstream[0]:
                common.copy(node)
            for t, nodes in enumerate(upstream):
                for node, node0 in zip(nodes, upstream[0]):
                    for out, out0 in zip(node.outputs, node0.outputs):
                        copiers[t].tensors[out.name] = common.tensors[out0.name]
                    segment_nodes[t].add(node.name)
    # Everything else outside the segment (pre- and post-processing) is copied per task; tensors
    # are created on first use, so the order of copying does not matter.
    for t, (graph, copier) in enumerate(zip(graphs, copiers)):
        for node in graph.nodes:
            if node.name not in segment_nodes[t]:
                copier.copy(node)

    # The zipped segment. ``blocked[t][name]``: task t's tensor ``name`` (its original name) as
    # channel blocks in the zipped order [shared ; specific] of the channels it carries.
    blocked: list[dict[str, list[_Block]]] = [{} for _ in tasks]
    path_cache: dict[int, gs.Variable] = {}
    add_cache: dict[tuple[int, int], gs.Variable] = {}
    for z in zips:
        blocks = _input_blocks(z, graphs, copiers, blocked)
        attrs = [_layer_attrs(graphs[t], layer) for t, layer in enumerate(z.layers)]
        origin = ", ".join(f"{task}:{layer.node}" for task, layer in zip(tasks, z.layers))
        new_blocks: list[list[_Block]] = [[] for _ in tasks]
        k = z.shared
        if k:
            weight_name, bias_name = block_names(SHARED, z.tag, "shared")
            w_const = builder.constant(weight_name, stored_weights(z.layers[0], z.shared_weight))
            b_const = builder.constant(bias_name, z.shared_bias) if z.shared_bias is not None else None
            doc = f"{k} shared neurons merged by MTZ from {origin}; weights from the {z.shared_inputs} shared inputs"
            common_input = all(b[0].common for b in blocks) and z.shared_inputs > 0
            core_common: gs.Variable | None = None
            for t, task in enumerate(tasks):
                s_block = blocks[t][0]
                if common_input:
                    if core_common is None:
                        core_common = _apply_layer(
                            builder, z.layers[0], attrs[0], s_block.tensor, z.shared_weight, None, SHARED, z.tag, "shared", doc,
                            weight_const=w_const, bias_const=b_const,
                        )
                    core = core_common
                else:
                    weight = w_const
                    if not z.layers[t].sources and s_block.units < z.shared_inputs:  # a narrower first dense input
                        weight = _narrowed(builder, z.layers[t], w_const, s_block.units, task, z.tag)
                    core = _apply_layer(
                        builder, z.layers[t], attrs[t], s_block.tensor, z.shared_weight, None, task, z.tag, "shared", doc,
                        weight_const=weight, bias_const=b_const,
                    )
                common = common_input
                if z.inter_weight[t] is not None:
                    rest = blocks[t][1].tensor
                    inter = _apply_layer(
                        builder, z.layers[t], attrs[t], rest, z.inter_weight[t], None, task, z.tag, "inter",
                        f"{task}'s inter weights: its task-specific inputs into the {k} shared neurons of {origin}",
                    )
                    summed = builder.variable(f"{task}/{z.tag}/shared_sum")
                    builder.node(
                        "Add", f"{task}/{z.tag}/shared_Add", [core, inter], [summed],
                        doc=f"{task}'s view of the {k} shared neurons: merged weights plus its inter weights",
                    )
                    core, common = summed, False
                new_blocks[t].append(_Block(core, k, common))
        for t, task in enumerate(tasks):
            count = z.specific_count(t)
            if count == 0:
                continue
            if len(blocks[t]) == 1:
                x = blocks[t][0].tensor
            else:
                x = builder.variable(f"{task}/{z.tag}/input")
                axis = neuron_axis(z.layers[t])
                builder.node("Concat", f"{task}/{z.tag}/input_Concat", [b.tensor for b in blocks[t]], [x], attrs={"axis": axis})
            layer = z.layers[t]
            if z.is_head:
                doc = f"{task}'s head ({layer.node}), input re-ordered to the zipped channel order"
            else:
                doc = f"{count} neurons specific to {task} from {layer.node} (all inputs)"
            target = copiers[t].tensor(graphs[t].tensors()[layer.output]) if z.is_head else None
            out = _apply_layer(
                builder, layer, attrs[t], x, z.specific_weight[t], z.specific_bias[t], task, z.tag, "specific", doc, out=target
            )
            new_blocks[t].append(_Block(out, count, common=False))
        if z.is_head:
            continue
        # The path to the next layers, per block (a common block's once); a residual Add waits
        # until both of its operands exist, then sums them block by block.
        for t, task in enumerate(tasks):
            layer = z.layers[t]
            current = new_blocks[t]
            name = layer.output
            blocked[t][name] = current
            for run, add in _path_runs(layer.path):
                if run:
                    after = []
                    for i, block in enumerate(current):
                        key = id(block.tensor)
                        if key not in path_cache:
                            owner = SHARED if block.common else task
                            part = "shared" if i == 0 and k else "specific"
                            path_cache[key] = _apply_path(builder, graphs[t], run, block.tensor, owner, z.tag, part)
                        after.append(_Block(path_cache[key], block.units, block.common))
                    current = after
                    name = _step_output(graphs[t], run[-1])
                    blocked[t][name] = current
                if add is None:
                    break
                add_node = next(n for n in graphs[t].nodes if n.name == add.node)
                out_name = add_node.outputs[0].name
                if out_name in blocked[t]:
                    break  # summed already, from the other operand's side
                operands = [i.name for i in add_node.inputs]
                other = operands[1] if operands[0] == name else operands[0]
                if other not in blocked[t]:
                    break  # the other operand is built later; its layer's path does the Add
                current = _add_blocks(builder, add_cache, task, z.tag, add, current, blocked[t][other], k)
                name = out_name
                blocked[t][name] = current

    outputs = []
    for t, graph in enumerate(graphs):
        for out in graph.outputs:
            outputs.append(copiers[t].tensor(out))
    graph = gs.Graph(
        nodes=builder.nodes,
        inputs=graph_inputs,
        outputs=outputs,
        name="onnx_zip",
        opset=opset,
        import_domains=_domains(models, opset),
    )
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    model = gs.export_onnx(graph, do_type_check=True)
    return model, builder.docs


def _narrowed(builder: _Builder, layer: Layer, weight: gs.Constant, width: int, task: str, tag: str) -> gs.Variable:
    """The shared weight restricted to a narrower task's first ``width`` input features (``Slice``)."""
    axis = 1 if layer.op_type == "Gemm" and layer.trans_b else 0
    out = builder.variable(f"{task}/{tag}/shared_weight_narrowed")
    ints = {"starts": 0, "ends": width, "axes": axis}
    consts = [builder.constant(f"{task}/{tag}/shared_weight_{k}", np.array([v], dtype=np.int64)) for k, v in ints.items()]
    builder.node("Slice", f"{task}/{tag}/shared_weight_Slice", [weight, *consts], [out],
                 doc=f"the shared weights of {task}'s {width} input features (the rest are fictive zeros for it)")
    return out


def _input_blocks(
    z: LayerZip, graphs: Sequence[gs.Graph], copiers: Sequence[_TaskCopier], blocked: Sequence[dict[str, list[_Block]]]
) -> list[list[_Block]]:
    """Each task's input of a layer as channel blocks: the zipped channels it reads, or (first
    layer) the pre-processed input as one block, common when every task has the same tensor."""
    if z.layers[0].input in blocked[0]:
        return [list(blocked[t][layer.input]) for t, layer in enumerate(z.layers)]
    blocks = []
    for t, layer in enumerate(z.layers):
        x = copiers[t].tensor(graphs[t].tensors()[layer.input])
        blocks.append([_Block(x, layer.inputs, common=False)])
    if all(b[0].tensor is blocks[0][0].tensor for b in blocks):
        for b in blocks:
            b[0].common = True
    return blocks


def _path_runs(steps: Sequence[PathStep]) -> list[tuple[list[PathStep], PathStep | None]]:
    """Split a path at its residual Adds: ``[(steps before Add, Add), ..., (last steps, None)]``."""
    runs: list[tuple[list[PathStep], PathStep | None]] = []
    run: list[PathStep] = []
    for step in steps:
        if step.effect == "residual":
            runs.append((run, step))
            run = []
        else:
            run.append(step)
    runs.append((run, None))
    return runs


def _step_output(graph: gs.Graph, step: PathStep) -> str:
    node = next(n for n in graph.nodes if n.name == step.node)
    return node.outputs[0].name


def _add_blocks(
    builder: _Builder,
    cache: dict[tuple[int, int], gs.Variable],
    task: str,
    tag: str,
    step: PathStep,
    left: list[_Block],
    right: list[_Block],
    shared: int,
) -> list[_Block]:
    """A residual Add, block by block (both operands carry the same channel group, in the same order)."""
    if [b.units for b in left] != [b.units for b in right]:
        raise ModelError(
            f"internal error: the operands of residual Add {step.node} of task {task} have channel blocks "
            f"{[b.units for b in left]} and {[b.units for b in right]}"
        )
    out = []
    for i, (a, b) in enumerate(zip(left, right)):
        common = a.common and b.common
        part = "shared" if i == 0 and shared else "specific"
        key = (id(a.tensor), id(b.tensor))
        if common and key in cache:
            out.append(_Block(cache[key], a.units, True))
            continue
        owner = SHARED if common else task
        summed = builder.variable(f"{owner}/{tag}/{part}/add")
        builder.node("Add", f"{owner}/{tag}/{part}/residual_Add", [a.tensor, b.tensor], [summed],
                     doc=f"residual Add {step.node}, on the {part} channels")
        if common:
            cache[key] = summed
        out.append(_Block(summed, a.units, common))
    return out


def _domains(models: Sequence[onnx.ModelProto], opset: int) -> list[onnx.OperatorSetIdProto]:
    versions: dict[str, int] = {"": opset}
    for m in models:
        for entry in m.opset_import:
            if entry.domain in ("", "ai.onnx"):
                continue
            versions[entry.domain] = max(versions.get(entry.domain, 0), int(entry.version))
    return [onnx.helper.make_opsetid(d, v) for d, v in sorted(versions.items())]
