"""The compensated zip (``--method compensated``, mtz-method §10): layer by layer on the model zipped so far.

For each aligned hidden position ``l`` from the input up, then for the heads (all at once):

1. calibrate: for each task ``t``, the same batches of task ``t``'s calibration data run through the
   task's *view* of the model zipped so far (:mod:`onnx_zip.zipper.views`: layers ``< l`` zipped,
   its input in their zipped order, giving ``x̃_t``) and through the original canonical model
   (``x_t``); :mod:`onnx_zip.mtz.comp_stats` accumulates ``G_t, C_t, H_t`` (float64, streaming);
2. fit: :func:`onnx_zip.zipper.compensate.compensated_layer` chooses the pairs with the compensated
   cost and fits every neuron of the layer; the layers below keep their (already tied) pairs, the
   layers above share nothing yet (the planner's ``fixed`` pairs and zero policies, as in the
   layer-wise loop of :mod:`onnx_zip.pipeline.layerwise`);
3. build the joint model and read the task views back for the next position.

The original models' sessions are built once per task (every layer input exposed; a run fetches the
one needed); the views' sessions are rebuilt per position. Residual channel groups, dense first
layers of different widths and aligned layers that disagree on having a bias are refused before any
calibration (:func:`check_compensated`): ``--method paper`` zips them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx

from onnx_zip import mtz, runtime
from onnx_zip.calibrate import instrument
from onnx_zip.data import ArrayReader, Dataset, model_inputs
from onnx_zip.errors import DataError, InputError
from onnx_zip.graph.layers import Layer
from onnx_zip.mtz.comp_stats import (
    CompensationStats,
    MomentAccumulator,
    moment_accumulator,
)
from onnx_zip.pipeline.job import ZipJob
from onnx_zip.pipeline.stages import build, initializer_arrays
from onnx_zip.pipeline.statistics import gather_statistics
from onnx_zip.zipper.compensate import compensated_layer
from onnx_zip.zipper.plan import LayerZip, Planner
from onnx_zip.zipper.views import task_views

logger = logging.getLogger(__name__)

__all__ = ["CompensatedZip", "check_compensated", "layer_moments", "zip_compensated"]


def check_compensated(job: ZipJob) -> None:
    """Refuse what the compensated zip does not support yet, every blocker at once.

    Raises:
        InputError: residual channel groups, dense first layers of different input widths, aligned
            layers of which some have a bias and some not; the fix is ``--method paper``.
    """
    problems = []
    for p in job.prepared:
        if p.chain.channel_groups:
            problems.append(f"model {p.task} has residual Adds/Concats ({', '.join(p.chain.group_nodes[0])}) "
                            "whose channels are tied")
    for group in job.aligned:
        widths = {layer.inputs for layer in group}
        if group[0].index == 0 and len(widths) > 1 and not group[0].is_head:
            problems.append(f"first layers {[layer.node for layer in group]} read inputs of widths {sorted(widths)}")
        if len({layer.bias is None for layer in group}) > 1:
            problems.append(f"aligned layers {[layer.node for layer in group]}: some have a bias, some not")
    if problems:
        raise InputError("--method compensated cannot zip these models: " + "; ".join(problems),
                         hint="zip them with --method paper (the paper's one-pass MTZ)")


def _accumulator(layer: Layer, reading: str, has_bias: bool) -> MomentAccumulator:
    if layer.kind == "dense":
        return moment_accumulator("dense", bias=has_bias, layer=layer.node)
    geometry = layer.conv
    assert geometry is not None
    if reading == "channel":
        return moment_accumulator("conv_channel", bias=has_bias, layer=layer.node)
    return moment_accumulator("conv_patch", bias=has_bias, kernel_shape=geometry.kernel_shape,
                              strides=geometry.strides, pads=geometry.pads, dilations=geometry.dilations,
                              layer=layer.node)


@dataclass
class _Runner:
    """One instrumented session and the tensors it can fetch."""

    session: object
    graph_inputs: frozenset[str]

    @classmethod
    def of(cls, model: onnx.ModelProto, tensors: Sequence[str], threads: int | None, label: str) -> _Runner:
        inputs = frozenset(spec.name for spec in model_inputs(model))
        fetch = sorted({t for t in tensors if t not in inputs})
        session = runtime.make_session(instrument(model, fetch, label=label), threads=threads, optimize=False)
        return cls(session, inputs)

    def fetch(self, tensors: Sequence[str], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``{tensor: batch}``; graph inputs come from ``feeds`` (never fetched)."""
        run = [t for t in tensors if t not in self.graph_inputs]
        got = dict(zip(run, self.session.run(run, dict(feeds)))) if run else {}  # type: ignore[attr-defined]
        return {t: feeds[t] if t in self.graph_inputs else got[t] for t in tensors}


def _as_vectors(layer: Layer, batch: np.ndarray) -> np.ndarray:
    return batch.reshape(-1, batch.shape[-1]) if layer.kind == "dense" and batch.ndim != 2 else batch


