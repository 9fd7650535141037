"""The fine-tuned model: the zipped graph unchanged, its initializers replaced by the trained values.

The model is a copy of the input model (nodes, names, doc strings, inputs, outputs, opsets,
metadata) in which only initializer *values* change, so nothing of the training graph
(gradient nodes, ``com.microsoft`` training ops, loss inputs) can leak into it. This is why
``Module.export_model_for_inferencing`` is not used. The run is recorded in the metadata key
``onnx_zip.finetune``: a JSON list with one record per fine-tuning run, oldest first (the
layer-by-layer procedure fine-tunes the same model repeatedly).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_zip.errors import InternalError
from onnx_zip.zipper.report import METADATA_PREFIX

FINETUNE_KEY = f"{METADATA_PREFIX}finetune"


def with_values(model: onnx.ModelProto, values: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers named in ``values`` hold those values.

    Raises:
        InternalError: a value's element count differs from the initializer's.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in out.graph.initializer:
        if tensor.name not in values:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        dims = tuple(int(d) for d in tensor.dims)
        value = np.asarray(values[tensor.name])
        if value.size != int(np.prod(dims, dtype=np.int64)):
            raise InternalError(f"trained {tensor.name} has {value.size} values for shape {dims}")
        doc = tensor.doc_string
        tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value.reshape(dims).astype(dtype)), tensor.name))
        if doc:
            tensor.doc_string = doc
    return out


def finetune_records(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """The ``onnx_zip.finetune`` records of a model (empty when never fine-tuned)."""
    for prop in model.metadata_props:
        if prop.key == FINETUNE_KEY:
            value = json.loads(prop.value)
            return value if isinstance(value, list) else [value]
    return []


def add_record(model: onnx.ModelProto, record: Mapping[str, Any]) -> None:
    """Append a run's record to the model's ``onnx_zip.finetune`` metadata, in place."""
    records = finetune_records(model) + [dict(record)]
    text = json.dumps(records, sort_keys=True, separators=(",", ":"))
    for prop in model.metadata_props:
        if prop.key == FINETUNE_KEY:
            prop.value = text
            return
    model.metadata_props.add(key=FINETUNE_KEY, value=text)
