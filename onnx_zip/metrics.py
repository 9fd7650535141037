"""Task metrics: accuracy against labels and agreement with the original model, over batches.

A :class:`TaskMeter` accumulates, batch by batch, what one task's output scores:

* with integer labels and ``(N, C)`` scores: top-1 ``accuracy``;
* with the original model's output for the same rows (the *reference*, same shape):
  ``agreement`` (top-1 agreement, ``(N, C)`` outputs only), ``max_abs_diff``, ``mean_abs_diff``,
  ``cosine`` (mean over rows of the cosine similarity of the flattened rows) and, for maps and
  scores (rank > 2, or the output of a Sigmoid), ``iou``: intersection over union of the two
  outputs thresholded at :attr:`TaskMeter.threshold` (0.5 on probabilities, 0 on logits).

Metrics are fractions in ``[0, 1]`` (cosine in ``[-1, 1]``); absent ones are omitted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnx_zip.errors import DataError


@dataclass
class TaskMeter:
    """Accumulates one task's metrics over batches.

    Args:
        task: The task name (messages).
        maps: Score IoU of thresholded outputs (maps and scores).
        threshold: The IoU threshold.
        lenient: Labels outside the output's classes are skipped (no accuracy) instead of refused
            (data of unknown task scored by every task).
    """

    task: str
    maps: bool = False
    threshold: float = 0.5
    lenient: bool = False
    _count: int = 0
    _correct: int = 0
    _labelled: int = 0
    _agree: int = 0
    _ref_rows: int = 0
    _max_abs: float = 0.0
    _sum_abs: float = 0.0
    _elements: int = 0
    _cos_sum: float = 0.0
    _inter: int = 0
    _union: int = 0
    _ranks: set[int] = field(default_factory=set)
    _skipped: bool = False

    def update(self, output: np.ndarray, labels: np.ndarray | None = None, reference: np.ndarray | None = None) -> None:
        """Add one batch.

        Args:
            output: ``(n, ...)`` the task's output.
            labels: ``(n,)`` integer class indices (with ``(n, C)`` outputs), or ``None``.
            reference: ``(n, ...)`` the original model's output for the same rows, or ``None``.

        Raises:
            DataError: labels out of range, or a reference of another shape.
        """
        output = np.asarray(output, dtype=np.float64)
        n = output.shape[0]
        self._count += n
        self._ranks.add(output.ndim)
        if labels is not None and output.ndim == 2 and np.issubdtype(np.asarray(labels).dtype, np.integer):
            if labels.min() < 0 or labels.max() >= output.shape[1]:
                if self.lenient:
                    self._skipped = True
                    labels = None
            if labels is not None and (labels.min() < 0 or labels.max() >= output.shape[1]):
                raise DataError(f"task {self.task}: labels range over [{labels.min()}, {labels.max()}] but the "
                                f"output has {output.shape[1]} classes")
            if labels is not None and not self._skipped:
                self._correct += int((output.argmax(axis=1) == labels).sum())
                self._labelled += n
        if reference is not None:
            self._compare(output, np.asarray(reference, dtype=np.float64))

    def _compare(self, output: np.ndarray, reference: np.ndarray) -> None:
        if reference.shape != output.shape:
            raise DataError(f"task {self.task}: the original's output has shape {reference.shape}, "
                            f"the evaluated model's {output.shape}")
        n = output.shape[0]
        diff = np.abs(output - reference)
        self._max_abs = max(self._max_abs, float(diff.max(initial=0.0)))
        self._sum_abs += float(diff.sum())
        self._elements += diff.size
        a, b = output.reshape(n, -1), reference.reshape(n, -1)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cos = np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1.0), 1.0)
        self._cos_sum += float(cos.sum())
        self._ref_rows += n
        if output.ndim == 2 and output.shape[1] > 1 and not self.maps:
            self._agree += int((output.argmax(axis=1) == reference.argmax(axis=1)).sum())
        if self.maps or output.ndim > 2:
            mine, theirs = output > self.threshold, reference > self.threshold
            self._inter += int((mine & theirs).sum())
            self._union += int((mine | theirs).sum())

    def result(self) -> dict[str, float | int]:
        """``{metric: value}`` of what was measured (``count``: the samples seen)."""
        out: dict[str, float | int] = {"count": self._count}
        if self._labelled and not self._skipped:
            out["accuracy"] = self._correct / self._labelled
        if self._ref_rows:
            if not self.maps and 2 in self._ranks:
                out["agreement"] = self._agree / self._ref_rows
            out["max_abs_diff"] = self._max_abs
            out["mean_abs_diff"] = self._sum_abs / max(1, self._elements)
            out["cosine"] = self._cos_sum / self._ref_rows
            if self.maps or any(r > 2 for r in self._ranks):
                out["iou"] = self._inter / self._union if self._union else 1.0
        return out


def describe(metrics: dict[str, float | int]) -> str:
    """One line: ``accuracy 98.10%, agreement 99.20%, max |diff| 0.53, ...``."""
    parts = []
    for key, label in (("accuracy", "accuracy"), ("agreement", "top-1 agreement"), ("iou", "IoU")):
        if key in metrics:
            parts.append(f"{label} {100 * float(metrics[key]):.2f}%")
    if "cosine" in metrics:
        parts.append(f"cosine {float(metrics['cosine']):.4f}")
    if "max_abs_diff" in metrics:
        parts.append(f"max |diff| {float(metrics['max_abs_diff']):.4g}, "
                     f"mean |diff| {float(metrics['mean_abs_diff']):.4g}")
    return ", ".join(parts) or "no metric (no labels and no original to compare with)"
