"""``manifest.json`` of an exported folder: the tasks, their files, sizes and sha256.

Written by :func:`onnx_zip.deploy.export.export_tasks`; read and checked by
:func:`read_manifest` and :func:`verify_files` before any session is created, so a missing,
truncated or altered file is one clear :class:`~onnx_zip.errors.InputError`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from onnx_zip.errors import InputError
from onnx_zip.model_io import sha256_file

MANIFEST = "manifest.json"
FORMAT = "onnx_zip.export-tasks/1"
SHARED_WEIGHTS = "shared.weights"
#: The session option that makes sessions memory-map shared external data instead of each
#: keeping a pre-packed copy (onnxruntime ``SessionOptions.add_session_config_entry``).
SESSION_CONFIG = {"session.disable_prepacking": "1"}


@dataclass(frozen=True)
class FileRecord:
    """One file of the folder: size and sha256 of its bytes."""

    bytes: int
    sha256: str


@dataclass(frozen=True)
class TaskRecord:
    """One task's model: its file, its own weights file, names, and what it reads from each file.

    ``specific_bytes`` are the bytes of its own weights file; ``shared_bytes`` the bytes of the
    shared tensors it reads (each stored once in ``shared.weights`` for all tasks).
    """

    name: str
    model: str
    weights: str
    inputs: list[str]
    outputs: list[str]
    specific_bytes: int
    shared_bytes: int


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` records (``files`` by name relative to the folder)."""

    tasks: list[TaskRecord]
    files: dict[str, FileRecord]
    shared_file: str = SHARED_WEIGHTS
    shared_bytes: int = 0
    shared_tensors: int = 0
    alignment: int = 4096
    source: dict[str, str] = field(default_factory=dict)
    session_config: dict[str, str] = field(default_factory=lambda: dict(SESSION_CONFIG))
    format: str = FORMAT

    def task(self, name: str) -> TaskRecord:
        """The record of task ``name``.

        Raises:
            InputError: no such task.
        """
        for record in self.tasks:
            if record.name == name:
                return record
        raise InputError(f"no task {name!r} in the exported folder", hint=f"tasks are {[t.name for t in self.tasks]}")

    def to_json(self) -> str:
        """Deterministic JSON text (sorted keys, one trailing newline)."""
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"


def read_manifest(directory: str | os.PathLike[str]) -> Manifest:
    """Read ``DIR/manifest.json``.

    Raises:
        InputError: the folder or its manifest is missing or not a manifest this version reads.
    """
    path = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise InputError(f"exported folder {directory}: not a folder", hint="pass a folder written by onnx-zip export-tasks")
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"exported folder {directory}: no {MANIFEST}", hint="pass a folder written by onnx-zip export-tasks") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable manifest ({exc})", hint="export the tasks again") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{path}: not an export-tasks manifest (format {data.get('format') if isinstance(data, dict) else None!r}, expected {FORMAT!r})")
    try:
        tasks = [TaskRecord(**t) for t in data["tasks"]]
        files = {name: FileRecord(**rec) for name, rec in data["files"].items()}
        rest = {k: v for k, v in data.items() if k not in ("tasks", "files")}
        return Manifest(tasks=tasks, files=files, **rest)
    except (KeyError, TypeError) as exc:
        raise InputError(f"{path}: malformed manifest ({exc})", hint="export the tasks again") from exc


def verify_files(directory: str | os.PathLike[str], manifest: Manifest, *, checksums: bool = True) -> None:
    """Check every file of the manifest: present, of the recorded size, of the recorded sha256.

    Every problem is reported at once.

    Raises:
        InputError: a file is missing, truncated or altered.
    """
    problems = []
    for name, record in sorted(manifest.files.items()):
        path = Path(directory) / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        size = path.stat().st_size
        if size != record.bytes:
            problems.append(f"{name} has {size} bytes, the manifest says {record.bytes} ({'truncated' if size < record.bytes else 'altered'})")
        elif checksums and sha256_file(path) != record.sha256:
            problems.append(f"{name} does not match its sha256 in the manifest (altered or corrupted)")
    if problems:
        raise InputError(f"exported folder {directory}: " + "; ".join(problems), hint="copy the folder again or re-run onnx-zip export-tasks")
