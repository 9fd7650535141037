"""Calibration: layer-wise Hessians of a model's layers from data, in one onnxruntime session.

The model is *instrumented*: the input tensor of every layer being calibrated is added as an
extra graph output (declared with its element type only; the shape comes from the run). One
session runs the instrumented model batch by batch with graph optimisations OFF (exact
intermediate values, no fusions), and every fetched batch goes straight into the layer's
float64 accumulator from :mod:`onnx_zip.mtz.hessian`; activations are never stored, so memory
stays at a few batches whatever the sample count.

A layer whose input is a graph input is fed from the batch itself rather than fetched: fetching
a graph input can alias the caller's buffer (onnxruntime issue 21922); the accumulators convert
every batch to a new float64 array, so nothing the caller owns is kept or modified.

Readings: dense layers (Gemm, MatMul) use :class:`DenseHessian` over ``(N, d)`` (a rank > 2
MatMul input ``(..., d)`` is flattened to ``(-1, d)``); conv layers use the paper's ``"patch"``
reading (:class:`ConvPatchHessian`, im2col patches with the layer's kernel, strides, pads,
dilations) or the released code's ``"channel"`` reading (:class:`ConvChannelHessian`). The input
is augmented with a constant 1 iff the layer has a bias.

Data: a :class:`~onnx_zip.data.Dataset`, a mapping of arrays, a path to an ``.npz`` file, or any
``CalibrationDataReader``-compatible object (``get_next()``). Every batch is bound to the model's
inputs and checked (names, dtypes, shapes, NaN/Inf) with :func:`onnx_zip.data.bind_arrays`; files,
arrays and datasets are checked as a whole before the session is built.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx

from onnx_zip import data as data_mod
from onnx_zip import runtime
from onnx_zip.config import DEFAULT_CALIBRATION_BATCH, READINGS, conv_readings
from onnx_zip.errors import DataError, InputError, ModelError
from onnx_zip.graph.layers import Layer
from onnx_zip.mtz.hessian import (
    ConvChannelHessian,
    ConvPatchHessian,
    DenseHessian,
    HessianAccumulator,
)

logger = logging.getLogger(__name__)

DataSource = data_mod.Dataset | data_mod.DataReader | Mapping[str, np.ndarray] | str | os.PathLike


def _dense(layer: Layer) -> HessianAccumulator:
    return DenseHessian(layer.inputs, bias=layer.bias is not None, layer=layer.node)


def _channel(layer: Layer) -> HessianAccumulator:
    return ConvChannelHessian(layer.inputs, bias=layer.bias is not None, layer=layer.node)


def _patch(layer: Layer) -> HessianAccumulator:
    geometry = layer.conv
    if geometry is None:
        raise ModelError(f"layer {layer.node}: a conv layer without geometry")
    return ConvPatchHessian(
        geometry.kernel_shape, geometry.strides, geometry.pads, geometry.dilations,
        channels=layer.inputs, bias=layer.bias is not None, layer=layer.node,
    )


#: The Hessian accumulator of each reading of :data:`onnx_zip.config.READINGS`.
ACCUMULATORS: dict[str, Callable[[Layer], HessianAccumulator]] = {"dense": _dense, "patch": _patch, "channel": _channel}


def accumulator_for(layer: Layer, reading: str = "patch") -> HessianAccumulator:
    """The empty Hessian accumulator of one layer.

    Args:
        layer: A discovered layer.
        reading: A convolution reading (``patch``, ``channel``) for conv layers; a dense layer is
            always read ``dense``.

    Raises:
        InputError: unknown reading, or a dense reading asked of a conv layer.
    """
    if reading not in READINGS or (layer.kind == "conv" and READINGS.get(reading).layer_kind != "conv"):
        raise InputError(f"layer {layer.node}: unknown conv reading {reading!r}", hint=f"use one of {conv_readings()}")
    return ACCUMULATORS["dense" if layer.kind == "dense" else reading](layer)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    types = {}
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    for tensor in model.graph.initializer:
        types[tensor.name] = tensor.data_type
    return types


def instrument(model: onnx.ModelProto, tensors: list[str], *, label: str = "model") -> onnx.ModelProto:
    """A copy of ``model`` with ``tensors`` added as graph outputs (element type from shape inference).

    Args:
        model: A canonical, shape-inferred model.
        tensors: Names of intermediate tensors to expose (graph inputs and existing outputs are skipped).

    Raises:
        ModelError: a tensor does not exist in the model or has no known element type.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    produced = {name for node in out.graph.node for name in node.output}
    existing = {v.name for v in out.graph.output} | {v.name for v in out.graph.input}
    types = _elem_types(out)
    if any(t in produced and t not in types for t in tensors):
        types = _elem_types(onnx.shape_inference.infer_shapes(out, data_prop=True))
    for name in tensors:
        if name in existing:
            continue
        if name not in produced:
            raise ModelError(f"{label}: no tensor {name!r} to calibrate", hint="pass layers discovered on this model")
        if name not in types:
            raise ModelError(f"{label}: tensor {name!r} has no known element type after shape inference")
        out.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
        existing.add(name)
    return out


def _reading_of(layer: Layer, reading: str | Mapping[str, str]) -> str:
    if isinstance(reading, str):
        return reading
    return reading.get(layer.node, "patch")


