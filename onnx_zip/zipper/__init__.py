"""Zipping, as plain data and one graph edit: readings (:mod:`~onnx_zip.zipper.readings`) and the
planner's settings (:mod:`~onnx_zip.zipper.settings`), pairs and merged weights
(:mod:`~onnx_zip.zipper.pairing`, :mod:`~onnx_zip.zipper.plan`), the multi-task graph
(:mod:`~onnx_zip.zipper.rewrite`), the report and metadata (:mod:`~onnx_zip.zipper.report`), task
views and extraction. The stages and workflows that use them live in :mod:`onnx_zip.pipeline`."""
