"""Running a recipe: validate everything, then zip (or zip layer by layer), fine-tune, evaluate, write.

Stages:

1. :func:`prepare_run` — the deep checks, still before any long work: the settings
   (:func:`recipe_configs`, every problem at once), the training runtime when the recipe trains,
   :func:`~onnx_zip.pipeline.job.prepare` (loads, canonicalises and aligns each model once, binds
   the calibration data, checks every zip setting), the training and evaluation data bound to each
   model (labels required; a file already bound as calibration data is reused), retrain step counts
   against the hidden layers, and the originals' accuracy (which also checks the labels).
2. :func:`execute` — zip the prepared job (:func:`~onnx_zip.pipeline.workflows.zip_job`, or
   :func:`~onnx_zip.pipeline.layerwise.layerwise_job` with a ``retrain`` section), evaluate, fine-tune
   (``finetune`` section), evaluate again; store the canonical recipe in the model's
   ``onnx_zip.recipe`` metadata; write the model, the report and the summary atomically.

Same recipe and same inputs give the same model bytes (``threads: 1``, the default, makes the
fine-tuning bit-reproducible).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from onnx_zip import runtime
from onnx_zip.config import (
    CalibrationConfig,
    FinetuneConfig,
    RetrainConfig,
    ZipConfig,
    sections_from_mapping,
)
from onnx_zip.data import Dataset, load_dataset
from onnx_zip.errors import InputError
from onnx_zip.evaluate import evaluate_dataset
from onnx_zip.model_io import atomic_write_bytes, save_model
from onnx_zip.pipeline.job import ZipJob, prepare
from onnx_zip.pipeline.stages import ZipResult
from onnx_zip.pipeline.workflows import zip_job
from onnx_zip.recipes.load import Recipe, make_output_folders
from onnx_zip.zipper.report import read_metadata, write_metadata

logger = logging.getLogger(__name__)

RECIPE_METADATA_KEY = "recipe"


@dataclass
class RunPlan:
    """A recipe with everything checked and bound, ready to run.

    Attributes:
        recipe: The recipe.
        job: The prepared zip job (models prepared once, calibration data bound once).
        retrain: The layer-wise loop's settings, or ``None`` (one-pass zip).
        finetune: The final fine-tuning's settings, or ``None``.
        train: Training data by task (when the recipe trains).
        evaluation: Evaluation data by task (limited to ``evaluation.limit``).
        original_accuracy: The originals' accuracy by task on ``evaluation``.
        progress: Show progress bars.
    """

    recipe: Recipe
    job: ZipJob
    retrain: RetrainConfig | None
    finetune: FinetuneConfig | None
    train: dict[str, Dataset] | None
    evaluation: dict[str, Dataset] | None
    original_accuracy: dict[str, float] = field(default_factory=dict)
    progress: bool = False


@dataclass
class RunResult:
    """What :func:`execute` wrote and measured.

    Attributes:
        model: The final model (as written).
        report: The report (also written to ``output.report`` when given).
        outputs: The files written, model first.
        seconds: Wall time of :func:`execute`.
    """

    model: onnx.ModelProto
    report: dict[str, Any]
    outputs: list[Path]
    seconds: float


#: Keys of the recipe's ``zip`` section that are calibration settings (when the recipe has no
#: ``calibration`` section) → :class:`~onnx_zip.config.CalibrationConfig` fields.
_CALIBRATION_IN_ZIP = {"calibration_limit": "limit", "calibration_batch": "batch_size", "conv_hessian": "conv_hessian"}


def recipe_configs(data: Mapping[str, Any]) -> tuple[ZipConfig, CalibrationConfig, RetrainConfig | None, FinetuneConfig | None]:
    """The settings of a normalised recipe (``seed`` and ``threads`` at the top level feed every group).

    Raises:
        InputError: every problem of every section at once.
    """
    zip_section = dict(data.get("zip") or {})
    calibration = dict(data.get("calibration") or {})
    for key, name in _CALIBRATION_IN_ZIP.items():
        if key in zip_section:
            calibration.setdefault(name, zip_section.pop(key))
    seed, threads = data.get("seed", 0), data.get("threads")
    zip_section.setdefault("seed", seed)
    calibration.setdefault("threads", threads)
    sections: dict[str, Any] = {"zip": zip_section, "calibration": calibration,
                                "retrain": data.get("retrain"), "finetune": None}
    if data.get("finetune") is not None:
        sections["finetune"] = {"seed": seed, "threads": threads, **data["finetune"]}
    built = sections_from_mapping(sections, ("zip", "calibration", "retrain", "finetune"))
    return built["zip"], built["calibration"], built["retrain"], built["finetune"]  # type: ignore[return-value]


def _bind(recipe: Recipe, job: ZipJob, key: str, limit: int | None = None) -> dict[str, Dataset] | None:
    """Each task's ``key`` data, labelled; a file already bound as calibration data is not read again."""
    files = [recipe.model_file(i, key) for i in range(len(job.tasks))]
    if all(f is None for f in files):
        return None
    bound = {}
    for i, (task, path) in enumerate(zip(job.tasks, files)):
        if path is None:
            raise InputError(f"{recipe.label}: models[{i}].{key} is missing", hint=f"give {key} data for every model or none")
        same = job.calibration is not None and path == recipe.model_file(i, "calibration")
        if same and job.calibration is not None and job.calibration[i].labels is not None:
            bound[task] = job.calibration[i].take(limit)
        else:
            bound[task] = load_dataset(path, job.prepared[i].canonical, need_labels=True).take(limit)
    return bound