def layer_moments(
    job: ZipJob, t: int, view: _Runner, original: _Runner, positions: Sequence[int]
) -> dict[int, CompensationStats]:
    """Task ``t``'s moments of the layers at ``positions``: the view's input against the original's,
    on the same batches of task ``t``'s calibration data."""
    calib = job.calibration_config
    assert job.calibration is not None
    layers = {p: job.aligned[p][t] for p in positions}
    readings = {p: job.settings.reading_for(job.aligned[p][0]) for p in positions}
    has_bias = {p: any(layer.bias is not None for layer in job.aligned[p]) for p in positions}
    accs = {p: _accumulator(layers[p], readings[p], has_bias[p]) for p in positions}
    tensors = sorted({layer.input for layer in layers.values()})
    reader = ArrayReader(Dataset(job.calibration[t].inputs, None, job.calibration[t].source),
                         batch_size=calib.batch_size, limit=calib.limit)
    seen = 0
    while (feeds := reader.get_next()) is not None:
        zipped, plain = view.fetch(tensors, feeds), original.fetch(tensors, feeds)
        for p, layer in layers.items():
            accs[p].update(_as_vectors(layer, zipped[layer.input]), _as_vectors(layer, plain[layer.input]))  # type: ignore[attr-defined]
        seen += 1
    if not seen:
        raise DataError(f"{job.calibration[t].source}: no calibration samples for model {job.tasks[t]}")
    return {p: acc.stats() for p, acc in accs.items()}


@dataclass
class CompensatedZip:
    """The result of :func:`zip_compensated`.

    Attributes:
        model: The zipped model.
        zips: One :class:`LayerZip` per aligned position, pairs in the original neuron indices.
    """

    model: onnx.ModelProto
    zips: list[LayerZip]


def _planner(job: ZipJob, views: Sequence[onnx.ModelProto], steps: Sequence[int], fixed: Mapping[int, np.ndarray],
             pair_costs: Mapping[int, np.ndarray]) -> Planner:
    hidden = [p for p, g in enumerate(job.aligned) if not g[0].is_head]
    policies = [job.settings.policy_for(i) if p in steps else mtz.ShareCount(0) for i, p in enumerate(hidden)]
    return Planner(job.chains, job.aligned, [initializer_arrays(v) for v in views], job.settings.with_policies(policies),
                   pair_costs=pair_costs, fixed=fixed)


def zip_compensated(job: ZipJob, *, progress: bool = False) -> CompensatedZip:
    """Zip a prepared job with the compensated method (see the module docstring).

    Raises:
        InputError: an unsupported structure (:func:`check_compensated`) or no calibration data.
    """
    check_compensated(job)
    if job.calibration is None:
        raise InputError("--method compensated needs one calibration data set per model", hint="pass --calib")
    hidden = [p for p, g in enumerate(job.aligned) if not g[0].is_head]
    heads = [p for p, g in enumerate(job.aligned) if g[0].is_head]
    pair_costs = {}
    if job.config.pairing_method.statistic == "correlation":
        pair_costs = gather_statistics(job, hidden, progress=progress).pair_costs
    originals = [initializer_arrays(m) for m in job.canonical]
    threads = job.calibration_config.threads
    runners = [_Runner.of(m, [g[t].input for g in job.aligned], threads, f"model {task}")
               for t, (task, m) in enumerate(zip(job.tasks, job.canonical))]
    views = list(job.canonical)
    fixed: dict[int, np.ndarray] = {}
    found: dict[int, LayerZip] = {}
    model: onnx.ModelProto | None = None
    for steps in [[p] for p in hidden] + [heads]:
        moments = [layer_moments(job, t, _Runner.of(v, [job.aligned[p][t].input for p in steps], threads,
                                                    f"model {job.tasks[t]} zipped so far"), runners[t], steps)
                   for t, v in enumerate(views)]
        planner = _planner(job, views, steps, fixed, pair_costs)
        zips = []
        for q in range(len(job.aligned)):
            if q in steps:
                zips.append(compensated_layer(planner, q, originals, [m[q] for m in moments], job.config.rho))
                found[q] = zips[-1]
            else:
                zips.append(planner.plan(q))
        model = build(job, zips, models=views)
        logger.info("compensated: fitted %s", ", ".join(f"{zips[q].tag} ({zips[q].shared} shared)" for q in steps))
        if steps is not heads:
            views = task_views(model, job.tasks, views, zips)
            fixed.update({p: np.repeat(np.arange(found[p].shared)[:, None], len(job.tasks), axis=1) for p in steps})
    assert model is not None
    # The views' layer l was in its original neuron order when l was fitted: its pairs are original indices.
    final = [replace(z, pairs=found[z.index].pairs, costs=found[z.index].costs) for z in zips]
    return CompensatedZip(model, final)
