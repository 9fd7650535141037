"""The plan, build and save stages, and the typed zip report.

* :func:`plan`: pairs and merged weight blocks per aligned layer (:class:`~onnx_zip.zipper.plan.LayerZip`)
  from a job and its statistics;
* :func:`build`: the multi-task graph (:func:`onnx_zip.zipper.rewrite.build_zipped_model`) with doc
  strings, provenance metadata and stamped versions;
* :func:`save`: the model (atomically), the :class:`ZipReport` (and its JSON file).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_zip.errors import InputError
from onnx_zip.model_io import atomic_write_bytes, save_model, stamp_versions
from onnx_zip.pipeline.job import ZipJob
from onnx_zip.pipeline.statistics import Statistics
from onnx_zip.zipper.plan import LayerZip, plan_layers
from onnx_zip.zipper.report import (
    layer_records,
    params_record,
    provenance,
    write_metadata,
)
from onnx_zip.zipper.rewrite import build_zipped_model
from onnx_zip.zipper.settings import PlanSettings


def initializer_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every initializer of a model as a numpy array, by name."""
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def plan(
    job: ZipJob,
    stats: Statistics,
    *,
    models: Sequence[onnx.ModelProto] | None = None,
    settings: PlanSettings | None = None,
    fixed: Mapping[int, np.ndarray] | None = None,
    tensors: Sequence[Mapping[str, np.ndarray]] | None = None,
) -> list[LayerZip]:
    """The plan stage: one :class:`LayerZip` per aligned position.

    Args:
        job: The prepared job.
        stats: Statistics of (at least) the positions that share.
        models: Each task's model whose weights are zipped (default: the canonical models).
        settings: Planner settings (default: the job's).
        fixed: Pairs ``(k, T)`` already chosen by position, merged by averaging (the layer-wise loop).
        tensors: The models' initializers (:func:`initializer_arrays`), when already read.
    """
    if job.config.fit_method.per_layer:
        raise InputError(f"the one-pass plan stage fits with --method paper, not {job.config.method}",
                         hint="zip with onnx_zip.pipeline.compensated.zip_compensated (or zip_job)")
    if tensors is None:
        tensors = [initializer_arrays(m) for m in (models if models is not None else job.canonical)]
    return plan_layers(
        job.chains, job.aligned, tensors, stats.hessians, settings or job.settings, stats.pair_costs, fixed
    )


def build(
    job: ZipJob,
    zips: Sequence[LayerZip],
    *,
    models: Sequence[onnx.ModelProto] | None = None,
    record: Mapping[str, Any] | None = None,
) -> onnx.ModelProto:
    """The build stage: the zipped graph of ``zips`` with doc strings, provenance metadata (the job's
    settings, or ``record``) and stamped versions."""
    models = list(models) if models is not None else job.canonical
    model, docs = build_zipped_model(
        job.tasks, models, job.chains, zips, shared_input=job.shared_input, opset=job.opset
    )
    for node in model.graph.node:
        if node.name in docs:
            node.doc_string = docs[node.name]
    meta = provenance(
        job.tasks, job.sources, dict(record) if record is not None else job.record(), zips, job.prepared[0].chain
    )
    write_metadata(model, meta)
    model.producer_name = "onnx-zip"
    model.producer_version = meta["version"]
    model.doc_string = "Multi-Task Zipping of " + ", ".join(
        f"{t} ({src['file']})" for t, src in zip(job.tasks, job.sources)
    )
    return stamp_versions(model, label="zipped model")


@dataclass
class ZipReport:
    """What a zip did.

    Attributes:
        tasks: Task names.
        sources: ``{task: {"file", "sha256"}}``.
        params: ``{task: original count, "zipped": count, "shared": count stored once}``.
        layers: Per zipped hidden layer: nodes, neurons, shared count, pairs, costs (``layer_records``).
        settings: The settings (``{"zip": …, "calibration": …}`` and workflow entries).
        calibrated_layers: Task 0's nodes of the calibrated layers.
        timings: Seconds per stage.
        extra: Workflow sections (``layerwise``, ``evaluation``, ``finetune``, ``recipe``, …).
    """

    tasks: list[str]
    sources: dict[str, dict[str, str]]
    params: dict[str, int]
    layers: list[dict[str, Any]]
    settings: dict[str, Any]
    calibrated_layers: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report."""
        return {
            "tasks": self.tasks,
            "sources": self.sources,
            "params": self.params,
            "layers": self.layers,
            "settings": self.settings,
            "calibrated_layers": self.calibrated_layers,
            **self.extra,
            "timings": self.timings,
        }

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the JSON report atomically."""
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())


@dataclass
class ZipResult:
    """What a zip produced.

    Attributes:
        model: The zipped model (as written, when an output path was given).
        zip_report: The typed :class:`ZipReport`.
        layers: The planned layers (pairs, costs and weight blocks).
    """

    model: onnx.ModelProto
    zip_report: ZipReport
    layers: list[LayerZip] = field(repr=False)

    @property
    def report(self) -> dict[str, Any]:
        """The report as JSON (:meth:`ZipReport.to_dict`), as earlier callers read it."""
        return self.zip_report.to_dict()


def make_report(
    job: ZipJob, model: onnx.ModelProto, zips: Sequence[LayerZip], *, settings: Mapping[str, Any] | None = None
) -> ZipReport:
    """The report of a zipped model."""
    return ZipReport(
        tasks=list(job.tasks),
        sources=dict(zip(job.tasks, job.sources)),
        params=params_record(job.tasks, [p.original for p in job.prepared], model),
        layers=layer_records(job.tasks, zips),
        settings=dict(settings) if settings is not None else job.record(),
    )


def save(
    model: onnx.ModelProto,
    report: ZipReport,
    zips: Sequence[LayerZip],
    *,
    output: str | os.PathLike[str] | None = None,
    report_path: str | os.PathLike[str] | None = None,
) -> ZipResult:
    """The save stage: write the model (atomically) and the report, return both."""
    if output is not None:
        model = save_model(model, output, label=f"zipped model {output}")
    if report_path is not None:
        report.write(report_path)
    return ZipResult(model=model, zip_report=report, layers=list(zips))
