"""PNG plots of a report, drawn with matplotlib (an optional dependency: ``pip install 'onnx-zip[plot]'``).

Each function draws one figure from the JSON report and returns its PNG bytes (or ``None`` when the
report has nothing to draw). matplotlib is imported lazily with the ``Agg`` backend, so no display
is needed; figures carry no date, so the same report gives the same bytes.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

_DPI = 100


def available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        _pyplot()
    except ImportError:
        return False
    return True


def _pyplot() -> Any:
    import matplotlib  # noqa: PLC0415 - optional dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _png(fig: Any) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def shared_counts(report: dict[str, Any]) -> bytes | None:
    """Bar chart: per hidden layer, the shared neurons and each task's own neurons (stacked)."""
    layers = report.get("layers") or []
    if not layers:
        return None
    plt = _pyplot()
    tasks = report["tasks"]
    names = [layer["layer"] for layer in layers]
    x = np.arange(len(layers))
    width = 0.8 / len(tasks)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(layers) + 2), 3.6))
    for t, task in enumerate(tasks):
        shared = np.array([layer["shared"] for layer in layers])
        own = np.array([layer["neurons"][t] - layer["shared"] for layer in layers])
        pos = x - 0.4 + width * (t + 0.5)
        ax.bar(pos, shared, width, color="tab:blue", label="shared" if t == 0 else None)
        ax.bar(pos, own, width, bottom=shared, color=f"C{t + 1}", label=f"{task} own")
        for px, s, o in zip(pos, shared, own):
            ax.text(px, s + o, f"{s}/{s + o}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylabel("neurons")
    ax.set_title("shared neurons per layer (shared / total per task)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def cost_histograms(report: dict[str, Any]) -> bytes | None:
    """Per hidden layer, a histogram of the merge costs of the shared pairs (log10 scale)."""
    layers = [layer for layer in report.get("layers") or [] if layer.get("costs")]
    if not layers:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3.0), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        costs = np.asarray(layer["costs"], dtype=np.float64)
        positive = costs[costs > 0]
        floor = positive.min() if positive.size else 1e-12
        values = np.log10(np.maximum(costs, floor))
        ax.hist(values, bins=min(30, max(5, costs.size // 5)), color="tab:orange")
        ax.set_title(f"{layer['layer']} ({costs.size} pairs)", fontsize=9)
        ax.set_xlabel("log10 merge cost")
    axes[0][0].set_ylabel("pairs")
    fig.tight_layout()
    return _png(fig)


def layerwise_accuracy(report: dict[str, Any]) -> bytes | None:
    """Accuracy of each task before and after each layer's retraining in the layer-wise loop."""
    records = [r for r in report.get("layerwise") or [] if r.get("accuracy_before") or r.get("accuracy_after")]
    if not records:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    labels: list[str] = []
    for r in records:
        labels += [f"{r['layer']}\nzipped", f"{r['layer']}\nretrained"]
    for t, task in enumerate(report["tasks"]):
        ys = []
        for r in records:
            ys += [(r.get("accuracy_before") or {}).get(task, np.nan),
                   (r.get("accuracy_after") or {}).get(task, np.nan)]
        ax.plot(range(len(ys)), 100 * np.asarray(ys, dtype=float), marker="o", color=f"C{t + 1}", label=task)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy through the zip-and-retrain loop")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def sweep_curve(report: dict[str, Any]) -> bytes | None:
    """Accuracy per task against the fraction of the zipped model's parameters that are shared."""
    levels = report.get("sweep") or []
    if not levels:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    x = np.array([level["shared_fraction"] for level in levels])
    original = report.get("original_accuracy") or {}
    for t, task in enumerate(report["tasks"]):
        y = [level["accuracy"].get(task, np.nan) for level in levels]
        ax.plot(x, 100 * np.asarray(y, dtype=float), marker="o", color=f"C{t + 1}", label=f"{task} zipped")
        tuned = [(level.get("accuracy_finetuned") or {}).get(task, np.nan) for level in levels]
        if not np.all(np.isnan(np.asarray(tuned, dtype=float))):
            ax.plot(x, 100 * np.asarray(tuned, dtype=float), marker="s", linestyle="--", color=f"C{t + 1}",
                    label=f"{task} fine-tuned")
        if task in original:
            ax.axhline(100 * original[task], color=f"C{t + 1}", linestyle=":", linewidth=1)
    for level, px in zip(levels, x):
        ax.annotate(f"{level['share']:g}", (px, ax.get_ylim()[0]), fontsize=7, ha="center", va="bottom")
    ax.set_xlabel("fraction of the zipped model's parameters that are shared")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy against sharing (dotted: originals; labels: share level)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


#: (file suffix, caption, drawing function) in the order the summary shows them.
PLOTS = (
    ("shared", "Shared neurons per layer", shared_counts),
    ("costs", "Merge costs of the shared pairs", cost_histograms),
    ("layerwise", "Accuracy through the zip-and-retrain loop", layerwise_accuracy),
    ("sweep", "Accuracy against sharing", sweep_curve),
)
