"""Running a recipe: validate everything, then zip (or zip layer by layer), fine-tune, evaluate, write.

Stages:

1. :func:`prepare_run` — the deep checks, still before any long work: the training runtime when the
   recipe trains, :func:`~onnx_zip.zipper.api.prepare_job` (loads, canonicalises and aligns the models,
   binds the calibration data, checks every zip setting), the training and evaluation data bound
   to each model (labels required), retrain step counts against the hidden layers, and the
   originals' accuracy (which also checks the labels against the classes).
2. :func:`execute` — zip (:func:`~onnx_zip.zipper.api.zip_models`, or
   :func:`~onnx_zip.zipper.layerwise.zip_layerwise` with a ``retrain`` section), evaluate, fine-tune
   (``finetune`` section), evaluate again; store the canonical recipe in the model's
   ``onnx_zip.recipe`` metadata; write the model, the report and the summary atomically.

Same recipe and same inputs give the same model bytes (``threads: 1``, the default, makes the
fine-tuning bit-reproducible).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from onnx_zip import runtime
from onnx_zip.data import Dataset, load_dataset
from onnx_zip.errors import InputError
from onnx_zip.evaluate import evaluate_dataset
from onnx_zip.model_io import atomic_write_bytes, save_model
from onnx_zip.recipes.load import Recipe, make_output_folders
from onnx_zip.zipper.api import ZipJob, prepare_job
from onnx_zip.zipper.report import read_metadata, write_metadata

logger = logging.getLogger(__name__)

RECIPE_METADATA_KEY = "recipe"


@dataclass
class RunPlan:
    """A recipe with everything checked and bound, ready to run.

    Attributes:
        recipe: The recipe.
        models: The model files, in order.
        options: Keyword options of :func:`~onnx_zip.zipper.api.zip_models`.
        job: The validated zip job (its calibration Datasets are reused).
        train: Training data by task (when the recipe trains).
        evaluation: Evaluation data by task (limited to ``evaluation.limit``).
        original_accuracy: The originals' accuracy by task on ``evaluation``.
        progress: Show progress bars.
    """

    recipe: Recipe
    models: list[Path]
    options: dict[str, Any]
    job: ZipJob
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


def zip_options(recipe: Recipe, *, progress: bool = False) -> dict[str, Any]:
    """The recipe's ``zip`` section (and seed, threads) as options of ``zip_models``."""
    z, data = recipe.data["zip"], recipe.data
    return dict(
        names=recipe.tasks, share=z["share"], share_per_layer=z["share_per_layer"], max_cost=z["max_cost"],
        match=z["match"], conv_hessian=z["conv_hessian"], damping=z["damping"], pairing=z["pairing"],
        separate_inputs=z["separate_inputs"], seed=data["seed"], calibration_limit=z["calibration_limit"],
        batch_size=z["calibration_batch"], threads=data["threads"], fold_batchnorm=z["fold_batchnorm"],
        mapping=z["mapping"], progress=progress,
    )


def _bind(recipe: Recipe, job: ZipJob, key: str, limit: int | None = None) -> dict[str, Dataset] | None:
    files = [recipe.model_file(i, key) for i in range(len(job.tasks))]
    if all(f is None for f in files):
        return None
    bound = {}
    for i, (task, path) in enumerate(zip(job.tasks, files)):
        if path is None:
            raise InputError(f"{recipe.label}: models[{i}].{key} is missing", hint=f"give {key} data for every model or none")
        bound[task] = load_dataset(path, job.prepared[i].canonical, need_labels=True).take(limit)
    return bound


def prepare_run(recipe: Recipe, *, progress: bool = False) -> RunPlan:
    """Check everything that can be checked before long work and bind the data.

    Raises:
        InputError: models that do not load or align, data that does not fit, a training runtime
            missing when the recipe trains, retrain steps that do not match the hidden layers.
    """
    start = time.perf_counter()
    data = recipe.data
    if data["retrain"] or data["finetune"]:
        runtime.training_modules()
    count = len(recipe.tasks)
    models = [recipe.model_file(i, "model") for i in range(count)]
    calibration = [recipe.model_file(i, "calibration") for i in range(count)]
    options = zip_options(recipe, progress=progress)
    job = prepare_job(models, None if calibration[0] is None else calibration, None, **options)  # type: ignore[arg-type]
    train = _bind(recipe, job, "train") if (data["retrain"] or data["finetune"]) else None
    evaluation = _bind(recipe, job, "eval", data["evaluation"]["limit"])
    steps = (data["retrain"] or {}).get("steps")
    if isinstance(steps, list) and len(steps) != len(job.hidden):
        raise InputError(f"{recipe.label}: retrain.steps lists {len(steps)} counts for {len(job.hidden)} hidden layers",
                         hint="give one count per hidden layer, or a single count")
    plan = RunPlan(recipe=recipe, models=models, options=options, job=job, train=train, evaluation=evaluation,  # type: ignore[arg-type]
                   progress=progress)
    if evaluation:
        for prepared in job.prepared:
            result = evaluate_dataset(prepared.original, evaluation[prepared.task], threads=data["threads"],
                                      label=f"model {prepared.task}")
            plan.original_accuracy[prepared.task] = result.accuracy
    logger.info("%s: validated in %.1f s", recipe.label, time.perf_counter() - start)
    return plan


