"""Data in: model input signatures, labelled ``.npz`` files and batch readers.

A data file is an ``.npz`` with one array per model input, keyed by the input's name,
plus ``label`` (integer class indices) where labels are needed. For a single-input model
a file whose only non-label array has another name is accepted too (so is a bare ``.npy``
array). Files are read by :mod:`onnx_zip.data_files`: sizes checked before reading, a byte
limit, nothing unpickled.

Readers follow onnxruntime's ``CalibrationDataReader`` protocol: ``get_next()`` returns a
dict ``{input name: array}`` for the next batch, or ``None`` when the data is exhausted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnx

from onnx_zip.data_files import read_arrays
from onnx_zip.errors import DataError
from onnx_zip.paths import register_input

LABEL_KEY = "label"


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, numpy dtype and shape (``None`` for a dynamic dim)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None

    def describe(self) -> str:
        dims = "?" if self.shape is None else "x".join("N" if d is None else str(d) for d in self.shape)
        return f"{self.name} ({self.dtype}, {dims})"


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor_type = value.type.tensor_type
    dtype = (
        np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        if tensor_type.elem_type
        else np.dtype("float32")
    )
    shape: tuple[int | None, ...] | None = None
    if tensor_type.HasField("shape"):
        shape = tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
    return TensorSpec(value.name, dtype, shape)


def model_inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    """The model's real inputs (graph inputs that are not initializers), in order."""
    initializers = {t.name for t in model.graph.initializer}
    return [_spec(v) for v in model.graph.input if v.name not in initializers]


def model_outputs(model: onnx.ModelProto) -> list[TensorSpec]:
    """The model's graph outputs, in order."""
    return [_spec(v) for v in model.graph.output]


