"""The training loop: deterministic per-task batches, one joint step each, the optimiser update.

Batches. Each task draws its own batches from its own data: a permutation per epoch from a
numpy ``Generator`` seeded by ``SeedSequence(seed).spawn(tasks)`` (without replacement within an
epoch; a batch never straddles two epochs, the short tail of an epoch is dropped, and
``batch_size`` is capped at the task's sample count). The same data and seed give the same
batches, step for step.

A step feeds the joint batch (see :mod:`onnx_zip.finetune.losses`): shared inputs receive the
concatenation of the tasks' batches in task order, per-task inputs their own batch, and
``finetune/<task>/rows`` the task's row numbers. onnxruntime computes ``sum_t w_t * loss_t``
and the gradients of the trainable parameters; the numpy optimiser
(:mod:`onnx_zip.finetune.optim`) updates them in the checkpoint state.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnx_zip import runtime
from onnx_zip.errors import NumericalError
from onnx_zip.finetune.artifacts import Artifacts
from onnx_zip.finetune.losses import TOTAL_LOSS, rows_input, target_input, task_loss_output
from onnx_zip.finetune.optim import Optimizer, learning_rate
from onnx_zip.finetune.tasks import TaskBatchData, TaskSpec

logger = logging.getLogger(__name__)


class BatchSampler:
    """Batches of sample indices for one task: a fresh seeded permutation every epoch.

    Args:
        count: Samples of the task.
        batch_size: Samples per batch (capped at ``count``).
        rng: The task's generator.
    """

    def __init__(self, count: int, batch_size: int, rng: np.random.Generator) -> None:
        self.count = count
        self.batch_size = min(batch_size, count)
        self.rng = rng
        self._order = np.empty(0, dtype=np.int64)
        self._pos = 0
        self.epoch = 0

    def next(self) -> np.ndarray:
        """The next ``(batch_size,)`` int64 indices."""
        if self._pos + self.batch_size > self._order.shape[0]:
            self._order = self.rng.permutation(self.count).astype(np.int64)
            self._pos = 0
            self.epoch += 1
        part = self._order[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return part


def samplers(counts: Sequence[int], batch_size: int, seed: int) -> list[BatchSampler]:
    """One :class:`BatchSampler` per task, with independent generators derived from ``seed``."""
    seqs = np.random.SeedSequence(seed).spawn(len(counts))
    return [BatchSampler(n, batch_size, np.random.default_rng(s)) for n, s in zip(counts, seqs)]


def joint_feeds(
    specs: Sequence[TaskSpec], data: Mapping[str, TaskBatchData], indices: Sequence[np.ndarray], *, shared: bool
) -> dict[str, np.ndarray]:
    """The inputs of one training step.

    Returns:
        ``{graph input: joint batch, finetune/<task>/rows: (n_t,) int64, finetune/<task>/target: targets}``.
    """
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    parts: dict[str, list[np.ndarray]] = {}
    for spec, idx in zip(specs, indices):
        d = data[spec.name]
        for name, array in d.inputs.items():
            parts.setdefault(name, []).append(array[idx])
        n = idx.shape[0]
        start = offset if shared else 0
        feeds[rows_input(spec.name)] = np.arange(start, start + n, dtype=np.int64)
        feeds[target_input(spec.name)] = d.targets[idx]
        offset += n
    for name, chunks in parts.items():
        feeds[name] = chunks[0] if len(chunks) == 1 else np.concatenate(chunks, axis=0)
    return feeds


@dataclass
class TrainSettings:
    """What the loop needs besides the model and the data."""

    steps: int
    lr: float
    schedule: str
    batch_size: int
    seed: int
    threads: int | None
    progress: bool
    eval_every: int | None


def _open_training(artifacts: Artifacts, threads: int | None) -> tuple[Any, Any]:
    """The onnxruntime training ``Module`` (in train mode) and its ``CheckpointState``."""
    rt = runtime.training_modules()
    options = runtime.ort().SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    state = rt.api.CheckpointState.load_checkpoint(str(artifacts.training_model.parent / "checkpoint"))
    ort = runtime.ort()
    ort.set_default_logger_severity(3)  # the training session logs every graph transformer at INFO otherwise
    try:
        module = rt.api.Module(str(artifacts.training_model), state, None, "cpu", options)
    finally:
        ort.set_default_logger_severity(2)  # onnxruntime's default (warnings)
    module.train()
    return module, state


def _progress_bar(settings: TrainSettings) -> Any:
    """A tqdm bar over the steps when asked for and stderr is a terminal, else None."""
    if not (settings.progress and sys.stderr.isatty()):
        return None
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(total=settings.steps, desc="fine-tune", unit="step", leave=False)


def train(
    artifacts: Artifacts,
    specs: Sequence[TaskSpec],
    data: Mapping[str, TaskBatchData],
    optimizer: Optimizer,
    settings: TrainSettings,
    *,
    shared: bool,
    evaluate: Callable[[dict[str, np.ndarray]], dict[str, float]] | None = None,
) -> tuple[dict[str, np.ndarray], list[dict[str, object]]]:
    """Run the joint fine-tuning.

    Args:
        artifacts: The training model and checkpoint.
        specs: The tasks.
        data: Each task's training data.
        optimizer: The optimiser.
        settings: Steps, learning rate, schedule, batch size, seed, threads, progress, eval period.
        shared: The inputs are shared (joint batch) rather than per task.
        evaluate: Called with every parameter's current values every ``eval_every`` steps and
            after the last one; returns ``{task: accuracy}``.

    Returns:
        ``({parameter: final value}, history)`` with every parameter of the checkpoint
        (trainable and frozen) and one history entry per step: ``step`` (1-based), ``lr``,
        ``loss`` ({task: loss}), ``total``, and ``accuracy`` at evaluation steps.

    Raises:
        NumericalError: the loss became NaN or Inf.
    """
    module, state = _open_training(artifacts, settings.threads)
    order = module.input_names()
    out_names = module.output_names()
    params = state.parameters
    values = {name: params[name].data for name in artifacts.trainable}
    every = [n for n in (*artifacts.trainable, *artifacts.frozen)]

    def snapshot() -> dict[str, np.ndarray]:
        return {name: params[name].data for name in every}

    batchers = samplers([len(data[s.name]) for s in specs], settings.batch_size, settings.seed)
    history: list[dict[str, object]] = []
    bar = _progress_bar(settings)
    try:
        for step in range(settings.steps):
            lr = learning_rate(step, settings.steps, settings.lr, settings.schedule)
            feeds = joint_feeds(specs, data, [b.next() for b in batchers], shared=shared)
            module.lazy_reset_grad()
            outs = module(*[feeds[name] for name in order])
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            by_name = dict(zip(out_names, outs))
            losses = {s.name: float(by_name[task_loss_output(s.name)]) for s in specs}
            total = float(by_name[TOTAL_LOSS])
            if not np.isfinite(total):
                raise NumericalError(
                    f"fine-tuning diverged at step {step + 1}: loss {total} (per task {losses})",
                    hint=f"lower the learning rate (now {settings.lr:g}) or use --optimizer adamw",
                )
            grads = {name: params[name].grad for name in artifacts.trainable}
            values = optimizer.step(values, grads, lr)
            for name, value in values.items():
                params[name].data = value
            entry: dict[str, object] = {"step": step + 1, "lr": lr, "loss": losses, "total": total}
            last = step + 1 == settings.steps
            if evaluate is not None and (last or (settings.eval_every and (step + 1) % settings.eval_every == 0)):
                entry["accuracy"] = evaluate(snapshot())
                logger.info("step %d: loss %s, accuracy %s", step + 1, losses, entry["accuracy"])
            history.append(entry)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({t: f"{v:.3f}" for t, v in losses.items()}, refresh=False)
    finally:
        if bar is not None:
            bar.close()
    return snapshot(), history
