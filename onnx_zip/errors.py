"""The exceptions onnx_zip raises.

Every error meant for a user derives from :class:`OnnxZipError` and carries a
message that names the model, node, tensor or file at fault and, where there is
one, a ``hint`` that says how to fix it. The CLI maps :class:`InputError` (bad
input or usage, the user's to fix) to exit code 2 and anything else to exit
code 1.
"""

from __future__ import annotations


class OnnxZipError(Exception):
    """Base class of every error onnx_zip raises on purpose.

    Args:
        message: What is wrong, naming the model, node, tensor or file.
        hint: How to fix it (optional); shown after the message.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class InputError(OnnxZipError):
    """Bad input or usage: a file, model, array, setting or argument the user must fix."""


class ModelError(InputError):
    """A model that cannot be read or processed: unreadable file, unsupported op, unaligned layers."""


class DataError(InputError):
    """Data that does not fit: missing input names or labels, wrong shapes or dtypes, NaN or Inf."""


class RuntimeSetupError(InputError):
    """The onnxruntime installation is missing or broken (for example two runtimes installed together)."""


class NumericalError(InputError):
    """A numerical problem the user can act on, such as NaN or Inf in weights or statistics."""