def load_npz(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` file (or the one array of an ``.npy`` file), with limits.

    Sizes are checked from the zip directory and the ``.npy`` headers before any array is
    allocated (see :mod:`onnx_zip.data_files`); object arrays and pickles are refused. The file
    is recorded as an input (:func:`onnx_zip.paths.register_input`).

    Args:
        path: The data file.
        max_bytes: Limit on the bytes the file holds once read (default
            :data:`~onnx_zip.data_files.MAX_CALIB_BYTES`, or the active
            :func:`~onnx_zip.data_files.byte_limit`).

    Raises:
        DataError: the file is missing, not an npz/npy (named for what it is), holds object
            arrays, lies about its sizes or is over the limit.
    """
    arrays = read_arrays(path, max_bytes=max_bytes)
    register_input(path)
    return arrays


def _check_array(array: np.ndarray, spec: TensorSpec, source: str) -> None:
    if array.dtype != spec.dtype:
        raise DataError(
            f"{source}: array {spec.name!r} has dtype {array.dtype}, the model expects {spec.dtype}",
            hint=f"convert it with .astype(np.{spec.dtype})",
        )
    if spec.shape is not None:
        if array.ndim != len(spec.shape):
            raise DataError(
                f"{source}: array {spec.name!r} has shape {array.shape}, the model expects {spec.describe()}"
            )
        for axis, (have, want) in enumerate(zip(array.shape, spec.shape)):
            if axis > 0 and want is not None and have != want:
                raise DataError(
                    f"{source}: array {spec.name!r} has shape {array.shape}, the model expects {spec.describe()}"
                )
    if array.ndim == 0 or array.shape[0] == 0:
        raise DataError(f"{source}: array {spec.name!r} holds no samples")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise DataError(f"{source}: array {spec.name!r} holds {bad} NaN or Inf values", hint="clean the data")


@dataclass
class Dataset:
    """Model inputs and optional labels, all with the same number of samples.

    Attributes:
        inputs: ``{input name: (N, ...) array}`` keyed and typed as the model expects.
        labels: ``(N,)`` int64 class indices, or ``None``.
        source: Where the data came from, for messages.
    """

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def require_labels(self) -> np.ndarray:
        if self.labels is None:
            raise DataError(f"{self.source}: no {LABEL_KEY!r} array", hint=f"add the class indices as {LABEL_KEY!r}")
        return self.labels

    def take(self, limit: int | None) -> Dataset:
        """The first ``limit`` samples (all when ``None``)."""
        if limit is None or limit >= len(self):
            return self
        labels = None if self.labels is None else self.labels[:limit]
        return Dataset({k: v[:limit] for k, v in self.inputs.items()}, labels, self.source)


def bind_arrays(
    arrays: Mapping[str, np.ndarray],
    specs: list[TensorSpec],
    *,
    source: str,
    need_labels: bool = False,
) -> Dataset:
    """Match named arrays to a model's inputs and validate them.

    Args:
        arrays: Arrays by name (for example the contents of an npz file).
        specs: The model's inputs (see :func:`model_inputs`).
        source: Where the arrays came from, for messages.
        need_labels: Require a ``label`` array.

    Raises:
        DataError: an input is missing, a dtype or shape does not fit, a value is NaN/Inf,
            labels are missing, not integers, or their count differs.
    """
    data_keys = [k for k in arrays if k != LABEL_KEY]
    bound: dict[str, np.ndarray] = {}
    if len(specs) == 1 and specs[0].name not in arrays and len(data_keys) == 1:
        bound[specs[0].name] = np.asarray(arrays[data_keys[0]])
    else:
        for spec in specs:
            if spec.name not in arrays:
                raise DataError(
                    f"{source}: no array named {spec.name!r} for the model input {spec.describe()}",
                    hint=f"the file has {sorted(arrays) or 'no arrays'}; store the input under its name",
                )
            bound[spec.name] = np.asarray(arrays[spec.name])
    for spec in specs:
        _check_array(bound[spec.name], spec, source)
    counts = {name: a.shape[0] for name, a in bound.items()}
    if len(set(counts.values())) > 1:
        raise DataError(f"{source}: inputs have different sample counts {counts}")
    labels = None
    if LABEL_KEY in arrays:
        labels = np.asarray(arrays[LABEL_KEY])
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"{source}: {LABEL_KEY!r} must be a 1-D array of integer class indices, got {labels.dtype} "
                f"{labels.shape}"
            )
        n = next(iter(counts.values()))
        if labels.shape[0] != n:
            raise DataError(f"{source}: {labels.shape[0]} labels for {n} samples")
        labels = labels.astype(np.int64)
    elif need_labels:
        raise DataError(f"{source}: no {LABEL_KEY!r} array", hint=f"add the class indices as {LABEL_KEY!r}")
    return Dataset(bound, labels, source)


def load_dataset(
    path: str | os.PathLike[str], model: onnx.ModelProto, *, need_labels: bool = False, max_bytes: int | None = None
) -> Dataset:
    """Read an npz file (see :func:`load_npz`) and bind it to a model's inputs (see :func:`bind_arrays`)."""
    arrays = load_npz(path, max_bytes=max_bytes)
    return bind_arrays(arrays, model_inputs(model), source=f"data {path}", need_labels=need_labels)


class DataReader(Protocol):
    """onnxruntime's ``CalibrationDataReader`` protocol."""

    def get_next(self) -> dict[str, np.ndarray] | None: ...


class ArrayReader:
    """A :class:`DataReader` over in-memory arrays, in fixed-size batches.

    Args:
        dataset: The data to read.
        batch_size: Samples per batch.
        limit: Read at most this many samples.
    """

    def __init__(self, dataset: Dataset, *, batch_size: int = 256, limit: int | None = None) -> None:
        if batch_size < 1:
            raise DataError(f"batch size must be positive, got {batch_size}")
        self.dataset = dataset.take(limit)
        self.batch_size = batch_size
        self._start = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._start >= len(self.dataset):
            return None
        stop = self._start + self.batch_size
        batch = {k: v[self._start : stop] for k, v in self.dataset.inputs.items()}
        self._start = stop
        return batch

    def rewind(self) -> None:
        self._start = 0


def iterate(reader: DataReader) -> Iterator[dict[str, np.ndarray]]:
    """Yield the batches of a reader until it returns ``None``."""
    while (batch := reader.get_next()) is not None:
        yield batch


def batch_slices(count: int, batch_size: int) -> Iterator[slice]:
    """Slices ``[0:b], [b:2b], ...`` covering ``count`` samples."""
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))
