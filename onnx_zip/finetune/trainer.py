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
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnx_zip import runtime
from onnx_zip.errors import NumericalError
from onnx_zip.finetune.artifacts import Artifacts
from onnx_zip.finetune.losses import TOTAL_LOSS, rows_input, target_input, task_loss_output, teacher_input
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


#: A task's teacher: ``{data name: (n, ...) array}`` -> the ``(n, ...)`` float32 target tensor.
TeacherFn = Callable[[Mapping[str, np.ndarray]], np.ndarray]


def joint_feeds(
    specs: Sequence[TaskSpec],
    data: Mapping[str, TaskBatchData],
    indices: Sequence[np.ndarray],
    *,
    shared: bool,
    teachers: Mapping[str, TeacherFn] | None = None,
) -> dict[str, np.ndarray]:
    """The inputs of one training step (teacher tensors computed now, for this batch only).

    Returns:
        ``{graph input: joint batch, finetune/<task>/rows: (n_t,) int64, finetune/<task>/target:
        targets, finetune/<task>/teacher: the teacher's tensor}``.
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
        if spec.uses_labels and d.targets is not None:
            feeds[target_input(spec.name)] = d.targets[idx]
        if spec.distill is not None and spec.alpha < 1 and teachers is not None:
            batch = {spec.inputs[name]: array[idx] for name, array in d.inputs.items()}
            feeds[teacher_input(spec.name)] = teachers[spec.name](batch)
        offset += n
    for name, chunks in parts.items():
        feeds[name] = chunks[0] if len(chunks) == 1 else np.concatenate(chunks, axis=0)
    return feeds


@dataclass
class TrainSettings:
    """What the loop needs besides the model and the data.

    ``lr`` ``None``: chosen by a learning-rate range test (:mod:`~onnx_zip.finetune.lr_range`)
    before the run. ``stop_factor``: the run stops as diverged when the mean loss of the last
    ``window`` steps exceeds ``stop_factor`` times that of the first ``window`` steps (or a
    loss is NaN/Inf).
    """

    steps: int
    lr: float | None
    schedule: str
    batch_size: int
    seed: int
    threads: int | None
    progress: bool
    eval_every: int | None
    stop_factor: float = 1.5


#: Samples per task of the fixed probe batch (before/after loss, range test).
PROBE_SAMPLES = 256


class StepRunner:
    """The onnxruntime training module of the artifacts: one joint forward/backward per call.

    Args:
        artifacts: The training model and checkpoint.
        threads: onnxruntime intra-op threads.
    """

    def __init__(self, artifacts: Artifacts, threads: int | None) -> None:
        rt = runtime.training_modules()
        options = runtime.ort().SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.state = rt.api.CheckpointState.load_checkpoint(str(artifacts.training_model.parent / "checkpoint"))
        ort = runtime.ort()
        ort.set_default_logger_severity(3)  # the training session logs every graph transformer at INFO otherwise
        try:
            self.module = rt.api.Module(str(artifacts.training_model), self.state, None, "cpu", options)
        finally:
            ort.set_default_logger_severity(2)  # onnxruntime's default (warnings)
        self.module.train()
        self.order = self.module.input_names()
        self.out_names = self.module.output_names()
        self.trainable = list(artifacts.trainable)
        self.every = [*artifacts.trainable, *artifacts.frozen]

    def forward_backward(
        self, feeds: Mapping[str, np.ndarray]
    ) -> tuple[float, dict[str, float], dict[str, np.ndarray]]:
        """``(total loss, {task output: loss}, {trainable: gradient})`` of one joint batch."""
        self.module.lazy_reset_grad()
        outs = self.module(*[feeds[name] for name in self.order])
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        by_name = {n: float(o) for n, o in zip(self.out_names, outs)}
        params = self.state.parameters
        return by_name[TOTAL_LOSS], by_name, {name: params[name].grad for name in self.trainable}

    def values(self, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Copies of the current values of ``names`` (default: every parameter)."""
        params = self.state.parameters
        return {name: np.array(params[name].data) for name in (names if names is not None else self.every)}

    def load(self, values: Mapping[str, np.ndarray]) -> None:
        """Set parameter values."""
        params = self.state.parameters
        for name, value in values.items():
            params[name].data = value


