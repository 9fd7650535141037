"""Optimisers and learning-rate schedules, in numpy on the checkpoint's parameters.

onnxruntime-training 1.19.2's optimizer artifacts offer plain SGD (no momentum) and AdamW only,
and ``generate_artifacts`` writes them with an IR version 1.19.2 refuses. The update is a few
vector operations per parameter tensor, so it runs in numpy on float64-free float32 arrays:

* ``sgd``: SGD with Nesterov momentum (PyTorch's formulation): ``v = mu*v + g + wd*p``;
  ``p -= lr * (g + wd*p + mu*v)`` (``nesterov=False``: ``p -= lr * v``); ``mu = 0`` is plain SGD;
* ``adamw``: Adam with decoupled weight decay (Loshchilov & Hutter):
  ``m = b1*m + (1-b1)*g``; ``v = b2*v + (1-b2)*g^2``; ``p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd*p)``.

Schedules (``step`` counts from 0, ``steps`` in all):

* ``cosine``: linear warm-up over the first ``warmup`` steps (default 5% of the steps, at least
  1) from ``lr/warmup`` to ``lr``, then cosine decay to 0 at the last step;
* ``constant``: ``lr`` throughout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from onnx_zip.errors import InputError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
#: Default peak learning rates, chosen by measurement on the zoo (see the package docstring).
DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-3}
WARMUP_FRACTION = 0.05


def warmup_steps(steps: int, schedule: str) -> int:
    """Warm-up length of a schedule: 5% of the steps (at least 1) for ``cosine``, else 0."""
    return max(1, round(WARMUP_FRACTION * steps)) if schedule == "cosine" else 0


def learning_rate(step: int, steps: int, lr: float, schedule: str) -> float:
    """The learning rate of step ``step`` (0-based) of ``steps``.

    Raises:
        InputError: an unknown schedule.
    """
    if schedule == "constant":
        return lr
    if schedule != "cosine":
        raise InputError(f"unknown schedule {schedule!r}", hint=f"use one of {', '.join(SCHEDULES)}")
    warm = warmup_steps(steps, schedule)
    if step < warm:
        return lr * (step + 1) / warm
    span = max(1, steps - warm)
    return 0.5 * lr * (1.0 + math.cos(math.pi * (step - warm) / span))


class Optimizer:
    """SGD (momentum, Nesterov) or AdamW over named float32 parameters.

    Args:
        kind: ``sgd`` or ``adamw``.
        momentum: SGD momentum ``mu`` (0: plain SGD).
        nesterov: Nesterov momentum for SGD.
        weight_decay: L2 penalty (SGD) or decoupled decay (AdamW).
        betas: AdamW's ``(b1, b2)``.
        eps: AdamW's epsilon.
    """

    def __init__(
        self,
        kind: str = "sgd",
        *,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if kind not in OPTIMIZERS:
            raise InputError(f"unknown optimizer {kind!r}", hint=f"use one of {', '.join(OPTIMIZERS)}")
        self.kind = kind
        self.momentum = momentum
        self.nesterov = nesterov
        self.weight_decay = weight_decay
        self.betas = betas
        self.eps = eps
        self._first: dict[str, np.ndarray] = {}
        self._second: dict[str, np.ndarray] = {}
        self._t = 0

    def step(
        self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray], lr: float
    ) -> dict[str, np.ndarray]:
        """One update; returns the new values (float32, same shapes). Inputs are not modified."""
        self._t += 1
        out = {}
        for name, p in params.items():
            g = grads[name].astype(np.float32, copy=False)
            if self.kind == "sgd":
                if self.weight_decay:
                    g = g + np.float32(self.weight_decay) * p
                if self.momentum:
                    v = self._first.get(name)
                    v = g.copy() if v is None else np.float32(self.momentum) * v + g
                    self._first[name] = v
                    direction = g + np.float32(self.momentum) * v if self.nesterov else v
                else:
                    direction = g
                out[name] = (p - np.float32(lr) * direction).astype(np.float32)
            else:
                b1, b2 = self.betas
                m = self._first.get(name, np.zeros_like(p))
                v = self._second.get(name, np.zeros_like(p))
                m = np.float32(b1) * m + np.float32(1 - b1) * g
                v = np.float32(b2) * v + np.float32(1 - b2) * g * g
                self._first[name], self._second[name] = m, v
                m_hat = m / np.float32(1 - b1**self._t)
                v_hat = v / np.float32(1 - b2**self._t)
                update = m_hat / (np.sqrt(v_hat) + np.float32(self.eps)) + np.float32(self.weight_decay) * p
                out[name] = (p - np.float32(lr) * update).astype(np.float32)
        return out
