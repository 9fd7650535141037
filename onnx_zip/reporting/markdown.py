"""Markdown tables of a zip, run or sweep report (pure text, no plotting).

Every function takes the JSON report as :func:`~onnx_zip.pipeline.zip_models` (and the
``run``/``sweep`` commands) write it and returns Markdown lines; missing sections give no lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A GitHub-flavoured Markdown table (numbers right-aligned)."""
    cells = [[_cell(v) for v in row] for row in rows]
    align = ["---:" if rows and all(_numeric(r[i]) for r in rows) else "---" for i in range(len(header))]
    return (["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
            + ["| " + " | ".join(r) + " |" for r in cells])


def _numeric(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    return str(value).replace("|", "\\|")


def percent(value: float | None) -> str:
    """``0.9867`` → ``98.67%``; ``None`` → ``-``."""
    return "-" if value is None else f"{100 * value:.2f}%"


def params_section(report: dict[str, Any]) -> list[str]:
    """Parameters of the originals against the zipped model."""
    params = report.get("params")
    if not params:
        return []
    tasks = report["tasks"]
    original = sum(params[t] for t in tasks)
    rows = [[f"original {t}", params[t]] for t in tasks]
    rows += [["originals together", original], ["zipped (stored)", params["zipped"]],
             ["shared (stored once)", params["shared"]]]
    saved = 1 - params["zipped"] / original if original else 0.0
    return ["## Parameters", "", *table(["", "parameters"], rows), "",
            f"{100 * saved:.1f}% of the parameters saved.", ""]


def cost_stats(costs: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """(min, median, max) of a layer's merge costs, or Nones when nothing was shared."""
    if not costs:
        return None, None, None
    values = np.asarray(costs, dtype=np.float64)
    return float(values.min()), float(np.median(values)), float(values.max())


def layers_section(report: dict[str, Any]) -> list[str]:
    """Per hidden layer: kind, neurons per task, shared and task-specific counts, merge costs."""
    layers = report.get("layers")
    if not layers:
        return []
    tasks = report["tasks"]
    header = ["layer", "kind", *[f"neurons {t}" for t in tasks], "shared", *[f"{t} own" for t in tasks],
              "cost min", "cost median", "cost max"]
    rows = []
    for layer in layers:
        neurons = list(layer["neurons"])
        low, mid, high = cost_stats(layer.get("costs") or [])
        kind = layer["kind"] + (f" ({layer['conv_hessian']})" if layer.get("conv_hessian") else "")
        own = [n - layer["shared"] for n in neurons]
        rows.append([layer["layer"], kind, *neurons, layer["shared"], *own, low, mid, high])
    return ["## Layers", "", *table(header, rows), ""]


def evaluation_section(report: dict[str, Any]) -> list[str]:
    """Accuracy per task: original, zipped, zipped + fine-tuned (those that were measured)."""
    evaluation = report.get("evaluation")
    if not evaluation:
        return []
    stages = [s for s in ("original", "zipped", "finetuned") if any(s in v for v in evaluation.values())]
    names = {"original": "original", "zipped": "zipped", "finetuned": "zipped + fine-tuned"}
    rows = [[task, *[percent(values.get(s)) for s in stages]] for task, values in evaluation.items()]
    return ["## Accuracy", "", *table(["task", *[names[s] for s in stages]], rows), ""]


def layerwise_section(report: dict[str, Any]) -> list[str]:
    """The retrain loop: per layer shared count, steps, accuracy before and after, seconds."""
    records = report.get("layerwise")
    if not records:
        return []
    tasks = report["tasks"]
    header = ["layer", "shared", "steps", *[f"{t} before" for t in tasks], *[f"{t} after" for t in tasks], "seconds"]
    rows = []
    for r in records:
        before, after = r.get("accuracy_before") or {}, r.get("accuracy_after") or {}
        rows.append([r["layer"], r["shared"], r["steps"], *[percent(before.get(t)) for t in tasks],
                     *[percent(after.get(t)) for t in tasks], round(float(r.get("seconds", 0.0)), 1)])
    return ["## Layer-wise zipping and retraining", "", *table(header, rows), ""]


def finetune_section(report: dict[str, Any]) -> list[str]:
    """The final fine-tuning's settings and losses."""
    ft = report.get("finetune")
    if not ft:
        return []
    keys = ("steps", "optimizer", "lr", "batch", "schedule", "seed")
    rows = [[k, ft.get(k)] for k in keys if k in ft]
    losses = ft.get("final_losses") or {}
    rows += [[f"final loss {t}", v] for t, v in losses.items()]
    if "seconds" in ft:
        rows.append(["seconds", round(float(ft["seconds"]), 1)])
    return ["## Fine-tuning", "", *table(["setting", "value"], rows), ""]


def sweep_section(report: dict[str, Any]) -> list[str]:
    """A sharing sweep: per level the parameters and each task's accuracy."""
    levels = report.get("sweep")
    if not levels:
        return []
    tasks = report["tasks"]
    tuned = any(level.get("accuracy_finetuned") for level in levels)
    header = ["share", "parameters", "shared params", "fraction shared", *[f"{t}" for t in tasks]]
    if tuned:
        header += [f"{t} fine-tuned" for t in tasks]
    rows = []
    for level in levels:
        acc, acc_ft = level.get("accuracy") or {}, level.get("accuracy_finetuned") or {}
        row = [level["share"], level["params"]["zipped"], level["params"]["shared"], round(level["shared_fraction"], 4),
               *[percent(acc.get(t)) for t in tasks]]
        if tuned:
            row += [percent(acc_ft.get(t)) for t in tasks]
        rows.append(row)
    lines = ["## Sharing sweep", ""]
    original = report.get("original_accuracy")
    if original:
        lines += ["Originals: " + ", ".join(f"{t} {percent(original.get(t))}" for t in tasks), ""]
    return lines + [*table(header, rows), ""]


def settings_section(report: dict[str, Any]) -> list[str]:
    """The zip settings and the time of each stage."""
    lines = []
    settings = report.get("settings")
    if settings:
        rows = [[k, v if not isinstance(v, (list, dict)) else str(v)] for k, v in sorted(settings.items())]
        lines += ["## Settings", "", *table(["setting", "value"], rows), ""]
    timings = report.get("timings")
    if timings:
        rows = [[stage, round(float(seconds), 2)] for stage, seconds in timings.items()]
        lines += ["## Timings", "", *table(["stage", "seconds"], rows), ""]
    return lines


def sources_section(report: dict[str, Any]) -> list[str]:
    """Which models were merged (file and sha256), as a list."""
    sources = report.get("sources")
    if not sources:
        return []
    lines = ["## What was merged", ""]
    for task in report["tasks"]:
        src = sources.get(task) or {}
        lines.append(f"- **{task}**: `{src.get('file')}` (sha256 `{src.get('sha256')}`)")
    return lines + [""]