def prepare_run(recipe: Recipe, *, progress: bool = False) -> RunPlan:
    """Check everything that can be checked before long work and bind the data (each model prepared once).

    Raises:
        InputError: models that do not load or align, data that does not fit, a training runtime
            missing when the recipe trains, retrain steps that do not match the hidden layers.
    """
    start = time.perf_counter()
    data = recipe.data
    zip_config, calib_config, retrain, tune = recipe_configs(data)
    if retrain is not None or tune is not None:
        runtime.training_modules()
    count = len(recipe.tasks)
    models = [recipe.model_file(i, "model") for i in range(count)]
    calibration = [recipe.model_file(i, "calibration") for i in range(count)]
    job = prepare(models, None if calibration[0] is None else calibration, names=recipe.tasks,  # type: ignore[arg-type]
                  config=zip_config, calibration_config=calib_config)
    train = _bind(recipe, job, "train") if (retrain is not None or tune is not None) else None
    evaluation = _bind(recipe, job, "eval", (data.get("evaluation") or {}).get("limit"))
    if retrain is not None:
        retrain.steps_per_layer(len(job.hidden))
    plan = RunPlan(recipe=recipe, job=job, retrain=retrain, finetune=tune, train=train, evaluation=evaluation,
                   progress=progress)
    if evaluation:
        for prepared in job.prepared:
            result = evaluate_dataset(prepared.original, evaluation[prepared.task], threads=calib_config.threads,
                                      label=f"model {prepared.task}")
            plan.original_accuracy[prepared.task] = result.accuracy
    logger.info("%s: validated in %.1f s", recipe.label, time.perf_counter() - start)
    return plan


def _zip(plan: RunPlan) -> ZipResult:
    """The zip (one pass, or layer by layer with retraining)."""
    if plan.retrain is not None:
        from onnx_zip.pipeline.layerwise import layerwise_job

        job = plan.job
        options = {"seed": job.config.seed, "threads": job.calibration_config.threads, "progress": plan.progress}
        return layerwise_job(job, plan.train or {}, plan.retrain, evaluation=plan.evaluation,
                             finetune_options=options, progress=plan.progress)
    return zip_job(plan.job, progress=plan.progress)


def _evaluate_and_tune(plan: RunPlan, model: onnx.ModelProto, report: dict[str, Any]) -> onnx.ModelProto:
    """Evaluate the zipped model, fine-tune it (``finetune`` section), evaluate again; fills ``report``."""
    threads = plan.job.calibration_config.threads
    evaluation: dict[str, dict[str, float]] = {t: {"original": a} for t, a in plan.original_accuracy.items()}
    if plan.evaluation:
        from onnx_zip.finetune import evaluate_tasks

        for task, accuracy in evaluate_tasks(model, plan.evaluation, threads=threads).items():
            evaluation[task]["zipped"] = accuracy
    if plan.finetune is not None:
        from onnx_zip.finetune import evaluate_tasks, finetune

        tuned = finetune(model, plan.train or {}, plan.finetune, progress=plan.progress)
        model = tuned.model
        report["finetune"] = {**tuned.record, "seconds": tuned.seconds}
        if plan.evaluation:
            for task, accuracy in evaluate_tasks(model, plan.evaluation, threads=threads).items():
                evaluation[task]["finetuned"] = accuracy
    if evaluation:
        report["evaluation"] = evaluation
    return model


def _write(plan: RunPlan, model: onnx.ModelProto, report: dict[str, Any]) -> tuple[onnx.ModelProto, list[Path]]:
    """Store the canonical recipe in the model; write the model, the report and the summary."""
    recipe = plan.recipe
    meta = read_metadata(model)
    meta[RECIPE_METADATA_KEY] = recipe.canonical_json()
    write_metadata(model, meta)
    output = recipe.output("model")
    assert output is not None
    make_output_folders(recipe)
    model = save_model(model, output, label=f"zipped model {output}")
    outputs = [output]
    report["recipe"] = recipe.data
    report_path = recipe.output("report")
    if report_path is not None:
        atomic_write_bytes(report_path, (json.dumps(report, indent=2) + "\n").encode())
        outputs.append(report_path)
    summary_path = recipe.output("summary")
    if summary_path is not None:
        from onnx_zip.reporting import write_summary

        summary = write_summary(report, summary_path, title=recipe.data.get("description"))
        outputs += [summary.markdown, *summary.images]
    return model, outputs


def execute(plan: RunPlan) -> RunResult:
    """Run a prepared recipe and write its outputs (see the module docstring)."""
    start = time.perf_counter()
    result = _zip(plan)
    report = result.report.to_dict()
    model = _evaluate_and_tune(plan, result.model, report)
    model, outputs = _write(plan, model, report)
    seconds = time.perf_counter() - start
    logger.info("%s: done in %.1f s, wrote %s", plan.recipe.label, seconds, ", ".join(map(str, outputs)))
    return RunResult(model=model, report=report, outputs=outputs, seconds=seconds)


def run_recipe(path: str | Path, *, progress: bool = False) -> RunResult:
    """Load, check and run a recipe file (see :mod:`onnx_zip.recipes`)."""
    from onnx_zip.recipes.load import load_recipe

    return execute(prepare_run(load_recipe(path), progress=progress))
