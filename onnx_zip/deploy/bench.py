"""``serve-bench``: task-switch latency and resident memory of an exported folder, against
stand-alone models and the one multi-output model.

Measured in fresh processes (:mod:`onnx_zip.deploy.probe`) with a warm file cache (every file is
read once first): memory in one process per way of serving, latency in one process with the ways
interleaved round by round; the figures are medians over ``repeats`` rounds of one switch per task. Stand-alone models are the exported task models with their weights embedded
(what one deploys without zipping), opened with onnxruntime's default options.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

import onnx_zip
from onnx_zip import runtime
from onnx_zip.deploy.manifest import Manifest, read_manifest, verify_files
from onnx_zip.errors import InputError, OnnxZipError
from onnx_zip.model_io import load_model, save_model, sha256_file

logger = logging.getLogger(__name__)

#: The ways of serving, in table order, with their labels.
KINDS = {
    "switcher": "exported, TaskSwitcher (shared.weights mapped once)",
    "files": "exported, one session per task file (each maps shared.weights)",
    "standalone": "stand-alone models (embedded weights, default options)",
    "multi": "one multi-output zipped model (task's outputs fetched)",
}
PROBE_TIMEOUT_S = 900


@dataclass(frozen=True)
class ServeBench:
    """The measured figures of one folder: one row per way of serving (see :data:`KINDS`).

    ``shared_bytes + specific_bytes`` is what every task open at once must hold at least.
    """

    tasks: list[str]
    shared_bytes: int
    specific_bytes: int
    repeats: int
    threads: int
    runtime_version: str
    rows: list[dict[str, Any]] = field(default_factory=list)


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """One sample per graph input (batch 1; symbolic dims 1), float inputs normal, others zero."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in tensor.shape.dim]
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        feeds[value.name] = rng.standard_normal(shape).astype(dtype) if np.issubdtype(dtype, np.floating) else np.zeros(shape, dtype)
    return feeds


def find_zipped(directory: Path, manifest: Manifest) -> Path | None:
    """The zipped model the folder was exported from, when it lies next to the folder unchanged."""
    name, digest = manifest.source.get("file"), manifest.source.get("sha256")
    if not name:
        return None
    candidate = directory.resolve().parent / name
    return candidate if candidate.is_file() and sha256_file(candidate) == digest else None


def serve_bench(directory: str | os.PathLike[str], *, zipped: str | os.PathLike[str] | None = None,
                repeats: int = 5, threads: int = 1) -> ServeBench:
    """Measure every way of serving the tasks of an exported folder.

    Args:
        directory: A folder written by ``onnx-zip export-tasks``.
        zipped: The multi-output zipped model (default: the manifest's source file next to the
            folder, if unchanged; the row is left out when there is none).
        repeats: Rounds of switches (one per task each).
        threads: Intra-op threads of every session.

    Raises:
        InputError: the folder is not a valid export, or ``zipped`` is not the matching model.
    """
    folder = Path(directory)
    manifest = read_manifest(folder)
    verify_files(folder, manifest)  # also warms the file cache
    multi = Path(zipped) if zipped is not None else find_zipped(folder, manifest)
    tasks = [t.name for t in manifest.tasks]
    result = ServeBench(tasks, manifest.shared_bytes, sum(t.specific_bytes for t in manifest.tasks), repeats, threads,
                        runtime.runtime_version())
    with tempfile.TemporaryDirectory(prefix="onnx_zip_serve_bench_") as scratch:
        base = _base_spec(folder, manifest, Path(scratch), repeats, threads)
        specs = {"switcher": dict(base, kind="switcher"), "files": dict(base, kind="files"),
                 "standalone": _standalone_spec(base, folder, manifest, Path(scratch))}
        if multi is not None:
            specs["multi"] = _multi_spec(base, multi, manifest, Path(scratch))
        latency = _probe(list(specs.values()), Path(scratch) / "latency.json")
        for kind, spec in specs.items():
            row = {"kind": kind, "label": KINDS[kind], **latency[kind], **_probe(spec, Path(scratch) / f"{kind}.json")}
            result.rows.append(row)
    return result


