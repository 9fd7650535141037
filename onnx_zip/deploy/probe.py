"""One measurement of ``serve-bench``, run in a fresh process: ``python -m onnx_zip.deploy.probe SPEC OUT``.

A fresh process per way of serving keeps the resident-memory figures apart (memory onnxruntime
frees is not always returned to the system). ``SPEC`` is a JSON file naming the way (``kind``),
the files and the repeats; the result is written as JSON to ``OUT``. Kinds:

* ``switcher``: :class:`~onnx_zip.deploy.serving.TaskSwitcher` on the exported folder (shared
  weights mapped once and handed to every session);
* ``files``: the same per-task models, each session mapping the external data itself;
* ``standalone``: one stand-alone model per task with embedded weights, default session options;
* ``multi``: the one multi-output zipped model (one session; a task's outputs fetched alone).

A cold switch creates the task's session (the other tasks' sessions stay open) and runs it once;
with ``drop_cache`` the task's files are first evicted from the page cache (``posix_fadvise``:
pages still mapped by open sessions stay). A warm switch runs an already open task once.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def memory_mib() -> dict[str, float]:
    """Resident (Rss) and proportional (Pss) set size of this process in MiB, from
    ``/proc/self/smaps_rollup`` (Linux); empty elsewhere."""
    try:
        lines = Path("/proc/self/smaps_rollup").read_text().splitlines()
    except OSError:
        return {}
    found = {}
    for line in lines:
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            found[key.lower()] = int(rest.split()[0]) / 1024
    return found


def drop_from_cache(paths: Sequence[str]) -> None:
    """Ask the kernel to evict the files' unmapped pages from the page cache."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _median_ms(samples: Sequence[float]) -> float:
    return round(1000 * statistics.median(samples), 3)


class _Server:
    """Open, run and close tasks in one of the four ways (see the module docstring)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from onnx_zip import runtime
        from onnx_zip.deploy.serving import TaskSwitcher, session_options

        self.spec = spec
        self.rt = runtime.ort()
        self.kind = spec["kind"]
        self.sessions: dict[str, Any] = {}
        if self.kind in ("switcher", "files"):
            self.switcher = TaskSwitcher(spec["directory"], verify=False, threads=spec["threads"], map_shared=self.kind == "switcher")
        self.options = session_options({}, threads=spec["threads"])

    def open(self, task: str) -> Any:
        if self.kind in ("switcher", "files"):
            return self.switcher.session(task)
        key = "multi" if self.kind == "multi" else task
        if key not in self.sessions:
            path = self.spec["models"][key]
            self.sessions[key] = self.rt.InferenceSession(path, sess_options=self.options, providers=["CPUExecutionProvider"])
        return self.sessions[key]

    def close(self, task: str) -> None:
        if self.kind in ("switcher", "files"):
            self.switcher.close(task)
        else:
            self.sessions.pop("multi" if self.kind == "multi" else task, None)

    def run(self, task: str, feeds: dict[str, np.ndarray]) -> None:
        session = self.open(task)
        outputs = self.spec["outputs"][task]
        session.run(outputs, {k: v for k, v in feeds.items() if k in {i.name for i in session.get_inputs()}})


def _timed(action: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Cold and warm switch medians (ms) and memory with every task open (MiB above the
    process's memory before the first session)."""
    feeds = {k: np.asarray(v) for k, v in np.load(spec["feeds"]).items()}
    tasks: list[str] = spec["tasks"]
    server = _Server(spec)  # imports onnxruntime; no session yet
    base = memory_mib()
    for task in tasks:
        server.run(task, feeds)
    open_memory = {k: round(v - base.get(k, 0.0), 1) for k, v in memory_mib().items()}
    cold: list[float] = []
    dropped: list[float] = []
    warm: list[float] = []
    for _ in range(spec["repeats"]):
        for task in tasks:
            server.close(task)
            cold.append(_timed(lambda t=task: server.run(t, feeds)))
        for task in tasks:
            server.close(task)
            drop_from_cache(spec["files"][task])
            dropped.append(_timed(lambda t=task: server.run(t, feeds)))
        for task in tasks:
            warm.append(_timed(lambda t=task: server.run(t, feeds)))
    return {
        "kind": spec["kind"], "cold_ms": _median_ms(cold), "cold_dropped_cache_ms": _median_ms(dropped),
        "warm_ms": _median_ms(warm), "memory_all_open_mib": open_memory,
    }


def main(argv: Sequence[str]) -> int:
    """``SPEC OUT``: read the spec, measure, write the result."""
    spec = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(measure(spec), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
