"""Deployment of a zipped model: one model per task over one shared weights file, and switching.

* :mod:`~onnx_zip.deploy.weights` writes tensors into an external-data file, each at an offset
  aligned for memory mapping.
* :mod:`~onnx_zip.deploy.export` (``onnx-zip export-tasks``) writes one ONNX model per task, all
  reading the shared initializers from one ``shared.weights`` file, plus a ``manifest.json``.
* :mod:`~onnx_zip.deploy.manifest` reads and verifies that folder.
* :mod:`~onnx_zip.deploy.serving` opens it: :class:`~onnx_zip.deploy.serving.TaskSwitcher`.
* :mod:`~onnx_zip.deploy.bench` measures switching latency and resident memory (``onnx-zip serve-bench``).
"""
