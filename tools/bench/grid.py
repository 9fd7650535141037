"""Section 1: accuracy against parameters shared, one cached JSON file per cell.

A cell is (pair, method, reading, share, budget, seed). Fine-tuning runs with ``threads=1`` (the
library's determinism guarantee), zipping too, so any cell rerun gives the same numbers.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tools.bench.common import PAIR_BY_KEY, PAIRS, TASKS, Pair, data_path, is_conv, load_split, model_path

METHODS = ("mtz-onepass", "mtz-layerwise", "l2-average", "random", "correlation-average", "no-sharing")
PAIRING = {"mtz-onepass": "mtz", "mtz-layerwise": "mtz", "l2-average": "l2", "random": "random",
           "correlation-average": "correlation"}
SHARES = (0.5, 0.75, 1.0)
BUDGETS = (0, 100, 600)
N_SEEDS = 3


@dataclass(frozen=True)
class Cell:
    pair: str
    method: str
    reading: str | None  # patch / channel for the MTZ methods on conv pairs, else None
    share: float  # 0.0 for no-sharing
    budget: int
    seed: int

    @property
    def key(self) -> str:
        return f"{self.pair}/{self.method}/{self.reading or 'na'}/{self.share:g}/{self.budget}/{self.seed}"

    @property
    def filename(self) -> str:
        return self.key.replace("/", "__") + ".json"

    @property
    def row_key(self) -> tuple[str, str, str | None, float, int]:
        return (self.pair, self.method, self.reading, self.share, self.budget)


def readings_for(pair: Pair, method: str) -> list[str | None]:
    if method in ("mtz-onepass", "mtz-layerwise") and is_conv(pair.a):
        return ["patch", "channel"]
    return [None]


def seeds_for(method: str, budget: int, n_seeds: int) -> list[int]:
    """Budget 0 is deterministic except for random pairing; fine-tuned cells use n_seeds seeds."""
    if budget == 0 and method != "random":
        return [0]
    return list(range(n_seeds))


def all_cells(pairs=None, methods=None, shares=None, budgets=None, seeds=None, n_seeds: int = N_SEEDS) -> list[Cell]:
    """Every cell in priority order: budget, then pair (brief's order), method, reading, share, seed."""
    out = []
    for budget in budgets or BUDGETS:
        for pair in [PAIR_BY_KEY[p] for p in pairs] if pairs else PAIRS:
            for method in methods or METHODS:
                for reading in readings_for(pair, method):
                    for share in ([0.0] if method == "no-sharing" else list(shares or SHARES)):
                        for seed in seeds_for(method, budget, n_seeds):
                            if seeds is not None and seed not in seeds:
                                continue
                            out.append(Cell(pair.key, method, reading, float(share), int(budget), seed))
    return out


def select(cells: list[Cell], only: list[str] | None) -> list[Cell]:
    if not only:
        return cells
    out = []
    for c in cells:
        for pattern in only:
            parts = pattern.split("/")
            mine = c.key.split("/")
            if all(fnmatch.fnmatch(m, p) or (p.replace(".", "", 1).isdigit() and m.replace(".", "", 1).isdigit()
                                                 and float(p) == float(m)) for m, p in zip(mine, parts)):
                out.append(c)
                break
    return out


def layer_steps(budget: int, layers: int) -> list[int]:
    """Split a budget over hidden layers proportionally to 10 + 7·l (the released ResNet code), summing to it."""
    weights = np.array([10 + 7 * (i + 1) for i in range(layers)], dtype=float)
    exact = budget * weights / weights.sum()
    steps = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - steps), kind="stable")[: budget - int(steps.sum())]:
        steps[i] += 1
    return [int(s) for s in steps]


def estimate_seconds(cell: Cell) -> float:
    """A rough prior of a cell's cost on one core (refined by the observed ratio while running)."""
    conv = cell.pair != "lenet300-s0-s1"
    step = 0.14 if conv else 0.03
    base = 8.0
    if cell.method.startswith("mtz"):
        base += 42.0 if cell.reading == "patch" else 6.0 if conv else 2.0
    elif cell.method == "correlation-average":
        base += 8.0
    if cell.method == "no-sharing":
        step *= 1.1
    return base + (cell.budget * step + 4.0 if cell.budget else 0.0)


