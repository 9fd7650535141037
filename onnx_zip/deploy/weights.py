"""External-data files: tensors stored one after the other, each at an offset aligned for mmap.

onnxruntime memory-maps an external initializer (instead of reading it into its own buffer) when
its offset is a multiple of the allocation granularity: 4096 bytes on Linux and macOS, 65536 on
Windows. Sessions that map the same file region then share the same physical pages, which is what
makes switching between the per-task models of one zipped model cheap. Tensors of at least
:data:`PAGE_ALIGN_FROM` bytes start on a :data:`PAGE` boundary; smaller ones (biases) on a
:data:`SMALL_ALIGNMENT` boundary, so padding stays small.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import onnx
from onnx import numpy_helper

#: Alignment of large tensors: the page size of Linux and macOS (Windows maps at 65536).
PAGE = 4096
#: Tensors at least this large (bytes) are page aligned.
PAGE_ALIGN_FROM = 4096
#: Alignment of smaller tensors (a cache line; enough for SIMD loads).
SMALL_ALIGNMENT = 64


@dataclass(frozen=True)
class Placement:
    """Where one tensor's bytes are in a weights file."""

    name: str
    offset: int
    length: int


def alignment_for(length: int) -> int:
    """The offset alignment of a tensor of ``length`` bytes."""
    return PAGE if length >= PAGE_ALIGN_FROM else SMALL_ALIGNMENT


def raw_bytes(tensor: onnx.TensorProto) -> bytes:
    """A tensor's data as ONNX raw_data bytes (little-endian)."""
    array = numpy_helper.to_array(tensor)
    return np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False)).tobytes()


def is_weight(tensor: onnx.TensorProto) -> bool:
    """Whether a tensor goes to a weights file: floating-point tensors (weights and biases).

    Integer tensors (Slice bounds, shapes, indices) stay inside the model: they are small, and
    shape inference (onnx's checker, onnxruntime's constant folding) must read them.
    """
    return bool(np.issubdtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type), np.floating))


def write_tensors(handle: BinaryIO, tensors: Sequence[onnx.TensorProto]) -> list[Placement]:
    """Append every tensor's bytes to ``handle`` (opened at offset 0), each aligned.

    Returns:
        One placement per tensor, in order; the file ends after the last tensor's bytes.
    """
    placements = []
    position = 0
    for tensor in tensors:
        data = raw_bytes(tensor)
        step = alignment_for(len(data))
        padding = -position % step
        handle.write(b"\0" * padding)
        position += padding
        handle.write(data)
        placements.append(Placement(tensor.name, position, len(data)))
        position += len(data)
    return placements


def point_to(tensor: onnx.TensorProto, location: str, placement: Placement) -> None:
    """Make ``tensor`` (in place) read its data from ``location`` at ``placement``."""
    tensor.ClearField("raw_data")
    for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        tensor.ClearField(field)
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(placement.offset)), ("length", str(placement.length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL


def file_size(path: str | os.PathLike[str]) -> int:
    """Bytes of a file."""
    return os.stat(path).st_size


@dataclass(frozen=True)
class ExternalTensor:
    """An initializer stored in an external-data file: where, and what it holds."""

    name: str
    location: str
    offset: int
    length: int
    dtype: np.dtype
    shape: tuple[int, ...]


def external_tensors(model: onnx.ModelProto) -> list[ExternalTensor]:
    """The model's initializers stored as external data (the model loaded without its data)."""
    found = []
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        found.append(ExternalTensor(
            name=tensor.name, location=entries["location"], offset=int(entries.get("offset", 0)),
            length=int(entries["length"]), dtype=np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<"),
            shape=tuple(int(d) for d in tensor.dims),
        ))
    return found


def mapped_array(mapping: np.memmap, tensor: ExternalTensor) -> np.ndarray:
    """A read-only view of ``tensor`` inside a memory-mapped weights file (no copy)."""
    view = mapping[tensor.offset : tensor.offset + tensor.length].view(tensor.dtype)
    return view.reshape(tensor.shape)
