"""Deprecated import path of :func:`onnx_zip.pipeline.layerwise.zip_layerwise` (kept until the CLI
imports it from :mod:`onnx_zip.pipeline.layerwise`; then delete this module: the layer-wise loop
fine-tunes, and :mod:`onnx_zip.zipper` must not depend on :mod:`onnx_zip.finetune`)."""

from onnx_zip.pipeline.layerwise import zip_layerwise

__all__ = ["zip_layerwise"]
