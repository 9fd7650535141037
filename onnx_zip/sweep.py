"""A sharing sweep: zip one pair at several sharing levels and measure each task's accuracy.

The Hessians do not depend on how much is shared, so the pair is validated and calibrated once
(:func:`~onnx_zip.zipper.api.prepare_job`, :func:`~onnx_zip.zipper.api.layer_hessians`); each level
is then only planned, rewritten, evaluated and optionally fine-tuned for a few steps.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from onnx_zip import mtz
from onnx_zip.data import Dataset, load_dataset
from onnx_zip.errors import InputError
from onnx_zip.evaluate import evaluate_dataset
from onnx_zip.model_io import save_model
from onnx_zip.zipper.api import _initializers, build_model, layer_hessians, prepare_job
from onnx_zip.zipper.pairing import group_share_count
from onnx_zip.zipper.plan import plan_layers
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


def _bind_all(paths: Mapping[str, Any], job: Any, what: str, limit: int | None) -> dict[str, Dataset]:
    bound = {}
    for prepared in job.prepared:
        if prepared.task not in paths:
            raise InputError(f"no {what} data for task {prepared.task!r}", hint=f"give --{what} {prepared.task}=FILE for every task")
        item = paths[prepared.task]
        data = item if isinstance(item, Dataset) else load_dataset(item, prepared.canonical, need_labels=True)
        bound[prepared.task] = data.take(limit)
    unknown = sorted(set(paths) - set(job.tasks))
    if unknown:
        raise InputError(f"{what} data for unknown task {unknown[0]!r}", hint=f"tasks are {job.tasks}")
    return bound


def sweep(
    models: Sequence[str | os.PathLike[str]],
    calibration: Sequence[Any] | None,
    shares: Sequence[float],
    evaluation: Mapping[str, Any],
    *,
    train: Mapping[str, Any] | None = None,
    finetune_steps: int = 0,
    finetune_options: Mapping[str, Any] | None = None,
    eval_limit: int | None = None,
    save_models: str | os.PathLike[str] | None = None,
    on_level: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Zip a pair at each sharing level and evaluate it.

    Args:
        models: Two ``.onnx`` models.
        calibration: One calibration data set per model.
        shares: Fractions of each hidden layer's neurons to share, one level each.
        evaluation: Labelled test data by task name.
        train: Training data by task (needed when ``finetune_steps > 0``).
        finetune_steps: Joint fine-tuning steps at each level (0: none).
        finetune_options: Further options of :func:`onnx_zip.finetune.finetune`.
        eval_limit: Evaluate on at most this many samples per task.
        save_models: A folder to write each level's model to (``share_<level>.onnx``).
        on_level: Called with each level's record as soon as it is measured.
        **options: Options of :func:`~onnx_zip.zipper.api.prepare_job` (names, match, conv_hessian,
            calibration_limit, threads, progress, ...), except the sharing policy.

    Returns:
        The sweep report: ``tasks``, ``sources``, ``settings``, ``original_accuracy`` ({task: accuracy}),
        ``sweep`` (per level: ``share``, ``params`` ({task, zipped, shared}), ``shared_fraction``
        (shared / zipped parameters), ``layers`` ([{layer, shared}]), ``accuracy`` and, with
        fine-tuning, ``accuracy_finetuned``, ``seconds``) and ``timings``.

    Raises:
        InputError: bad levels, settings, models or data (all checked before the first level).
    """
    for key in ("share", "share_per_layer", "max_cost"):
        if options.get(key) is not None:
            raise InputError(f"a sweep sets the sharing itself: do not pass {key}")
    if not shares:
        raise InputError("no sharing levels to sweep")
    if finetune_steps < 0:
        raise InputError(f"finetune steps must be ≥ 0, got {finetune_steps}")
    if finetune_steps and not train:
        raise InputError("fine-tuning in a sweep needs training data for every task", hint="pass --train TASK=FILE")
    if save_models is not None and not Path(save_models).is_dir():
        raise InputError(f"save-models folder {save_models} does not exist", hint="create it first")
    start = time.perf_counter()
    job = prepare_job(models, calibration, None, share=max(shares), **options)
    for share in shares:  # every level must give a valid count in every layer
        for i, group in enumerate(job.hidden):
            group_share_count(mtz.ShareFraction(float(share)), group, layer=f"layer{i + 1}")
    test = _bind_all(evaluation, job, "eval", eval_limit)
    train_data = _bind_all(train, job, "train", None) if finetune_steps else None
    from onnx_zip.finetune import evaluate_tasks, finetune  # noqa: PLC0415 - the zipped models' evaluation

    if finetune_steps:
        from onnx_zip import runtime  # noqa: PLC0415

        runtime.training_modules()
    threads = options.get("threads")
    original = {p.task: evaluate_dataset(p.original, test[p.task], threads=threads, label=f"model {p.task}").accuracy
                for p in job.prepared}
    timings = {"validate": time.perf_counter() - start}
    started = time.perf_counter()
    canonical = [p.canonical for p in job.prepared]
    hidden = [i for i, g in enumerate(job.aligned) if not g[0].is_head]
    hessians = layer_hessians(job, canonical, hidden)
    tensors = [_initializers(m) for m in canonical]
    timings["calibrate"] = time.perf_counter() - started
    levels = []
    for share in shares:
        started = time.perf_counter()
        job.settings = replace(job.settings, policy=mtz.ShareFraction(float(share)))
        job.record = {**job.record, "share": float(share)}
        zips = plan_layers([p.chain for p in job.prepared], job.aligned, tensors, hessians, job.settings)
        model = build_model(job, canonical, zips)
        params = params_record(job.tasks, [p.original for p in job.prepared], model)
        level: dict[str, Any] = {
            "share": float(share),
            "params": params,
            "shared_fraction": params["shared"] / params["zipped"] if params["zipped"] else 0.0,
            "layers": [{"layer": r["layer"], "shared": r["shared"]} for r in layer_records(job.tasks, zips)],
            "accuracy": evaluate_tasks(model, test, threads=threads),
        }
        if finetune_steps:
            tuned = finetune(model, train_data or {}, steps=finetune_steps, threads=threads, **dict(finetune_options or {}))
            model = tuned.model
            level["accuracy_finetuned"] = evaluate_tasks(model, test, threads=threads)
        if save_models is not None:
            save_model(model, Path(save_models) / f"share_{share:.2f}.onnx")
        level["seconds"] = time.perf_counter() - started
        logger.info("share %.2f: %s", share, level["accuracy"])
        levels.append(level)
        if on_level is not None:
            on_level(level)
    timings["levels"] = sum(level["seconds"] for level in levels)
    settings = {k: v for k, v in job.record.items() if k not in ("share", "share_per_layer", "max_cost")}
    if finetune_steps:
        settings["finetune_steps"] = finetune_steps
    return {
        "kind": "sweep",
        "tasks": job.tasks,
        "sources": dict(zip(job.tasks, job.sources)),
        "settings": settings,
        "original_accuracy": original,
        "sweep": levels,
        "timings": timings,
    }
