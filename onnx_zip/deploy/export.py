"""``onnx-zip export-tasks``: one ONNX model per task over one shared external-data file.

Every weight that two or more tasks read (the shared weights merged by MTZ) is stored once in
``shared.weights``; each task's own weights go to ``<task>.weights`` (integer constants such as
Slice bounds stay inside the model). Each task model
``<task>.onnx`` is the task's part of the zipped graph with the original input and output names
(no ``<task>/`` prefix) and its initializers pointing into those two files at page-aligned offsets,
so onnxruntime sessions of several tasks memory-map the shared bytes once (with
``session.disable_prepacking = "1"``, see :mod:`onnx_zip.deploy.serving`). The folder is written
next to its destination and renamed into place: it appears complete or not at all.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from onnx_zip.deploy.manifest import (
    MANIFEST,
    SHARED_WEIGHTS,
    FileRecord,
    Manifest,
    TaskRecord,
)
from onnx_zip.deploy.weights import PAGE, is_weight, point_to, write_tensors
from onnx_zip.errors import InputError, ModelError
from onnx_zip.model_io import load_model, serialize, sha256_file, stamp_versions
from onnx_zip.zipper.extract import strip_task_prefix, task_subgraph, zipped_tasks
from onnx_zip.zipper.report import read_metadata, write_metadata

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_tasks` wrote."""

    directory: Path
    manifest: Manifest


def check_destination(directory: str | os.PathLike[str]) -> Path:
    """The destination folder, refused when it exists and is not empty or cannot be created.

    Raises:
        InputError: the folder exists and is not empty, is a file, or its parent is missing.
    """
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise InputError(f"output {path}: is a file", hint="give a folder name")
    if path.is_dir() and any(path.iterdir()):
        raise InputError(f"output {path}: folder exists and is not empty", hint="give a new or empty folder")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise InputError(f"output {path}: folder {parent} does not exist", hint="create it first")
    if not os.access(parent, os.W_OK):
        raise InputError(f"output {path}: folder {parent} is not writable")
    return path


def task_models(model: onnx.ModelProto, tasks: Sequence[str], *, label: str) -> list[onnx.ModelProto]:
    """Each task's subgraph with its original input and output names (weights still embedded)."""
    models = []
    for task in tasks:
        single = task_subgraph(model, task, label=label)
        strip_task_prefix(single, task)
        models.append(single)
    return models


def shared_names(model: onnx.ModelProto, singles: Sequence[onnx.ModelProto]) -> list[str]:
    """Floating-point initializers read by two or more tasks, in the zipped model's order."""
    counts = Counter(t.name for single in singles for t in single.graph.initializer)
    return [t.name for t in model.graph.initializer if counts[t.name] >= 2 and is_weight(t)]


def export_tasks(zipped: str | os.PathLike[str] | onnx.ModelProto, directory: str | os.PathLike[str]) -> ExportResult:
    """Write one model per task of a zipped model into ``directory``, sharing one weights file.

    Args:
        zipped: A model written by ``onnx-zip zip`` (path or ModelProto).
        directory: A folder that does not exist yet or is empty.

    Returns:
        The folder and its manifest.

    Raises:
        InputError: ``directory`` exists and is not empty; the model is not zipped.
    """
    label = f"model {zipped}" if not isinstance(zipped, onnx.ModelProto) else "model"
    problems: list[InputError] = []
    out = Path(directory)
    try:
        out = check_destination(directory)
    except InputError as exc:
        problems.append(exc)
    tasks: list[str] = []
    try:
        model = zipped if isinstance(zipped, onnx.ModelProto) else load_model(zipped)
        tasks = zipped_tasks(model, label=label)
    except InputError as exc:
        problems.append(exc)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise InputError("; ".join(str(p) for p in problems))
    source = {"sha256": sha256_file(zipped), "file": Path(zipped).name} if not isinstance(zipped, onnx.ModelProto) else {}
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.resolve().parent))
    try:
        manifest = _write_folder(model, tasks, staging, source, label=label)
        os.chmod(staging, 0o777 & ~_umask())
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote %s: %d tasks, %d shared bytes", out, len(tasks), manifest.shared_bytes)
    return ExportResult(out, manifest)


def _write_folder(model: onnx.ModelProto, tasks: Sequence[str], folder: Path, source: dict[str, str], *, label: str) -> Manifest:
    """Write the weights files, the task models and the manifest into ``folder``."""
    singles = task_models(model, tasks, label=label)
    shared = shared_names(model, singles)
    by_name = {t.name: t for t in model.graph.initializer}
    with open(folder / SHARED_WEIGHTS, "wb") as handle:
        shared_at = {p.name: p for p in write_tensors(handle, [by_name[n] for n in shared])}
    records = []
    for task, single in zip(tasks, singles):
        weights = f"{task}.weights"
        own = [t for t in single.graph.initializer if t.name not in shared_at and is_weight(t)]
        with open(folder / weights, "wb") as handle:
            own_at = {p.name: p for p in write_tensors(handle, own)}
        for tensor in single.graph.initializer:
            if tensor.name in shared_at:
                point_to(tensor, SHARED_WEIGHTS, shared_at[tensor.name])
            elif tensor.name in own_at:
                point_to(tensor, weights, own_at[tensor.name])
        _write_task_model(single, folder / f"{task}.onnx", task)
        records.append(TaskRecord(
            name=task, model=f"{task}.onnx", weights=weights,
            inputs=[i.name for i in single.graph.input], outputs=[o.name for o in single.graph.output],
            specific_bytes=(folder / weights).stat().st_size,
            shared_bytes=sum(shared_at[t.name].length for t in single.graph.initializer if t.name in shared_at),
        ))
    files = {p.name: FileRecord(p.stat().st_size, sha256_file(p)) for p in sorted(folder.iterdir())}
    manifest = Manifest(
        tasks=records, files=files, shared_bytes=files[SHARED_WEIGHTS].bytes, shared_tensors=len(shared),
        alignment=PAGE, source=source,
    )
    (folder / MANIFEST).write_text(manifest.to_json())
    return manifest


def _write_task_model(single: onnx.ModelProto, path: Path, task: str) -> None:
    """Stamp, check (with its external data in place) and write one task's model."""
    meta = read_metadata(single)
    meta["exported_task"] = task
    meta.pop("extracted_task", None)
    write_metadata(single, meta)
    single = stamp_versions(single, label=f"task {task}")
    path.write_bytes(serialize(single))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"task {task}: the exported model is not valid ONNX ({exc})") from exc


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
