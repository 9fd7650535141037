"""Serve the tasks of an exported folder from one process, switching between them cheaply.

:class:`TaskSwitcher` opens a folder written by ``onnx-zip export-tasks``. It memory-maps
``shared.weights`` once and hands each shared tensor to onnxruntime as an ``OrtValue`` viewing
that mapping (``SessionOptions.add_initializer``), so every task's session reads the same
physical pages and the process counts them once. Switching to a task creates its session on
first use (reading only the task's own ``<task>.weights``) and keeps it; later switches reuse it.
Every session gets the manifest's configuration ``session.disable_prepacking = "1"``: with
pre-packing on, onnxruntime would copy the shared weights into per-session packed buffers.

Runtimes without ``add_initializer`` (or other languages) get the same sharing of physical pages
by creating each session from the task's ``.onnx`` file with ``session.disable_prepacking = "1"``:
onnxruntime memory-maps the page-aligned external data of each session (resident-set counters
then count the shared pages once per open session, the proportional set size once).

Example::

    switcher = TaskSwitcher("exported/")
    switcher.switch("mnist")
    logits = switcher.run({"image": batch})["logits"]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnx_zip import runtime
from onnx_zip.deploy.manifest import Manifest, read_manifest, verify_files
from onnx_zip.deploy.weights import external_tensors, mapped_array
from onnx_zip.errors import InputError

logger = logging.getLogger(__name__)


def session_options(config: Mapping[str, str], *, threads: int | None = None) -> Any:
    """onnxruntime ``SessionOptions`` with the config entries ``config`` (and ``threads`` intra-op threads)."""
    rt = runtime.ort()
    options = rt.SessionOptions()
    options.log_severity_level = 3
    for key, value in sorted(config.items()):
        options.add_session_config_entry(key, value)
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return options


class TaskSwitcher:
    """The per-task models of an exported folder, one session per task, created on first use.

    Args:
        directory: A folder written by ``onnx-zip export-tasks``.
        verify: Check every file's sha256 against the manifest when opening (sizes are always
            checked).
        threads: Intra-op threads of every session (``None``: onnxruntime's default).
        map_shared: Map ``shared.weights`` once and pass its tensors to every session
            (``False``: each session maps the external data itself, as in other languages).

    Raises:
        InputError: the folder, its manifest or a file it lists is missing, truncated or altered.
    """

    def __init__(self, directory: str | os.PathLike[str], *, verify: bool = True, threads: int | None = None,
                 map_shared: bool = True) -> None:
        self.directory = Path(directory)
        self.manifest: Manifest = read_manifest(self.directory)
        verify_files(self.directory, self.manifest, checksums=verify)
        self._threads = threads
        self._map_shared = map_shared
        self._shared_map: np.memmap | None = None
        self._shared_values: dict[str, Any] = {}
        self._sessions: dict[str, Any] = {}
        self.active: str | None = None

    @property
    def tasks(self) -> list[str]:
        """The task names, in the zipped model's order."""
        return [t.name for t in self.manifest.tasks]

    @property
    def open_tasks(self) -> list[str]:
        """The tasks whose sessions exist."""
        return list(self._sessions)

    def session(self, task: str) -> Any:
        """Task ``task``'s onnxruntime session, created now if it does not exist yet.

        Raises:
            InputError: no such task, or onnxruntime cannot load its model or weights.
        """
        if task not in self._sessions:
            path = self.directory / self.manifest.task(task).model
            options = session_options(self.manifest.session_config, threads=self._threads)
            try:
                if self._map_shared:
                    for name, value in self._shared_for(path).items():
                        options.add_initializer(name, value)
                self._sessions[task] = runtime.ort().InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
            except InputError:
                raise
            except Exception as exc:  # onnxruntime and onnx raise their own exception types
                raise InputError(f"task {task}: cannot load {path} ({type(exc).__name__}: {exc})",
                                 hint="copy the folder again or re-run onnx-zip export-tasks") from exc
            logger.info("opened task %s", task)
        return self._sessions[task]

    def _shared_for(self, model_path: Path) -> dict[str, Any]:
        """OrtValues viewing the shared weights mapping, for the shared tensors one model reads."""
        shared = [t for t in external_tensors(onnx.load(str(model_path), load_external_data=False))
                  if t.location == self.manifest.shared_file]
        if not shared:
            return {}
        if self._shared_map is None:
            self._shared_map = np.memmap(self.directory / self.manifest.shared_file, dtype=np.uint8, mode="r")
        mapping = self._shared_map
        for tensor in shared:
            if tensor.name not in self._shared_values:
                array = mapped_array(mapping, tensor)
                self._shared_values[tensor.name] = runtime.ort().OrtValue.ortvalue_from_numpy(array)
        return {t.name: self._shared_values[t.name] for t in shared}

    def switch(self, task: str) -> None:
        """Make ``task`` the active task (creating its session on first use)."""
        self.session(task)
        self.active = task

    def run(self, feeds: Mapping[str, np.ndarray], task: str | None = None) -> dict[str, np.ndarray]:
        """Run the active task (or ``task``, which becomes active) on ``feeds``.

        Args:
            feeds: Input arrays by the task's original input names.

        Returns:
            The task's outputs by their original names.
        """
        if task is not None:
            self.switch(task)
        if self.active is None:
            raise InputError("no active task", hint=f"call switch() with one of {self.tasks} first")
        session = self._sessions[self.active]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, dict(feeds))))

    def close(self, task: str | None = None) -> None:
        """Drop one task's session (or all); the shared mapping stays while the switcher lives."""
        for name in [task] if task is not None else list(self._sessions):
            self._sessions.pop(name, None)
            if self.active == name:
                self.active = None