def no_sharing_model(pair: Pair):
    """The two originals side by side (onnx.compose), inputs/outputs prefixed a/, b/, task metadata written."""
    import onnx
    from onnx import compose

    from onnx_zip.zipper.report import write_metadata

    from onnx_zip.model_io import convert_opset, default_opset

    ma, mb = onnx.load(str(model_path(pair.a))), onnx.load(str(model_path(pair.b)))
    opset = max(default_opset(ma), default_opset(mb))  # merge_models needs one opset (zoo: 17/18/20)
    ma, mb = (m if default_opset(m) == opset else convert_opset(m, opset) for m in (ma, mb))
    ir = max(ma.ir_version, mb.ir_version)
    ma.ir_version = mb.ir_version = ir
    ma = compose.add_prefix(ma, "a/")
    mb = compose.add_prefix(mb, "b/")
    merged = compose.merge_models(ma, mb, io_map=[], producer_name="onnx_zip benchmark (no-sharing)")
    write_metadata(merged, {"tasks": list(TASKS), "no_sharing": True})
    return merged


def run_cell(cell: Cell, *, calibration_limit: int | None = 4096, eval_limit: int | None = None,
             threads: int = 1) -> dict[str, Any]:
    """Build (zip), fine-tune for the cell's budget, evaluate on the test splits; returns the cached record."""
    import onnx

    from onnx_zip.finetune import evaluate_tasks, finetune
    from onnx_zip.zipper.api import zip_models
    from onnx_zip.pipeline.layerwise import zip_layerwise
    from onnx_zip.zipper.report import parameter_count
    from tools.bench.common import quiet_ort

    quiet_ort()
    pair = PAIR_BY_KEY[cell.pair]
    t0 = time.perf_counter()
    models = [str(model_path(pair.a)), str(model_path(pair.b))]
    calib = [str(data_path(pair.a, "train")), str(data_path(pair.b, "train"))]
    train = {"a": calib[0], "b": calib[1]}
    test = {"a": load_split(pair.a, "test", eval_limit), "b": load_split(pair.b, "test", eval_limit)}
    originals = [onnx.load(m) for m in models]
    p_a, p_b = parameter_count(originals[0]), parameter_count(originals[1])
    ft = {"seed": cell.seed, "threads": threads}
    zip_opts: dict[str, Any] = dict(names=list(TASKS), share=cell.share, conv_hessian=cell.reading or "auto",
                                    seed=cell.seed, calibration_limit=calibration_limit, threads=threads)
    record: dict[str, Any] = {"cell": asdict(cell), "key": cell.key, "pair_name": pair.name}
    finetune_s = 0.0
    if cell.method == "no-sharing":
        model = no_sharing_model(pair)
        zip_s = time.perf_counter() - t0
        timings: dict[str, float] = {}
    elif cell.method == "mtz-layerwise":
        from onnx_zip.config import ZipConfig
        from onnx_zip.pipeline import prepare

        hidden = len(prepare(models, None, names=list(TASKS), config=ZipConfig(pairing="l2")).hidden)
        steps = layer_steps(cell.budget, hidden)
        result = zip_layerwise(models, calib, train, retrain_steps=steps, finetune_options=ft, pairing="mtz", **zip_opts)
        model = result.model
        record["layer_steps"] = steps
        record["layerwise"] = result.report.get("layerwise")
        zip_s = time.perf_counter() - t0
        timings = result.report["timings"]
    else:
        result = zip_models(models, calib, pairing=PAIRING[cell.method], **zip_opts)
        model = result.model
        zip_s = time.perf_counter() - t0
        timings = result.report["timings"]
    if cell.method != "mtz-layerwise" and cell.budget > 0:
        t1 = time.perf_counter()
        model = finetune(model, train, steps=cell.budget, **ft).model
        finetune_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    accuracy = evaluate_tasks(model, test, threads=threads)
    eval_s = time.perf_counter() - t2
    shared = parameter_count(model, prefix="shared/")
    stored = parameter_count(model)
    record.update(
        accuracy={pair.a: float(accuracy["a"]), pair.b: float(accuracy["b"])},
        accuracy_by_task={t: float(accuracy[t]) for t in TASKS},
        test_samples={t: int(len(test[t]["label"])) for t in TASKS},
        params={"a": p_a, "b": p_b, "stored": stored, "shared": shared},
        params_shared_fraction=shared / p_a,
        storage_saved_fraction=1.0 - stored / (p_a + p_b),
        file_bytes=len(model.SerializeToString()),
        calibration_limit=calibration_limit,
        seconds={"zip": zip_s, "finetune": finetune_s, "eval": eval_s, "total": time.perf_counter() - t0},
        zip_timings=timings,
    )
    return record


def cache_path(cache: Path, cell: Cell) -> Path:
    return cache / "grid" / cell.filename