def _finetune_options(section: dict[str, Any], recipe: Recipe, progress: bool) -> dict[str, Any]:
    options: dict[str, Any] = {"batch_size": section["batch_size"], "optimizer": section["optimizer"],
                               "seed": recipe.data["seed"], "threads": recipe.data["threads"], "progress": progress}
    if section.get("lr") is not None:
        options["lr"] = section["lr"]
    return options


def execute(plan: RunPlan) -> RunResult:
    """Run a prepared recipe and write its outputs (see the module docstring)."""
    start = time.perf_counter()
    recipe, data = plan.recipe, plan.recipe.data
    calibration = plan.job.calibration
    if data["retrain"]:
        from onnx_zip.zipper.layerwise import zip_layerwise  # noqa: PLC0415 - needs the training runtime

        result = zip_layerwise(
            plan.models, calibration, plan.train or {}, None, retrain_steps=data["retrain"]["steps"],
            evaluation=plan.evaluation, finetune_options=_finetune_options(data["retrain"], recipe, plan.progress),
            **plan.options,
        )
    else:
        from onnx_zip.zipper.api import zip_models  # noqa: PLC0415

        result = zip_models(plan.models, calibration, None, **plan.options)
    model, report = result.model, dict(result.report)
    evaluation: dict[str, dict[str, float]] = {t: {"original": a} for t, a in plan.original_accuracy.items()}
    if plan.evaluation:
        from onnx_zip.finetune import evaluate_tasks  # noqa: PLC0415

        for task, accuracy in evaluate_tasks(model, plan.evaluation, threads=data["threads"]).items():
            evaluation[task]["zipped"] = accuracy
    if data["finetune"]:
        from onnx_zip.finetune import finetune  # noqa: PLC0415 - needs the training runtime

        section = data["finetune"]
        tuned = finetune(
            model, plan.train or {}, steps=section["steps"], schedule=section["schedule"],
            weight_decay=section["weight_decay"], freeze=tuple(section["freeze"]), task_weights=section["task_weights"],
            **_finetune_options(section, recipe, plan.progress),
        )
        model = tuned.model
        report["finetune"] = {**tuned.record, "seconds": tuned.seconds}
        if plan.evaluation:
            from onnx_zip.finetune import evaluate_tasks  # noqa: PLC0415

            for task, accuracy in evaluate_tasks(model, plan.evaluation, threads=data["threads"]).items():
                evaluation[task]["finetuned"] = accuracy
    meta = read_metadata(model)
    meta[RECIPE_METADATA_KEY] = recipe.canonical_json()
    write_metadata(model, meta)
    output = recipe.output("model")
    assert output is not None
    make_output_folders(recipe)
    model = save_model(model, output, label=f"zipped model {output}")
    outputs = [output]
    if evaluation:
        report["evaluation"] = evaluation
    report["recipe"] = data
    report_path = recipe.output("report")
    if report_path is not None:
        atomic_write_bytes(report_path, (json.dumps(report, indent=2) + "\n").encode())
        outputs.append(report_path)
    summary_path = recipe.output("summary")
    if summary_path is not None:
        from onnx_zip.reporting import write_summary  # noqa: PLC0415

        summary = write_summary(report, summary_path, title=data.get("description"))
        outputs += [summary.markdown, *summary.images]
    seconds = time.perf_counter() - start
    logger.info("%s: done in %.1f s, wrote %s", recipe.label, seconds, ", ".join(map(str, outputs)))
    return RunResult(model=model, report=report, outputs=outputs, seconds=seconds)


def run_recipe(path: str | Path, *, progress: bool = False) -> RunResult:
    """Load, check and run a recipe file (see :mod:`onnx_zip.recipes`)."""
    from onnx_zip.recipes.load import load_recipe  # noqa: PLC0415

    return execute(prepare_run(load_recipe(path), progress=progress))
