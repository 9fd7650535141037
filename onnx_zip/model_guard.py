"""Checks a freshly parsed ONNX model before anything else touches it.

:func:`guard_model` is called by :func:`onnx_zip.model_io.load_model` on a model parsed
*without* its external data. It

* inlines external data, read only from inside the model's own folder (no absolute
  locations, no ``..``, no symlink leading out; a missing side file is named),
* checks every tensor's declared dims against its payload before any array is built
  (raw data too short or too long, absurd sizes, unknown data types),
* densifies small, valid sparse initializers and refuses the others,
* refuses cycles, tensors read but never produced, tensors produced twice, and nodes that do
  not fit their operator's schema (unknown operator, input/output counts, attribute types),
* refuses dtypes the pipeline cannot calibrate in (float16/float64/bfloat16 inputs or layer
  weights, integer layer weights) with the fix, and layers with 0 neurons,
* refuses NaN/Inf in weights, naming the file and the tensor.

Every blocker found is reported at once, in one :class:`~onnx_zip.errors.ModelError`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from onnx_zip.errors import ModelError

#: Largest tensor accepted, in bytes (a model file is at most 2 GiB, its side files hold the rest).
MAX_TENSOR_BYTES = 8 * 2**30
#: Largest dense tensor a sparse initializer may expand to, in elements.
MAX_DENSIFIED_ELEMENTS = 64 * 2**20
#: At most this many problems are listed in one message.
MAX_LISTED = 6

_ITEM_BYTES: dict[int, int] = {
    TensorProto.FLOAT: 4, TensorProto.UINT8: 1, TensorProto.INT8: 1, TensorProto.UINT16: 2,
    TensorProto.INT16: 2, TensorProto.INT32: 4, TensorProto.INT64: 8, TensorProto.BOOL: 1,
    TensorProto.FLOAT16: 2, TensorProto.DOUBLE: 8, TensorProto.UINT32: 4, TensorProto.UINT64: 8,
    TensorProto.COMPLEX64: 8, TensorProto.COMPLEX128: 16, TensorProto.BFLOAT16: 2,
}
#: The typed field holding each data type's values, and how many field entries one element takes.
_TYPED_FIELD: dict[int, tuple[str, int]] = {
    TensorProto.FLOAT: ("float_data", 1), TensorProto.COMPLEX64: ("float_data", 2),
    TensorProto.DOUBLE: ("double_data", 1), TensorProto.COMPLEX128: ("double_data", 2),
    TensorProto.INT64: ("int64_data", 1), TensorProto.UINT32: ("uint64_data", 1),
    TensorProto.UINT64: ("uint64_data", 1),
    **{t: ("int32_data", 1) for t in (TensorProto.INT32, TensorProto.INT16, TensorProto.INT8, TensorProto.UINT16,
                                      TensorProto.UINT8, TensorProto.BOOL, TensorProto.FLOAT16, TensorProto.BFLOAT16)},
}
_UNCALIBRATABLE_FLOATS: dict[int, str] = {
    TensorProto.FLOAT16: "float16",
    TensorProto.DOUBLE: "float64",
    TensorProto.BFLOAT16: "bfloat16",
}
#: Node type -> input positions that hold the layer's weights (input 0 counts when it is a constant).
LAYER_WEIGHT_INPUTS = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (0, 1, 2),
    "MatMul": (0, 1),
    "BatchNormalization": (1, 2, 3, 4),
}
_FLOAT32_HINT = (
    "onnx_zip calibrates and zips float32 models only: re-export the model in float32 from its framework "
    "(for example call .float() on a PyTorch module before torch.onnx.export), or convert the ONNX file's "
    "initializers and graph inputs/outputs to float32 with a converter of your choice, then check it with onnx.checker"
)


@dataclass
class _Problems:
    """The blockers found so far, raised together by :meth:`raise_if_any`."""

    name: str
    items: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)

    def add(self, text: str, hint: str | None = None) -> None:
        self.items.append(text)
        if hint and hint not in self.hints:
            self.hints.append(hint)

    def raise_if_any(self) -> None:
        if not self.items:
            return
        listed = self.items[:MAX_LISTED]
        more = len(self.items) - len(listed)
        text = "; ".join(listed) + (f"; and {more} more" if more > 0 else "")
        raise ModelError(f"{self.name}: {text}", hint="; ".join(self.hints) or None)


@dataclass(frozen=True)
class _Tensor:
    """A tensor found in the model and where it was found (for messages)."""

    proto: TensorProto
    where: str


def _type_name(data_type: int) -> str:
    try:
        return TensorProto.DataType.Name(data_type)
    except ValueError:
        return str(data_type)


def iter_tensors(graph: onnx.GraphProto, prefix: str = "") -> Iterator[_Tensor]:
    """Every dense tensor of a graph: initializers, then node attributes (Constant values,
    subgraphs' tensors, recursively)."""
    for t in graph.initializer:
        yield _Tensor(t, f"{prefix}initializer {t.name!r}")
    for s in graph.sparse_initializer:
        yield _Tensor(s.values, f"{prefix}sparse initializer {s.values.name!r} (values)")
        yield _Tensor(s.indices, f"{prefix}sparse initializer {s.values.name!r} (indices)")
    for node in graph.node:
        where = f"{prefix}node {node.name or node.op_type!r} attribute"
        for attr in node.attribute:
            if attr.HasField("t"):
                yield _Tensor(attr.t, f"{where} {attr.name!r}")
            if attr.HasField("sparse_tensor"):
                yield _Tensor(attr.sparse_tensor.values, f"{where} {attr.name!r} (values)")
                yield _Tensor(attr.sparse_tensor.indices, f"{where} {attr.name!r} (indices)")
            for i, t in enumerate(attr.tensors):
                yield _Tensor(t, f"{where} {attr.name!r}[{i}]")
            if attr.HasField("g"):
                yield from iter_tensors(attr.g, f"{prefix}subgraph {attr.name!r} of {node.name or node.op_type!r}: ")
            for i, g in enumerate(attr.graphs):
                yield from iter_tensors(g, f"{prefix}subgraph {attr.name!r}[{i}] of {node.name or node.op_type!r}: ")


def element_count(tensor: TensorProto) -> int | None:
    """The number of elements the dims declare, or ``None`` when a dim is negative."""
    if any(d < 0 for d in tensor.dims):
        return None
    return math.prod(tensor.dims)


def _declared_bytes(tensor: TensorProto, count: int) -> int | None:
    item = _ITEM_BYTES.get(tensor.data_type)
    return None if item is None else count * item


def check_payload(tensor: TensorProto, where: str, problems: _Problems) -> bool:
    """Check dims, data type and payload size of one in-file tensor; True when it is usable."""
    count = element_count(tensor)
    if count is None:
        problems.add(f"{where} declares negative dims {list(tensor.dims)}")
        return False
    if tensor.data_type == TensorProto.STRING:
        if len(tensor.string_data) != count:
            problems.add(f"{where} declares {count} strings but holds {len(tensor.string_data)}")
            return False
        return True
    nbytes = _declared_bytes(tensor, count)
    if nbytes is None:
        problems.add(
            f"{where} has data type {_type_name(tensor.data_type)}, which onnx_zip does not read", _FLOAT32_HINT
        )
        return False
    if nbytes > MAX_TENSOR_BYTES:
        problems.add(
            f"{where} declares dims {list(tensor.dims)} ({nbytes:,} bytes), over the {MAX_TENSOR_BYTES:,}-byte limit"
        )
        return False
    if tensor.data_location == TensorProto.EXTERNAL:
        return True  # checked when inlined
    if tensor.HasField("raw_data"):
        if len(tensor.raw_data) != nbytes:
            problems.add(
                f"{where} declares dims {list(tensor.dims)} ({_type_name(tensor.data_type)}, {nbytes:,} bytes) "
                f"but its raw data holds {len(tensor.raw_data):,} bytes"
            )
            return False
        return True
    field_name, per_element = _TYPED_FIELD[tensor.data_type]
    have = len(getattr(tensor, field_name))
    if have != count * per_element:
        problems.add(f"{where} declares dims {list(tensor.dims)} ({count:,} values) but holds {have // per_element:,}")
        return False
    return True


_DRIVE = re.compile(r"^[A-Za-z]:")


def _external_info(tensor: TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def _side_file(location: str, folder: Path, where: str, problems: _Problems) -> Path | None:
    """The side file's real path, when ``location`` stays inside ``folder``; else a problem."""
    inside = "external data must live in the model's own folder"
    if not location or "\x00" in location:
        problems.add(f"{where}: external data without a valid location")
        return None
    if os.path.isabs(location) or location.startswith(("/", "\\")) or _DRIVE.match(location):
        problems.add(f"{where}: external data location {location!r} is absolute", inside)
        return None
    if ".." in re.split(r"[\\/]", location):
        problems.add(f"{where}: external data location {location!r} leaves the model's folder", inside)
        return None
    real_folder = Path(os.path.realpath(folder))
    real = Path(os.path.realpath(folder / location))
    if real_folder not in real.parents:
        problems.add(
            f"{where}: external data location {location!r} is a link leading out of the model's folder", inside
        )
        return None
    if not real.is_file():
        problems.add(
            f"{where}: external data file {folder / location} not found", "keep the side files next to the .onnx file"
        )
        return None
    return real


def _int_field(info: dict[str, str], key: str, where: str, problems: _Problems) -> int | None:
    text = info.get(key)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        problems.add(f"{where}: external data {key} {text!r} is not a byte count")
        return -1
    return value


def inline_external(tensor: TensorProto, where: str, folder: Path, problems: _Problems) -> None:
    """Read an external tensor's bytes (checked against its dims) into ``raw_data``."""
    info = _external_info(tensor)
    side = _side_file(info.get("location", ""), folder, where, problems)
    offset = _int_field(info, "offset", where, problems) or 0
    length = _int_field(info, "length", where, problems)
    if side is None or offset < 0 or (length is not None and length < 0):
        return
    count = element_count(tensor) or 0
    nbytes = _declared_bytes(tensor, count) or 0
    if length is not None and length != nbytes:
        problems.add(
            f"{where} declares dims {list(tensor.dims)} ({nbytes:,} bytes) but its external data length is {length:,}"
        )
        return
    size = side.stat().st_size
    if offset + nbytes > size:
        problems.add(f"{where}: external data file {side.name} holds {size:,} bytes but {offset + nbytes:,} are needed")
        return
    with open(side, "rb") as handle:
        handle.seek(offset)
        tensor.raw_data = handle.read(nbytes)
    del tensor.external_data[:]
    tensor.data_location = TensorProto.DEFAULT


def densify_sparse(graph: onnx.GraphProto, problems: _Problems) -> None:
    """Replace each valid sparse initializer by the equivalent dense initializer (in place).

    A sparse initializer holds ``values`` (nnz,), ``indices`` (nnz,) flat or (nnz, rank)
    int64, and the dense ``dims``; the dense tensor has zeros elsewhere.
    """
    dense: list[TensorProto] = []
    for sparse in graph.sparse_initializer:
        array = _densified(sparse, problems)
        if array is not None:
            dense.append(numpy_helper.from_array(array, sparse.values.name))
    if not problems.items:
        del graph.sparse_initializer[:]
        graph.initializer.extend(dense)


def _densified(sparse: onnx.SparseTensorProto, problems: _Problems) -> np.ndarray | None:
    name = sparse.values.name
    where = f"sparse initializer {name!r}"
    shape = list(sparse.dims)
    local = _Problems(problems.name)
    if any(d < 0 for d in shape) or math.prod(shape) > MAX_DENSIFIED_ELEMENTS:
        local.add(
            f"{where} declares dense dims {shape}, over the {MAX_DENSIFIED_ELEMENTS:,}-element limit for densifying"
        )
    elif sparse.values.data_type not in _ITEM_BYTES or sparse.indices.data_type != TensorProto.INT64:
        local.add(
            f"{where}: values of type {_type_name(sparse.values.data_type)} with indices of type "
            f"{_type_name(sparse.indices.data_type)} (int64 indices expected)"
        )
    elif check_payload(sparse.values, where, local) and check_payload(sparse.indices, where, local):
        values = numpy_helper.to_array(sparse.values).reshape(-1)
        indices = numpy_helper.to_array(sparse.indices)
        total = math.prod(shape)
        nnz = values.shape[0]
        if indices.shape == (nnz, len(shape)) and len(shape) > 0 and nnz > 0:
            if (indices < 0).any() or (indices >= np.asarray(shape)).any():
                local.add(f"{where}: an index lies outside the dense dims {shape}")
            else:
                indices = np.ravel_multi_index(tuple(indices.T), shape)
        elif indices.shape != (nnz,):
            local.add(f"{where}: indices of shape {list(indices.shape)} for {nnz} values in dims {shape}")
        if not local.items:
            flat = indices.reshape(-1)
            if flat.size and ((flat < 0).any() or (flat >= total).any()):
                local.add(f"{where}: an index lies outside the dense dims {shape}")
            elif np.unique(flat).size != flat.size:
                local.add(f"{where}: an index appears twice")
            else:
                out = np.zeros(total, dtype=values.dtype)
                out[flat] = values
                return out.reshape(shape)
    for item in local.items:
        problems.add(item, "store the weight as a dense initializer")
    return None


def _producers(graph: onnx.GraphProto, sources: set[str], problems: _Problems) -> dict[str, str]:
    """Tensor name -> the node producing it; a tensor produced twice (or also a graph input or
    initializer) is a problem."""
    producer: dict[str, str] = {}
    for node in graph.node:
        for out in node.output:
            if not out:
                continue
            if out in producer or out in sources:
                problems.add(f"tensor {out!r} is produced twice (node {node.name or node.op_type!r})")
            producer[out] = node.name or node.op_type
    return producer


def check_structure(graph: onnx.GraphProto, problems: _Problems) -> None:
    """Refuse tensors produced twice, tensors read but never produced, and cycles (top-level graph)."""
    sources = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    sources |= {s.values.name for s in graph.sparse_initializer}
    producer = _producers(graph, sources, problems)
    for node in graph.node:
        if node.op_type == "Constant" and any(a.name == "sparse_value" for a in node.attribute):
            problems.add(
                f"Constant node {node.name or node.op_type!r} holds a sparse tensor",
                "store the weight as a dense initializer",
            )
        for name in node.input:
            if name and name not in producer and name not in sources:
                problems.add(f"node {node.name or node.op_type!r} reads tensor {name!r}, which nothing produces")
    for out in graph.output:
        if out.name not in producer and out.name not in sources:
            problems.add(f"graph output {out.name!r} is produced by no node")
    if not problems.items:
        stuck = _cycle_nodes(graph)
        if stuck:
            problems.add(
                f"the graph has a cycle through node(s) {', '.join(repr(n) for n in stuck[:4])}",
                "an ONNX graph must be acyclic",
            )


def check_node_schemas(model: onnx.ModelProto, problems: _Problems) -> None:
    """Check each default-domain node of the top-level graph against its operator schema
    (known operator, input/output counts, attribute types) with ``onnx.checker.check_node``."""
    context = onnx.checker.C.CheckerContext()
    context.ir_version = model.ir_version or onnx.IR_VERSION
    context.opset_imports = {entry.domain: entry.version for entry in model.opset_import}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or any(a.HasField("g") or len(a.graphs) for a in node.attribute):
            continue
        try:
            onnx.checker.check_node(node, context)
        except Exception as exc:  # noqa: BLE001 - the C++ checker raises ValidationError and others
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            problems.add(f"node {node.name or node.op_type!r} ({node.op_type}) does not fit its operator: {detail}")


#: Float tensors larger than this are passed to shape inference as dims only (no payload).
_INFERENCE_PAYLOAD_LIMIT = 4096


def check_shapes(model: onnx.ModelProto, problems: _Problems) -> None:
    """Run strict ONNX shape inference on a light copy of the model, to refuse layers whose
    inputs cannot fit (for example a Gemm reading a tensor of the wrong width).

    The copy drops ``value_info`` and the declared output shapes (exporters often declare
    wrong ones, which the pipeline does not trust anyway) and the payload of large float
    tensors (inference needs their dims only).
    """
    light = onnx.ModelProto()
    light.CopyFrom(model)
    del light.graph.value_info[:]
    for out in light.graph.output:
        out.type.tensor_type.ClearField("shape")
    for tensor in light.graph.initializer:
        if tensor.data_type != TensorProto.INT64 and math.prod(tensor.dims) > _INFERENCE_PAYLOAD_LIMIT:
            tensor.ClearField("raw_data")
            tensor.ClearField("float_data")
            tensor.data_location = TensorProto.DEFAULT
    try:
        onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises InferenceError, ValidationError and others
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        detail = lines[-1] if lines else type(exc).__name__
        problems.add(
            f"the graph's shapes do not fit together ({detail[:300]})",
            "check that every layer reads a tensor of the size its weights expect",
        )


def _cycle_nodes(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes Kahn's algorithm cannot order (empty for an acyclic graph)."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    waiting = [0] * len(graph.node)
    readers: dict[int, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in {n for n in node.input if n in producer}:
            waiting[i] += 1
            readers.setdefault(producer[name], []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    done = 0
    while ready:
        i = ready.pop()
        done += 1
        for j in readers.get(i, []):
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    return [graph.node[i].name or graph.node[i].op_type for i, w in enumerate(waiting) if w > 0]


def _constants(graph: onnx.GraphProto) -> dict[str, TensorProto]:
    """Initializers and Constant-node values by tensor name."""
    found = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t"):
                    found[node.output[0]] = attr.t
    return found


def check_dtypes(graph: onnx.GraphProto, problems: _Problems) -> None:
    """Refuse inputs and layer weights in a dtype calibration cannot run in, and empty layers."""
    constants = _constants(graph)
    for value in graph.input:
        elem = value.type.tensor_type.elem_type
        if value.name not in constants and elem in _UNCALIBRATABLE_FLOATS:
            problems.add(f"graph input {value.name!r} is {_UNCALIBRATABLE_FLOATS[elem]}", _FLOAT32_HINT)
    for node in graph.node:
        for position in LAYER_WEIGHT_INPUTS.get(node.op_type, ()):
            if position >= len(node.input) or node.input[position] not in constants:
                continue
            tensor = constants[node.input[position]]
            where = f"{node.op_type} node {node.name or node.op_type!r} weight {tensor.name or node.input[position]!r}"
            if tensor.data_type in _UNCALIBRATABLE_FLOATS:
                problems.add(f"{where} is {_UNCALIBRATABLE_FLOATS[tensor.data_type]}", _FLOAT32_HINT)
            elif tensor.data_type != TensorProto.FLOAT:
                problems.add(
                    f"{where} is {_type_name(tensor.data_type).lower()} (a quantised layer?)",
                    "zip the float32 model the quantised one was made from",
                )
            elif position > 0 and 0 in tensor.dims and node.op_type != "BatchNormalization":
                problems.add(f"{where} has shape {list(tensor.dims)}: the layer has no neurons or no inputs")


def check_finite(graph: onnx.GraphProto, problems: _Problems) -> None:
    """Refuse NaN or Inf in float weights (initializers and Constant values), naming each tensor."""
    for tensor in _constants(graph).values():
        if tensor.data_type not in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
            continue
        array = numpy_helper.to_array(tensor)
        bad = array.size - int(np.isfinite(array).sum())
        if bad:
            problems.add(
                f"weight {tensor.name!r} holds {bad} NaN or Inf value(s) of {array.size}",
                "the model's weights are corrupt: re-export it from a healthy checkpoint",
            )


def guard_model(model: onnx.ModelProto, folder: Path, name: str) -> onnx.ModelProto:
    """Run every check above on ``model`` (parsed without external data) in place.

    Args:
        model: The parsed model.
        folder: The model file's folder: external data is read only from inside it.
        name: How to name the model in messages (should include the file path).

    Returns:
        The same model, its external data inlined and its sparse initializers densified.

    Raises:
        ModelError: every blocker found, in one message.
    """
    problems = _Problems(name)
    graph = model.graph
    for found in iter_tensors(graph):
        if check_payload(found.proto, found.where, problems) and found.proto.data_location == TensorProto.EXTERNAL:
            inline_external(found.proto, found.where, folder, problems)
    problems.raise_if_any()
    densify_sparse(graph, problems)
    check_structure(graph, problems)
    problems.raise_if_any()
    check_node_schemas(model, problems)
    problems.raise_if_any()
    check_dtypes(graph, problems)
    problems.raise_if_any()
    check_finite(graph, problems)
    problems.raise_if_any()
    check_shapes(model, problems)
    problems.raise_if_any()
    return model