class DivergenceGuard:
    """Watches the loss: NaN/Inf, or the last ``window`` steps' mean above ``factor`` times the
    first ``window`` steps' mean, is divergence; keeps the parameters of the best window so far.

    Args:
        steps: Steps of the run (``window`` = 5% of them, 5 to 25).
        factor: The allowed rise over the start.
    """

    def __init__(self, steps: int, factor: float) -> None:
        self.window = min(25, max(5, steps // 20))
        self.factor = factor
        self.losses: list[float] = []
        self.start: float | None = None
        self.best = math.inf
        self.best_values: dict[str, np.ndarray] | None = None
        self.best_step = 0

    def observe(self, loss: float, runner: StepRunner) -> str | None:
        """Record a step's loss (before its update); return why the run diverged, else ``None``."""
        self.losses.append(loss)
        if not math.isfinite(loss):
            return f"loss {loss} at step {len(self.losses)}"
        if len(self.losses) < self.window:
            return None
        mean = float(np.mean(self.losses[-self.window :]))
        if self.start is None:
            self.start = mean
        if mean < self.best:
            self.best, self.best_step = mean, len(self.losses)
            self.best_values = runner.values()
        if mean > self.factor * self.start and len(self.losses) >= 2 * self.window:
            return (
                f"the mean loss of steps {len(self.losses) - self.window + 1}-{len(self.losses)} ({mean:.4g}) "
                f"rose above {self.factor:g}x its start ({self.start:.4g})"
            )
        return None


def _bar(settings: TrainSettings) -> object | None:
    if settings.progress and sys.stderr.isatty():
        from tqdm import tqdm  # noqa: PLC0415

        return tqdm(total=settings.steps, desc="fine-tune", unit="step", leave=False)
    return None


@dataclass
class TrainOutcome:
    """What :func:`train` returns.

    Attributes:
        values: Every parameter's final value (the best window's when the run diverged).
        history: One entry per step run.
        lr: The peak learning rate used.
        diverged: Why the run stopped early, or ``None``.
        lr_test: The range test's record (``None`` when ``lr`` was given).
        probe: The joint loss on one fixed probe batch (:data:`PROBE_SAMPLES` per task) before
            and after the run: the test of whether the run made the model worse (the same
            samples both times, so batch-to-batch noise plays no part).
    """

    values: dict[str, np.ndarray]
    history: list[dict[str, object]]
    lr: float
    diverged: str | None = None
    lr_test: dict[str, object] | None = None
    probe: tuple[float, float] = (math.nan, math.nan)

    @property
    def worse(self) -> bool:
        """The joint loss on the fixed probe batch is higher after the run than before it."""
        return not self.probe[1] <= self.probe[0]


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


def _history_entry(
    step: int,
    lr: float,
    losses: dict[str, float],
    total: float,
    runner: StepRunner,
    settings: TrainSettings,
    evaluate: Callable[[dict[str, np.ndarray]], dict[str, dict[str, float | int]]] | None,
) -> dict[str, object]:
    """One step's history entry; at evaluation steps (every ``eval_every`` and the last) with the
    metrics of the current parameters."""
    entry: dict[str, object] = {"step": step + 1, "lr": lr, "loss": losses, "total": total}
    last = step + 1 == settings.steps
    if evaluate is not None and (last or (settings.eval_every and (step + 1) % settings.eval_every == 0)):
        found = evaluate(runner.values())
        entry["metrics"] = found
        entry["accuracy"] = {t: m["accuracy"] for t, m in found.items() if "accuracy" in m}
        logger.info("step %d: loss %s, metrics %s", step + 1, losses, found)
    return entry


def _restore_best(runner: StepRunner, guard: DivergenceGuard, diverged: str, peak: float) -> None:
    """After divergence: the parameters of the best window of steps, or an error when there is none."""
    logger.warning("fine-tuning diverged (%s); restoring the parameters of step %d", diverged, guard.best_step)
    if guard.best_values is None:
        raise NumericalError(
            f"fine-tuning diverged at once: {diverged}",
            hint=f"lower the learning rate (now {peak:g}) or use --optimizer adamw",
        )
    runner.load(guard.best_values)


def train(
    artifacts: Artifacts,
    specs: Sequence[TaskSpec],
    data: Mapping[str, TaskBatchData],
    optimizer: Optimizer,
    settings: TrainSettings,
    *,
    shared: bool,
    evaluate: Callable[[dict[str, np.ndarray]], dict[str, dict[str, float | int]]] | None = None,
    teachers: Mapping[str, TeacherFn] | None = None,
) -> TrainOutcome:
    """Run the joint fine-tuning.

    Args:
        artifacts: The training model and checkpoint.
        specs: The tasks.
        data: Each task's training data.
        optimizer: The optimiser.
        settings: Steps, learning rate (``None``: range test), schedule, batch size, seed,
            threads, progress, eval period.
        shared: The inputs are shared (joint batch) rather than per task.
        evaluate: Called with every parameter's current values every ``eval_every`` steps and
            after the last one; returns ``{task: {metric: value}}`` (kept as ``metrics``, its
            accuracies as ``accuracy``).
        teachers: ``{task: teacher}`` for the tasks that distil.

    Returns:
        A :class:`TrainOutcome`. History entries: ``step`` (1-based), ``lr``, ``loss``
        ({task: loss}), ``total``, and ``accuracy`` at evaluation steps. On divergence the
        loop stops and the values are those of the best window of steps.
    """
    from onnx_zip.finetune.lr_range import range_test  # noqa: PLC0415

    runner = StepRunner(artifacts, settings.threads)
    start_values = runner.values()
    batchers = samplers([len(data[s.name]) for s in specs], settings.batch_size, settings.seed)

    def next_feeds() -> dict[str, np.ndarray]:
        return joint_feeds(specs, data, [b.next() for b in batchers], shared=shared, teachers=teachers)

    probe_pick = samplers([len(data[s.name]) for s in specs], PROBE_SAMPLES, settings.seed + 1)
    probe = joint_feeds(specs, data, [b.next() for b in probe_pick], shared=shared, teachers=teachers)
    probe_start, _, _ = runner.forward_backward(probe)
    lr_test = None
    peak = settings.lr
    if peak is None:
        lr_test = range_test(runner, optimizer, probe, next_feeds)
        peak = float(lr_test["lr"])  # type: ignore[arg-type]
    guard = DivergenceGuard(settings.steps, settings.stop_factor)
    history: list[dict[str, object]] = []
    diverged = None
    bar = _bar(settings)
    try:
        for step in range(settings.steps):
            lr = learning_rate(step, settings.steps, peak, settings.schedule)
            total, by_name, grads = runner.forward_backward(next_feeds())
            losses = {s.name: by_name[task_loss_output(s.name)] for s in specs}
            diverged = guard.observe(total, runner)
            if diverged:
                break
            runner.load(optimizer.step(runner.values(runner.trainable), grads, lr))
            history.append(_history_entry(step, lr, losses, total, runner, settings, evaluate))
            if bar is not None:
                bar.update(1)  # type: ignore[attr-defined]
                bar.set_postfix({t: f"{v:.3f}" for t, v in losses.items()}, refresh=False)  # type: ignore[attr-defined]
    finally:
        if bar is not None:
            bar.close()  # type: ignore[attr-defined]
    if diverged:
        _restore_best(runner, guard, diverged, peak)
    probe_end, _, _ = runner.forward_backward(probe)
    if not probe_end <= probe_start:
        probe_end = _keep_best(runner, probe, probe_end, [(guard.best_step, guard.best_values), (0, start_values)])
    return TrainOutcome(runner.values(), history, peak, diverged, lr_test, (probe_start, probe_end))


def _keep_best(
    runner: StepRunner,
    probe: Mapping[str, np.ndarray],
    loss: float,
    candidates: Sequence[tuple[int, dict[str, np.ndarray] | None]],
) -> float:
    """Load the candidate parameters (``(step, values)``, step 0: the start) with the lowest probe
    loss if it is lower than ``loss`` (the current parameters'); return the probe loss kept."""
    best, best_values, best_step = loss, None, -1
    current = runner.values()
    for step, values in candidates:
        if values is None:
            continue
        runner.load(values)
        candidate, _, _ = runner.forward_backward(probe)
        if candidate < best or not math.isfinite(best):
            best, best_values, best_step = candidate, values, step
    runner.load(best_values if best_values is not None else current)
    if best_values is not None:
        logger.warning(
            "the run ended with probe loss %.4g; keeping the parameters of %s (probe loss %.4g)",
            loss,
            f"step {best_step}" if best_step else "the start",
            best,
        )
    return best
