"""The ``onnx-zip`` command line: one subcommand per module, over the Python API."""

from onnx_zip.cli.main import main

__all__ = ["main"]
