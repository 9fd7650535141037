"""The measurements of ``serve-bench``, run in fresh processes: ``python -m onnx_zip.deploy.probe SPEC OUT``.

Memory is measured in a fresh process per way of serving (memory onnxruntime frees is not always
returned to the system); latency in one process with the ways interleaved round by round. ``SPEC``
is a JSON file: one way of serving (``kind``, files, repeats) for memory, a list of them for
latency; the result is written as JSON to ``OUT``. Kinds:

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

import functools
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


def measure_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Memory with every task open and run once (MiB above the process before its first session)."""
    feeds = {k: np.asarray(v) for k, v in np.load(spec["feeds"]).items()}
    server = _Server(spec)  # imports onnxruntime; no session yet
    base = memory_mib()
    for task in spec["tasks"]:
        server.run(task, feeds)
    return {"memory_all_open_mib": {k: round(v - base.get(k, 0.0), 1) for k, v in memory_mib().items()}}


def _one_round(server: _Server, tasks: Sequence[str], files: dict[str, list[str]], feeds: dict[str, np.ndarray],
               times: dict[str, list[float]]) -> None:
    """One cold switch, one cold switch with the files evicted and one warm switch per task."""
    for task in tasks:
        server.close(task)
        times["cold"].append(_timed(functools.partial(server.run, task, feeds)))
    for task in tasks:
        server.close(task)
        drop_from_cache(files[task])
        times["dropped"].append(_timed(functools.partial(server.run, task, feeds)))
    for task in tasks:
        times["warm"].append(_timed(functools.partial(server.run, task, feeds)))


def measure_latency(specs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Cold, cold-with-files-evicted and warm switch medians (ms) of every way of serving, the
    ways interleaved round by round so that a busy machine slows them alike."""
    servers = [_Server(spec) for spec in specs]
    feeds = [{k: np.asarray(v) for k, v in np.load(spec["feeds"]).items()} for spec in specs]
    samples: dict[str, dict[str, list[float]]] = {s["kind"]: {"cold": [], "dropped": [], "warm": []} for s in specs}
    for server, spec, feed in zip(servers, specs, feeds):
        for task in spec["tasks"]:
            server.run(task, feed)
    for _ in range(specs[0]["repeats"]):
        for server, spec, feed in zip(servers, specs, feeds):
            _one_round(server, spec["tasks"], spec["files"], feed, samples[spec["kind"]])
    return {
        kind: {"cold_ms": _median_ms(t["cold"]), "cold_dropped_cache_ms": _median_ms(t["dropped"]), "warm_ms": _median_ms(t["warm"])}
        for kind, t in samples.items()
    }


def main(argv: Sequence[str]) -> int:
    """``SPEC OUT``: read the spec (one way of serving: memory; a list of ways: latency), measure,
    write the result."""
    spec = json.loads(Path(argv[0]).read_text())
    result = measure_latency(spec) if isinstance(spec, list) else measure_memory(spec)
    Path(argv[1]).write_text(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
