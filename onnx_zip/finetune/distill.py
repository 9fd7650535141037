"""Distillation from the original models: teachers, the tensor each loss reads, default teachers.

Each task of a zipped model comes from an original model (its *teacher*). Without labels, the
task's head learns the teacher's outputs on unlabeled data:

* the loss reads the *pre-activation* tensor of an output produced by ``Softmax``,
  ``LogSoftmax`` or ``Sigmoid`` (:func:`pre_activation`), in the student and in the teacher;
* ``kd``: KL divergence between temperature-softened distributions, for classifiers
  (rank-2 logits), scaled by ``T²`` so gradients keep their size across temperatures;
* ``mse``: mean squared error against the teacher's tensor, for maps, scores, embeddings.

Teacher outputs are computed per batch by an onnxruntime ``InferenceSession`` of the original
(:class:`Teacher`); they are never stored for the whole data set.

A zipped model records its sources (``onnx_zip.sources``: ``{task: {"file", "sha256"}}``);
:func:`recorded_teachers` finds those files next to the zipped model or in the working folder
and uses them when their SHA-256 still matches.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnx_zip import runtime
from onnx_zip.data import model_inputs, model_outputs
from onnx_zip.errors import InputError
from onnx_zip.model_io import load_model, sha256_file
from onnx_zip.zipper.report import read_metadata

logger = logging.getLogger(__name__)

#: Activations whose input is the tensor a loss should read.
ACTIVATIONS = ("Softmax", "LogSoftmax", "Sigmoid")
DISTILL_LOSSES = ("kd", "mse")


@dataclass(frozen=True)
class LossTensor:
    """The tensor a task's loss reads.

    Attributes:
        name: The tensor (a graph output, or the input of its final activation).
        activation: ``Softmax``, ``LogSoftmax``, ``Sigmoid`` when ``name`` is that activation's
            input, else ``None``.
    """

    name: str
    activation: str | None


def pre_activation(model: onnx.ModelProto, output: str) -> LossTensor:
    """The tensor before ``output``'s final ``Softmax``/``LogSoftmax``/``Sigmoid`` (if any)."""
    for node in model.graph.node:
        if output in node.output:
            if node.op_type in ACTIVATIONS and node.domain in ("", "ai.onnx"):
                return LossTensor(node.input[0], node.op_type)
            break
    return LossTensor(output, None)


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the tensors ``names`` (float32, shape unknown)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    for name in names:
        if name not in present:
            out.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
            present.add(name)
    return out


def default_distill_loss(tensor: LossTensor, shape: tuple[int, ...]) -> str:
    """``kd`` for class scores (rank-2 logits of a Softmax, or any rank-2 output with >= 2 columns
    that is not a Sigmoid's input), else ``mse`` (maps, scores, embeddings).

    Args:
        shape: The tensor's shape for one sample, ``(1, ...)``.
    """
    if len(shape) == 2 and shape[1] >= 2 and tensor.activation != "Sigmoid":
        return "kd"
    return "mse"


