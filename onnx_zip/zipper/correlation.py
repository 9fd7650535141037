"""Activation-correlation pairing (the ZipIt!-style baseline): match neurons whose activations
correlate across the two models on the same inputs.

Both models see the same batches (the concatenation of their calibration sets); for each aligned
hidden layer the Pearson correlation between every neuron of A and every neuron of B is
accumulated in float64 from streaming sums (conv channels: every spatial position is a sample).
The pairing cost is ``1 − corr``; merged weights are plain averages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from onnx_zip import runtime
from onnx_zip.calibrate import instrument
from onnx_zip.config import DEFAULT_CALIBRATION_BATCH
from onnx_zip.data import Dataset, batch_slices
from onnx_zip.graph.layers import Layer


class CrossCorrelation:
    """Streaming Pearson correlation between two sets of features.

    ``update(a (n, N_A), b (n, N_B))`` adds ``n`` paired samples; ``correlation()`` is ``(N_A, N_B)``.
    """

    def __init__(self) -> None:
        self.n = 0
        empty = np.zeros(0)
        self.sa, self.sb, self.saa, self.sbb, self.sab = empty, empty, empty, empty, np.zeros((0, 0))

    def update(self, a: np.ndarray, b: np.ndarray) -> None:
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        if self.n == 0:
            self.sa, self.sb = np.zeros(a.shape[1]), np.zeros(b.shape[1])
            self.saa, self.sbb = np.zeros(a.shape[1]), np.zeros(b.shape[1])
            self.sab = np.zeros((a.shape[1], b.shape[1]))
        self.n += a.shape[0]
        self.sa += a.sum(0)
        self.sb += b.sum(0)
        self.saa += (a * a).sum(0)
        self.sbb += (b * b).sum(0)
        self.sab += a.T @ b

    def correlation(self) -> np.ndarray:
        n = max(self.n, 1)
        mean_a, mean_b = self.sa / n, self.sb / n
        cov = self.sab / n - np.outer(mean_a, mean_b)
        std_a = np.sqrt(np.maximum(self.saa / n - mean_a**2, 0.0))
        std_b = np.sqrt(np.maximum(self.sbb / n - mean_b**2, 0.0))
        denom = np.outer(std_a, std_b)
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.where(denom > 1e-12, cov / np.where(denom > 0, denom, 1.0), 0.0)
        return np.clip(corr, -1.0, 1.0)


def _features(x: np.ndarray) -> np.ndarray:
    """Layer output ``(N, C, ...)`` or ``(N, C)`` → samples × channels."""
    if x.ndim == 2:
        return x
    return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])


def correlation_costs(
    models: Sequence[onnx.ModelProto],
    groups: Sequence[Sequence[Layer]],
    data: Sequence[Dataset],
    *,
    limit: int | None = None,
    batch_size: int = DEFAULT_CALIBRATION_BATCH,
    threads: int | None = None,
) -> list[np.ndarray]:
    """``1 − corr`` between the neurons of two models, for each aligned hidden layer.

    Args:
        models: Two canonical models with the same input signature.
        groups: Aligned hidden layers, ``(layer of A, layer of B)`` each.
        data: Each model's calibration data; both models run on all of them (``limit`` samples each).

    Returns:
        One ``(N_A, N_B)`` cost matrix per group, in ``[0, 2]``.
    """
    sessions, names = [], []
    for t, model in enumerate(models):
        outputs = [group[t].output for group in groups]
        sessions.append(runtime.make_session(instrument(model, outputs), threads=threads, optimize=False))
        names.append(outputs)
    stats = [CrossCorrelation() for _ in groups]
    input_names = [[i.name for i in s.get_inputs()] for s in sessions]
    for dataset in data:
        dataset = dataset.take(limit)
        arrays = list(dataset.inputs.values())
        for part in batch_slices(len(dataset), batch_size):
            fetched = []
            for t, session in enumerate(sessions):
                feed = {name: arr[part] for name, arr in zip(input_names[t], arrays)}
                fetched.append(session.run(names[t], feed))
            for g, stat in enumerate(stats):
                stat.update(_features(fetched[0][g]), _features(fetched[1][g]))
    return [1.0 - stat.correlation() for stat in stats]
