"""Top-1 accuracy of an ONNX classifier on labelled data, batched through onnxruntime (task metrics
of single and zipped models, agreement with the originals included: :mod:`onnx_zip.finetune.evaluation`)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from onnx_zip import runtime
from onnx_zip.data import Dataset, TensorSpec, batch_slices, load_dataset, model_outputs
from onnx_zip.errors import DataError, ModelError
from onnx_zip.model_io import load_model


@dataclass(frozen=True)
class Accuracy:
    """The result of :func:`evaluate`.

    Attributes:
        accuracy: Fraction of samples whose argmax equals the label, in [0, 1].
        correct: Number of correctly classified samples.
        count: Number of samples.
        output: The output that was scored.
    """

    accuracy: float
    correct: int
    count: int
    output: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def score_output(outputs: list[TensorSpec], requested: str | None, *, label: str) -> str:
    """Choose the output to score: the requested one, or the first float output of rank 2.

    Raises:
        ModelError: the requested output does not exist, or no output looks like class scores.
    """
    names = [o.name for o in outputs]
    if requested is not None:
        if requested not in names:
            raise ModelError(f"{label}: no output named {requested!r}", hint=f"outputs are {names}")
        return requested
    for spec in outputs:
        if np.issubdtype(spec.dtype, np.floating) and (spec.shape is None or len(spec.shape) == 2):
            return spec.name
    raise ModelError(f"{label}: no output of class scores (float, rank 2)", hint=f"choose one of {names} with --output")


def count_correct(scores: np.ndarray, labels: np.ndarray, *, source: str) -> int:
    """Number of rows of ``scores`` (N, C) whose argmax equals ``labels`` (N,).

    Raises:
        DataError: a label is outside ``[0, C)``.
    """
    if scores.ndim != 2:
        raise DataError(f"{source}: scores must be (N, C), got shape {scores.shape}")
    classes = scores.shape[1]
    if labels.min() < 0 or labels.max() >= classes:
        raise DataError(
            f"{source}: labels range over [{labels.min()}, {labels.max()}] but the model has {classes} classes"
        )
    return int((scores.argmax(axis=1) == labels).sum())


def evaluate_dataset(
    model: onnx.ModelProto,
    dataset: Dataset,
    *,
    output: str | None = None,
    batch_size: int = 256,
    threads: int | None = None,
    label: str = "model",
) -> Accuracy:
    """Top-1 accuracy of ``model`` on ``dataset`` (labels required)."""
    labels = dataset.require_labels()
    name = score_output(model_outputs(model), output, label=label)
    session = runtime.make_session(model, threads=threads)
    correct = 0
    for part in batch_slices(len(dataset), batch_size):
        feed = {k: v[part] for k, v in dataset.inputs.items()}
        (scores,) = session.run([name], feed)
        correct += count_correct(np.asarray(scores), labels[part], source=dataset.source)
    return Accuracy(accuracy=correct / len(dataset), correct=correct, count=len(dataset), output=name)


def evaluate(
    model_path: str | os.PathLike[str],
    data_path: str | os.PathLike[str],
    *,
    output: str | None = None,
    batch_size: int = 256,
    threads: int | None = None,
) -> Accuracy:
    """Top-1 accuracy of an ONNX classifier file on a labelled ``.npz`` file.

    Args:
        model_path: The ``.onnx`` model.
        data_path: An ``.npz`` with the model's inputs and ``label``.
        output: The output holding class scores (default: the first float rank-2 output).
        batch_size: Samples per session run.
        threads: onnxruntime intra-op threads.
    """
    model = load_model(model_path)
    dataset = load_dataset(data_path, model, need_labels=True)
    return evaluate_dataset(
        model, dataset, output=output, batch_size=batch_size, threads=threads, label=f"model {model_path}"
    )
