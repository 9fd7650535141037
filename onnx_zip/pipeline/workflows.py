"""The one-pass zip as a workflow over the stages: prepare → calibrate → plan → build → save.

:func:`zip_models` takes the settings as configuration objects (or, for callers of the earlier
API, as keyword options named like the recipe keys: ``share``, ``pairing``, ``calibration_limit``,
…, see :func:`configs_from_options`). :func:`zip_job` runs the stages on an already prepared job
(a recipe prepares once); :func:`calibrate_models` is ``onnx-zip calibrate``: the statistics only,
written to a file that ``zip --stats FILE`` (``stats=``) reads back.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from onnx_zip.config import CalibrationConfig, ZipConfig, raise_problems
from onnx_zip.errors import InputError
from onnx_zip.model_io import check_writable
from onnx_zip.pipeline.job import CalibrationSource, ModelSource, ZipJob, prepare
from onnx_zip.pipeline.stages import ZipResult, build, make_report, plan, save
from onnx_zip.pipeline.statistics import (
    Statistics,
    covers,
    gather_statistics,
    load_statistics,
    save_statistics,
)
from onnx_zip.zipper.plan import layers_to_calibrate

logger = logging.getLogger(__name__)

#: Earlier keyword names of calibration settings → :class:`CalibrationConfig` fields.
_CALIBRATION_KEYS = {"calibration_limit": "limit", "batch_size": "batch_size", "conv_hessian": "conv_hessian",
                     "threads": "threads", "calibration_batch": "batch_size"}


def configs_from_options(options: Mapping[str, Any]) -> tuple[ZipConfig, CalibrationConfig]:
    """Zip and calibration settings from keyword options (recipe-style names), every problem at once.

    ``calibration_limit``, ``batch_size``/``calibration_batch``, ``conv_hessian`` and ``threads`` go
    to the calibration settings, everything else to the zip settings.
    """
    zip_part = {k: v for k, v in options.items() if k not in _CALIBRATION_KEYS}
    calib_part = {_CALIBRATION_KEYS[k]: v for k, v in options.items() if k in _CALIBRATION_KEYS}
    zip_config, zip_problems = ZipConfig.collect(zip_part)
    calib_config, calib_problems = CalibrationConfig.collect(calib_part)
    raise_problems(zip_problems + calib_problems)
    assert zip_config is not None and calib_config is not None
    return zip_config, calib_config


def statistics_for(
    job: ZipJob, positions: Sequence[int], *, stats: Statistics | str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> Statistics:
    """The statistics of ``positions``: read from ``stats`` (a file or object) or gathered now.

    Raises:
        InputError: a statistics file that does not fit the job or lacks some of the positions.
    """
    if stats is None:
        return gather_statistics(job, positions, progress=progress)
    loaded = load_statistics(stats, job) if not isinstance(stats, Statistics) else stats
    missing = covers(loaded, positions) if job.config.method.needs_calibration else []
    if missing:
        nodes = [job.aligned[p][0].node for p in missing]
        raise InputError(f"the statistics lack layers {nodes}", hint="calibrate with these sharing settings")
    return loaded


def zip_job(
    job: ZipJob,
    *,
    output: str | os.PathLike[str] | None = None,
    report_path: str | os.PathLike[str] | None = None,
    stats: Statistics | str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> ZipResult:
    """Calibrate, plan, build and save a prepared job (the one-pass zip).

    Layers that share nothing need no statistics (a VGG fc6 Hessian alone is 25089² floats); nor
    does a layer after one that shares nothing (it has no shared inputs, so it shares nothing).
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    positions = layers_to_calibrate(job.chains, job.aligned, job.settings)
    statistics = statistics_for(job, positions, stats=stats, progress=progress)
    timings["calibrate"] = time.perf_counter() - start
    start = time.perf_counter()
    zips = plan(job, statistics)
    timings["plan"] = time.perf_counter() - start
    start = time.perf_counter()
    model = build(job, zips)
    timings["rewrite"] = time.perf_counter() - start
    report = make_report(job, model, zips)
    report.calibrated_layers = [job.aligned[i][0].node for i in statistics.positions if i in positions]
    start = time.perf_counter()
    result = save(model, report, zips, output=output)
    timings["save"] = time.perf_counter() - start
    report.timings.update(timings)
    if report_path is not None:
        report.write(report_path)
    return result


