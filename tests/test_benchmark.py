"""tools/benchmark.py --quick end to end into a temp dir (issue 8): cache, results.json, RESULTS.md, --report-only, --only."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py"), *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_quick_benchmark(tmp_path: Path) -> None:
    from onnx_zip import runtime

    if not runtime.has_training():
        pytest.skip("needs onnxruntime-training-cpu")
    import os

    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = _run("--quick", "--out", str(tmp_path), "--jobs", "2")
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The 60 s bound holds on an idle 2-core machine (~40 s); with other work on the cores it is not a fair check.
    if load < 1.0:
        assert seconds < 60, f"--quick took {seconds:.0f}s"
    assert "left ~" in proc.stdout  # progress with an estimate of the time left
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) >= {"rows", "speed", "inference"}
    methods = {r["method"] for r in results["rows"]}
    assert {"mtz-onepass", "mtz-layerwise", "random", "no-sharing"} <= methods
    for row in results["rows"]:
        assert row["pair"] == "lenet300_mnist_s0+lenet300_mnist_s1"
        assert row["conv_hessian"] is None and row["finetune_steps"] in (0, 10) and row["seeds"] == 1
        assert set(row["accuracy"]) == {"lenet300_mnist_s0", "lenet300_mnist_s1"}
        assert all(0.0 <= v <= 1.0 for v in row["accuracy"].values())
        assert row["file_bytes"] > 0
        if row["method"] == "no-sharing":
            assert row["params_shared_fraction"] == 0.0 and row["storage_saved_fraction"] == 0.0
        else:
            assert row["params_shared_fraction"] > 0.9 and 0.45 < row["storage_saved_fraction"] < 0.5
    assert results["cells"]["missing"] == 0
    zoo = results["speed"]["zoo"]["measurements"][0]
    assert zoo["forward_seconds"] > 0 and zoo["per_pair_loop_seconds"] > 0 and "calibrate" in zoo["stages"]
    case = results["inference"]["pairs"][0]["cases"][0]
    assert case["zipped_over_originals"] > 0
    md = (tmp_path / "RESULTS.md").read_text()
    assert "tools/benchmark.py" in md.split("\n## ")[0] and "Goals" in md and "missing" in md
    cache = sorted((tmp_path / "cache" / "grid").glob("*.json"))
    assert len(cache) == 8

    # --report-only regenerates from the cache; a single cell reruns to the same numbers (threads=1).
    key = "lenet300-s0-s1/no-sharing/na/0/10/0"
    path = tmp_path / "cache" / "grid" / (key.replace("/", "__") + ".json")
    before = json.loads(path.read_text())
    (tmp_path / "RESULTS.md").unlink()
    proc = _run("--quick", "--out", str(tmp_path), "--only", key, "--rerun")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(path.read_text())["accuracy"] == before["accuracy"]
    proc = _run("--quick", "--out", str(tmp_path), "--report-only")
    assert proc.returncode == 0 and (tmp_path / "RESULTS.md").exists()


def test_layer_steps_and_selection() -> None:
    sys.path.insert(0, str(ROOT))
    from tools.bench.grid import all_cells, layer_steps, select

    assert layer_steps(600, 3) == [152, 209, 239] or sum(layer_steps(600, 3)) == 600
    assert sum(layer_steps(100, 4)) == 100 and layer_steps(0, 3) == [0, 0, 0]
    steps = layer_steps(600, 4)
    assert steps == sorted(steps)
    cells = all_cells()
    assert cells[0].budget == 0 and cells[-1].budget == 600  # priority order
    assert cells[0].pair == "lenet5-mnist-fashion"
    picked = select(cells, ["lenet300-s0-s1/random/na/1/100/*"])
    assert [c.seed for c in picked] == [0, 1, 2]
