"""Extract one task's model from a zipped model: only the nodes and weights that task needs.

:func:`task_subgraph` is the task's part of the zipped graph as it is (``<task>/...`` names, shared
weights referenced whole, so several tasks can still share them: fine-tuning and ``export-tasks``
use it). :func:`extract_task` makes a stand-alone model of it: every chain of constant-only nodes
(a ``Slice`` of a wider shared weight, a ``Concat`` of weight blocks) is folded into one plain
initializer holding only the task's rows and columns, so the model is never larger than the
original plus metadata, and the task's inputs and outputs get their original names back.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from onnx_zip.errors import InputError
from onnx_zip.model_io import load_model, save_model
from onnx_zip.zipper.report import read_metadata, write_metadata

#: Ops folded into an initializer when every input is constant: they only select, reorder or join
#: elements, so the folded tensor is never larger than what it replaces.
FOLDABLE_OPS = frozenset(
    {"Slice", "Concat", "Gather", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Flatten", "Split"}
)


def zipped_tasks(model: onnx.ModelProto, *, label: str = "model") -> list[str]:
    """The task names recorded in a zipped model's metadata.

    Raises:
        InputError: the model was not written by ``onnx-zip zip``.
    """
    tasks = read_metadata(model).get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise InputError(
            f"{label}: not a zipped model (no onnx_zip.tasks metadata)", hint="pass a model written by onnx-zip zip"
        )
    return [str(t) for t in tasks]


def task_subgraph(model: onnx.ModelProto, task: str, *, label: str = "model") -> onnx.ModelProto:
    """The outputs ``<task>/...`` and every node and initializer they depend on, names unchanged.

    Args:
        model: A zipped model.
        task: One of its task names.

    Returns:
        The task's model; its metadata names the task it was extracted for.

    Raises:
        InputError: ``model`` is not zipped or has no task ``task``.
    """
    tasks = zipped_tasks(model, label=label)
    if task not in tasks:
        raise InputError(f"{label}: no task {task!r}", hint=f"tasks are {tasks}")
    graph = gs.import_onnx(model)
    prefix = f"{task}/"
    graph.outputs = [out for out in graph.outputs if out.name.startswith(prefix)]
    graph.cleanup(remove_unused_graph_inputs=True).toposort()
    extracted = gs.export_onnx(graph)
    extracted.ir_version = model.ir_version
    del extracted.metadata_props[:]
    extracted.metadata_props.extend(model.metadata_props)
    meta = read_metadata(model)
    meta["extracted_task"] = task
    write_metadata(extracted, meta)
    extracted.producer_name = model.producer_name
    extracted.producer_version = model.producer_version
    return extracted


def extract_task(
    model: onnx.ModelProto, task: str, *, label: str = "model", keep_prefix: bool = True
) -> onnx.ModelProto:
    """A slim stand-alone model of one task: constant chains folded, only the task's weights.

    Args:
        model: A zipped model.
        task: One of its task names.
        keep_prefix: Keep the ``<task>/`` prefix of the inputs and outputs (``False``: the
            original models' names, as ``onnx-zip extract`` writes by default).

    Returns:
        The extracted model; its metadata names the task it was extracted for.
    """
    extracted = fold_constants(task_subgraph(model, task, label=label))
    if not keep_prefix:
        strip_task_prefix(extracted, task)
    return extracted


def extract_file(
    zipped_path: str | os.PathLike[str], task: str, output: str | os.PathLike[str], *, keep_prefix: bool = False
) -> onnx.ModelProto:
    """Read a zipped model, extract ``task`` (original names unless ``keep_prefix``) and write it atomically."""
    model = load_model(zipped_path)
    return save_model(extract_task(model, task, label=f"model {zipped_path}", keep_prefix=keep_prefix), output)


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace ``Constant`` nodes and every :data:`FOLDABLE_OPS` node whose inputs are all constant
    by initializers (in place).

    Nodes are visited in graph order, so chains fold whole. Initializers no longer used are
    dropped. Evaluated with onnx's reference implementation (exact: these ops copy elements).
    """
    graph = model.graph
    constants: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        ins = [n for n in node.input if n]
        foldable = node.op_type == "Constant" or (
            node.op_type in FOLDABLE_OPS and all(n in constants and n not in graph_inputs for n in ins)
        )
        if foldable and node.domain in ("", "ai.onnx"):
            for name, value in zip(node.output, _evaluate(model, node, constants)):
                constants[name] = numpy_helper.from_array(value, name)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    used = _used_names(kept, graph.output)
    originals = [t.name for t in graph.initializer]
    folded = [n for n in constants if n not in set(originals)]
    del graph.initializer[:]
    graph.initializer.extend(constants[n] for n in [*originals, *folded] if n in used)
    return model


def _evaluate(
    model: onnx.ModelProto, node: onnx.NodeProto, constants: Mapping[str, onnx.TensorProto]
) -> list[np.ndarray]:
    """The outputs of one node on constant inputs, by onnx's reference evaluator."""
    inputs = [n for n in node.input if n]
    single = onnx.helper.make_model(
        onnx.helper.make_graph(
            [node],
            "fold",
            [],
            [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output],
            initializer=[constants[n] for n in dict.fromkeys(inputs)],
        ),
        opset_imports=list(model.opset_import),
    )
    single.ir_version = model.ir_version
    return [np.asarray(v) for v in ReferenceEvaluator(single).run(None, {})]


def _used_names(nodes: Iterable[onnx.NodeProto], outputs: Iterable[onnx.ValueInfoProto]) -> set[str]:
    used = {o.name for o in outputs}
    for node in nodes:
        used.update(node.input)
    return used


def strip_task_prefix(model: onnx.ModelProto, task: str) -> dict[str, str]:
    """Give the graph inputs and outputs named ``<task>/<name>`` back their name ``<name>`` (in place).

    A tensor inside the graph that already carries a wanted name is renamed ``<name>__<k>``
    first, so the graph stays valid.

    Returns:
        ``{old name: new name}`` of the renamed inputs and outputs.
    """
    prefix = f"{task}/"
    wanted = {
        v.name: v.name[len(prefix) :] for v in [*model.graph.input, *model.graph.output] if v.name.startswith(prefix)
    }
    names = _all_names(model.graph)
    mapping: dict[str, str] = {}
    taken = set(names)
    for new in wanted.values():
        if new in names and new not in wanted:
            k = 1
            while f"{new}__{k}" in taken:
                k += 1
            mapping[new] = f"{new}__{k}"
            taken.add(mapping[new])
    mapping.update(wanted)
    rename_tensors(model.graph, mapping)
    return dict(wanted)


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer} | {v.name for v in [*graph.input, *graph.output, *graph.value_info]}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    names.discard("")
    return names


