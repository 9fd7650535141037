"""onnx_zip: merge pre-trained ONNX models by Multi-Task Zipping (layer-wise neuron sharing)."""

from onnx_zip._version import __version__

__all__ = ["__version__"]
