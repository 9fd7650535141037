"""The calibrate stage: per-layer statistics, and their files (so a long calibration is reused).

:class:`Statistics` holds what the pairing method asks for (``PairingMethod.statistic``): per task
the Hessian ``(D, D)`` float64 of each calibrated layer, with the reading it was taken in
(``dense``/``patch``/``channel``), or the correlation costs ``(N_0, N_1)`` of each aligned position.

Files are one ``.npz`` (no pickles): the arrays, plus a JSON header (``__meta__``) naming the models
(SHA-256), tasks, layers, readings and calibration settings. :func:`load_statistics` refuses a
file made from other models, other layers or in another reading.
"""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnx_zip.calibrate import calibrate
from onnx_zip.errors import InputError
from onnx_zip.model_io import atomic_write_bytes
from onnx_zip.pipeline.job import ZipJob
from onnx_zip.zipper.correlation import correlation_costs

logger = logging.getLogger(__name__)

FORMAT = "onnx_zip.statistics/1"
_META = "__meta__"


@dataclass
class Statistics:
    """Calibration statistics of some aligned positions.

    Attributes:
        statistic: ``hessian``, ``correlation`` or ``none`` (the pairing method's).
        tasks: Task names, in model order.
        models: Each model's SHA-256.
        positions: The aligned positions calibrated, in order.
        readings: Per position the reading of each task's layer (``dense``/``patch``/``channel``).
        hessians: Per task ``{layer node: (D, D) float64}``.
        pair_costs: Correlation costs ``(N_0, N_1)`` by position.
        settings: The calibration settings used (JSON).
    """

    statistic: str
    tasks: list[str]
    models: list[str]
    positions: list[int] = field(default_factory=list)
    readings: dict[int, list[str]] = field(default_factory=dict)
    hessians: list[dict[str, np.ndarray]] = field(default_factory=list, repr=False)
    pair_costs: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    settings: dict[str, Any] = field(default_factory=dict)

    def header(self) -> dict[str, Any]:
        """The JSON header of the file."""
        return {
            "format": FORMAT, "statistic": self.statistic, "tasks": self.tasks, "models": self.models,
            "positions": self.positions, "readings": {str(p): r for p, r in self.readings.items()},
            "settings": self.settings,
        }


def empty_statistics(job: ZipJob) -> Statistics:
    """Statistics of no layer (for methods that need no data)."""
    return Statistics(job.config.method.statistic, list(job.tasks), [p.sha256 for p in job.prepared],
                      hessians=[{} for _ in job.tasks], settings=job.calibration_config.to_dict())


def _expected_readings(job: ZipJob, positions: Sequence[int]) -> dict[int, list[str]]:
    return {p: [job.settings.reading_for(layer) for layer in job.aligned[p]] for p in positions}


def gather_statistics(
    job: ZipJob,
    positions: Sequence[int],
    models: Sequence[onnx.ModelProto] | None = None,
    *,
    progress: bool = False,
) -> Statistics:
    """The calibrate stage: statistics of the aligned hidden ``positions``.

    Args:
        job: The prepared job (its calibration data and settings).
        positions: Aligned positions to calibrate.
        models: Each task's model to run (default: the canonical models). The layer-wise loop passes
            the task views of the model zipped so far (same node names).
        progress: Show progress bars.

    Returns:
        The :class:`Statistics` (empty when the method needs no data or ``positions`` is empty).
    """
    stats = empty_statistics(job)
    method = job.config.method
    if not positions or job.calibration is None or not method.needs_calibration:
        return stats
    models = list(models) if models is not None else job.canonical
    calib = job.calibration_config
    stats.positions = list(positions)
    stats.readings = _expected_readings(job, positions)
    if method.statistic == "correlation":
        costs = correlation_costs(models, [job.aligned[i] for i in positions], job.calibration, limit=calib.limit,
                                  batch_size=calib.batch_size, threads=calib.threads)
        stats.pair_costs = dict(zip(positions, costs))
        return stats
    for t, (model, data) in enumerate(zip(models, job.calibration)):
        layers = [job.aligned[i][t] for i in positions]
        readings = {job.aligned[p][t].node: stats.readings[p][t] for p in positions if job.aligned[p][t].kind == "conv"}
        accumulators = calibrate(
            model, layers, data, reading=readings, limit=calib.limit, batch_size=calib.batch_size,
            threads=calib.threads, progress=progress, label=f"model {job.tasks[t]}",
        )
        stats.hessians[t] = {node: acc.hessian() for node, acc in accumulators.items()}
    return stats


