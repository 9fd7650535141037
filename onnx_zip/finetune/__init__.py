"""Light retraining of a zipped model on ONNX alone (onnxruntime-training, no torch).

:func:`finetune` trains every task jointly: each step takes one batch per task and minimises
``sum_t w_t * loss_t``; shared parameters receive every task's gradient. The stages:

1. validate everything before long work: the settings (one :class:`~onnx_zip.config.FinetuneConfig`,
   every problem at once), tasks, losses, data, labels, output;
2. decide what trains: ``freeze`` rules, then the preflight for ops without a gradient
   (:mod:`~onnx_zip.finetune.artifacts`);
3. build the training artifacts with the joint loss block (:mod:`~onnx_zip.finetune.losses`)
   in a temporary folder;
4. run the loop (:mod:`~onnx_zip.finetune.trainer`, :mod:`~onnx_zip.finetune.optim`);
5. copy the trained values into the zipped graph and record the run
   (:mod:`~onnx_zip.finetune.export`); evaluate; save atomically.

Defaults (measured on the zoo, ``tools/check_finetune.py`` and ``tools/reproduce_mnist_table.py``):
SGD with Nesterov momentum 0.9, 5% linear warm-up then cosine decay to 0, batch 64 per task, peak
lr chosen by a learning-rate range test (:mod:`~onnx_zip.finetune.lr_range`) unless given. Fixed
rates measured before it: LeNet-300 s0+s1 at share 1.0, 600 steps, seeds 0/1/2: lr 0.01 gives
96.90/96.87% on average, 0.02 gives 96.99/96.92%; LeNet-5 s0+s1 fully shared, 100 steps: lr 0.02
gives 5.07/5.50/14.85% error, 0.01 gives 1.85/1.67/1.78% (0.02 is not stable across seeds); the zoo
ResNet pair diverges at 0.01 and trains at 0.001. The range test picks 7.4e-3 (LeNet-5 pair, labels),
4e-3 (the same, distilling) and 1.2e-3 (ResNet pair).

Tasks without labels distil from their original models (:mod:`~onnx_zip.finetune.distill`); the
loss of an output produced by Softmax/LogSoftmax/Sigmoid reads the tensor before it. A run that
diverges or ends worse on a fixed probe batch is refused unless ``allow_worse``
(:mod:`~onnx_zip.finetune.trainer`); BatchNormalization trains in inference mode by default
(:mod:`~onnx_zip.finetune.batchnorm`); small models train on 1 thread
(:mod:`~onnx_zip.finetune.threads`).

Cost: a zipped model with one shared input is trained through
:func:`~onnx_zip.zipper.extract.split_shared_input` (one input per task, shared nodes copied,
parameters shared), so each task's rows run only through the shared blocks and its own blocks.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx

from onnx_zip import runtime
from onnx_zip.config import FinetuneConfig
from onnx_zip.errors import InputError, ModelError, NumericalError
from onnx_zip.evaluate import count_correct
from onnx_zip.finetune.artifacts import (
    float_initializers,
    preflight,
    resolve_freeze,
    training_artifacts,
)
from onnx_zip.finetune.batchnorm import batchnorm_statistics, inference_mode_batchnorm
from onnx_zip.finetune.distill import (
    Teacher,
    default_distill_loss,
    load_teacher,
    pre_activation,
    recorded_teachers,
    warn_if_not_recorded,
)
from onnx_zip.finetune.evaluation import evaluate_tasks_metrics
from onnx_zip.finetune.export import add_record, with_values
from onnx_zip.finetune.optim import Optimizer, warmup_steps
from onnx_zip.finetune.tasks import (
    LOSSES,
    TaskBatchData,
    TaskData,
    TaskSpec,
    bind_inputs,
    check_targets,
    choose_output,
    filler_feeds,
    has_labels,
    model_tasks,
    output_shapes,
    task_inputs,
    task_outputs,
)
from onnx_zip.finetune.threads import choose_threads
from onnx_zip.finetune.trainer import TrainOutcome, TrainSettings, train
from onnx_zip.model_io import check_writable, load_model, save_model
from onnx_zip.zipper.extract import split_shared_input
from onnx_zip.zipper.report import read_metadata

__all__ = ["FinetuneConfig", "FinetuneResult", "evaluate_tasks", "finetune"]

logger = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    """What :func:`finetune` produced.

    Attributes:
        model: The fine-tuned model (the zipped graph with trained values; as written when an
            output path was given).
        history: One entry per step: ``step``, ``lr``, ``loss`` ({task: loss}), ``total`` and,
            at evaluation steps, ``accuracy`` ({task: accuracy}).
        accuracy: ``{task: accuracy}`` of the final model on the ``eval`` data, or ``None``.
        record: The run's ``onnx_zip.finetune`` metadata record.
        seconds: Wall time of the whole call.
        metrics: ``{task: {metric: value}}`` of the final model on the ``eval`` data: accuracy
            where it has labels, agreement with the teacher for distilling tasks
            (:func:`~onnx_zip.finetune.evaluation.evaluate_tasks_metrics`); ``None`` without ``eval``.
        metrics_before: The same for the model before fine-tuning.
    """

    model: onnx.ModelProto
    history: list[dict[str, Any]]
    accuracy: dict[str, float] | None
    record: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    metrics: dict[str, dict[str, float | int]] | None = None
    metrics_before: dict[str, dict[str, float | int]] | None = None


def _model(model: onnx.ModelProto | str | os.PathLike[str]) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        return model, "model"
    return load_model(model), f"model {model}"


def _per_task(values: Mapping[str, Any] | None, tasks: Sequence[str], default: Any, what: str) -> dict[str, Any]:
    values = dict(values or {})
    unknown = [t for t in values if t not in tasks]
    if unknown:
        raise InputError(f"{what}: unknown task {unknown[0]!r}", hint=f"the model's tasks are {list(tasks)}")
    return {t: values.get(t, default) for t in tasks}


def _task_specs(
    model: onnx.ModelProto,
    tasks: list[str],
    losses: Mapping[str, str] | None,
    task_weights: Mapping[str, float] | None,
    label: str,
) -> tuple[list[TaskSpec], bool]:
    loss_of = _per_task(losses, tasks, "ce", "losses")
    for task, loss in loss_of.items():
        if loss not in LOSSES:
            raise InputError(f"loss {loss!r} for task {task!r} is unknown", hint=f"use one of {', '.join(LOSSES)}")
    weight_of = _per_task(task_weights, tasks, 1.0, "task weights")
    for task, w in weight_of.items():
        if not (isinstance(w, (int, float)) and np.isfinite(w) and w >= 0):
            raise InputError(f"task weight {w!r} for task {task!r} must be a finite number >= 0")
    if not any(weight_of.values()):
        raise InputError("every task weight is 0: nothing to train", hint="give at least one task a positive weight")
    shared, inputs = task_inputs(model, tasks, label=label)
    zipped = bool(read_metadata(model).get("tasks"))
    specs = []
    for t in tasks:
        output = choose_output(task_outputs(model, t, zipped=zipped), t, loss_of[t], label=label)
        tensor = pre_activation(model, output)
        if tensor.activation and loss_of[t] in ("ce", "bce"):
            logger.info("task %s: output %r comes from %s; the %s loss reads its input %r (the logits)",
                        t, output, tensor.activation, loss_of[t], tensor.name)
        name = tensor.name if tensor.activation else ""
        specs.append(TaskSpec(t, output, inputs[t], loss_of[t], float(weight_of[t]), tensor=name))
    return specs, shared


def _plan_distillation(
    specs: list[TaskSpec], config: FinetuneConfig, labelled: Mapping[str, bool], recorded: Mapping[str, Any],
    explicit: Mapping[str, Any],
) -> tuple[list[TaskSpec], dict[str, Any]]:
    """Who learns from a teacher, and the label/distillation mix (``alpha``) of every task.

    A task without labels distils from its teacher (``--teacher``, else the recorded source);
    with labels it distils only given a teacher explicitly or ``alpha < 1``.

    Returns:
        ``(specs with alpha and temperature set, {task: teacher path or model})``.

    Raises:
        InputError: every task that has neither labels nor a teacher, and ``alpha < 1`` without one.
    """
    given = {**dict(config.teachers or {}), **dict(explicit)}
    _per_task(given, [s.name for s in specs], None, "--teacher")
    out, teachers, problems = [], {}, []
    for s in specs:
        has = labelled[s.name]
        teacher = given.get(s.name)
        if teacher is None and (not has or (config.alpha is not None and config.alpha < 1)):
            teacher = recorded.get(s.name)
        if teacher is None:
            if not has:
                problems.append(f"task {s.name!r}: its data has no 'label' array and it has no teacher "
                                "(the recorded source model was not found)")
            elif config.alpha is not None and config.alpha < 1:
                problems.append(f"task {s.name!r}: --alpha {config.alpha:g} mixes in distillation but it has no "
                    f"teacher")
            out.append(s)
            continue
        alpha = 0.0 if not has else (config.alpha if config.alpha is not None else 0.5)
        teachers[s.name] = teacher
        out.append(replace(s, alpha=float(alpha), temperature=float(config.temperature), distill="pending"))
    if problems:
        raise InputError(
            "; ".join(problems), hint="add labels, or give --teacher TASK=ORIGINAL.onnx for each such task"
        )
    return out, teachers


def _bind_all(
    model: onnx.ModelProto,
    specs: list[TaskSpec],
    data: Mapping[str, TaskData],
    shared: bool,
    *,
    evaluation: bool = False,
) -> tuple[dict[str, TaskBatchData], dict[str, tuple[int, ...]]]:
    raw = {s.name: bind_inputs(model, s, data[s.name]) for s in specs if s.name in data}
    shapes = output_shapes(model, [s for s in specs if s.name in raw], {t: r[0] for t, r in raw.items()}, shared=shared)
    bound = {}
    for s in specs:
        if s.name not in raw:
            continue
        inputs, labels, source = raw[s.name]
        count = next(iter(inputs.values())).shape[0]
        targets = None
        if s.uses_labels:
            targets = check_targets(labels, s.loss, shapes[s.name], count, task=s.name, output=s.output, source=source)
        bound[s.name] = TaskBatchData(inputs, targets, source)
    return bound, shapes


def _accuracy(
    model: onnx.ModelProto, specs: Sequence[TaskSpec], data: Mapping[str, TaskBatchData], threads: int | None
) -> dict[str, float]:
    session = runtime.make_session(model, threads=threads)
    result = {}
    for s in specs:
        if s.name not in data or s.loss != "ce" or data[s.name].targets is None:
            continue
        d = data[s.name]
        correct = 0
        for start in range(0, len(d), 512):
            feeds = {k: v[start : start + 512] for k, v in d.inputs.items()}
            feeds.update(filler_feeds(model, next(iter(feeds.values())).shape[0], feeds))
            (scores,) = session.run([s.output], feeds)
            targets = d.targets
            assert targets is not None
            correct += count_correct(np.asarray(scores), targets[start : start + 512], source=d.source)
        result[s.name] = correct / len(d)
    return result


def evaluate_tasks(
    model: onnx.ModelProto | str | os.PathLike[str],
    data: Mapping[str, TaskData],
    *,
    threads: int | None = None,
) -> dict[str, float]:
    """Top-1 accuracy of each task of a zipped (or single-task) model on its labelled data.

    A task's score output is its first float rank-2 ``<task>/...`` output. One session serves
    every task; inputs of other tasks (``--separate-inputs`` models) are fed zeros.

    Args:
        model: The model or its path.
        data: ``{task: Dataset | .npz path | arrays with label}``.
        threads: onnxruntime intra-op threads.

    Returns:
        ``{task: accuracy in [0, 1]}``.

    Raises:
        InputError: an unknown task, data that does not fit, labels out of range.
    """
    proto, label = _model(model)
    recorded = read_metadata(proto).get("tasks")
    tasks = [str(t) for t in recorded] if recorded else list(data)
    if not recorded and len(tasks) != 1:
        raise InputError(f"{label}: not a zipped model, so it is one task; got data for {tasks}")
    _per_task(data, tasks, None, "evaluation data")
    specs, shared = _task_specs(proto, tasks, None, None, label)
    bound, _ = _bind_all(proto, specs, data, shared, evaluation=True)
    return _accuracy(proto, specs, bound, threads)


def _load_teachers(
    proto: onnx.ModelProto,
    specs: list[TaskSpec],
    sources: Mapping[str, Any],
    data: Mapping[str, TaskBatchData],
    shapes: Mapping[str, tuple[int, ...]],
    config: FinetuneConfig,
    zipped: bool,
) -> tuple[list[TaskSpec], dict[str, Teacher]]:
    """Open every teacher, check it against its task, and choose each task's distillation loss.

    Raises:
        InputError: every teacher that cannot be read or does not fit, at once.
    """
    chosen = _per_task(config.distill_losses, [s.name for s in specs], None, "--distill-loss")
    out, teachers, problems = [], {}, []
    for s in specs:
        if s.distill is None:
            out.append(s)
            continue
        tensor = pre_activation(proto, s.output)
        loss = chosen[s.name] or default_distill_loss(tensor, shapes[s.name])
        if loss == "kd" and len(shapes[s.name]) != 2:
            problems.append(
                f"task {s.name!r}: the kd loss needs (N, C) scores, {tensor.name!r} has shape "
                f"(N, {shapes[s.name][1:]}); use --distill-loss {s.name}=mse"
            )
        output = s.output[len(s.name) + 1 :] if zipped else s.output
        try:
            teacher = load_teacher(sources[s.name], output, tensor.activation, task=s.name, threads=config.threads)
            teacher.check({s.inputs[k]: v for k, v in data[s.name].inputs.items()}, shapes[s.name], task=s.name)
        except InputError as exc:
            problems.append(exc.message)
            continue
        warn_if_not_recorded(proto, s.name, sources[s.name])
        teachers[s.name] = teacher
        out.append(replace(s, distill=loss))
        logger.info(
            "task %s distils from %s (%s on %r, alpha %.2g)", s.name, teacher.label, loss, teacher.tensor, s.alpha
        )
    if problems:
        raise InputError("; ".join(problems))
    return out, teachers


def _training_view(
    proto: onnx.ModelProto, specs: list[TaskSpec], data: dict[str, TaskBatchData], shared: bool, tasks: list[str]
) -> tuple[onnx.ModelProto, list[TaskSpec], dict[str, TaskBatchData], bool]:
    """The graph that trains: with one shared input and several tasks, one input per task.

    Feeding the concatenated batch to a shared input would run every task's rows through every
    task's own blocks; :func:`~onnx_zip.zipper.extract.split_shared_input` gives each task its own
    input and copies of the shared nodes (same initializers), so each task's rows only go through
    its own blocks: the same gradients, less work. Trained values are copied back by name.
    """
    if not shared or len(specs) < 2:
        return proto, specs, data, shared
    split = split_shared_input(proto, tasks)
    outputs = {o.name for o in split.graph.output}
    split_specs = [
        replace(
            s,
            inputs={f"{s.name}/{g}": d for g, d in s.inputs.items()},
            tensor=s.tensor if not s.tensor or s.tensor in outputs else f"{s.name}//{s.tensor}",
        )
        for s in specs
    ]
    split_data = {
        t: TaskBatchData({f"{t}/{k}": v for k, v in d.inputs.items()}, d.targets, d.source) for t, d in data.items()
    }
    return split, split_specs, split_data, False


def _config(config: FinetuneConfig | None, settings: Mapping[str, Any]) -> FinetuneConfig:
    if config is not None and settings:
        raise InputError("give the fine-tuning settings either as a FinetuneConfig or by name, not both")
    if config is not None:
        return config
    values = dict(settings)
    if isinstance(values.get("steps"), np.integer):
        values["steps"] = int(values["steps"])
    if isinstance(values.get("freeze"), (list, tuple)):
        values["freeze"] = list(values["freeze"])
    return FinetuneConfig.from_mapping(values)


def _trainable(
    proto: onnx.ModelProto, tasks: list[str], specs: list[TaskSpec], config: FinetuneConfig, label: str
) -> tuple[list[str], list[str]]:
    """The parameters that train and those kept fixed (``freeze`` rules, then ops without a gradient)."""
    params = float_initializers(proto)
    frozen = resolve_freeze(proto, tasks, config.freeze)
    frozen |= batchnorm_statistics(proto)  # statistics, not parameters: never by gradient
    frozen |= preflight(proto, set(params) - frozen, [s.output for s in specs], no_grad=config.no_grad, label=label)
    trainable = [p for p in params if p not in frozen]
    if not trainable:
        raise ModelError(f"{label}: every parameter is frozen: nothing to train", hint="freeze less")
    if any(n.op_type == "BatchNormalization" for n in proto.graph.node) and config.batchnorm == "train":
        logger.warning(
            "%s has BatchNormalization: it trains with the joint batch's statistics and its running "
            "mean/variance are re-estimated from them (--batchnorm train)",
            label,
        )
    return trainable, [p for p in params if p in frozen]


def _record(
    config: FinetuneConfig,
    outcome: TrainOutcome,
    specs: list[TaskSpec],
    frozen: list[str],
    data: Mapping[str, TaskBatchData],
    threads: int,
) -> dict[str, Any]:
    """The run's ``onnx_zip.finetune`` metadata record."""
    steps = int(config.steps or 0)
    history, lr = outcome.history, outcome.lr
    tail = history[-max(1, len(history) // 10) :]
    sgd = config.optimizer == "sgd"
    return {
        "steps": steps,
        "lr": lr,
        "schedule": config.schedule,
        "warmup_steps": warmup_steps(steps, config.schedule),
        "optimizer": config.optimizer,
        "momentum": config.momentum if sgd else None,
        "nesterov": config.nesterov if sgd else None,
        "weight_decay": config.weight_decay,
        "batch": int(config.batch_size),
        "seed": int(config.seed),
        "losses": {s.name: s.loss for s in specs},
        "outputs": {s.name: s.output for s in specs},
        "task_weights": {s.name: s.weight for s in specs},
        "frozen": frozen,
        "train_samples": {s.name: len(data[s.name]) for s in specs},
        "final_losses": {
            s.name: float(np.mean([h["loss"][s.name] for h in tail])) if tail else None  # type: ignore[index]
            for s in specs
        },
        "loss_tensors": {s.name: s.loss_tensor for s in specs},
        "distill": {
            s.name: {"loss": s.distill, "alpha": s.alpha, "temperature": s.temperature}
            for s in specs
            if s.distill is not None
        },
        "lr_test": outcome.lr_test,
        "diverged": outcome.diverged,
        "steps_run": len(history),
        "probe_loss": {"before": outcome.probe[0], "after": outcome.probe[1]},
        "threads": threads,
        "runtime": f"onnxruntime-training {runtime.runtime_version()}",
    }


def finetune(
    model: onnx.ModelProto | str | os.PathLike[str],
    train_data: Mapping[str, TaskData],
    config: FinetuneConfig | None = None,
    *,
    eval: Mapping[str, TaskData] | None = None,  # noqa: A002 - the documented API name
    output: str | os.PathLike[str] | None = None,
    progress: bool = False,
    teachers: Mapping[str, onnx.ModelProto | str | os.PathLike[str]] | None = None,
    **settings: Any,
) -> FinetuneResult:
    """Fine-tune a zipped model jointly on every task's data.

    Args:
        model: The zipped model (or a single-task model) or its path; not modified.
        train_data: ``{task: Dataset | .npz path | {input name: (N, ...) array, "label": targets}}``
            for every task of the model (``onnx_zip.tasks`` metadata). Data arrays are keyed by
            the original input names (``image``, not ``a/image``).
        config: The settings (:class:`~onnx_zip.config.FinetuneConfig`: steps, lr (default 0.01 for
            ``sgd``, 1e-3 for ``adamw``), batch_size, optimizer, schedule, momentum, nesterov,
            weight_decay, losses, task_weights, freeze, no_grad, eval_every, seed, threads).
        eval: Optional labelled evaluation data per task (accuracy of ``ce`` tasks).
        output: Write the fine-tuned model here (atomically).
        progress: Show a progress bar (only on a terminal).
        teachers: ``{task: original model or path}``: the models the tasks distil from (added to
            ``config.teachers``; default for a task without labels: its recorded source model).
        **settings: Instead of ``config``: its settings by name (``steps=100, lr=0.01``).

    Returns:
        A :class:`FinetuneResult`.

    Raises:
        InputError: bad settings, unknown tasks, data or labels that do not fit (before training).
        ModelError: nothing can train, or ``no_grad="error"`` and some part cannot.
        NumericalError: the loss became NaN or Inf.
    """
    start = time.perf_counter()
    config = _config(config, settings)
    lr = _checked_start(config, train_data, output)

    proto, label = _model(model)
    tasks = model_tasks(proto, list(train_data), label=label)
    specs, shared, sources, data, shapes, teacher_runs = _bound_tasks(
        proto, None if isinstance(model, onnx.ModelProto) else model, tasks, train_data, config, teachers, label
    )
    trainable, frozen_list = _trainable(proto, tasks, specs, config, label)
    threads = config.threads if config.threads is not None else choose_threads(proto)
    references = {s.name: sources[s.name] for s in specs if s.distill is not None}
    if eval:
        _per_task(eval, tasks, None, "evaluation data")

    def evaluate_now(values: dict[str, np.ndarray]) -> dict[str, dict[str, float | int]]:
        found = evaluate_tasks_metrics(with_values(proto, values), eval or {}, references=references, threads=threads)
        return {t: r.metrics for t, r in found.items()}

    metrics_before = evaluate_now({}) if eval else None  # also checks the evaluation data before training

    train_settings, opt = _train_settings(config, lr, threads, progress)
    train_proto, train_specs, split_data, train_shared = _training_view(proto, specs, data, shared, tasks)
    if config.batchnorm == "eval":
        train_proto = _batchnorm_in_inference_mode(train_proto, label)
    setup = time.perf_counter()
    with training_artifacts(train_proto, train_specs, [shapes[s.name] for s in specs], trainable, frozen_list) as arts:
        logger.info("training artifacts built in %.2f s", time.perf_counter() - setup)
        outcome = train(
            arts,
            train_specs,
            split_data,
            opt,
            train_settings,
            shared=train_shared,
            evaluate=evaluate_now if eval else None,
            teachers=teacher_runs,
        )
    _check_outcome(outcome, config, label)
    record = _record(config, outcome, specs, frozen_list, data, threads)
    metrics = evaluate_now(outcome.values) if eval else None
    return _result(proto, outcome, record, (metrics_before, metrics), output, start, label)


def _result(
    proto: onnx.ModelProto,
    outcome: TrainOutcome,
    record: dict[str, Any],
    metrics: tuple[dict[str, dict[str, float | int]] | None, dict[str, dict[str, float | int]] | None],
    output: str | os.PathLike[str] | None,
    start: float,
    label: str,
) -> FinetuneResult:
    """The fine-tuned model (written to ``output`` when given) and what the run measured;
    ``metrics`` is ``(before, after)``."""
    before, after = metrics
    tuned = with_values(proto, outcome.values)
    add_record(tuned, record)
    accuracy = {t: float(m["accuracy"]) for t, m in after.items() if "accuracy" in m} if after else None
    if output is not None:
        tuned = save_model(tuned, output)
    seconds = time.perf_counter() - start
    logger.info("fine-tuned %s in %.1f s; final losses %s", label, seconds, record["final_losses"])
    return FinetuneResult(
        model=tuned,
        history=outcome.history,
        accuracy=accuracy or None,
        record=record,
        seconds=seconds,
        metrics=after,
        metrics_before=before,
    )


def _bound_tasks(
    proto: onnx.ModelProto,
    path: str | os.PathLike[str] | None,
    tasks: list[str],
    train_data: Mapping[str, TaskData],
    config: FinetuneConfig,
    teachers: Mapping[str, onnx.ModelProto | str | os.PathLike[str]] | None,
    label: str,
) -> tuple[list[TaskSpec], Any, dict[str, Any], Any, Any, Any]:
    """Each task's spec (its loss, or distillation from its teacher), the bound training data and the
    teachers' sessions: ``(specs, shared, sources, data, shapes, teacher_runs)``."""
    zipped = bool(read_metadata(proto).get("tasks"))
    specs, shared = _task_specs(proto, tasks, config.losses, config.task_weights, label)
    labelled = {t: has_labels(train_data[t]) for t in tasks}
    specs, sources = _plan_distillation(specs, config, labelled, recorded_teachers(proto, path), teachers or {})
    data, shapes = _bind_all(proto, specs, train_data, shared)
    specs, teacher_runs = _load_teachers(proto, specs, sources, data, shapes, config, zipped)
    return specs, shared, sources, data, shapes, teacher_runs


def _checked_start(
    config: FinetuneConfig, train_data: Mapping[str, TaskData], output: str | os.PathLike[str] | None
) -> float | None:
    """What can be refused before reading anything; returns the learning rate (None: range test)."""
    lr = None if config.lr is None else float(config.lr)
    if lr is not None and not lr > 0:
        raise InputError(f"learning rate must be a positive number, got {lr}")
    if not train_data:
        raise InputError("no training data", hint="give --train TASK=FILE for every task")
    if output is not None:
        check_writable(output)
    runtime.training_modules()  # fail fast on an inference-only runtime
    return lr


def _train_settings(
    config: FinetuneConfig, lr: float | None, threads: int, progress: bool
) -> tuple[TrainSettings, Optimizer]:
    """The trainer's settings and the optimizer, from the configuration (``lr`` None: range test)."""
    settings = TrainSettings(
        steps=int(config.steps or 0),
        lr=lr,
        schedule=config.schedule,
        batch_size=int(config.batch_size),
        seed=int(config.seed),
        threads=threads,
        progress=progress,
        eval_every=config.eval_every,
    )
    opt = Optimizer(
        config.optimizer, momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay
    )
    return settings, opt


def _batchnorm_in_inference_mode(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """The training graph with BatchNormalization in inference mode (running statistics kept)."""
    model, rewritten = inference_mode_batchnorm(model)
    if rewritten:
        logger.info("%s: %d BatchNormalization node(s) train in inference mode (statistics kept)", label, rewritten)
    return model


def _check_outcome(outcome: TrainOutcome, config: FinetuneConfig, label: str) -> None:
    """Refuse a run that diverged or ended with a higher probe loss than it started with
    (unless ``allow_worse``: then the best parameters are kept, with a warning).

    Raises:
        NumericalError: the run diverged or made the loss worse.
    """
    before, after = outcome.probe
    if outcome.diverged:
        why = f"fine-tuning {label} diverged: {outcome.diverged} (learning rate {outcome.lr:.3g})"
    elif outcome.worse:
        why = (
            f"fine-tuning {label} made the loss worse: {before:.4g} before, {after:.4g} after, on a fixed "
            f"probe batch (learning rate {outcome.lr:.3g})"
        )
    else:
        return
    if config.allow_worse:
        logger.warning("%s; keeping the best parameters (--allow-worse)", why)
        return
    raise NumericalError(
        why,
        hint="lower --lr (or leave it to the automatic choice), or keep the best "
        "parameters anyway with --allow-worse; nothing was written",
    )
