"""The paper's zip-and-retrain loop (Algorithm 1), layer by layer from the input, over the stages.

For hidden layer ``l = 1 … L`` (:func:`zip_next_layer` is one step):

1. calibrate layer ``l``'s statistics on each task's *current view* (the task's single-model
   equivalent of the current joint model, see :mod:`onnx_zip.zipper.views`), so they reflect the
   layers already zipped and retrained;
2. plan layer ``l``; layers ``< l`` keep their (already tied) pairs, merged by averaging; layers
   ``> l`` share nothing yet;
3. build the joint model and fine-tune it jointly for ``K_l`` steps (none when ``K_l = 0``: the
   loop then needs no training runtime, which is the per-layer mode of error-compensating zipping);
4. read the task views back from the joint model and go on with ``l + 1``.

With evaluation data it records each task's accuracy before and after each layer's retraining
(the shape of the paper's Tables 1–3). The result is the last joint model.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx

from onnx_zip import mtz
from onnx_zip.config import CalibrationConfig, FinetuneConfig, RetrainConfig, ZipConfig
from onnx_zip.errors import InputError
from onnx_zip.model_io import check_writable
from onnx_zip.pipeline.job import CalibrationSource, ModelSource, ZipJob, prepare
from onnx_zip.pipeline.stages import ZipResult, build, make_report, plan, save
from onnx_zip.pipeline.statistics import gather_statistics
from onnx_zip.pipeline.workflows import configs_from_options
from onnx_zip.zipper.plan import LayerZip
from onnx_zip.zipper.report import provenance, read_metadata, write_metadata
from onnx_zip.zipper.views import task_views

logger = logging.getLogger(__name__)


@dataclass
class LoopState:
    """Where the layer-wise loop is.

    Attributes:
        views: Each task's single-model view of the current joint model.
        pairs: Per zipped position, its pairs and costs in the original neuron indices.
        zips: The last plan (every position).
        model: The last joint model.
    """

    views: list[onnx.ModelProto]
    pairs: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    zips: list[LayerZip] = field(default_factory=list)
    model: onnx.ModelProto | None = None


def zip_next_layer(job: ZipJob, state: LoopState, position: int, *, progress: bool = False) -> onnx.ModelProto:
    """Calibrate, plan and build hidden position ``position`` on the model zipped so far.

    Earlier positions keep their pairs (the views hold their shared neurons first); later ones share
    nothing yet. Updates ``state.pairs`` and ``state.zips``; returns the joint model.
    """
    hidden = [i for i, group in enumerate(job.aligned) if not group[0].is_head]
    stats = gather_statistics(job, [position], state.views, progress=progress)
    tasks = len(job.tasks)
    fixed = {
        other: np.repeat(np.arange(state.pairs[other][0].shape[0])[:, None], tasks, axis=1)
        for other in hidden if other < position
    }
    policies = [
        job.settings.policy_for(i) if other == position else mtz.ShareCount(0) for i, other in enumerate(hidden)
    ]
    zips = plan(job, stats, models=state.views, settings=job.settings.with_policies(policies), fixed=fixed)
    # Layer ``position`` of the views is still in its original order: its pairs are original indices.
    state.pairs[position] = (zips[position].pairs.copy(), zips[position].costs.copy())
    state.zips = zips
    return build(job, zips, models=state.views)


def _check_loop(
    job: ZipJob, train: Mapping[str, Any] | None, evaluation: Mapping[str, Any] | None, steps: list[int]
) -> None:
    if job.config.fit_method.per_layer:
        raise InputError(
            f"the layer-wise retraining loop (--train) fits with --method paper, not {job.config.method}",
            hint="drop --method compensated, or zip without --train and fine-tune the result",
        )
    residual = [p for p in job.prepared if p.chain.channel_groups]
    if residual:
        raise InputError(
            f"model {residual[0].task} has residual Adds ({', '.join(residual[0].chain.group_nodes[0])}); the "
            "layer-wise loop zips plain chains",
            hint="zip residual networks in one pass (without --train) and fine-tune the result",
        )
    given = dict(train or {})
    unknown = sorted(set(given) - set(job.tasks)) + sorted(set(evaluation or {}) - set(job.tasks))
    if unknown or (any(steps) and set(given) != set(job.tasks)):
        raise InputError(
            f"training data is given for {sorted(given)}, evaluation for {sorted(evaluation or {})}; tasks are "
            f"{job.tasks}",
            hint="give training data for every task, named by task",
        )


def _finetune_base(retrain: RetrainConfig, options: Mapping[str, Any] | None, seed: int) -> tuple[dict[str, Any], bool]:
    """The fine-tuning settings of every layer (but ``steps``), validated; and whether to show progress."""
    base: dict[str, Any] = {
        "lr": retrain.lr,
        "optimizer": retrain.optimizer,
        "batch_size": retrain.batch_size,
        "seed": seed,
    }
    extra = dict(options or {})
    progress = bool(extra.pop("progress", False))
    extra.pop("steps", None)
    base.update(extra)
    FinetuneConfig.from_mapping({**base, "steps": 1})
    return base, progress


def _retrain_layer(
    joint: onnx.ModelProto,
    record: dict[str, Any],
    count: int,
    train: Mapping[str, Any] | None,
    evaluation: Mapping[str, Any] | None,
    base: Mapping[str, Any],
    progress: bool,
    teachers: Mapping[str, onnx.ModelProto] | None = None,
) -> onnx.ModelProto:
    """Evaluate, fine-tune ``count`` steps, evaluate again (fills ``record``)."""
    if not evaluation and count == 0:
        return joint
    from onnx_zip.finetune import evaluate_tasks, finetune  # noqa: PLC0415

    if evaluation:
        record["accuracy_before"] = evaluate_tasks(joint, evaluation)
    if count > 0:
        tuned = finetune(
            joint,
            train or {},
            FinetuneConfig.from_mapping({**base, "steps": count}),
            progress=progress,
            teachers=teachers,
        )
        joint = tuned.model
        record["final_loss"] = tuned.history[-1] if tuned.history else None
    if evaluation:
        record["accuracy_after"] = evaluate_tasks(joint, evaluation)
    return joint


def layerwise_job(
    job: ZipJob,
    train: Mapping[str, Any] | None,
    retrain: RetrainConfig,
    *,
    evaluation: Mapping[str, Any] | None = None,
    finetune_options: Mapping[str, Any] | None = None,
    on_layer: Callable[[dict[str, Any]], None] | None = None,
    output: str | os.PathLike[str] | None = None,
    report_path: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> ZipResult:
    """Run the layer-wise loop on a prepared job (see the module docstring)."""
    hidden = [i for i, group in enumerate(job.aligned) if not group[0].is_head]
    steps = retrain.steps_per_layer(len(hidden))
    _check_loop(job, train, evaluation, steps)
    base, tune_progress = _finetune_base(retrain, finetune_options, job.config.seed)
    from onnx_zip.finetune.tasks import has_labels  # noqa: PLC0415 - the train extra, only when retraining

    # tasks without labels distil from their original model (the same rule as ``finetune``)
    teachers = {p.task: p.original for p in job.prepared if train and p.task in train and not has_labels(train[p.task])}
    state = LoopState(views=list(job.canonical))
    records: list[dict[str, Any]] = []
    for number, (position, count) in enumerate(zip(hidden, steps)):
        started = time.perf_counter()
        joint = zip_next_layer(job, state, position, progress=progress)
        record: dict[str, Any] = {
            "layer": state.zips[position].tag,
            "shared": state.zips[position].shared,
            "steps": count,
        }
        joint = _retrain_layer(joint, record, count, train, evaluation, base, tune_progress, teachers)
        record["seconds"] = time.perf_counter() - started
        logger.info("layer %d/%d %s: %s", number + 1, len(hidden), record["layer"], record)
        records.append(record)
        if on_layer is not None:
            on_layer(record)
        state.views = task_views(joint, job.tasks, state.views, state.zips)
        state.model = joint
    assert state.model is not None
    # Report pairs in the original models' neuron indices (earlier layers were re-planned as fixed pairs).
    final = [
        replace(z, pairs=state.pairs[z.index][0], costs=state.pairs[z.index][1]) if z.index in state.pairs else z
        for z in state.zips
    ]
    settings = {
        **job.record(),
        "procedure": "layerwise",
        "retrain": {**retrain.to_dict(), "steps": steps},
        "finetune": _jsonable(base),
    }
    model = refresh_metadata(job, state.model, final, settings)
    report = make_report(job, model, final, settings=settings)
    report.extra["layerwise"] = records
    return save(model, report, final, output=output, report_path=report_path)


def _jsonable(options: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: v if isinstance(v, (int, float, str, bool, type(None), list, dict)) else repr(v) for k, v in options.items()
    }


def refresh_metadata(
    job: ZipJob, model: onnx.ModelProto, zips: Sequence[LayerZip], settings: Mapping[str, Any]
) -> onnx.ModelProto:
    """Refresh the provenance metadata of a fine-tuned joint model (original pair indices, settings)."""
    meta = read_metadata(model)
    meta.update(provenance(job.tasks, job.sources, dict(settings), zips, job.prepared[0].chain))
    write_metadata(model, meta)
    return model


def zip_layerwise(
    models: Sequence[ModelSource],
    calibration: Sequence[CalibrationSource] | None,
    train: Mapping[str, Any] | None,
    output: str | os.PathLike[str] | None = None,
    *,
    retrain: RetrainConfig | None = None,
    retrain_steps: int | Sequence[int] | None = None,
    evaluation: Mapping[str, Any] | None = None,
    finetune_options: Mapping[str, Any] | None = None,
    on_layer: Callable[[dict[str, Any]], None] | None = None,
    names: Sequence[str] | None = None,
    config: ZipConfig | None = None,
    calibration_config: CalibrationConfig | None = None,
    report_path: str | os.PathLike[str] | None = None,
    progress: bool = False,
    **options: Any,
) -> ZipResult:
    """Zip two or more models layer by layer, retraining jointly after each layer (Algorithm 1).

    Args:
        models: Two or more ``.onnx`` paths or ModelProtos.
        calibration: One calibration data set per model (as for :func:`~onnx_zip.pipeline.workflows.zip_models`).
        train: Training data by task name (npz path, Dataset or arrays with ``label``); may be
            ``None`` when every step count is 0.
        output: Where to write the final joint model.
        retrain: The loop's settings (default :class:`RetrainConfig()`); or ``retrain_steps`` alone.
        evaluation: Test data by task name: accuracy is recorded before and after each layer's retraining.
        finetune_options: Further :class:`~onnx_zip.config.FinetuneConfig` settings by name (``seed``,
            ``threads``, ``lr``, …) and ``progress``.
        on_layer: Called with each layer's record as soon as it is done (progress reporting).
        names, config, calibration_config, report_path, progress, **options: As for ``zip_models``.

    Returns:
        The :class:`~onnx_zip.pipeline.stages.ZipResult` of the final model; its report has a
        ``layerwise`` list: per layer the shared count, retraining steps, seconds, and the
        accuracy per task before and after retraining (with ``evaluation``).
    """
    if options:
        if config is not None or calibration_config is not None:
            raise InputError("give the settings either as configurations or as keyword options, not both")
        config, calibration_config = configs_from_options(options)
    if retrain is None:
        retrain = (
            RetrainConfig()
            if retrain_steps is None
            else RetrainConfig.from_mapping(
                {"steps": retrain_steps if isinstance(retrain_steps, int) else list(retrain_steps)}
            )
        )
    for path in (output, report_path):
        if path is not None:
            check_writable(path)
    job = prepare(models, calibration, names=names, config=config, calibration_config=calibration_config)
    return layerwise_job(
        job,
        train,
        retrain,
        evaluation=evaluation,
        finetune_options=finetune_options,
        on_layer=on_layer,
        output=output,
        report_path=report_path,
        progress=progress,
    )
