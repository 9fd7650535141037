"""Plan files: the planned layers (pairs, costs, orders and weight blocks) written to and read from
one ``.npz`` (arrays, plus a JSON header ``__meta__``; no pickles), so a plan can be inspected,
kept, or built later (:func:`~onnx_zip.pipeline.stages.build`) without planning again.

:func:`load_plan` refuses a file made from other models or other aligned layers.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from onnx_zip.errors import InputError
from onnx_zip.model_io import atomic_write_bytes
from onnx_zip.pipeline.job import ZipJob
from onnx_zip.pipeline.statistics import read_npz
from onnx_zip.zipper.plan import LayerZip

FORMAT = "onnx_zip.plan/1"
_META = "__meta__"
_PER_TASK = ("order", "inter_weight", "specific_weight", "specific_bias")
_SHARED = ("shared_weight", "shared_bias")


def _layer_header(z: LayerZip) -> dict[str, Any]:
    return {"index": z.index, "tag": z.tag, "nodes": [layer.node for layer in z.layers], "reading": z.reading,
            "shared_inputs": z.shared_inputs, "has_bias": z.has_bias}


def save_plan(path: str | os.PathLike[str], job: ZipJob, zips: Sequence[LayerZip]) -> None:
    """Write a plan (atomically)."""
    header = {"format": FORMAT, "tasks": job.tasks, "models": [p.sha256 for p in job.prepared],
              "settings": job.record(), "layers": [_layer_header(z) for z in zips]}
    arrays: dict[str, np.ndarray] = {_META: np.array(json.dumps(header, sort_keys=True))}
    for z in zips:
        arrays[f"{z.index}/pairs"], arrays[f"{z.index}/costs"] = z.pairs, z.costs
        for name in _SHARED:
            value = getattr(z, name)
            if value is not None:
                arrays[f"{z.index}/{name}"] = value
        for name in _PER_TASK:
            for t, value in enumerate(getattr(z, name)):
                if value is not None:
                    arrays[f"{z.index}/{name}/{t}"] = value
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(path, buffer.getvalue())


def _check(header: dict[str, Any], job: ZipJob, path: str | os.PathLike[str]) -> None:
    problems = []
    if header.get("format") != FORMAT:
        problems.append(f"plan file {path}: format {header.get('format')!r}, expected {FORMAT!r}")
    elif header.get("models") != [p.sha256 for p in job.prepared]:
        problems.append(f"plan file {path} was made from other models")
    else:
        nodes = [[layer.node for layer in group] for group in job.aligned]
        if [entry["nodes"] for entry in header["layers"]] != nodes:
            problems.append(f"plan file {path} was made for other aligned layers")
    if problems:
        raise InputError("; ".join(problems), hint="plan again with these models")


def load_plan(path: str | os.PathLike[str], job: ZipJob) -> list[LayerZip]:
    """Read a plan written by :func:`save_plan` for this job's models.

    Raises:
        InputError: not a plan file, or made from other models or layers.
    """
    arrays = read_npz(path, "plan")
    if _META not in arrays:
        raise InputError(f"plan file {path}: no header", hint="pass a file written by save_plan")
    header = json.loads(str(arrays[_META]))
    _check(header, job, path)
    tasks = len(job.tasks)
    zips = []
    for entry in header["layers"]:
        i = int(entry["index"])
        per_task = {name: tuple(arrays.get(f"{i}/{name}/{t}") for t in range(tasks)) for name in _PER_TASK}
        zips.append(LayerZip(
            index=i, tag=entry["tag"], layers=tuple(job.aligned[i]), reading=entry["reading"],
            pairs=arrays[f"{i}/pairs"], costs=arrays[f"{i}/costs"], shared_inputs=int(entry["shared_inputs"]),
            order=per_task["order"], shared_weight=arrays.get(f"{i}/shared_weight"),  # type: ignore[arg-type]
            shared_bias=arrays.get(f"{i}/shared_bias"), inter_weight=per_task["inter_weight"],
            specific_weight=per_task["specific_weight"], specific_bias=per_task["specific_bias"],
            has_bias=bool(entry["has_bias"]),
        ))
    return zips
