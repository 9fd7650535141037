"""What a model holds, for ``onnx-zip inspect``: a zipped model's tasks, sharing and provenance,
or any other model's zippable layers.

A zipped model (one with ``onnx_zip.tasks`` metadata) is described from its metadata and its
initializer names: ``shared/<layer>/...`` tensors are stored once for every task, ``<task>/<layer>/...``
tensors belong to one task. A task's parameters are the shared ones plus its own. Any other model is
canonicalised and its zippable layers discovered, as ``onnx-zip align`` does.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnx_zip.errors import ModelError
from onnx_zip.graph.canonicalize import canonicalize
from onnx_zip.graph.discover import discover_layers
from onnx_zip.graph.lookup import import_graph, input_names, output_names
from onnx_zip.model_io import load_model, sha256_file
from onnx_zip.zipper.report import parameter_count, read_metadata

logger = logging.getLogger(__name__)

SHARED_PREFIX = "shared"


def _float_sizes(model: onnx.ModelProto) -> dict[str, int]:
    sizes = {}
    for tensor in model.graph.initializer:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        if np.issubdtype(dtype, np.floating):
            sizes[tensor.name] = int(np.prod(tensor.dims, dtype=np.int64))
    return sizes


def _zipped_layers(meta: dict[str, Any], tasks: list[str], sizes: dict[str, int]) -> list[dict[str, Any]]:
    """Per layer: shared and task-specific neurons, and parameters stored shared / per task."""
    params: dict[str, dict[str, int]] = {}
    for name, size in sizes.items():
        owner, _, rest = name.partition("/")
        layer = rest.partition("/")[0] if rest else ""
        if owner != SHARED_PREFIX and owner not in tasks:
            continue
        params.setdefault(layer, {}).setdefault(owner, 0)
        params[layer][owner] += size
    rows = []
    recorded = meta.get("shared_per_layer") or []
    for entry in recorded:
        neurons = [int(n) for n in entry.get("neurons", [])]
        shared = int(entry.get("shared", 0))
        tag = str(entry.get("layer"))
        counts = params.pop(tag, {})
        rows.append(
            {
                "layer": tag,
                "nodes": dict(zip(tasks, entry.get("nodes", []))),
                "neurons": dict(zip(tasks, neurons)),
                "shared": shared,
                "specific": {t: n - shared for t, n in zip(tasks, neurons)},
                "params": {"shared": counts.get(SHARED_PREFIX, 0), **{t: counts.get(t, 0) for t in tasks}},
            }
        )
    for tag in sorted(params):  # heads and anything else not in shared_per_layer
        counts = params[tag]
        rows.append(
            {
                "layer": tag,
                "nodes": {},
                "neurons": {},
                "shared": None,
                "specific": {},
                "params": {"shared": counts.get(SHARED_PREFIX, 0), **{t: counts.get(t, 0) for t in tasks}},
            }
        )
    return rows


def inspect_zipped(model: onnx.ModelProto, meta: dict[str, Any]) -> dict[str, Any]:
    """The description of a zipped model (see :func:`inspect_model`)."""
    tasks = [str(t) for t in meta["tasks"]]
    sizes = _float_sizes(model)
    layers = _zipped_layers(meta, tasks, sizes)
    shared = parameter_count(model, prefix=f"{SHARED_PREFIX}/")
    own = {t: parameter_count(model, prefix=f"{t}/") for t in tasks}
    return {
        "zipped": True,
        "tasks": tasks,
        "outputs": [o.name for o in model.graph.output],
        "layers": layers,
        "params": {
            "total": parameter_count(model),
            "shared": shared,
            "specific": own,
            "per_task": {t: shared + own[t] for t in tasks},
        },
        "provenance": {
            "version": meta.get("version"),
            "sources": meta.get("sources"),
            "settings": meta.get("settings"),
            "finetune": meta.get("finetune"),
            "recipe": meta.get("recipe"),
            "extracted_task": meta.get("extracted_task"),
        },
    }


def inspect_plain(model: onnx.ModelProto, label: str) -> dict[str, Any]:
    """The zippable layers of a model that was not zipped (see :func:`inspect_model`)."""
    chain = discover_layers(canonicalize(model, label=label), label=label)
    graph = import_graph(model)
    layers = [
        {
            "index": layer.index,
            "node": layer.node,
            "op_type": layer.op_type,
            "kind": layer.kind,
            "role": "head" if layer.is_head else "hidden",
            "neurons": layer.neurons,
            "inputs": layer.inputs,
            "kernel": list(layer.kernel_shape),
        }
        for layer in chain.layers
    ]
    return {
        "zipped": False,
        "inputs": list(input_names(graph)),
        "outputs": list(output_names(graph)),
        "layers": layers,
        "channel_groups": [list(g) for g in chain.channel_groups],
        "params": {"total": parameter_count(model)},
    }


def inspect_model(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe a model file.

    Args:
        path: An ``.onnx`` file.

    Returns:
        A JSON-serialisable dict. Always: ``model`` (path), ``sha256``, ``bytes``, ``zipped``,
        ``outputs``, ``layers``, ``params``. For a zipped model: ``tasks``; ``layers`` holds per
        layer ``neurons`` and ``specific`` ({task: count}), ``shared`` and ``params`` ({"shared": n,
        task: n}); ``params`` holds ``total``, ``shared``, ``specific`` and ``per_task`` (shared + own);
        ``provenance`` holds ``version``, ``sources`` (file, sha256), ``settings``, ``finetune``,
        ``recipe``. For another model: its zippable layers (``index``, ``node``, ``op_type``,
        ``kind``, ``role``, ``neurons``, ``inputs``, ``kernel``) and ``channel_groups``.

    Raises:
        ModelError: the file is missing or not an ONNX model, or its layers cannot be read.
    """
    model = load_model(path)
    meta = read_metadata(model)
    header = {"model": str(path), "sha256": sha256_file(path), "bytes": Path(path).stat().st_size}
    tasks = meta.get("tasks")
    if isinstance(tasks, list) and tasks:
        return {**header, **inspect_zipped(model, meta)}
    if meta:
        logger.warning("model %s has onnx_zip metadata but no task list: described as a plain model", path)
    try:
        return {**header, **inspect_plain(model, f"model {path}")}
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - report any front-end failure as a model problem
        raise ModelError(f"model {path}: cannot discover its layers ({type(exc).__name__}: {exc})") from exc


