#!/usr/bin/env python
"""Deployment benchmark (issue 16): switching tasks and resident memory of exported task models.

Three wide synthetic MLPs (1024-2048-2048-2048-10, about 42 MB of float32 weights each, seeded) are
zipped at share 0.9 (``l2`` pairing: the weights are synthetic, so no calibration data is needed;
the deployment figures do not depend on how the pairs were chosen) and exported with
``export-tasks``. Then ``serve-bench`` measures, one fresh process per way of serving, medians over
``--repeats`` rounds with a warm file cache:

* switching task: create the task's session with the documented options and run it once (cold),
  against creating the stand-alone model's session and running it once;
* resident memory with all three tasks open, against shared + sum of task-specific bytes.

Writes ``benchmarks/deploy.md`` and ``benchmarks/deploy.json`` (``--out DIR`` to write elsewhere).
Takes about a minute on 2 cores.

  python tools/bench_deploy.py
  python tools/bench_deploy.py --repeats 3 --out /tmp/deploy_bench --keep /tmp/deploy_models
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnx_zip import runtime
from onnx_zip.deploy.bench import ServeBench, format_table, serve_bench
from onnx_zip.deploy.export import export_tasks
from onnx_zip.pipeline import zip_models

SIZES = (1024, 2048, 2048, 2048, 10)
TASKS = ("a", "b", "c")
SHARE = 0.9
COMMAND = "python tools/bench_deploy.py"


def wide_mlp(seed: int) -> onnx.ModelProto:
    """A Gemm/Relu MLP of :data:`SIZES` with seeded He-scaled weights (input ``x``, output ``y``)."""
    rng = np.random.default_rng(seed)
    nodes, inits, current = [], [], "x"
    for i, (n_in, n_out) in enumerate(itertools.pairwise(SIZES)):
        w = (rng.standard_normal((n_out, n_in)) * np.sqrt(2.0 / n_in)).astype(np.float32)
        b = (rng.standard_normal(n_out) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"fc{i}.weight"), numpy_helper.from_array(b, f"fc{i}.bias")]
        out = "y" if i == len(SIZES) - 2 else f"fc{i}"
        nodes.append(helper.make_node("Gemm", [current, f"fc{i}.weight", f"fc{i}.bias"], [out], name=f"fc{i}",
                                      transB=1))
        current = out
        if out != "y":
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"], name=f"relu{i}"))
            current = f"relu{i}"
    graph = helper.make_graph(nodes, "wide_mlp",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", SIZES[0]])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", SIZES[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench_deploy")
    model.ir_version = 8
    return model


def max_difference(zipped: Path, folder: Path) -> float:
    """Largest |exported task - zipped task| on 4 random samples (graph optimisations off)."""
    x = {"x": np.random.default_rng(0).standard_normal((4, SIZES[0])).astype(np.float32)}
    both = runtime.make_session(zipped, optimize=False).run(None, x)
    worst = 0.0
    for t, task in enumerate(TASKS):
        (y,) = runtime.make_session(folder / f"{task}.onnx", optimize=False).run(None, x)
        worst = max(worst, float(np.abs(y - both[t]).max()))
    return worst


def summary(bench: ServeBench) -> dict[str, Any]:
    """The two checked ratios: cold switch against opening a stand-alone model, memory against the bytes."""
    rows = {row["kind"]: row for row in bench.rows}
    need_mib = (bench.shared_bytes + bench.specific_bytes) / 2**20
    switcher = rows["switcher"]
    return {
        "switch_over_standalone_open": round(switcher["cold_ms"] / rows["standalone"]["cold_ms"], 3),
        "switch_over_standalone_open_file_evicted": round(
            switcher["cold_dropped_cache_ms"] / rows["standalone"]["cold_dropped_cache_ms"], 3),
        "file_sessions_switch_over_standalone_open": round(rows["files"]["cold_ms"] / rows["standalone"]["cold_ms"], 3),
        "rss_all_open_over_bytes": round(switcher["memory_all_open_mib"]["rss"] / need_mib, 3),
        "pss_all_open_over_bytes": round(switcher["memory_all_open_mib"]["pss"] / need_mib, 3),
        "file_sessions_rss_over_bytes": round(rows["files"]["memory_all_open_mib"]["rss"] / need_mib, 3),
        "file_sessions_pss_over_bytes": round(rows["files"]["memory_all_open_mib"]["pss"] / need_mib, 3),
        "shared_plus_specific_mib": round(need_mib, 1),
    }


def markdown(bench: ServeBench, facts: dict[str, Any], ratios: dict[str, Any]) -> str:
    lines = [
        "# Deployment: switching tasks over one shared weights file",
        "",
        (
            f"Generated by `{COMMAND}` (issue 16). Three synthetic MLPs {'-'.join(map(str, SIZES))} "
            f"({facts['original_mib']:.1f} MiB of weights each) zipped at share {SHARE} "
            f"({facts['zip_seconds']:.0f} s) and "
            f"exported with `onnx-zip export-tasks`; exported task = zipped task to {facts['max_difference']:.1e}. "
            f"{facts['cpus']} CPUs (shared), {facts['python']}."
        ),
        "",
        (
            "Cold switch: create the task's session and run it once (batch 1), the other tasks' sessions open; "
            "\"file evicted\": the task's files dropped from the page cache first (`posix_fadvise`; pages other "
            "sessions still map stay). Warm switch: run an already open task once. Memory: with every task open "
            "and run once, above the process before its first session. RSS counts a file page once per mapping "
            "(each session of the per-file row maps `shared.weights` itself); PSS counts it once."
        ),
        "",
        format_table(bench).rstrip(),
        "",
        "| check (issue 16) | measured | goal |",
        "| --- | ---: | ---: |",
        (
            f"| TaskSwitcher cold switch / opening the stand-alone model "
            f"| {ratios['switch_over_standalone_open']:.2f}× | ≤ 0.2× |"
        ),
        (
            f"| same, files evicted from the page cache first "
            f"| {ratios['switch_over_standalone_open_file_evicted']:.2f}× | |"
        ),
        (
            f"| per-file sessions cold switch / opening the stand-alone model "
            f"| {ratios['file_sessions_switch_over_standalone_open']:.2f}× | |"
        ),
        (
            f"| TaskSwitcher RSS, all 3 open / (shared + Σ task-specific bytes) "
            f"| {ratios['rss_all_open_over_bytes']:.2f}× | ≤ 1.2× |"
        ),
        (
            f"| TaskSwitcher PSS, all 3 open / (shared + Σ task-specific bytes) "
            f"| {ratios['pss_all_open_over_bytes']:.2f}× | |"
        ),
        (
            f"| per-file sessions PSS (RSS) / bytes | {ratios['file_sessions_pss_over_bytes']:.2f}× "
            f"({ratios['file_sessions_rss_over_bytes']:.2f}×) | |"
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="rounds of one switch per task (default 7)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "benchmarks"),
                        help="where deploy.md/json go")
    parser.add_argument("--keep", help="build the models in this folder and keep them (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_deploy_") as scratch:
        work = Path(args.keep or scratch)
        work.mkdir(parents=True, exist_ok=True)
        paths = []
        for t, _ in enumerate(TASKS):
            paths.append(work / f"mlp{t}.onnx")
            onnx.save(wide_mlp(seed=t + 1), str(paths[-1]))
        start = time.perf_counter()
        zip_models(paths, None, work / "zipped.onnx", names=list(TASKS), share=SHARE, pairing="l2", progress=False)
        zip_seconds = time.perf_counter() - start
        folder = work / "exported"
        if folder.exists():
            raise SystemExit(f"{folder} exists: remove it or give another --keep folder")
        export_tasks(work / "zipped.onnx", folder)
        facts = {
            "zip_seconds": round(zip_seconds, 1), "original_mib": round(paths[0].stat().st_size / 2**20, 1),
            "max_difference": max_difference(work / "zipped.onnx", folder), "cpus": os.cpu_count(),
            "python": f"Python {platform.python_version()}", "sizes": list(SIZES), "share": SHARE,
        }
        bench = serve_bench(folder, repeats=args.repeats, threads=1)
    ratios = summary(bench)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "deploy.md").write_text(markdown(bench, facts, ratios))
    (out / "deploy.json").write_text(json.dumps({"command": COMMAND, "facts": facts, "ratios": ratios,
                                                 "bench": asdict(bench)}, indent=1, sort_keys=True) + "\n")
    print((out / "deploy.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
