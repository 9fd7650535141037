"""Parameter accounting, the zip report and the provenance stored in the model's metadata.

Parameters are the elements of floating-point initializers (weights and biases; integer shape
constants do not count). ``shared`` parameters are those of the ``shared/...`` initializers,
stored once for every task.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from onnx_zip import __version__
from onnx_zip.graph.layers import LayerChain
from onnx_zip.zipper.plan import LayerZip

METADATA_PREFIX = "onnx_zip."


def parameter_count(model: onnx.ModelProto, *, prefix: str | None = None) -> int:
    """Elements of the model's floating-point initializers (those named ``prefix...`` if given),
    and without a prefix its float Constant nodes too (paddle2onnx stores weights in them)."""
    total = 0
    tensors = list(model.graph.initializer)
    if prefix is None:
        tensors += [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    for tensor in tensors:
        if prefix is not None and not tensor.name.startswith(prefix):
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        if np.issubdtype(dtype, np.floating):
            total += int(np.prod(tensor.dims, dtype=np.int64))
    return total


def layer_records(tasks: Sequence[str], zips: Sequence[LayerZip]) -> list[dict[str, Any]]:
    """One record per zipped hidden layer: node names, neuron counts, pairs and costs."""
    records = []
    for z in zips:
        if z.is_head:
            continue
        nodes = {task: layer.node for task, layer in zip(tasks, z.layers)}
        record: dict[str, Any] = {}
        if len(tasks) == 2:
            record["a"], record["b"] = z.layers[0].node, z.layers[1].node
        record.update(
            {
                "layer": z.tag,
                "nodes": nodes,
                "kind": z.layers[0].kind,
                "conv_hessian": z.reading,
                "neurons": [int(layer.neurons) for layer in z.layers],
                "shared_inputs": int(z.shared_inputs),
                "shared": z.shared,
                "pairs": z.pairs.astype(int).tolist(),
                "costs": [float(c) for c in z.costs],
            }
        )
        records.append(record)
    return records


def params_record(
    tasks: Sequence[str], originals: Sequence[onnx.ModelProto], zipped: onnx.ModelProto
) -> dict[str, int]:
    """``{task: original count, "zipped": count in the output, "shared": count stored once}``."""
    record = {task: parameter_count(m) for task, m in zip(tasks, originals)}
    record["zipped"] = parameter_count(zipped)
    record["shared"] = parameter_count(zipped, prefix="shared/")
    return record


def write_metadata(model: onnx.ModelProto, entries: Mapping[str, Any]) -> None:
    """Replace the model's ``onnx_zip.*`` metadata with ``entries`` (JSON-encoded unless str)."""
    kept = [p for p in model.metadata_props if not p.key.startswith(METADATA_PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key in sorted(entries):
        value = entries[key]
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
        model.metadata_props.add(key=f"{METADATA_PREFIX}{key}", value=text)


def read_metadata(model: onnx.ModelProto) -> dict[str, Any]:
    """The ``onnx_zip.*`` metadata of a model, JSON-decoded where possible (empty if none)."""
    out: dict[str, Any] = {}
    for prop in model.metadata_props:
        if prop.key.startswith(METADATA_PREFIX):
            key = prop.key[len(METADATA_PREFIX) :]
            try:
                out[key] = json.loads(prop.value)
            except json.JSONDecodeError:
                out[key] = prop.value
    return out


def provenance(
    tasks: Sequence[str],
    sources: Sequence[Mapping[str, str]],
    settings: Mapping[str, Any],
    zips: Sequence[LayerZip],
    chain: LayerChain | None = None,
) -> dict[str, Any]:
    """What the zipped model's metadata records: tool version, sources, settings, shared counts, and
    (given task 0's ``chain``) the layers residual Adds tie together."""
    record = {
        "version": __version__,
        "tasks": list(tasks),
        "sources": {task: dict(src) for task, src in zip(tasks, sources)},
        "settings": dict(settings),
        "shared_per_layer": [
            {
                "layer": z.tag,
                "nodes": [layer.node for layer in z.layers],
                "neurons": [layer.neurons for layer in z.layers],
                "shared": z.shared,
            }
            for z in zips
            if not z.is_head
        ],
    }
    groups = residual_groups(chain, zips) if chain is not None else []
    if groups:
        record["residual_groups"] = groups
    return record


def residual_groups(chain: LayerChain, zips: Sequence[LayerZip]) -> list[list[str]]:
    """The zipped layers that residual Adds tie together (sharing one pairing), by tag."""
    tag_of = {z.layers[0].node: z.tag for z in zips if not z.is_head}
    return [
        [tag_of[n] for n in group if n in tag_of] for group in chain.channel_groups if any(n in tag_of for n in group)
    ]
