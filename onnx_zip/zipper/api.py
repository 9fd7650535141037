"""``zip_models``: two or more ONNX models into one multi-output model (the stages, in order).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_zip import mtz
from onnx_zip.calibrate import calibrate
from onnx_zip.data import Dataset, bind_arrays, load_dataset, model_inputs
from onnx_zip.errors import InputError
from onnx_zip.graph.align import align_chains, match_depths
from onnx_zip.graph.canonicalize import canonicalize
from onnx_zip.graph.discover import discover_layers, require_supported_chain
from onnx_zip.graph.layers import Layer, LayerChain
from onnx_zip.model_io import atomic_write_bytes, check_writable, convert_opset, default_opset, load_model, save_model, sha256_file, stamp_versions
from onnx_zip.zipper.correlation import correlation_costs
from onnx_zip.zipper.pairing import group_share_count
from onnx_zip.zipper.plan import LayerZip, ZipSettings, layers_to_calibrate, plan_layers
from onnx_zip.zipper.structure import channel_group_positions
from onnx_zip.zipper.report import layer_records, params_record, provenance, write_metadata
from onnx_zip.zipper.rewrite import build_zipped_model, check_task_names, inputs_match

logger = logging.getLogger(__name__)


#: Calibration samples used per model by default. The released VGG code used 6,400 per layer; on
#: the bundled LeNets the zipped accuracy is the same from about 2,000 samples on (785-wide
#: Hessians), while the patch Hessians' cost grows linearly with the samples.
DEFAULT_CALIBRATION_LIMIT = 4096


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


def default_task_names(count: int) -> list[str]:
    """``a``, ``b``, ``c``, … (``t<i>`` beyond 26 models)."""
    return [chr(ord("a") + i) if i < 26 else f"t{i}" for i in range(count)]


def prepare_model(source: str | os.PathLike[str] | onnx.ModelProto, task: str, *, fold_batchnorm: bool = True) -> PreparedModel:
    """Load, canonicalise and discover one model (fast: no data)."""
    if isinstance(source, onnx.ModelProto):
        original, label = source, f"model {task}"
        digest = hashlib.sha256(source.SerializeToString(deterministic=True)).hexdigest()
    else:
        original = load_model(source)
        label, digest = f"model {task} ({source})", sha256_file(source)
    canonical = canonicalize(original, fold_batchnorm=fold_batchnorm, label=label)
    chain = require_supported_chain(discover_layers(canonical, label=label))
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


@dataclass
class ZipJob:
    """A validated zip request: everything checked before any long work starts."""

    tasks: list[str]
    prepared: list[PreparedModel]
    aligned: list[tuple[Layer, ...]]
    settings: ZipSettings
    shared_input: bool
    opset: int
    calibration: list[Dataset] | None
    calibration_limit: int | None
    batch_size: int
    threads: int | None
    progress: bool
    output: str | os.PathLike[str] | None
    report_path: str | os.PathLike[str] | None
    record: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def hidden(self) -> list[tuple[Layer, ...]]:
        return [group for group in self.aligned if not group[0].is_head]

    @property
    def sources(self) -> list[dict[str, str]]:
        return [{"file": p.source, "sha256": p.sha256} for p in self.prepared]


def prepare_job(
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
    calibration_limit: int | None = DEFAULT_CALIBRATION_LIMIT,
    batch_size: int = 256,
    threads: int | None = None,
    fold_batchnorm: bool = True,
    mapping: Mapping[str, str] | None = None,
    report_path: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> ZipJob:
    """Validate a zip request (see :func:`zip_models` for the arguments); reads no data but the models'."""
    start = time.perf_counter()
    if len(models) < 2:
        raise InputError(f"zip takes two or more models, got {len(models)}", hint="pass every model to zip")
    tasks = check_task_names(names if names is not None else default_task_names(len(models)), len(models))
    if pairing not in ("mtz", "l2", "random", "correlation"):
        raise InputError(f"unknown pairing {pairing!r}", hint="use mtz, l2, random or correlation")
    if pairing == "correlation" and len(models) > 2:
        raise InputError(
            f"correlation pairing zips two models, got {len(models)}", hint="use mtz, l2 or random pairing for more"
        )
    if match not in ("greedy", "optimal"):
        raise InputError(f"unknown matching {match!r}", hint="use greedy or optimal")
    if conv_hessian not in ("patch", "channel", "auto"):
        raise InputError(f"unknown conv Hessian reading {conv_hessian!r}", hint="use patch, channel or auto")
    if not np.isfinite(damping) or damping < 0:
        raise InputError(f"damping must be a finite number ≥ 0, got {damping!r}")
    if calibration_limit is not None and calibration_limit < 1:
        raise InputError(f"calibration limit must be positive, got {calibration_limit}")
    policy = _policy(share, share_per_layer, max_cost)
    for path in (output, report_path):
        if path is not None:
            check_writable(path)
    prepared = [prepare_model(m, t, fold_batchnorm=fold_batchnorm) for m, t in zip(models, tasks)]
    opset = _common_opset(prepared)
    if mapping is None:
        for p, chain in zip(prepared, match_depths([p.chain for p in prepared])):
            p.chain = chain
    alignment = align_chains([p.chain for p in prepared], mapping=mapping)
    aligned: list[tuple[Layer, ...]] = [
        tuple(p.chain.by_node(node) for p, node in zip(prepared, row.nodes)) for row in alignment.layers
    ]
    settings = ZipSettings(
        policy=policy, match=match, conv_hessian=conv_hessian, damping=float(damping), pairing=pairing, seed=int(seed)
    )
    channel_group_positions([p.chain for p in prepared], aligned)  # the residual structure must agree
    hidden = [g for g in aligned if not g[0].is_head]
    for i, group in enumerate(hidden):
        p = settings.policy_for(i, len(hidden))
        if not isinstance(p, mtz.ShareThreshold):
            group_share_count(p, group, layer=f"layer{i + 1} ({group[0].node})")
    shared_input = not separate_inputs
    if shared_input and not inputs_match([p.canonical for p in prepared]):
        raise InputError(
            "the models' inputs differ in number, dtype or shape",
            hint="pass --separate-inputs (separate_inputs=True) to give each task its own input",
        )
    datasets: list[Dataset] | None = None
    if pairing in ("mtz", "correlation"):
        if calibration is None or len(calibration) != len(models):
            count = 0 if calibration is None else len(calibration)
            raise InputError(
                f"{pairing} pairing needs one calibration data set per model ({len(models)}), got {count}",
                hint="pass one --calib per model, in model order",
            )
        datasets = [_bind_calibration(c, p) for c, p in zip(calibration, prepared)]
    record = {
        "share": share, "share_per_layer": list(share_per_layer) if share_per_layer is not None else None,
        "max_cost": max_cost, "match": match, "conv_hessian": conv_hessian, "damping": float(damping),
        "pairing": pairing, "separate_inputs": bool(separate_inputs), "seed": int(seed),
        "calibration_limit": calibration_limit, "fold_batchnorm": fold_batchnorm,
    }
    job = ZipJob(
        tasks=tasks, prepared=prepared, aligned=aligned, settings=settings, shared_input=shared_input, opset=opset,
        calibration=datasets, calibration_limit=calibration_limit, batch_size=batch_size, threads=threads,
        progress=progress, output=output, report_path=report_path, record=record,
    )
    job.timings["validate"] = time.perf_counter() - start
    return job


