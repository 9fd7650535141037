"""Which tasks a model has, which output each task trains, and each task's data.

A zipped model names its outputs ``<task>/<original output>`` and records its task names in
the ``onnx_zip.tasks`` metadata. A model without that record (an ordinary single-task
model) is one task, named by the caller.

Graph inputs are either *shared* (one input every task reads: the zipper's default) or
*per task* (``<task>/<input>``, from ``zip --separate-inputs``); a model mixing the two is
refused. Each task's data is bound to the original input names (the names without the
``<task>/`` prefix), so the npz files that fed the original models feed the zipped one.

Labels depend on the loss:

* ``ce`` (softmax cross-entropy): ``(N,)`` integer class indices in ``[0, C)`` for an
  output of shape ``(N, C)``;
* ``bce`` (binary cross-entropy with logits): ``(N, K)`` floats in ``[0, 1]`` for an
  output of shape ``(N, K)``;
* ``mse`` (mean squared error): floats of the output's shape ``(N, ...)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnx_zip.data import LABEL_KEY, Dataset, TensorSpec, bind_arrays, load_npz, model_inputs, model_outputs
from onnx_zip.errors import DataError, InputError, ModelError
from onnx_zip.zipper.report import read_metadata

LOSSES = ("ce", "bce", "mse")

#: What a task's data may be: a Dataset, an ``.npz`` path, or arrays by name (``label`` included).
TaskData = Dataset | str | os.PathLike | Mapping[str, np.ndarray]


@dataclass(frozen=True)
class TaskSpec:
    """One task of the model to fine-tune.

    Attributes:
        name: The task name.
        output: The graph output the task's loss reads, shape ``(N, ...)``.
        inputs: ``{graph input name: data name}``: the graph inputs this task feeds, keyed to
            the array names of its data (the input name without the ``<task>/`` prefix).
        loss: ``ce``, ``bce`` or ``mse`` (the label loss).
        weight: The task's weight in the summed loss.
        tensor: The tensor the losses read: ``output``, or the input of its final
            Softmax/LogSoftmax/Sigmoid (empty: ``output``).
        distill: ``kd`` or ``mse`` against the teacher's tensor, or ``None`` (no teacher).
        alpha: Weight of the label loss; the distillation loss has ``1 - alpha`` (1: labels only,
            0: distillation only).
        temperature: The ``kd`` temperature.
    """

    name: str
    output: str
    inputs: dict[str, str]
    loss: str
    weight: float
    tensor: str = ""
    distill: str | None = None
    alpha: float = 1.0
    temperature: float = 1.0

    @property
    def loss_tensor(self) -> str:
        """The tensor the losses read."""
        return self.tensor or self.output

    @property
    def uses_labels(self) -> bool:
        """The label loss takes part (``alpha > 0``)."""
        return self.alpha > 0


@dataclass
class TaskBatchData:
    """A task's bound training or evaluation data.

    Attributes:
        inputs: ``{graph input name: (N, ...) array}``.
        targets: ``(N,)`` int64 class indices (``ce``) or ``(N, ...)`` float32 targets; ``None``
            when the task learns from its teacher only.
        source: Where the data came from, for messages.
    """

    inputs: dict[str, np.ndarray]
    targets: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])


def model_tasks(model: onnx.ModelProto, requested: list[str], *, label: str) -> list[str]:
    """The model's task names: ``onnx_zip.tasks`` of a zipped model, else the one requested name.

    Raises:
        InputError: a requested task is not in the model, a task lacks data, or a model
            without task metadata is given data for more than one task.
    """
    recorded = read_metadata(model).get("tasks")
    if not recorded:
        if len(requested) != 1:
            raise InputError(
                f"{label}: not a zipped model (no onnx_zip.tasks metadata), so it is one task, "
                f"but data was given for {len(requested)} tasks {requested}",
                hint="give one --train NAME=FILE for a single-task model",
            )
        return list(requested)
    tasks = [str(t) for t in recorded]
    unknown = [t for t in requested if t not in tasks]
    if unknown:
        raise InputError(f"{label}: unknown task {unknown[0]!r}", hint=f"the model's tasks are {tasks}")
    missing = [t for t in tasks if t not in requested]
    if missing:
        raise InputError(
            f"{label}: no training data for task {missing[0]!r}; joint fine-tuning needs every task "
            "(the shared weights serve them all)",
            hint=f"give --train for each of {tasks}",
        )
    return tasks


def task_outputs(model: onnx.ModelProto, task: str, *, zipped: bool) -> list[TensorSpec]:
    """The graph outputs that belong to a task (``<task>/...``; every output when not zipped)."""
    outputs = model_outputs(model)
    if not zipped:
        return outputs
    return [o for o in outputs if o.name.startswith(f"{task}/")]


def choose_output(outputs: list[TensorSpec], task: str, loss: str, *, label: str) -> str:
    """The output a task's loss reads: the first float output (of rank 2 for ``ce``/``bce``).

    Raises:
        ModelError: the task has no suitable output.
    """
    for spec in outputs:
        rank_ok = spec.shape is None or loss == "mse" or len(spec.shape) == 2
        if np.issubdtype(spec.dtype, np.floating) and rank_ok:
            return spec.name
    names = [o.name for o in outputs]
    raise ModelError(
        f"{label}: task {task!r} has no float output of rank 2 for the {loss} loss (its outputs: {names})",
        hint="use --loss TASK=mse for outputs of another rank",
    )


def task_inputs(model: onnx.ModelProto, tasks: list[str], *, label: str) -> tuple[bool, dict[str, dict[str, str]]]:
    """Whether the inputs are shared, and per task ``{graph input: data name}``.

    Raises:
        ModelError: some inputs are per task and others are not.
    """
    names = [s.name for s in model_inputs(model)]
    owned = {n: next((t for t in tasks if n.startswith(f"{t}/")), None) for n in names}
    if all(owner is None for owner in owned.values()) or len(tasks) == 1 and not any(owned.values()):
        return True, {t: {n: n for n in names} for t in tasks}
    if any(owner is None for owner in owned.values()):
        shared = [n for n, o in owned.items() if o is None]
        raise ModelError(
            f"{label}: mixes shared inputs {shared} with per-task inputs; fine-tuning supports one or the other"
        )
    return False, {t: {n: n[len(t) + 1 :] for n, o in owned.items() if o == t} for t in tasks}


def _raw_arrays(data: TaskData, task: str) -> tuple[dict[str, np.ndarray], np.ndarray | None, str]:
    if isinstance(data, Dataset):
        return dict(data.inputs), data.labels, data.source
    if isinstance(data, (str, os.PathLike, Path)):
        arrays = load_npz(data)
        source = f"task {task} data {data}"
    elif isinstance(data, Mapping):
        arrays = {k: np.asarray(v) for k, v in data.items()}
        source = f"task {task} arrays"
    else:
        raise InputError(f"task {task}: data must be a Dataset, an .npz path or a mapping of arrays, got "
            f"{type(data).__name__}")
    labels = arrays.pop(LABEL_KEY, None)
    return arrays, labels, source


def has_labels(data: TaskData) -> bool:
    """Whether a task's data holds labels (an ``.npz`` is read for its key list only)."""
    if isinstance(data, Dataset):
        return data.labels is not None
    if isinstance(data, (str, os.PathLike, Path)):
        try:
            with np.load(data, allow_pickle=False) as archive:
                return LABEL_KEY in archive.files
        except (OSError, ValueError):
            return True  # unreadable: the binding step reports it
    if isinstance(data, Mapping):
        return LABEL_KEY in data
    return True


