"""A sharing sweep: zip the models at several sharing levels and measure each task's accuracy.

The statistics do not depend on how much is shared, so the models are prepared and calibrated once
(:func:`~onnx_zip.pipeline.job.prepare`, :func:`~onnx_zip.pipeline.statistics.gather_statistics`,
every hidden layer); each level is then a job of its own (:meth:`~onnx_zip.pipeline.job.ZipJob.with_zip_config`,
all checked before the calibration), planned, built, evaluated and optionally fine-tuned for a few steps.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnx_zip.config import CalibrationConfig, FinetuneConfig, ZipConfig
from onnx_zip.data import Dataset, bind_arrays, load_dataset, model_inputs
from onnx_zip.errors import InputError
from onnx_zip.evaluate import evaluate_dataset
from onnx_zip.model_io import save_model
from onnx_zip.pipeline.job import (
    CalibrationSource,
    ModelSource,
    ZipJob,
    prepare,
    settings_record,
)
from onnx_zip.pipeline.stages import build, initializer_arrays, plan
from onnx_zip.pipeline.statistics import Statistics, gather_statistics
from onnx_zip.pipeline.workflows import configs_from_options
from onnx_zip.zipper.report import layer_records, params_record

logger = logging.getLogger(__name__)


def parse_shares(text: str) -> list[float]:
    """``"0,0.25,0.5"`` → ``[0.0, 0.25, 0.5]`` (each a fraction in [0, 1], no repeats).

    Raises:
        InputError: a value is not a number or outside [0, 1], or the list is empty.
    """
    try:
        shares = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--shares {text!r}: expected comma-separated fractions", hint="for example 0,0.25,0.5,0.75,1") from None
    if not shares:
        raise InputError("--shares is empty", hint="for example 0,0.25,0.5,0.75,1")
    for share in shares:
        if not 0.0 <= share <= 1.0:
            raise InputError(f"--shares: {share:g} is not a fraction in [0, 1]")
    if len(set(shares)) != len(shares):
        raise InputError(f"--shares {text!r} repeats a level")
    return shares


def _bind_all(paths: Mapping[str, Any], job: ZipJob, what: str, limit: int | None) -> dict[str, Dataset]:
    bound = {}
    for prepared in job.prepared:
        if prepared.task not in paths:
            raise InputError(f"no {what} data for task {prepared.task!r}", hint=f"give --{what} {prepared.task}=FILE for every task")
        item = paths[prepared.task]
        if isinstance(item, Dataset):
            data = item
        elif isinstance(item, Mapping):
            data = bind_arrays(item, model_inputs(prepared.canonical), source=f"{what} arrays of {prepared.task}",
                               need_labels=True)
        else:
            data = load_dataset(item, prepared.canonical, need_labels=True)
        bound[prepared.task] = data.take(limit)
    unknown = sorted(set(paths) - set(job.tasks))
    if unknown:
        raise InputError(f"{what} data for unknown task {unknown[0]!r}", hint=f"tasks are {job.tasks}")
    return bound


def _configs(
    config: ZipConfig | None, calibration_config: CalibrationConfig | None, options: Mapping[str, Any]
) -> tuple[ZipConfig, CalibrationConfig]:
    for key in ("share", "share_per_layer", "max_cost"):
        if options.get(key) is not None or (config is not None and getattr(config, key) is not None):
            raise InputError(f"a sweep sets the sharing itself: do not pass {key}")
    if options:
        if config is not None or calibration_config is not None:
            raise InputError("give the settings either as configurations or as keyword options, not both")
        return configs_from_options(options)
    return config or ZipConfig(), calibration_config or CalibrationConfig()


def _finetune_config(steps: int, options: Mapping[str, Any] | None, threads: int | None) -> tuple[FinetuneConfig | None, bool]:
    extra = dict(options or {})
    progress = bool(extra.pop("progress", False))
    if not steps:
        return None, progress
    return FinetuneConfig.from_mapping({"threads": threads, **extra, "steps": steps}), progress


@dataclass
class _Sweep:
    """What every level shares: the data, the statistics, the models' weights."""

    test: dict[str, Dataset]
    train: dict[str, Dataset] | None
    stats: Statistics
    tensors: list[dict[str, Any]]
    tune: FinetuneConfig | None
    tune_progress: bool
    threads: int | None
    save_models: Path | None


def _level(job: ZipJob, share: float, ctx: _Sweep) -> dict[str, Any]:
    """Plan, build, evaluate (and fine-tune) one sharing level."""
    from onnx_zip.finetune import evaluate_tasks, finetune

    started = time.perf_counter()
    zips = plan(job, ctx.stats, tensors=ctx.tensors)
    model = build(job, zips)
    params = params_record(job.tasks, [p.original for p in job.prepared], model)
    level: dict[str, Any] = {
        "share": float(share),
        "params": params,
        "shared_fraction": params["shared"] / params["zipped"] if params["zipped"] else 0.0,
        "layers": [{"layer": r["layer"], "shared": r["shared"]} for r in layer_records(job.tasks, zips)],
        "accuracy": evaluate_tasks(model, ctx.test, threads=ctx.threads),
    }
    if ctx.tune is not None:
        tuned = finetune(model, ctx.train or {}, ctx.tune, progress=ctx.tune_progress)
        model = tuned.model
        level["accuracy_finetuned"] = evaluate_tasks(model, ctx.test, threads=ctx.threads)
    if ctx.save_models is not None:
        save_model(model, ctx.save_models / f"share_{share:.2f}.onnx")
    level["seconds"] = time.perf_counter() - started
    logger.info("share %.2f: %s", share, level["accuracy"])
    return level


