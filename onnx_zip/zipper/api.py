"""``zip_models``: two ONNX models into one multi-output model (the stages, in order).

1. validate everything that can be checked before long work: names, output path, models
   (load, canonicalise, discover, plain chain, align), settings, calibration data;
2. calibrate: one pass of each original model over its calibration data, streaming Hessians;
3. plan: bottom-up pairs and merged weight blocks (:mod:`onnx_zip.zipper.plan`);
4. rewrite: one multi-task graph (:mod:`onnx_zip.zipper.rewrite`), provenance metadata;
5. save atomically, and the report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_zip import mtz
from onnx_zip.calibrate import calibrate
from onnx_zip.data import Dataset, bind_arrays, load_dataset, model_inputs
from onnx_zip.errors import InputError
from onnx_zip.graph.align import align_chains
from onnx_zip.graph.canonicalize import canonicalize
from onnx_zip.graph.discover import discover_layers, require_plain_chain
from onnx_zip.graph.layers import Layer, LayerChain
from onnx_zip.model_io import atomic_write_bytes, check_writable, convert_opset, default_opset, load_model, save_model, sha256_file, stamp_versions
from onnx_zip.zipper.plan import LayerZip, ZipSettings, plan_layers
from onnx_zip.zipper.report import layer_records, params_record, provenance, write_metadata
from onnx_zip.zipper.rewrite import build_zipped_model, check_task_names, inputs_match

logger = logging.getLogger(__name__)


@dataclass
class ZipResult:
    """What :func:`zip_models` produced.

    Attributes:
        model: The zipped model (as written, when an output path was given).
        report: The report (JSON-serialisable), see :func:`zip_models`.
        layers: The planned layers (pairs, costs and weight blocks).
    """

    model: onnx.ModelProto
    report: dict[str, Any]
    layers: list[LayerZip] = field(repr=False)


@dataclass
class PreparedModel:
    """One input model after loading, canonicalisation and discovery."""

    task: str
    source: str
    sha256: str
    original: onnx.ModelProto
    canonical: onnx.ModelProto
    chain: LayerChain


def _policy(share: float | None, share_per_layer: Sequence[Any] | None, max_cost: float | None) -> mtz.SharePolicy | tuple[mtz.SharePolicy, ...]:
    given = [x is not None for x in (share, share_per_layer, max_cost)]
    if sum(given) > 1:
        raise InputError("give only one of share, share_per_layer and max_cost")
    if max_cost is not None:
        if not np.isfinite(max_cost) or max_cost < 0:
            raise InputError(f"max_cost must be a finite number ≥ 0, got {max_cost!r}")
        return mtz.ShareThreshold(float(max_cost))
    if share_per_layer is not None:
        policies = []
        for i, entry in enumerate(share_per_layer):
            if isinstance(entry, bool) or not isinstance(entry, (int, float)):
                raise InputError(f"share_per_layer entry {i} is {entry!r}", hint="use a fraction in [0, 1] (float) or a count (int)")
            policies.append(mtz.ShareCount(entry) if isinstance(entry, int) else mtz.ShareFraction(float(entry)))
        return tuple(policies)
    share = 0.5 if share is None else share
    if not 0.0 <= float(share) <= 1.0:
        raise InputError(f"share must be a fraction within [0, 1], got {share!r}")
    return mtz.ShareFraction(float(share))


def prepare_model(source: str | os.PathLike[str] | onnx.ModelProto, task: str, *, fold_batchnorm: bool = True) -> PreparedModel:
    """Load, canonicalise and discover one model (fast: no data)."""
    if isinstance(source, onnx.ModelProto):
        original, label = source, f"model {task}"
        digest = hashlib.sha256(source.SerializeToString(deterministic=True)).hexdigest()
    else:
        original = load_model(source)
        label, digest = f"model {task} ({source})", sha256_file(source)
    canonical = canonicalize(original, fold_batchnorm=fold_batchnorm, label=label)
    chain = require_plain_chain(discover_layers(canonical, label=label))
    name = Path(source).name if not isinstance(source, onnx.ModelProto) else "<in memory>"
    return PreparedModel(task, name, digest, original, canonical, chain)


def _common_opset(prepared: Sequence[PreparedModel]) -> int:
    opset = max(default_opset(p.canonical) for p in prepared)
    for p in prepared:
        if default_opset(p.canonical) != opset:
            p.canonical = convert_opset(p.canonical, opset, label=f"model {p.task}")
    return opset


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _bind_calibration(item: Dataset | str | os.PathLike[str] | Mapping[str, np.ndarray], prepared: PreparedModel) -> Dataset:
    if isinstance(item, Dataset):
        return bind_arrays({**item.inputs}, model_inputs(prepared.canonical), source=item.source)
    if isinstance(item, Mapping):
        return bind_arrays(item, model_inputs(prepared.canonical), source=f"calibration arrays of {prepared.task}")
    return load_dataset(item, prepared.canonical)


def zip_models(
    models: Sequence[str | os.PathLike[str] | onnx.ModelProto],
    calibration: Sequence[Dataset | str | os.PathLike[str] | Mapping[str, np.ndarray]] | None,
    output: str | os.PathLike[str] | None = None,
    *,
    names: Sequence[str] | None = None,
    share: float | None = None,
    share_per_layer: Sequence[float | int] | None = None,
    max_cost: float | None = None,
    match: str = "greedy",
    conv_hessian: str = "auto",
    damping: float = 0.0,
    pairing: str = "mtz",
    separate_inputs: bool = False,
    seed: int = 0,
    calibration_limit: int | None = None,
    batch_size: int = 256,
    threads: int | None = None,
    fold_batchnorm: bool = True,
    mapping: Mapping[str, str] | None = None,
    report_path: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> ZipResult:
    """Zip two models into one multi-output model by MTZ.

    Args:
        models: Two ``.onnx`` paths (or ModelProtos) with the same input domain.
        calibration: One calibration data set per model (``.npz`` path, Dataset or arrays by input name);
            may be ``None`` only for ``pairing="l2"``/``"random"``.
        output: Where to write the zipped model (atomically); ``None`` to only return it.
        names: Task names (default ``a``, ``b``); outputs become ``<task>/<original output name>``.
        share: Fraction of each hidden layer's neurons to share (default 0.5).
        share_per_layer: Per hidden layer, a fraction (float) or a count (int).
        max_cost: Share every pair whose merge cost is at most this (accuracy budget).
        match: ``greedy`` (released code) or ``optimal``.
        conv_hessian: ``patch`` (paper), ``channel`` (released code) or ``auto``.
        damping: Relative Hessian damping λ.
        pairing: ``mtz``, or the baselines ``l2`` (weight distance, averaging) and ``random``.
        separate_inputs: Give each task its own graph input.
        seed: Seed (random pairing); the output is byte-identical for the same inputs and seed.
        calibration_limit: Use at most this many calibration samples per model.
        batch_size: Calibration batch size.
        threads: onnxruntime threads.
        fold_batchnorm: Fold BatchNormalization into the preceding layer first.
        mapping: Explicit layer alignment ``{node of A: node of B}``.
        report_path: Also write the report as JSON here.
        progress: Show progress bars.

    Returns:
        A :class:`ZipResult`. The report holds ``tasks``, ``params`` ({task: original count,
        ``zipped``, ``shared``}), ``layers`` (per hidden layer: ``a``, ``b``, ``neurons``, ``shared``,
        ``pairs``, ``costs``), ``settings`` and ``timings`` (seconds per stage).
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if len(models) != 2:
        raise InputError(f"zip takes two models, got {len(models)}", hint="zip more models one at a time")
    tasks = check_task_names(names if names is not None else ["a", "b"], len(models))
    if pairing not in ("mtz", "l2", "random"):
        raise InputError(f"unknown pairing {pairing!r}", hint="use mtz, l2 or random")
    if match not in ("greedy", "optimal"):
        raise InputError(f"unknown matching {match!r}", hint="use greedy or optimal")
    if conv_hessian not in ("patch", "channel", "auto"):
        raise InputError(f"unknown conv Hessian reading {conv_hessian!r}", hint="use patch, channel or auto")
    if not np.isfinite(damping) or damping < 0:
        raise InputError(f"damping must be a finite number ≥ 0, got {damping!r}")
    policy = _policy(share, share_per_layer, max_cost)
    for path in (output, report_path):
        if path is not None:
            check_writable(path)
    prepared = [prepare_model(m, t, fold_batchnorm=fold_batchnorm) for m, t in zip(models, tasks)]
    opset = _common_opset(prepared)
    alignment = align_chains([p.chain for p in prepared], mapping=mapping)
    aligned: list[tuple[Layer, ...]] = [
        tuple(p.chain.by_node(node) for p, node in zip(prepared, row.nodes)) for row in alignment.layers
    ]
    settings = ZipSettings(policy=policy, match=match, conv_hessian=conv_hessian, damping=float(damping), pairing=pairing, seed=int(seed))
    hidden = [g for g in aligned if not g[0].is_head]
    for i in range(len(hidden)):
        p = settings.policy_for(i, len(hidden))
        if not isinstance(p, mtz.ShareThreshold):
            mtz.share_count(p, hidden[i][0].neurons, hidden[i][1].neurons, layer=f"layer{i + 1} ({hidden[i][0].node})")
    shared_input = not separate_inputs
    if shared_input and not inputs_match([p.canonical for p in prepared]):
        raise InputError(
            "the models' inputs differ in number, dtype or shape",
            hint="pass --separate-inputs (separate_inputs=True) to give each task its own input",
        )
    datasets: list[Dataset] | None = None
    if pairing == "mtz":
        if calibration is None or len(calibration) != len(models):
            raise InputError(
                f"MTZ needs one calibration data set per model ({len(models)}), got {0 if calibration is None else len(calibration)}",
                hint="pass --calib A.npz --calib B.npz",
            )
        datasets = [_bind_calibration(c, p) for c, p in zip(calibration, prepared)]
    timings["validate"] = time.perf_counter() - start

    start = time.perf_counter()
    hessians: list[dict[str, np.ndarray]] = [{} for _ in prepared]
    if datasets is not None:
        for t, (p, data) in enumerate(zip(prepared, datasets)):
            layers = [g[t] for g in hidden]
            readings = {layer.node: settings.reading_for(layer) for layer in layers if layer.kind == "conv"}
            accumulators = calibrate(
                p.canonical, layers, data, reading=readings, limit=calibration_limit, batch_size=batch_size,
                threads=threads, progress=progress,
            )
            hessians[t] = {node: acc.hessian() for node, acc in accumulators.items()}
    timings["calibrate"] = time.perf_counter() - start

    start = time.perf_counter()
    tensors = [_initializers(p.canonical) for p in prepared]
    zips = plan_layers([p.chain for p in prepared], aligned, tensors, hessians, settings)
    timings["plan"] = time.perf_counter() - start

    start = time.perf_counter()
    model, docs = build_zipped_model(tasks, [p.canonical for p in prepared], [p.chain for p in prepared], zips, shared_input=shared_input, opset=opset)
    for node in model.graph.node:
        if node.name in docs:
            node.doc_string = docs[node.name]
    settings_record = {
        "share": share, "share_per_layer": list(share_per_layer) if share_per_layer is not None else None,
        "max_cost": max_cost, "match": match, "conv_hessian": conv_hessian, "damping": float(damping),
        "pairing": pairing, "separate_inputs": bool(separate_inputs), "seed": int(seed),
        "calibration_limit": calibration_limit, "fold_batchnorm": fold_batchnorm,
    }
    sources = [{"file": p.source, "sha256": p.sha256} for p in prepared]
    meta = provenance(tasks, sources, settings_record, zips)
    write_metadata(model, meta)
    model.producer_name = "onnx-zip"
    model.producer_version = meta["version"]
    model.doc_string = "Multi-Task Zipping of " + ", ".join(f"{t} ({src['file']})" for t, src in zip(tasks, sources))
    model = stamp_versions(model, label="zipped model")
    timings["rewrite"] = time.perf_counter() - start

    start = time.perf_counter()
    if output is not None:
        model = save_model(model, output, label=f"zipped model {output}")
    timings["save"] = time.perf_counter() - start
    report = {
        "tasks": tasks,
        "sources": {t: s for t, s in zip(tasks, sources)},
        "params": params_record(tasks, [p.original for p in prepared], model),
        "layers": layer_records(tasks, zips),
        "settings": settings_record,
        "timings": timings,
    }
    if report_path is not None:
        atomic_write_bytes(report_path, (json.dumps(report, indent=2) + "\n").encode())
    return ZipResult(model=model, report=report, layers=zips)