def format_inspection(info: dict[str, Any]) -> str:
    """A plain-text rendering of :func:`inspect_model`'s result."""
    lines = [f"{info['model']}  ({info['bytes']:,} bytes, sha256 {info['sha256'][:16]}...)"]
    if info["zipped"]:
        tasks = info["tasks"]
        lines.append(f"zipped model of {len(tasks)} tasks: {', '.join(tasks)}; outputs {', '.join(info['outputs'])}")
        header = ["layer", "shared"] + [f"{t} own" for t in tasks] + ["params shared"] + [f"params {t}" for t in tasks]
        rows = []
        for layer in info["layers"]:
            shared = "-" if layer["shared"] is None else str(layer["shared"])
            own = [str(layer["specific"].get(t, "-")) for t in tasks]
            params = [f"{layer['params']['shared']:,}"] + [f"{layer['params'][t]:,}" for t in tasks]
            rows.append([layer["layer"], shared, *own, *params])
        lines.append(_table(header, rows))
        p = info["params"]
        per_task = ", ".join(f"{t} {p['per_task'][t]:,} ({p['specific'][t]:,} own)" for t in tasks)
        lines.append(f"parameters: {p['total']:,} stored, {p['shared']:,} shared; per task: {per_task}")
        prov = info["provenance"]
        lines.append(f"written by onnx-zip {prov.get('version')}")
        sources = prov.get("sources") or {}
        for task in [t for t in tasks if t in sources] + [t for t in sources if t not in tasks]:
            src = sources[task]
            lines.append(f"  source {task}: {src.get('file')} sha256 {src.get('sha256')}")
        settings = prov.get("settings") or {}
        if settings:
            lines.append("  settings: " + ", ".join(f"{k}={v}" for k, v in sorted(settings.items()) if v is not None))
        if prov.get("finetune"):
            ft = prov["finetune"]
            lines.append(f"  fine-tuned: {ft.get('steps')} steps, {ft.get('optimizer')}, lr {ft.get('lr')}" if isinstance(ft, dict) else f"  fine-tuned: {ft}")
        if prov.get("extracted_task"):
            lines.append(f"  extracted task: {prov['extracted_task']}")
        lines.append("  recipe: " + ("stored (see --json)" if prov.get("recipe") else "none"))
    else:
        lines.append(f"not a zipped model; inputs {', '.join(info['inputs'])}; outputs {', '.join(info['outputs'])}")
        header = ["#", "node", "op", "role", "neurons", "inputs", "kernel"]
        rows = [
            [str(x["index"]), x["node"], x["op_type"], x["role"], str(x["neurons"]), str(x["inputs"]),
             "x".join(map(str, x["kernel"])) or "-"]
            for x in info["layers"]
        ]
        lines.append(_table(header, rows))
        if info["channel_groups"]:
            lines.append("channel groups (residual Adds/Concats): " + "; ".join("+".join(g) for g in info["channel_groups"]))
        lines.append(f"parameters: {info['params']['total']:,}")
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [header, *rows])
