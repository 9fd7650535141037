"""``zip_models`` under its earlier import path (the pipeline lives in :mod:`onnx_zip.pipeline`)."""

from __future__ import annotations

from onnx_zip.config import DEFAULT_CALIBRATION_LIMIT
from onnx_zip.pipeline.job import (
    PreparedModel,
    ZipJob,
    default_task_names,
    prepare,
    prepare_model,
)
from onnx_zip.pipeline.stages import ZipReport, ZipResult
from onnx_zip.pipeline.workflows import zip_job, zip_models

__all__ = [
    "DEFAULT_CALIBRATION_LIMIT", "PreparedModel", "ZipJob", "ZipReport", "ZipResult", "default_task_names",
    "prepare", "prepare_model", "zip_job", "zip_models",
]
