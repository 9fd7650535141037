"""The zip pipeline as public stages with typed, serialisable results.

prepare (:func:`~onnx_zip.pipeline.job.prepare`: load, canonicalise, discover, align, bind data)
→ calibrate (:func:`~onnx_zip.pipeline.statistics.gather_statistics`, or a statistics file)
→ plan (:func:`~onnx_zip.pipeline.stages.plan`) → build (:func:`~onnx_zip.pipeline.stages.build`)
→ save (:func:`~onnx_zip.pipeline.stages.save`). The workflows (:mod:`~onnx_zip.pipeline.workflows`,
:mod:`~onnx_zip.pipeline.layerwise`, :mod:`onnx_zip.sweep`, :mod:`onnx_zip.recipes.run`,
:mod:`onnx_zip.demo`) compose them.
"""

from onnx_zip.pipeline.job import (
    PreparedModel,
    ZipJob,
    default_task_names,
    prepare,
    prepare_model,
)
from onnx_zip.pipeline.plans import load_plan, save_plan
from onnx_zip.pipeline.stages import (
    ZipReport,
    ZipResult,
    build,
    initializer_arrays,
    make_report,
    plan,
    save,
)
from onnx_zip.pipeline.statistics import (
    Statistics,
    gather_statistics,
    load_statistics,
    save_statistics,
)
from onnx_zip.pipeline.workflows import (
    calibrate_models,
    configs_from_options,
    statistics_for,
    zip_job,
    zip_models,
)

__all__ = [
    "PreparedModel",
    "Statistics",
    "ZipJob",
    "ZipReport",
    "ZipResult",
    "build",
    "calibrate_models",
    "configs_from_options",
    "default_task_names",
    "gather_statistics",
    "initializer_arrays",
    "load_plan",
    "load_statistics",
    "make_report",
    "plan",
    "prepare",
    "prepare_model",
    "save",
    "save_plan",
    "save_statistics",
    "statistics_for",
    "zip_job",
    "zip_models",
]