def rename_tensors(graph: onnx.GraphProto, mapping: Mapping[str, str]) -> None:
    """Rename tensors everywhere in ``graph`` (node inputs and outputs, graph inputs, outputs,
    value_info, initializers); names not in ``mapping`` are kept. Subgraphs are not visited."""
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = mapping.get(value.name, value.name)
    for tensor in graph.initializer:
        tensor.name = mapping.get(tensor.name, tensor.name)


def split_shared_input(model: onnx.ModelProto, tasks: list[str]) -> onnx.ModelProto:
    """The same computation with one input per task: ``<task>/<input>`` feeds only that task.

    Nodes that several tasks use (shared blocks computed once) are copied per task; every
    initializer keeps its name and is stored once, so the copies share their parameters (a
    shared weight gets the sum of the tasks' gradients in training). Graph outputs keep their
    names. This is what joint fine-tuning trains: each task's rows then flow through its own
    task-specific blocks only, instead of every task's rows through every block.
    """
    initializers = {t.name for t in model.graph.initializer}
    merged = onnx.ModelProto()
    merged.CopyFrom(model)
    graph = merged.graph
    del graph.node[:]
    del graph.input[:]
    del graph.output[:]
    del graph.value_info[:]
    del graph.initializer[:]
    seen: set[str] = set()
    for task in tasks:
        single = task_subgraph(model, task)
        outputs = {o.name for o in single.graph.output}
        inputs = {i.name for i in single.graph.input}

        def rename(name: str, task: str = task, outputs: set[str] = outputs, inputs: set[str] = inputs) -> str:
            if not name or name in initializers or name in outputs:
                return name
            return f"{task}/{name}" if name in inputs else f"{task}//{name}"

        for value in single.graph.input:
            if value.name not in initializers:
                renamed = graph.input.add()
                renamed.CopyFrom(value)
                renamed.name = rename(value.name)
        for node in single.graph.node:
            copy = graph.node.add()
            copy.CopyFrom(node)
            copy.name = f"{task}//{node.name}"
            copy.input[:] = [rename(n) for n in node.input]
            copy.output[:] = [rename(n) for n in node.output]
        graph.output.extend(single.graph.output)
        for tensor in single.graph.initializer:
            if tensor.name not in seen:
                seen.add(tensor.name)
                graph.initializer.append(tensor)
    return merged