def check_targets(
    labels: np.ndarray | None, loss: str, out_shape: tuple[int, ...], count: int, *, task: str, output: str, source: str
) -> np.ndarray:
    """Validate a task's labels against its loss and output shape and return them typed.

    Args:
        labels: The ``label`` array (or ``None``).
        loss: ``ce``, ``bce`` or ``mse``.
        out_shape: The output's shape for one sample, ``(1, ...)``.
        count: The number of samples of the inputs.

    Raises:
        DataError: labels are missing, of the wrong kind, shape or count, or out of range.
    """
    if labels is None:
        raise DataError(f"{source}: no {LABEL_KEY!r} array for task {task!r}", hint=f"add the targets as {LABEL_KEY!r}")
    labels = np.asarray(labels)
    if labels.ndim == 0 or labels.shape[0] != count:
        raise DataError(f"{source}: {labels.shape[0] if labels.ndim else 0} labels for {count} samples")
    if loss == "ce":
        classes = out_shape[-1]
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"{source}: the ce loss of output {output!r} needs (N,) integer class indices, got "
                f"{labels.dtype} {labels.shape}",
                hint="use --loss TASK=bce for (N, K) float attribute labels",
            )
        if len(out_shape) != 2:
            raise DataError(f"{source}: the ce loss needs an (N, C) output, {output!r} has shape (N, {out_shape[1:]})")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= classes:
            raise DataError(
                f"{source}: labels range over [{low}, {high}] but output {output!r} has {classes} classes",
                hint=f"labels must be class indices in [0, {classes - 1}]",
            )
        return labels.astype(np.int64)
    want = (count,) + tuple(out_shape[1:])
    kind = "bce" if loss == "bce" else "mse"
    if not np.issubdtype(labels.dtype, np.floating):
        raise DataError(
            f"{source}: the {kind} loss of output {output!r} needs float targets of shape {want}, got "
            f"{labels.dtype} {labels.shape}",
            hint="use --loss TASK=ce for integer class labels" if labels.ndim == 1 else "store the targets as float32",
        )
    if labels.shape != want:
        raise DataError(
            f"{source}: the {kind} loss of output {output!r} needs targets of shape {want}, got {labels.shape}"
        )
    if not np.isfinite(labels).all():
        raise DataError(f"{source}: targets hold NaN or Inf values", hint="clean the data")
    if loss == "bce" and (labels.min() < 0 or labels.max() > 1):
        raise DataError(f"{source}: bce targets must lie in [0, 1], got [{labels.min()}, {labels.max()}]")
    return labels.astype(np.float32)


