"""Task metrics of single and zipped models: accuracy where the data has labels, agreement with the
task's original model where one is given (one evaluator for ``eval``, ``finetune --eval`` and tests)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx

from onnx_zip import runtime
from onnx_zip.data import TensorSpec, batch_slices, model_inputs, model_outputs
from onnx_zip.errors import ModelError
from onnx_zip.evaluate import score_output
from onnx_zip.finetune.tasks import TaskSpec, bind_inputs, filler_feeds, task_inputs, task_outputs
from onnx_zip.metrics import TaskMeter
from onnx_zip.model_io import load_model
from onnx_zip.zipper.report import read_metadata


@dataclass(frozen=True)
class TaskEvaluation:
    """One task's metrics (:func:`evaluate_tasks_metrics`).

    Attributes:
        task: The task.
        output: The output scored.
        source: The data it was scored on.
        reference: The original model compared with (``None``: none).
        metrics: ``{metric: value}`` (:class:`~onnx_zip.metrics.TaskMeter`).
    """

    task: str
    output: str
    source: str
    reference: str | None
    metrics: dict[str, float | int]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _reference_run(
    original: onnx.ModelProto | str | os.PathLike[str], output: str, threads: int | None
) -> tuple[Any, str, list[str]]:
    """A session of the original model, the output matching ``output`` and its input names.

    Raises:
        ModelError: the original has no such output.
    """
    proto = original if isinstance(original, onnx.ModelProto) else load_model(original)
    names = [o.name for o in model_outputs(proto)]
    if output not in names:
        raise ModelError(
            f"original {original if not isinstance(original, onnx.ModelProto) else 'model'} has no output "
            f"{output!r} (its outputs: {names})",
            hint="give the task's original model",
        )
    inputs = [v.name for v in model_inputs(proto)]
    return runtime.make_session(proto, threads=threads), output, inputs


def _is_map(model: onnx.ModelProto, output: str) -> bool:
    """The output is a Sigmoid's (a probability map or score): compare by IoU, not argmax."""
    return any(output in n.output and n.op_type == "Sigmoid" for n in model.graph.node)


def evaluate_tasks_metrics(
    model: onnx.ModelProto | str | os.PathLike[str],
    data: Mapping[str, Any],
    *,
    references: Mapping[str, Any] | None = None,
    outputs: Mapping[str, str] | None = None,
    batch_size: int = 256,
    threads: int | None = None,
    lenient_labels: bool = False,
) -> dict[str, TaskEvaluation]:
    """Metrics of each task of a zipped (or single-task) model on its data: accuracy where the data has
    integer labels, agreement with the task's original model where one is given.

    Args:
        model: The model or its path.
        data: ``{task: Dataset | .npz path | arrays}`` (labels optional).
        references: ``{task: original model or path}`` to compare with.
        outputs: ``{task: output name}`` (default: the task's first float output of rank 2, else
            its first float output).
        batch_size: Samples per session run.
        threads: onnxruntime intra-op threads.
        lenient_labels: Labels that do not fit a task's classes give no accuracy instead of an
            error (one data file scored by every task).

    Returns:
        ``{task: TaskEvaluation}``, in ``data``'s order.

    Raises:
        InputError: unknown tasks or outputs, data that does not fit, an original that does not match.
    """
    proto = model if isinstance(model, onnx.ModelProto) else load_model(model)
    label = "model" if isinstance(model, onnx.ModelProto) else f"model {model}"
    recorded = [str(t) for t in read_metadata(proto).get("tasks") or []]
    tasks = list(data)
    unknown = [t for t in tasks if recorded and t not in recorded] or ([] if recorded or len(tasks) == 1 else tasks)
    if unknown:
        raise ModelError(
            f"{label}: no task {unknown[0]!r}" if recorded else f"{label} is one task; got data for {tasks}",
            hint=f"its tasks are {recorded}" if recorded else None,
        )
    _, inputs = task_inputs(proto, recorded or tasks, label=label)
    session = runtime.make_session(proto, threads=threads)
    out: dict[str, TaskEvaluation] = {}
    for task in tasks:
        candidates = task_outputs(proto, task, zipped=bool(recorded))
        name = _task_output(candidates, (outputs or {}).get(task), label)
        spec = TaskSpec(task, name, inputs[task], "ce", 1.0)
        feeds_all, labels, source = bind_inputs(proto, spec, data[task])
        ref = None
        if references and references.get(task) is not None:
            ref = _reference_run(references[task], name[len(task) + 1 :] if recorded else name, threads)
        meter = TaskMeter(task, maps=_is_map(proto, name), lenient=lenient_labels)
        for part in batch_slices(len(next(iter(feeds_all.values()))), batch_size):
            feeds = {k: v[part] for k, v in feeds_all.items()}
            feeds.update(filler_feeds(proto, next(iter(feeds.values())).shape[0], feeds))
            (scores,) = session.run([name], feeds)
            reference = None
            if ref is not None:
                local = {spec.inputs[k]: v for k, v in feeds.items() if k in spec.inputs}
                (reference,) = ref[0].run([ref[1]], {k: local[k] for k in ref[2]})
            meter.update(np.asarray(scores), None if labels is None else np.asarray(labels)[part], reference)
        original = (references or {}).get(task)
        ref_name = None if ref is None else "model" if isinstance(original, onnx.ModelProto) else str(original)
        out[task] = TaskEvaluation(task, name, source, ref_name, meter.result())
    return out


def _task_output(candidates: list[TensorSpec], requested: str | None, label: str) -> str:
    """The requested output, else the first float rank-2 output, else the first float output (maps).

    Raises:
        ModelError: no such output, or no float output at all.
    """
    if requested is not None or any(
        np.issubdtype(o.dtype, np.floating) and (o.shape is None or len(o.shape) == 2) for o in candidates
    ):
        return score_output(candidates, requested, label=label)
    floats = [o.name for o in candidates if np.issubdtype(o.dtype, np.floating)]
    if not floats:
        raise ModelError(f"{label}: no float output to score", hint=f"outputs are {[o.name for o in candidates]}")
    return floats[0]