def zip_models(
    models: Sequence[ModelSource],
    calibration: Sequence[CalibrationSource] | None,
    output: str | os.PathLike[str] | None = None,
    *,
    names: Sequence[str] | None = None,
    config: ZipConfig | None = None,
    calibration_config: CalibrationConfig | None = None,
    report_path: str | os.PathLike[str] | None = None,
    stats: Statistics | str | os.PathLike[str] | None = None,
    progress: bool = False,
    **options: Any,
) -> ZipResult:
    """Zip two or more models into one multi-output model by MTZ, with statistics from one calibration pass.

    With more than two models, the first two are paired and merged, then each further model's neurons
    are matched against the shared neurons and merged in, with the joint Hessian ``Σ_t H_t`` of the
    models already added (mtz-method §7); a shared neuron is shared by every task.

    Args:
        models: Two or more ``.onnx`` paths (or ModelProtos) with the same input domain.
        calibration: One calibration data set per model (``.npz`` path, Dataset or arrays by input name);
            may be ``None`` for the methods that need no data (``l2``, ``random``).
        output: Where to write the zipped model (atomically); ``None`` to only return it.
        names: Task names (default ``a``, ``b``, …); outputs become ``<task>/<original output name>``.
        config: Zip settings (:class:`~onnx_zip.config.ZipConfig`).
        calibration_config: Calibration settings (:class:`~onnx_zip.config.CalibrationConfig`).
        report_path: Where to write the JSON report.
        stats: Statistics (or a file from :func:`calibrate_models`) to use instead of calibrating.
        progress: Show progress bars.
        **options: Instead of ``config``/``calibration_config``: the settings by name
            (:func:`configs_from_options`).

    Returns:
        A :class:`~onnx_zip.pipeline.stages.ZipResult` whose report has ``tasks``, ``params``
        ({task: original count, ``zipped``, ``shared``}), ``layers``, ``settings``,
        ``calibrated_layers`` and ``timings`` (seconds per stage).
    """
    start = time.perf_counter()
    if options:
        if config is not None or calibration_config is not None:
            raise InputError("give the settings either as configurations or as keyword options, not both")
        config, calibration_config = configs_from_options(options)
    for path in (output, report_path):
        if path is not None:
            check_writable(path)
    job = prepare(models, calibration, names=names, config=config, calibration_config=calibration_config)
    validate = time.perf_counter() - start
    result = zip_job(job, output=output, report_path=None, stats=stats, progress=progress)
    result.report.timings = {"validate": validate, **result.report.timings}
    if report_path is not None:
        result.report.write(report_path)
    return result


def calibrate_models(
    models: Sequence[ModelSource],
    calibration: Sequence[CalibrationSource],
    output: str | os.PathLike[str],
    *,
    names: Sequence[str] | None = None,
    config: ZipConfig | None = None,
    calibration_config: CalibrationConfig | None = None,
    every_layer: bool = True,
    progress: bool = False,
) -> Statistics:
    """Gather the statistics of a zip once and write them (``onnx-zip calibrate``).

    Args:
        every_layer: Calibrate every hidden layer (the file then serves any sharing level);
            ``False``: only the layers these sharing settings need.

    Returns:
        The statistics written to ``output``; pass the file to :func:`zip_models` as ``stats``.
    """
    check_writable(output)
    job = prepare(models, calibration, names=names, config=config, calibration_config=calibration_config)
    if every_layer:
        positions = [p for p, g in enumerate(job.aligned) if not g[0].is_head]
    else:
        positions = layers_to_calibrate(job.chains, job.aligned, job.settings)
    stats = gather_statistics(job, positions, progress=progress)
    save_statistics(stats, output)
    return stats