class _Limited:
    """Batches of a reader, validated, cut at ``limit`` samples."""

    def __init__(self, reader: data_mod.DataReader, specs: list[data_mod.TensorSpec], limit: int | None, source: str):
        self.reader, self.specs, self.limit, self.source = reader, specs, limit, source
        self.seen = 0

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        index = 0
        while self.limit is None or self.seen < self.limit:
            batch = self.reader.get_next()
            if batch is None:
                return
            if not isinstance(batch, Mapping):
                raise DataError(f"{self.source}: get_next() returned {type(batch).__name__}, expected a dict of arrays")
            bound = data_mod.bind_arrays(batch, self.specs, source=f"{self.source} batch {index}").inputs
            count = len(next(iter(bound.values())))
            if self.limit is not None and self.seen + count > self.limit:
                keep = self.limit - self.seen
                bound = {k: v[:keep] for k, v in bound.items()}
                count = keep
            self.seen += count
            index += 1
            yield bound


def _as_reader(
    data: DataSource, model: onnx.ModelProto, specs: list[data_mod.TensorSpec], batch_size: int, limit: int | None
) -> tuple[data_mod.DataReader, int | None, str]:
    if isinstance(data, (str, Path, os.PathLike)):
        dataset = data_mod.load_dataset(data, model)
    elif isinstance(data, data_mod.Dataset):
        dataset = data_mod.bind_arrays(data.inputs, specs, source=data.source)
    elif isinstance(data, Mapping):
        dataset = data_mod.bind_arrays(data, specs, source="calibration arrays")
    elif hasattr(data, "get_next"):
        total = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]
        if total is not None and limit is not None:
            total = min(total, limit)
        return data, total, type(data).__name__  # type: ignore[return-value]
    else:
        raise DataError(
            f"calibration data of type {type(data).__name__} is not supported",
            hint="pass a Dataset, a dict of arrays, an .npz path or a reader with get_next()",
        )
    reader = data_mod.ArrayReader(dataset, batch_size=batch_size, limit=limit)
    return reader, len(reader), dataset.source


def calibrate(
    model: onnx.ModelProto,
    layers: list[Layer],
    data: DataSource,
    *,
    reading: str | Mapping[str, str] = "patch",
    limit: int | None = None,
    batch_size: int = DEFAULT_CALIBRATION_BATCH,
    threads: int | None = None,
    progress: bool = True,
    label: str = "model",
) -> dict[str, HessianAccumulator]:
    """Accumulate the layer-wise Hessian of each layer's input over the calibration data.

    Args:
        model: The canonical model the layers were discovered on.
        layers: The layers to calibrate.
        data: Calibration inputs (see the module docstring); labels are ignored.
        reading: Conv reading, ``"patch"`` (paper) or ``"channel"`` (released code), or a dict
            ``{layer node: reading}`` (missing layers: ``"patch"``).
        limit: Use at most this many samples (``None``: all).
        batch_size: Samples per session run (arrays, datasets and files; a reader batches itself).
        threads: onnxruntime intra-op threads (``None``: its default).
        progress: Show a tqdm progress bar (only when stderr is a terminal).
        label: How to name the model in messages.

    Returns:
        ``{layer node: accumulator}``; ``acc.hessian()`` is ``(D, D)`` float64 with
        ``D = d + 1`` (bias) or ``d``, ``d`` = N_in (dense), C (channel) or C·KH·KW (patch).

    Raises:
        InputError: no layers, an unknown reading, a non-positive limit or batch size.
        DataError: data that does not fit the model's inputs, NaN/Inf, or no samples.
        ModelError: a layer input that is not in the model.
    """
    if not layers:
        raise InputError(f"{label}: no layers to calibrate")
    if limit is not None and limit < 1:
        raise InputError(f"{label}: calibration limit must be positive, got {limit}")
    if batch_size < 1:
        raise InputError(f"{label}: batch size must be positive, got {batch_size}")
    if not isinstance(reading, str):
        unknown = sorted(set(reading) - {layer.node for layer in layers})
        if unknown:
            raise InputError(f"{label}: readings given for unknown layers {unknown}")
    accumulators = {layer.node: accumulator_for(layer, _reading_of(layer, reading)) for layer in layers}
    specs = data_mod.model_inputs(model)
    graph_inputs = {spec.name for spec in specs}
    reader, total, source = _as_reader(data, model, specs, batch_size, limit)

    fetch = sorted({layer.input for layer in layers if layer.input not in graph_inputs})
    instrumented = instrument(model, fetch, label=label)
    session = runtime.make_session(instrumented, threads=threads, optimize=False)
    by_tensor: dict[str, list[Layer]] = {}
    for layer in layers:
        by_tensor.setdefault(layer.input, []).append(layer)

    from tqdm.auto import tqdm

    show = progress and sys.stderr.isatty()
    batches = _Limited(reader, specs, limit, source)
    with tqdm(total=total, disable=not show, unit="sample", desc=f"calibrating {label}") as bar:
        for feeds in batches:
            fetched = dict(zip(fetch, session.run(fetch, feeds))) if fetch else {}
            for tensor, readers in by_tensor.items():
                values = feeds[tensor] if tensor in graph_inputs else fetched[tensor]
                for layer in readers:
                    batch = values
                    if layer.kind == "dense" and batch.ndim != 2:
                        batch = batch.reshape(-1, batch.shape[-1])
                    accumulators[layer.node].update(batch)
            bar.update(len(next(iter(feeds.values()))))
    if batches.seen == 0:
        raise DataError(f"{source}: no calibration samples for {label}")
    logger.info("%s: calibrated %d layer(s) on %d samples", label, len(layers), batches.seen)
    return accumulators
