"""The automatic learning rate: a short learning-rate range test before the run.

From the starting parameters, :data:`TEST_STEPS` optimiser steps are taken on the training
batches with a learning rate growing geometrically over :data:`RANGES` (one step per rate, the
optimiser's momentum carried along); after each step the joint loss is measured on one fixed
probe batch, so the curve is free of batch-to-batch noise. The test stops early once the probe
loss exceeds 4x its start or is not finite. The chosen peak rate is the rate of the lowest
probe loss divided by :data:`BACKOFF`, capped by :data:`CAP`. The starting parameters are
restored afterwards; the run's optimiser is untouched.

Measured (SGD, Nesterov 0.9, batch 64 per task; the rate of the lowest probe loss against the
rates known to work): LeNet-5 MNIST+Fashion zipped at share 1.0, labels: lowest at 7.4e-3 (0.01
works, 0.02 is unstable across seeds); the same pair distilling (kd): lowest at 4.0e-3; the zoo
ResNet pair zipped at share 0.5: lowest at 1.2e-3 (0.001 works, 0.01 diverges). In a one-step-
per-rate sweep the momentum lags, so the lowest point already sits below the rate where training
breaks: no further back-off (:data:`BACKOFF` 1) matched the known-good rates within 1.5x on both.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

TEST_STEPS = 16
#: Rates swept per optimiser, ``(lowest, highest)``.
RANGES = {"sgd": (1e-4, 1.0), "adamw": (1e-6, 1e-1)}
BACKOFF = 1.0
#: The largest automatic peak rate per optimiser.
CAP = {"sgd": 0.05, "adamw": 3e-3}


def choose_lr(lrs: list[float], losses: list[float], start: float, kind: str) -> float:
    """The peak rate from a range test's curve: the rate of the lowest loss / BACKOFF, capped.

    Args:
        lrs: The rates tried, increasing.
        losses: The probe loss after each (non-finite allowed).
        start: The probe loss before the test.
        kind: ``sgd`` or ``adamw``.
    """
    finite = [(loss, lr) for lr, loss in zip(lrs, losses) if math.isfinite(loss)]
    low, _ = RANGES[kind]
    if not finite or min(f[0] for f in finite) >= start:
        return low  # nothing helped: the smallest rate tried
    best_loss, best_lr = min(finite)
    return float(min(CAP[kind], max(low, best_lr / BACKOFF)))


def range_test(
    runner: Any,
    optimizer: Any,
    probe: Mapping[str, np.ndarray],
    next_feeds: Callable[[], dict[str, np.ndarray]],
) -> dict[str, object]:
    """Run the range test (see the module docstring) and restore the parameters.

    Args:
        runner: The :class:`~onnx_zip.finetune.trainer.StepRunner`.
        optimizer: The run's :class:`~onnx_zip.finetune.optim.Optimizer` (copied, not used).
        probe: One fixed joint batch.
        next_feeds: The training batches.

    Returns:
        ``{"lr": chosen rate, "tried": [...], "losses": [...], "start": probe loss before}``.
    """
    start_values = runner.values()
    trial = copy.deepcopy(optimizer)
    low, high = RANGES[optimizer.kind]
    lrs = [float(x) for x in np.geomspace(low, high, TEST_STEPS)]
    start, _, _ = runner.forward_backward(probe)
    losses: list[float] = []
    try:
        for lr in lrs:
            _, _, grads = runner.forward_backward(next_feeds())
            runner.load(trial.step(runner.values(runner.trainable), grads, lr))
            loss, _, _ = runner.forward_backward(probe)
            losses.append(loss)
            if not math.isfinite(loss) or loss > 4 * start:
                break
    finally:
        runner.load(start_values)
    chosen = choose_lr(lrs[: len(losses)], losses, start, optimizer.kind)
    logger.info("learning-rate range test: probe loss %.4g -> %s over rates %s; chose %.3g",
                start, [round(x, 4) for x in losses], [f"{x:.1e}" for x in lrs[: len(losses)]], chosen)
    return {"lr": chosen, "tried": lrs[: len(losses)], "losses": losses, "start": start}