def save_statistics(stats: Statistics, path: str | os.PathLike[str]) -> None:
    """Write statistics to an ``.npz`` file (atomically; arrays and a JSON header, no pickles)."""
    arrays: dict[str, np.ndarray] = {_META: np.array(json.dumps(stats.header(), sort_keys=True))}
    for t, per_task in enumerate(stats.hessians):
        for node, h in per_task.items():
            arrays[f"hessian/{t}/{node}"] = np.asarray(h, dtype=np.float64)
    for position, costs in stats.pair_costs.items():
        arrays[f"correlation/{position}"] = np.asarray(costs, dtype=np.float64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def _read_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise InputError(f"statistics file {path}: not found") from None
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise InputError(f"statistics file {path}: not a statistics .npz ({exc})",
                         hint="pass a file written by `onnx-zip calibrate`") from None


def _check_header(header: dict[str, Any], job: ZipJob, path: str | os.PathLike[str]) -> list[str]:
    problems = []
    if header.get("format") != FORMAT:
        return [f"statistics file {path}: format {header.get('format')!r}, expected {FORMAT!r}"]
    models = [p.sha256 for p in job.prepared]
    if header.get("models") != models:
        problems.append(f"statistics file {path} was made from other models (SHA-256 {header.get('models')}, "
                        f"these are {models})")
    if header.get("statistic") != job.config.method.statistic:
        problems.append(f"statistics file {path} holds {header.get('statistic')} statistics, "
                        f"{job.config.pairing} pairing needs {job.config.method.statistic}")
    positions = [int(p) for p in header.get("positions", [])]
    expected = _expected_readings(job, [p for p in positions if p < len(job.aligned)])
    found = {int(p): list(r) for p, r in header.get("readings", {}).items()}
    if any(p >= len(job.aligned) for p in positions) or found != expected:
        problems.append(f"statistics file {path} was taken in other readings or layers ({found}; these settings "
                        f"need {expected})")
    return problems


def load_statistics(path: str | os.PathLike[str], job: ZipJob) -> Statistics:
    """Read statistics written by :func:`save_statistics` for this job's models and settings.

    Raises:
        InputError: not such a file, or made from other models, layers, method or readings.
    """
    arrays = _read_npz(path)
    if _META not in arrays:
        raise InputError(f"statistics file {path}: no header", hint="pass a file written by `onnx-zip calibrate`")
    header = json.loads(str(arrays.pop(_META)))
    problems = _check_header(header, job, path)
    if problems:
        raise InputError("; ".join(problems), hint="calibrate again with these models and settings")
    stats = empty_statistics(job)
    stats.positions = [int(p) for p in header["positions"]]
    stats.readings = {int(p): list(r) for p, r in header["readings"].items()}
    stats.settings = dict(header.get("settings", {}))
    for key, value in arrays.items():
        kind, _, rest = key.partition("/")
        if kind == "hessian":
            task, _, node = rest.partition("/")
            stats.hessians[int(task)][node] = value
        elif kind == "correlation":
            stats.pair_costs[int(rest)] = value
    return stats


def covers(stats: Statistics, positions: Sequence[int]) -> list[int]:
    """The positions of ``positions`` that ``stats`` lacks."""
    return [p for p in positions if p not in stats.positions]
