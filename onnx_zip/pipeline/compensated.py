"""The compensated zip (``--method compensated``, mtz-method §10): layer by layer on the model zipped so far.

For each aligned hidden position ``l`` from the input up, then for the heads (all at once):

1. calibrate: for each task ``t``, the same batches of task ``t``'s calibration data run through the
   task's model fitted so far (:func:`fitted_model`: its canonical model with layers ``< l`` replaced
   by their fitted weights, neurons in the original order, so it computes what the zipped model
   computes for ``t``) and through the original canonical model; layer ``l``'s input in the first,
   moved to the zipped order ``[shared ; own]`` of the layer below, is ``x̃_t``, in the second ``x_t``;
   :mod:`onnx_zip.mtz.comp_stats` accumulates ``G_t, C_t, H_t`` (float64, streaming);
2. fit: :func:`onnx_zip.zipper.compensate.compensated_layer` chooses the pairs with the compensated
   cost and fits every neuron of the layer (one :class:`~onnx_zip.zipper.plan.Planner` carries the
   zipped orders from layer to layer, as in the one-pass zip);
3. after the heads, build the joint model once from the fitted blocks.

The original models' sessions are built once per task (every layer input exposed; a run fetches the
one needed); the fitted models' sessions are rebuilt per position. Residual channel groups: the first
layer of a group chooses the pairs (on its own costs), each later one is fitted with them. A narrower
dense first layer reads fictive zero inputs (mtz-method §7). Aligned layers that disagree on having a
bias are refused before any calibration (:func:`check_compensated`): ``--method paper`` zips them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_zip import runtime
from onnx_zip.calibrate import instrument
from onnx_zip.data import ArrayReader, Dataset, model_inputs
from onnx_zip.errors import DataError, InputError
from onnx_zip.graph.layers import Layer, stored_weights
from onnx_zip.mtz.comp_stats import (
    CompensationStats,
    MomentAccumulator,
    moment_accumulator,
)
from onnx_zip.mtz.hessian import im2col_columns
from onnx_zip.pipeline.job import ZipJob
from onnx_zip.pipeline.stages import build, initializer_arrays
from onnx_zip.pipeline.statistics import gather_statistics
from onnx_zip.zipper.compensate import (
    LayerFit,
    compensated_layer,
    original_rows,
    output_space,
)
from onnx_zip.zipper.plan import LayerZip, Planner

logger = logging.getLogger(__name__)

__all__ = ["CompensatedZip", "OutputMoments", "check_compensated", "fitted_model", "layer_moments", "zip_compensated"]


def check_compensated(job: ZipJob) -> None:
    """Refuse what the compensated zip does not support yet, every blocker at once.

    Raises:
        InputError: aligned layers of which some have a bias and some not; the fix is ``--method paper``.
    """
    problems = []
    for group in job.aligned:
        if len({layer.bias is None for layer in group}) > 1:
            problems.append(f"aligned layers {[layer.node for layer in group]}: some have a bias, some not")
    if problems:
        raise InputError("--method compensated cannot zip these models: " + "; ".join(problems),
                         hint="zip them with --method paper (the paper's one-pass MTZ)")


def _accumulator(layer: Layer, reading: str, has_bias: bool, rows: np.ndarray) -> MomentAccumulator | OutputMoments:
    if output_space(reading):
        return OutputMoments(layer, rows, has_bias)
    if layer.kind == "dense":
        return moment_accumulator("dense", bias=has_bias, layer=layer.node)
    geometry = layer.conv
    assert geometry is not None
    if reading == "channel":
        return moment_accumulator("conv_channel", bias=has_bias, layer=layer.node)
    return moment_accumulator("conv_patch", bias=has_bias, kernel_shape=geometry.kernel_shape,
                              strides=geometry.strides, pads=geometry.pads, dilations=geometry.dilations,
                              layer=layer.node)


_CHUNK_BYTES = 64 * 2**20  # bound on the two float64 im2col buffers per step


class OutputMoments:
    """Moments of a dense or patch-read layer against the original OUTPUTS (see
    :func:`~onnx_zip.zipper.compensate.output_space`): ``G = E[x̃ x̃ᵀ]``, ``C = E[x̃ ỹᵀ]``,
    ``H = E[ỹ ỹᵀ]`` with ``ỹ = [y ; 1]``, ``y = w x`` the original pre-activations ``(N,)``.

    Args:
        layer: The layer (its conv geometry for the patch reading).
        rows: The original rows ``(N, D)`` in the reading, bias last when ``bias``.
        bias: The layer has a bias (both vectors get the constant 1).
    """

    def __init__(self, layer: Layer, rows: np.ndarray, bias: bool) -> None:
        self.layer = layer
        self.weight = np.asarray(rows[:, :-1] if bias else rows, dtype=np.float64)
        self.bias = np.asarray(rows[:, -1], dtype=np.float64) if bias else None
        self.moments = moment_accumulator("dense", bias=bias, layer=layer.node)

    def _outputs(self, vectors: np.ndarray) -> np.ndarray:
        y = np.asarray(vectors, dtype=np.float64) @ self.weight.T
        return y + self.bias if self.bias is not None else y

    def update(self, zipped: np.ndarray, original: np.ndarray) -> None:
        """Add a batch pair: ``(n, D̃)`` and ``(n, D)`` dense, ``(n, C̃, H, W)`` and ``(n, C, H, W)`` conv."""
        if self.layer.kind != "conv":
            self.moments.update(zipped, self._outputs(original))  # type: ignore[attr-defined]
            return
        g = self.layer.conv
        assert g is not None
        geometry = (g.kernel_shape, g.strides, g.pads, g.dilations)
        per_sample = 8 * (zipped[0].size + original[0].size) * int(np.prod(g.kernel_shape))
        step = max(1, _CHUNK_BYTES // max(per_sample, 1))
        for s in range(0, len(zipped), step):
            zt = im2col_columns(zipped[s : s + step], *geometry, layer=self.layer.node)
            xt = im2col_columns(original[s : s + step], *geometry, layer=self.layer.node)
            self.moments.update(zt.T, self._outputs(xt.T))  # type: ignore[attr-defined]

    def stats(self) -> CompensationStats:
        return self.moments.stats()


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


def _zipped_order(layer: Layer, batch: np.ndarray, index: np.ndarray, width: int) -> np.ndarray:
    """A batch of the layer's input in the original order → the zipped order ``[shared ; own]``
    (``index``: the original feature of each zipped position; channels of a conv, features of a dense),
    with zero features up to ``width`` (a narrower dense first layer's fictive inputs, mtz-method §7)."""
    if layer.kind == "conv":
        return np.take(batch, index, axis=1)
    out = _as_vectors(layer, batch)[:, index]
    if out.shape[1] < width:
        out = np.concatenate([out, np.zeros((out.shape[0], width - out.shape[1]), dtype=out.dtype)], axis=1)
    return out


def layer_moments(
    job: ZipJob, t: int, view: _Runner, original: _Runner, positions: Sequence[int], index: Mapping[int, np.ndarray],
    widths: Mapping[int, int], rows: Mapping[int, np.ndarray],
) -> dict[int, CompensationStats]:
    """Task ``t``'s moments of the layers at ``positions``: the input in the model fitted so far
    (``view``, original neuron order, moved to the zipped order by ``index``, zero-padded to
    ``widths``) against the original input (``original``; its outputs by ``rows``, the original rows,
    for :func:`~onnx_zip.zipper.compensate.output_space` readings), on the same batches of task ``t``'s
    calibration data."""
    calib = job.calibration_config
    assert job.calibration is not None
    layers = {p: job.aligned[p][t] for p in positions}
    readings = {p: job.settings.reading_for(job.aligned[p][0]) for p in positions}
    has_bias = {p: any(layer.bias is not None for layer in job.aligned[p]) for p in positions}
    accs = {p: _accumulator(layers[p], readings[p], has_bias[p], rows[p]) for p in positions}
    tensors = sorted({layer.input for layer in layers.values()})
    reader = ArrayReader(Dataset(job.calibration[t].inputs, None, job.calibration[t].source),
                         batch_size=calib.batch_size, limit=calib.limit)
    seen = 0
    while (feeds := reader.get_next()) is not None:
        zipped, plain = view.fetch(tensors, feeds), original.fetch(tensors, feeds)
        for p, layer in layers.items():
            accs[p].update(_zipped_order(layer, zipped[layer.input], index[p], widths[p]),  # type: ignore[union-attr]
                           _as_vectors(layer, plain[layer.input]))
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


def fitted_model(job: ZipJob, t: int, planner: Planner, fitted: Mapping[int, LayerFit]) -> onnx.ModelProto:
    """Task ``t``'s canonical model with the layers fitted so far, every neuron in its ORIGINAL order
    (a fitted weight's inputs moved back from the zipped order): it computes what the zipped model
    computes for task ``t``, up to the order of the neurons, so residual Adds need no care."""
    model = onnx.ModelProto()
    model.CopyFrom(job.canonical[t])
    where = {init.name: i for i, init in enumerate(model.graph.initializer)}
    for position, fit in fitted.items():
        layer = job.aligned[position][t]
        zipped, index = fit.weights[t], planner.input_order(position).index[t]
        weight = np.zeros((zipped.shape[0], len(index), *zipped.shape[2:]), dtype=zipped.dtype)
        weight[:, index] = zipped[:, : len(index)]  # without a narrower first layer's fictive inputs
        values = {layer.weight: stored_weights(layer, weight)}
        bias = fit.biases[t]
        if layer.bias is not None and bias is not None:
            values[layer.bias] = bias
        for name, value in values.items():
            old = model.graph.initializer[where[name]]
            dtype = numpy_helper.to_array(old).dtype
            old.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value, dtype=dtype).reshape(old.dims), name))
    return model


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
    planner = Planner(job.chains, job.aligned, originals, job.settings, pair_costs=pair_costs)
    fitted: dict[int, LayerFit] = {}
    for steps in [[p] for p in hidden] + [heads]:
        index = {p: planner.input_order(p).index for p in steps}
        widths = {p: planner.input_order(p).shared for p in steps}
        moments = []
        for t, task in enumerate(job.tasks):
            view = _Runner.of(fitted_model(job, t, planner, fitted), [job.aligned[p][t].input for p in steps],
                              threads, f"model {task} zipped so far")
            rows = {p: original_rows(planner, p, originals, t) for p in steps}
            task_index = {p: index[p][t] for p in steps}
            moments.append(layer_moments(job, t, view, runners[t], steps, task_index, widths, rows))
        for p in steps:
            fitted[p] = compensated_layer(planner, p, originals, [m[p] for m in moments], job.config.rho)
            logger.info("compensated: fitted %s (%d shared)", fitted[p].zip.tag, fitted[p].zip.shared)
    zips = [fitted[p].zip for p in range(len(job.aligned))]
    return CompensatedZip(build(job, zips), zips)
