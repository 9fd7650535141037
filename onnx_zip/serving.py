"""``onnx_zip.serving.TaskSwitcher``: switch between the tasks of an exported folder.

The implementation lives in :mod:`onnx_zip.deploy.serving`; this module is its short public name.
"""

from __future__ import annotations

from onnx_zip.deploy.serving import TaskSwitcher, session_options

__all__ = ["TaskSwitcher", "session_options"]
