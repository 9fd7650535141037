"""``python -m onnx_zip``: the same as the ``onnx-zip`` command."""

from onnx_zip.cli.main import entry_point

if __name__ == "__main__":
    entry_point()