def _base_spec(folder: Path, manifest: Manifest, scratch: Path, repeats: int, threads: int) -> dict[str, Any]:
    feeds: dict[str, np.ndarray] = {}
    for task in manifest.tasks:
        feeds.update(random_feeds(onnx.load(str(folder / task.model), load_external_data=False)))
    _save_arrays(scratch / "feeds.npz", feeds)
    return {
        "directory": str(folder), "tasks": [t.name for t in manifest.tasks], "repeats": repeats, "threads": threads,
        "feeds": str(scratch / "feeds.npz"), "outputs": {t.name: t.outputs for t in manifest.tasks},
        "files": {t.name: [str(folder / t.model), str(folder / t.weights)] for t in manifest.tasks},
    }


def _standalone_spec(base: dict[str, Any], folder: Path, manifest: Manifest, scratch: Path) -> dict[str, Any]:
    models = {}
    for task in manifest.tasks:
        path = scratch / f"standalone_{task.name}.onnx"
        save_model(load_model(folder / task.model), path, check=False)
        models[task.name] = str(path)
    return dict(base, kind="standalone", models=models, files={t: [p] for t, p in models.items()})


def _multi_spec(base: dict[str, Any], zipped: Path, manifest: Manifest, scratch: Path) -> dict[str, Any]:
    model = onnx.load(str(zipped), load_external_data=False)
    names = {o.name for o in model.graph.output}
    outputs = {t.name: [f"{t.name}/{o}" for o in t.outputs] for t in manifest.tasks}
    missing = sorted(o for outs in outputs.values() for o in outs if o not in names)
    if missing:
        raise InputError(f"model {zipped}: not the zipped model of this folder (no outputs {missing})", hint="pass the model the folder was exported from")
    plain = dict(np.load(base["feeds"]))
    feeds: dict[str, np.ndarray] = {}
    for value in model.graph.input:
        found = plain.get(value.name, plain.get(value.name.split("/", 1)[-1]))
        if found is None:
            raise InputError(f"model {zipped}: its input {value.name} is none of the exported tasks' inputs {sorted(plain)}")
        feeds[value.name] = found
    _save_arrays(scratch / "feeds_multi.npz", feeds)
    return dict(base, kind="multi", models={"multi": str(zipped)}, outputs=outputs, feeds=str(scratch / "feeds_multi.npz"),
                files={t.name: [str(zipped)] for t in manifest.tasks})


def _save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An ``.npz`` file with one array per name."""
    save: Any = np.savez  # numpy's stubs do not type **arrays
    save(path, **arrays)


def _probe(spec: dict[str, Any] | list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter (a list of specs: latency, interleaved; one spec: memory)."""
    spec_path = out.with_suffix(".spec.json")
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    root = str(Path(onnx_zip.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, "-m", "onnx_zip.deploy.probe", str(spec_path), str(out)],
                          capture_output=True, text=True, env=env, timeout=PROBE_TIMEOUT_S, check=False)
    if done.returncode != 0:
        what = "latency" if isinstance(spec, list) else f"the memory of {spec['kind']}"
        raise OnnxZipError(f"serve-bench: measuring {what} failed: {done.stderr.strip().splitlines()[-1:]}")
    return dict(json.loads(out.read_text()))


def format_table(bench: ServeBench) -> str:
    """A Markdown table of the rows, with the bytes every open task needs at least."""
    need = (bench.shared_bytes + bench.specific_bytes) / 2**20
    headline = (
        f"tasks {', '.join(bench.tasks)}; shared.weights {bench.shared_bytes / 2**20:.1f} MiB + task weights "
        f"{bench.specific_bytes / 2**20:.1f} MiB = {need:.1f} MiB; onnxruntime {bench.runtime_version}, "
        f"{bench.threads} thread(s), medians of {bench.repeats} rounds, warm file cache"
    )
    lines = [
        headline,
        "",
        "| serving | cold switch ms | cold, file evicted ms | warm switch ms | RSS all open MiB | PSS all open MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in bench.rows:
        mem = row["memory_all_open_mib"]
        lines.append(f"| {row['label']} | {row['cold_ms']:.1f} | {row['cold_dropped_cache_ms']:.1f} | {row['warm_ms']:.2f} "
                     f"| {mem.get('rss', float('nan')):.1f} | {mem.get('pss', float('nan')):.1f} |")
    return "\n".join(lines) + "\n"