class Teacher:
    """One original model run by onnxruntime, giving the tensor a task's loss learns.

    Args:
        model: The original model.
        output: Its graph output matching the task's output.
        activation: The student's final activation: the teacher's output must be produced by the
            same op, and its input is the target (``None``: the output itself).
        label: The teacher's name for messages.
        threads: onnxruntime intra-op threads.

    Raises:
        InputError: the teacher has no such output, or not produced by ``activation``.
    """

    def __init__(
        self, model: onnx.ModelProto, output: str, activation: str | None, *, label: str, threads: int | None
    ) -> None:
        names = [o.name for o in model_outputs(model)]
        if output not in names:
            raise InputError(f"teacher {label} has no output {output!r} (its outputs: {names})",
                             hint="give the original model of this task with --teacher TASK=ORIGINAL.onnx")
        tensor = pre_activation(model, output)
        if tensor.activation != activation:
            raise InputError(
                f"teacher {label}: output {output!r} comes from {tensor.activation or 'no activation'}, "
                f"the zipped task's from {activation or 'no activation'}", hint="give the task's original model")
        self.label = label
        self.tensor = tensor.name
        self.inputs = [s.name for s in model_inputs(model)]
        self._session = runtime.make_session(with_outputs(model, [tensor.name]), threads=threads)

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The target tensor ``(n, ...)`` float32 for a batch ``{input name: (n, ...) array}``."""
        (out,) = self._session.run([self.tensor], {k: inputs[k] for k in self.inputs})
        return np.asarray(out, dtype=np.float32)

    def check(self, inputs: Mapping[str, np.ndarray], shape: tuple[int, ...], *, task: str) -> None:
        """Refuse a teacher whose inputs or target shape do not fit the task.

        Args:
            inputs: A batch of the task's data ``{data name: (n, ...) array}``.
            shape: The student's loss tensor shape for one sample ``(1, ...)``.

        Raises:
            InputError: an input is missing from the data, or the shapes differ.
        """
        missing = [k for k in self.inputs if k not in inputs]
        if missing:
            raise InputError(f"teacher {label_of(self)} of task {task!r} reads {missing} that the task's data "
                             f"lacks (data arrays: {sorted(inputs)})", hint="give the task's original model")
        try:
            got = self({k: v[:1] for k, v in inputs.items()}).shape
        except Exception as exc:  # onnxruntime: shapes or types that do not fit
            raise InputError(f"teacher {label_of(self)} of task {task!r} cannot run on the task's data "
                             f"({str(exc).splitlines()[0][:200]})", hint="give the task's original model") from exc
        if tuple(got) != tuple(shape):
            raise InputError(f"teacher {label_of(self)} of task {task!r}: tensor {self.tensor!r} has shape "
                             f"{tuple(got)} per sample, the zipped task's {tuple(shape)}",
                             hint="give the task's original model with --teacher TASK=ORIGINAL.onnx")


def label_of(teacher: Teacher) -> str:
    """The teacher's name for messages."""
    return teacher.label


def recorded_teachers(model: onnx.ModelProto, model_path: str | os.PathLike[str] | None) -> dict[str, Path]:
    """The source models recorded in a zipped model's metadata that still exist unchanged.

    A recorded ``file`` is looked up as given, next to the zipped model, then in the working
    folder; it is used when its SHA-256 matches the record (else skipped, logged).

    Returns:
        ``{task: path}`` for the sources found.
    """
    sources = read_metadata(model).get("sources") or {}
    found: dict[str, Path] = {}
    if not isinstance(sources, Mapping):
        return found
    near = Path(model_path).parent if model_path is not None else None
    for task, src in sources.items():
        if not isinstance(src, Mapping) or not src.get("file"):
            continue
        name = Path(str(src["file"]))
        candidates = [name] + ([near / name.name] if near is not None else []) + [Path.cwd() / name.name]
        for path in candidates:
            if path.is_file():
                if src.get("sha256") and sha256_file(path) != src["sha256"]:
                    logger.warning("task %s: %s differs from the recorded source (SHA-256); not used as teacher",
                                   task, path)
                    continue
                found[str(task)] = path
                break
    return found


def warn_if_not_recorded(model: onnx.ModelProto, task: str, source: Any) -> bool:
    """Log a warning (and return True) when a teacher file is not the source model the zipped
    model records for ``task`` (another SHA-256): it may be another model with the same interface."""
    sources = read_metadata(model).get("sources") or {}
    record = sources.get(task) if isinstance(sources, Mapping) else None
    if isinstance(source, onnx.ModelProto) or not isinstance(record, Mapping) or not record.get("sha256"):
        return False
    path = Path(source)
    if not path.is_file() or sha256_file(path) == record["sha256"]:
        return False
    logger.warning("task %s: teacher %s is not the recorded source model %s (another SHA-256)",
                   task, path, record.get("file"))
    return True


def load_teacher(source: Any, output: str, activation: str | None, *, task: str, threads: int | None) -> Teacher:
    """A :class:`Teacher` from a path or a ``ModelProto``.

    Raises:
        InputError: the file cannot be read, or the teacher does not fit (see :class:`Teacher`).
    """
    if isinstance(source, onnx.ModelProto):
        return Teacher(source, output, activation, label=f"of task {task}", threads=threads)
    return Teacher(load_model(source), output, activation, label=str(source), threads=threads)