def layer_hessians(
    job: ZipJob, models: Sequence[onnx.ModelProto], positions: Sequence[int]
) -> list[dict[str, np.ndarray]]:
    """Hessians of the aligned hidden layers at ``positions`` of each task's (current) model."""
    hessians: list[dict[str, np.ndarray]] = [{} for _ in job.prepared]
    if job.calibration is None or job.settings.pairing != "mtz" or not positions:
        return hessians
    for t, (model, data) in enumerate(zip(models, job.calibration)):
        layers = [job.aligned[i][t] for i in positions]
        readings = {layer.node: job.settings.reading_for(layer) for layer in layers if layer.kind == "conv"}
        accumulators = calibrate(
            model, layers, data, reading=readings, limit=job.calibration_limit, batch_size=job.batch_size,
            threads=job.threads, progress=job.progress, label=f"model {job.tasks[t]}",
        )
        hessians[t] = {node: acc.hessian() for node, acc in accumulators.items()}
    return hessians


def build_model(job: ZipJob, models: Sequence[onnx.ModelProto], zips: Sequence[LayerZip]) -> onnx.ModelProto:
    """The zipped graph of ``zips`` with doc strings, provenance metadata and stamped versions."""
    chains = [p.chain for p in job.prepared]
    model, docs = build_zipped_model(job.tasks, models, chains, zips, shared_input=job.shared_input, opset=job.opset)
    for node in model.graph.node:
        if node.name in docs:
            node.doc_string = docs[node.name]
    meta = provenance(job.tasks, job.sources, job.record, zips, job.prepared[0].chain)
    write_metadata(model, meta)
    model.producer_name = "onnx-zip"
    model.producer_version = meta["version"]
    model.doc_string = "Multi-Task Zipping of " + ", ".join(
        f"{t} ({src['file']})" for t, src in zip(job.tasks, job.sources)
    )
    return stamp_versions(model, label="zipped model")