def bind_inputs(
    model: onnx.ModelProto, spec: TaskSpec, data: TaskData
) -> tuple[dict[str, np.ndarray], np.ndarray | None, str]:
    """Bind a task's data to its graph inputs.

    Returns:
        ``({graph input: (N, ...) array}, the raw label array or None, source for messages)``.

    Raises:
        DataError: an input is missing or does not fit the model.
    """
    arrays, labels, source = _raw_arrays(data, spec.name)
    all_specs = {s.name: s for s in model_inputs(model)}
    specs = [TensorSpec(local, all_specs[graph].dtype, all_specs[graph].shape) for graph, local in spec.inputs.items()]
    bound = bind_arrays(arrays, specs, source=source)
    return {graph: bound.inputs[local] for graph, local in spec.inputs.items()}, labels, source


def filler_feeds(model: onnx.ModelProto, count: int, skip: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Zeros of ``count`` samples for every graph input not in ``skip`` (another task's input)."""
    feeds = {}
    for value in model_inputs(model):
        if value.name not in skip:
            dims = [count] + [1 if d is None else d for d in (value.shape or (1,))[1:]]
            feeds[value.name] = np.zeros(dims, dtype=value.dtype)
    return feeds


def output_shapes(
    model: onnx.ModelProto, specs: list[TaskSpec], inputs: Mapping[str, Mapping[str, np.ndarray]], *, shared: bool
) -> dict[str, tuple[int, ...]]:
    """Each task's loss tensor shape for one sample ``(1, ...)``, from one forward pass (declared shapes lie)."""
    from onnx_zip import runtime  # noqa: PLC0415 - keeps this module importable without a runtime
    from onnx_zip.finetune.distill import with_outputs  # noqa: PLC0415

    if shared:
        names = list(next(iter(inputs.values())))
        feeds = {n: np.concatenate([inputs[s.name][n][:1] for s in specs]) for n in names}
    else:
        feeds = {n: a[:1] for s in specs for n, a in inputs[s.name].items()}
    feeds.update(filler_feeds(model, 1, feeds))
    names = [s.loss_tensor for s in specs]
    outs = runtime.make_session(with_outputs(model, names), threads=1).run(names, feeds)
    return {s.name: (1, *np.asarray(o).shape[1:]) for s, o in zip(specs, outs)}
