"""The exceptions onnx_zip raises.

Every error onnx_zip raises on purpose derives from :class:`OnnxZipError` and
carries a message that names the model, node, tensor or file at fault and, where
there is one, a ``hint`` that says how to fix it. Two branches::

    OnnxZipError
    ├── InputError          the user's to fix (CLI exit code 2)
    │   ├── ModelError        a model that cannot be read or processed
    │   ├── DataError         data that does not fit the models
    │   ├── RuntimeSetupError the onnxruntime installation
    │   └── NumericalError    NaN/Inf in weights, statistics or the loss
    └── InternalError       a broken invariant of onnx_zip itself (CLI exit code 1,
                            "please report")

Any other exception escaping the library is a bug too and also exits 1.
"""

from __future__ import annotations

from collections.abc import Sequence


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


class InternalError(OnnxZipError):
    """A broken invariant inside onnx_zip (a bug, not the user's input); the CLI asks to report it.

    Raise it where a check guards the library's own bookkeeping (an initializer created twice, a
    tensor of the wrong size after training), never for anything a user could fix.
    """


def raise_all(problems: Sequence[str], *, label: str | None = None, hint: str | None = None) -> None:
    """Raise one :class:`InputError` listing every problem (nothing when there is none).

    Args:
        problems: One message each, naming the key, option, file or model at fault.
        label: What they are about, put before the list (``recipe r.yaml``).
        hint: How to fix them (optional).
    """
    if not problems:
        return
    prefix = f"{label}: " if label else ""
    if len(problems) == 1:
        raise InputError(prefix + problems[0], hint=hint)
    listed = "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
    raise InputError(f"{prefix}{len(problems)} problems: {listed}", hint=hint)