def sweep(
    models: Sequence[ModelSource],
    calibration: Sequence[CalibrationSource] | None,
    shares: Sequence[float],
    evaluation: Mapping[str, Any],
    *,
    train: Mapping[str, Any] | None = None,
    finetune_steps: int = 0,
    finetune_options: Mapping[str, Any] | None = None,
    eval_limit: int | None = None,
    save_models: str | os.PathLike[str] | None = None,
    on_level: Callable[[dict[str, Any]], None] | None = None,
    names: Sequence[str] | None = None,
    config: ZipConfig | None = None,
    calibration_config: CalibrationConfig | None = None,
    progress: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Zip the models at each sharing level and evaluate them.

    Args:
        models: Two or more ``.onnx`` models.
        calibration: One calibration data set per model.
        shares: Fractions of each hidden layer's neurons to share, one level each.
        evaluation: Labelled test data by task name.
        train: Training data by task (needed when ``finetune_steps > 0``).
        finetune_steps: Joint fine-tuning steps at each level (0: none).
        finetune_options: Further :class:`~onnx_zip.config.FinetuneConfig` settings by name, and ``progress``.
        eval_limit: Evaluate on at most this many samples per task.
        save_models: A folder to write each level's model to (``share_<level>.onnx``).
        on_level: Called with each level's record as soon as it is measured.
        names, config, calibration_config, progress, **options: As for
            :func:`~onnx_zip.pipeline.workflows.zip_models`, except the sharing policy.

    Returns:
        The sweep report: ``tasks``, ``sources``, ``settings``, ``original_accuracy`` ({task: accuracy}),
        ``sweep`` (per level: ``share``, ``params`` ({task, zipped, shared}), ``shared_fraction``
        (shared / zipped parameters), ``layers`` ([{layer, shared}]), ``accuracy`` and, with
        fine-tuning, ``accuracy_finetuned``, ``seconds``) and ``timings``.

    Raises:
        InputError: bad levels, settings, models or data (all checked before the calibration).
    """
    start = time.perf_counter()
    zip_config, calib_config = _configs(config, calibration_config, options)
    if not shares:
        raise InputError("no sharing levels to sweep")
    if finetune_steps < 0:
        raise InputError(f"finetune steps must be ≥ 0, got {finetune_steps}")
    if finetune_steps and not train:
        raise InputError("fine-tuning in a sweep needs training data for every task", hint="pass --train TASK=FILE")
    if save_models is not None and not Path(save_models).is_dir():
        raise InputError(f"save-models folder {save_models} does not exist", hint="create it first")
    tune, tune_progress = _finetune_config(finetune_steps, finetune_options, calib_config.threads)
    job = prepare(models, calibration, names=names, config=zip_config.replace(share=max(shares)),
                  calibration_config=calib_config)
    levels = [(share, job.with_zip_config(zip_config.replace(share=float(share)))) for share in shares]
    test = _bind_all(evaluation, job, "eval", eval_limit)
    train_data = _bind_all(train or {}, job, "train", None) if finetune_steps else None
    if finetune_steps:
        from onnx_zip import runtime

        runtime.training_modules()
    threads = calib_config.threads
    original = {p.task: evaluate_dataset(p.original, test[p.task], threads=threads, label=f"model {p.task}").accuracy
                for p in job.prepared}
    timings = {"validate": time.perf_counter() - start}
    started = time.perf_counter()
    hidden = [i for i, g in enumerate(job.aligned) if not g[0].is_head]
    stats = gather_statistics(job, hidden, progress=progress)
    ctx = _Sweep(test, train_data, stats, [initializer_arrays(m) for m in job.canonical], tune, tune_progress, threads,
                 Path(save_models) if save_models is not None else None)
    timings["calibrate"] = time.perf_counter() - started
    records = []
    for share, level_job in levels:
        records.append(_level(level_job, share, ctx))
        if on_level is not None:
            on_level(records[-1])
    timings["levels"] = sum(level["seconds"] for level in records)
    settings = {k: v for k, v in settings_record(zip_config, calib_config).items()
                if k not in ("share", "share_per_layer", "max_cost")}
    if tune is not None:
        settings["finetune_steps"] = finetune_steps
        settings["finetune"] = tune.to_dict()
    return {
        "kind": "sweep", "tasks": job.tasks, "sources": dict(zip(job.tasks, job.sources)), "settings": settings,
        "original_accuracy": original, "sweep": records, "timings": timings,
    }