def finish(job: ZipJob, model: onnx.ModelProto, zips: Sequence[LayerZip], extra: Mapping[str, Any] | None = None) -> ZipResult:
    """Save the model (atomically), write the report, return both."""
    start = time.perf_counter()
    if job.output is not None:
        model = save_model(model, job.output, label=f"zipped model {job.output}")
    job.timings["save"] = time.perf_counter() - start
    report = {
        "tasks": job.tasks,
        "sources": dict(zip(job.tasks, job.sources)),
        "params": params_record(job.tasks, [p.original for p in job.prepared], model),
        "layers": layer_records(job.tasks, zips),
        "settings": job.record,
        **(extra or {}),
        "timings": job.timings,
    }
    if job.report_path is not None:
        atomic_write_bytes(job.report_path, (json.dumps(report, indent=2) + "\n").encode())
    return ZipResult(model=model, report=report, layers=list(zips))


def zip_models(
    models: Sequence[str | os.PathLike[str] | onnx.ModelProto],
    calibration: Sequence[Dataset | str | os.PathLike[str] | Mapping[str, np.ndarray]] | None,
    output: str | os.PathLike[str] | None = None,
    **options: Any,
) -> ZipResult:
    """Zip two or more models into one multi-output model by MTZ, with Hessians from one calibration pass.

    With more than two models, the first two are paired and merged, then each further model's neurons
    are matched against the shared neurons and merged in (mtz-method §7), with the joint Hessian
    ``Σ_t H_t`` of the models already added; a shared neuron is shared by every task.

    Args:
        models: Two or more ``.onnx`` paths (or ModelProtos) with the same input domain.
        calibration: One calibration data set per model (``.npz`` path, Dataset or arrays by input name);
            may be ``None`` only for ``pairing="l2"``/``"random"``.
        output: Where to write the zipped model (atomically); ``None`` to only return it.
        **options: Keyword options of :func:`prepare_job`:
            ``names`` (task names, default ``a``, ``b``, …; outputs become ``<task>/<original output name>``),
            ``share`` (fraction of each hidden layer's neurons to share, default 0.5),
            ``share_per_layer`` (per hidden layer a fraction (float) or a count (int)),
            ``max_cost`` (share every pair whose merge cost is at most this),
            ``match`` (``greedy``, the released code's rule, or ``optimal``),
            ``conv_hessian`` (``patch``, the paper's; ``channel``, the released code's; or ``auto``),
            ``damping`` (relative Hessian damping λ), ``pairing`` (``mtz`` or the baselines ``l2`` and
            ``random``, which average), ``separate_inputs``, ``seed`` (same inputs and seed give the same
            bytes), ``calibration_limit``, ``batch_size``, ``threads``, ``fold_batchnorm``, ``mapping``
            (explicit alignment ``{node of A: node of B}``), ``report_path`` and ``progress``.

    Returns:
        A :class:`ZipResult`. The report holds ``tasks``, ``params`` ({task: original count,
        ``zipped``, ``shared``}), ``layers`` (per hidden layer: ``a``, ``b``, ``neurons``, ``shared``,
        ``pairs``, ``costs``), ``settings`` and ``timings`` (seconds per stage).
    """
    job = prepare_job(models, calibration, output, **options)
    canonical = [p.canonical for p in job.prepared]
    start = time.perf_counter()
    # Layers that share nothing need no statistics (a VGG fc6 Hessian alone is 25089² floats); nor
    # does a layer after one that shares nothing (it has no shared inputs, so it shares nothing).
    positions = layers_to_calibrate([p.chain for p in job.prepared], job.aligned, job.settings)
    hessians = layer_hessians(job, canonical, positions)
    pair_costs = None
    if job.settings.pairing == "correlation":
        costs = correlation_costs(
            canonical, [job.aligned[i] for i in positions], job.calibration, limit=job.calibration_limit,
            batch_size=job.batch_size, threads=job.threads,
        )
        pair_costs = dict(zip(positions, costs))
    job.timings["calibrate"] = time.perf_counter() - start
    start = time.perf_counter()
    tensors = [_initializers(m) for m in canonical]
    zips = plan_layers([p.chain for p in job.prepared], job.aligned, tensors, hessians, job.settings, pair_costs)
    job.timings["plan"] = time.perf_counter() - start
    start = time.perf_counter()
    model = build_model(job, canonical, zips)
    job.timings["rewrite"] = time.perf_counter() - start
    calibrated = [job.aligned[i][0].node for i in positions] if job.calibration is not None else []
    return finish(job, model, zips, extra={"calibrated_layers": calibrated})
