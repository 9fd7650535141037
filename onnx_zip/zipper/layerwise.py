"""The paper's zip-and-retrain loop (Algorithm 1), layer by layer from the input.

For hidden layer ``l = 1 … L``:

1. calibrate layer ``l``'s Hessians on each task's *current view* (the task's single-model
   equivalent of the current joint model, see :mod:`onnx_zip.zipper.views`), so the Hessians
   reflect the layers already zipped and retrained;
2. pair and merge layer ``l``; layers ``< l`` keep their (already tied) pairs, layers ``> l``
   share nothing yet;
3. build the joint model and fine-tune it jointly for ``K_l`` steps;
4. read the task views back from the fine-tuned joint model and go on with ``l + 1``.

With evaluation data it records each task's accuracy before and after each layer's retraining
(the shape of the paper's Tables 1–3). The result is the last fine-tuned joint model.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import onnx

from onnx_zip import mtz
from onnx_zip.errors import InputError
from onnx_zip.zipper.api import ZipJob, ZipResult, _initializers, build_model, finish, layer_hessians, prepare_job
from onnx_zip.zipper.plan import FixedPairs, LayerZip, plan_layers
from onnx_zip.zipper.report import provenance, read_metadata, write_metadata
from onnx_zip.zipper.views import task_views

logger = logging.getLogger(__name__)


def _steps_per_layer(retrain_steps: int | Sequence[int], count: int) -> list[int]:
    if isinstance(retrain_steps, int):
        steps = [retrain_steps] * count
    else:
        steps = [int(s) for s in retrain_steps]
    if len(steps) != count:
        raise InputError(f"{len(steps)} retrain step counts for {count} hidden layers", hint="give one per hidden layer")
    if any(s < 0 for s in steps):
        raise InputError(f"retrain steps must be ≥ 0, got {steps}")
    return steps


def zip_layerwise(
    models: Sequence[str | os.PathLike[str] | onnx.ModelProto],
    calibration: Sequence[Any] | None,
    train: Mapping[str, Any],
    output: str | os.PathLike[str] | None = None,
    *,
    retrain_steps: int | Sequence[int] = 100,
    evaluation: Mapping[str, Any] | None = None,
    finetune_options: Mapping[str, Any] | None = None,
    on_layer: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
) -> ZipResult:
    """Zip two or more models layer by layer, retraining jointly after each layer (Algorithm 1).

    Args:
        models: Two or more ``.onnx`` paths or ModelProtos.
        calibration: One calibration data set per model (as for :func:`~onnx_zip.zipper.api.zip_models`).
        train: Training data by task name (npz path, Dataset or arrays with ``label``).
        output: Where to write the final joint model.
        retrain_steps: Joint fine-tuning steps after each hidden layer (one count, or one per layer).
        evaluation: Test data by task name: accuracy is logged before and after each layer's retraining.
        finetune_options: Keyword options of :func:`onnx_zip.finetune.finetune` (lr, batch_size,
            optimizer, losses, task_weights, seed, ...); ``steps`` comes from ``retrain_steps``.
        on_layer: Called with each layer's record as soon as it is done (progress reporting).
        **options: The options of :func:`~onnx_zip.zipper.api.zip_models` (names, share, ...).

    Returns:
        The :class:`~onnx_zip.zipper.api.ZipResult` of the final model; its report has a
        ``layerwise`` list: per layer the shared count, retraining steps, seconds, and the
        accuracy per task before and after retraining (with ``evaluation``).
    """
    from onnx_zip.finetune import evaluate_tasks, finetune  # noqa: PLC0415 - needs the training runtime

    job = prepare_job(models, calibration, output, **options)
    residual = [p for p in job.prepared if p.chain.channel_groups]
    if residual:
        raise InputError(
            f"model {residual[0].task} has residual Adds ({', '.join(residual[0].chain.group_nodes[0])}); the "
            "layer-wise loop zips plain chains",
            hint="zip residual networks in one pass (without --train) and fine-tune the result",
        )
    hidden = [i for i, group in enumerate(job.aligned) if not group[0].is_head]
    steps = _steps_per_layer(retrain_steps, len(hidden))
    unknown = sorted(set(train) - set(job.tasks)) + sorted(set(evaluation or {}) - set(job.tasks))
    if unknown or set(train) != set(job.tasks):
        raise InputError(
            f"training data is given for {sorted(train)}, evaluation for {sorted(evaluation or {})}; tasks are {job.tasks}",
            hint="give training data for every task, named by task",
        )
    options_ft = dict(finetune_options or {})
    options_ft.pop("steps", None)
    chains = [p.chain for p in job.prepared]
    views = [p.canonical for p in job.prepared]
    records: list[dict[str, Any]] = []
    original_pairs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    zips: list[LayerZip] = []
    model: onnx.ModelProto | None = None
    for number, (position, count) in enumerate(zip(hidden, steps)):
        started = time.perf_counter()
        hessians = layer_hessians(job, views, [position])
        policies: list[Any] = []
        for i, other in enumerate(hidden):
            if other < position:
                k = original_pairs[other][0].shape[0]
                policies.append(FixedPairs(np.repeat(np.arange(k)[:, None], len(job.tasks), axis=1)))
            elif other == position:
                policies.append(job.settings.policy_for(i, len(hidden)))
            else:
                policies.append(mtz.ShareCount(0))
        settings = replace(job.settings, policy=tuple(policies))
        zips = plan_layers(chains, job.aligned, [_initializers(v) for v in views], hessians, settings)
        # Layer ``position`` of the views is still in its original order: its pairs are original indices.
        original_pairs[position] = (zips[position].pairs.copy(), zips[position].costs.copy())
        joint = build_model(job, views, zips)
        record: dict[str, Any] = {"layer": zips[position].tag, "shared": zips[position].shared, "steps": count}
        if evaluation:
            record["accuracy_before"] = evaluate_tasks(joint, evaluation)
        if count > 0:
            tuned = finetune(joint, train, steps=count, **options_ft)
            joint = tuned.model
            record["final_loss"] = tuned.history[-1] if tuned.history else None
        if evaluation:
            record["accuracy_after"] = evaluate_tasks(joint, evaluation)
        record["seconds"] = time.perf_counter() - started
        logger.info("layer %d/%d %s: %s", number + 1, len(hidden), record["layer"], record)
        records.append(record)
        if on_layer is not None:
            on_layer(record)
        views = task_views(joint, job.tasks, views, zips)
        model = joint
    assert model is not None
    # Report pairs in the original models' neuron indices (earlier layers were re-planned as fixed pairs).
    final = []
    for z in zips:
        if z.index in original_pairs:
            pairs, costs = original_pairs[z.index]
            z = replace(z, pairs=pairs, costs=costs)
        final.append(z)
    job.record = {**job.record, "procedure": "layerwise", "retrain_steps": steps, "finetune": _jsonable(options_ft)}
    model = build_model_metadata(job, model, final)
    return finish(job, model, final, extra={"layerwise": records})


def _jsonable(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (int, float, str, bool, type(None), list, dict)) else repr(v) for k, v in options.items()}


def build_model_metadata(job: ZipJob, model: onnx.ModelProto, zips: Sequence[LayerZip]) -> onnx.ModelProto:
    """Refresh the provenance metadata of a fine-tuned joint model (original pair indices, settings)."""
    meta = read_metadata(model)
    meta.update(provenance(job.tasks, job.sources, job.record, zips, job.prepared[0].chain))
    write_metadata(model, meta)
    return model
