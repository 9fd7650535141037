"""Extract one task's model from a zipped model: only the nodes and weights that task needs."""

from __future__ import annotations

import os

import onnx
import onnx_graphsurgeon as gs

from onnx_zip.errors import InputError
from onnx_zip.model_io import load_model, save_model
from onnx_zip.zipper.report import read_metadata, write_metadata


def zipped_tasks(model: onnx.ModelProto, *, label: str = "model") -> list[str]:
    """The task names recorded in a zipped model's metadata.

    Raises:
        InputError: the model was not written by ``onnx-zip zip``.
    """
    tasks = read_metadata(model).get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise InputError(f"{label}: not a zipped model (no onnx_zip.tasks metadata)", hint="pass a model written by onnx-zip zip")
    return [str(t) for t in tasks]


def extract_task(model: onnx.ModelProto, task: str, *, label: str = "model") -> onnx.ModelProto:
    """A single-task model: the outputs ``<task>/...`` and everything they depend on.

    Args:
        model: A zipped model.
        task: One of its task names.

    Returns:
        The extracted model; its metadata names the task it was extracted for.
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


def extract_file(
    zipped_path: str | os.PathLike[str], task: str, output: str | os.PathLike[str]
) -> onnx.ModelProto:
    """Read a zipped model, extract ``task`` and write it atomically to ``output``."""
    model = load_model(zipped_path)
    return save_model(extract_task(model, task, label=f"model {zipped_path}"), output)


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
        single = extract_task(model, task)
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
