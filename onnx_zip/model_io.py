"""The one place that knows the ONNX file edges: loading, opset/IR stamping, atomic saving.

Every model onnx_zip writes goes through :func:`save_model`, which

* brings the default-domain opset into the range both supported runtimes load
  (17 to 21; older models are converted up, newer ones refused),
* stamps the matching ``ir_version`` (8 for opset 17-18, 9 for 19-20, 10 for 21: the
  onnx package's own default is newer than any runtime loads),
* serialises deterministically and writes atomically (temporary file in the same
  folder, then rename), so a failure never leaves a partial file behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from onnx_zip.errors import InputError, ModelError

logger = logging.getLogger(__name__)

MIN_OPSET = 17
MAX_OPSET = 21
#: The lowest opset the front end accepts (older ones are converted up).
MIN_READ_OPSET = 11
#: ir_version for each default-domain opset the tool writes.
IR_FOR_OPSET = {17: 8, 18: 8, 19: 9, 20: 9, 21: 10}
MAX_IR_VERSION = 10
_TWO_GIB = 2**31


def load_model(path: str | os.PathLike[str], *, label: str | None = None) -> onnx.ModelProto:
    """Read an ONNX model file, with its external data.

    Args:
        path: The ``.onnx`` file.
        label: How to name the model in messages (default: the path).

    Raises:
        ModelError: the file is missing, unreadable or not an ONNX model.
    """
    path = Path(path)
    name = label or str(path)
    if not path.exists():
        raise ModelError(f"model {name}: file not found", hint="check the path")
    if path.is_dir():
        raise ModelError(f"model {name}: is a folder, not an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise ModelError(
            f"model {name}: not a readable ONNX model ({type(exc).__name__}: {exc})",
            hint="pass a .onnx file written by an ONNX exporter",
        ) from exc
    except OSError as exc:
        raise ModelError(f"model {name}: cannot read the file ({exc})") from exc
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelError(
            f"model {name}: not an ONNX model (no graph or an empty graph)",
            hint="pass a .onnx file written by an ONNX exporter",
        )
    return model


def default_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain (``ai.onnx``) opset version."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ModelError("model has no default-domain (ai.onnx) opset import")


def convert_opset(model: onnx.ModelProto, target: int, *, label: str = "model") -> onnx.ModelProto:
    """Convert the default-domain opset with onnx's version converter.

    Raises:
        ModelError: the converter cannot convert this model.
    """
    current = default_opset(model)
    if current == target:
        return model
    try:
        converted = onnx.version_converter.convert_version(model, target)
    except Exception as exc:  # the converter raises several unrelated types
        raise ModelError(
            f"{label}: cannot convert opset {current} to {target} ({exc})",
            hint=f"re-export the model with an opset between {MIN_OPSET} and {MAX_OPSET}",
        ) from exc
    logger.info("%s: converted opset %d -> %d", label, current, target)
    return converted


def stamp_versions(model: onnx.ModelProto, *, label: str = "model") -> onnx.ModelProto:
    """Bring the opset into [17, 21] and set the matching ``ir_version`` (in place when possible).

    Returns:
        The stamped model (a new object when the opset had to be converted).
    """
    opset = default_opset(model)
    if opset > MAX_OPSET:
        raise ModelError(
            f"{label}: opset {opset} is newer than the {MAX_OPSET} onnxruntime 1.19.2 loads",
            hint=f"re-export with opset_version between {MIN_OPSET} and {MAX_OPSET}",
        )
    if opset < MIN_OPSET:
        model = convert_opset(model, MIN_OPSET, label=label)
        opset = MIN_OPSET
    model.ir_version = IR_FOR_OPSET[opset]
    return model


def serialize(model: onnx.ModelProto) -> bytes:
    """Deterministic protobuf bytes of a model (same content, same bytes)."""
    return model.SerializeToString(deterministic=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    Raises:
        InputError: the folder does not exist or is not writable.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"output {path}: folder {folder} does not exist", hint="create it first")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InputError(f"output {path}: cannot write in {folder} ({exc.strerror})") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise InputError(f"output {path}: cannot write ({exc.strerror})") from exc
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike[str]) -> None:
    """Fail early, before long work, when ``path`` cannot be written.

    Raises:
        InputError: the folder is missing or not writable, or the path is a folder.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InputError(f"output {path}: is a folder", hint="give a file name")
    if not folder.is_dir():
        raise InputError(f"output {path}: folder {folder} does not exist", hint="create it first")
    if not os.access(folder, os.W_OK):
        raise InputError(f"output {path}: folder {folder} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"output {path}: file exists and is not writable")


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    check: bool = True,
    label: str | None = None,
) -> onnx.ModelProto:
    """Stamp versions, optionally check, and write a model atomically.

    Args:
        model: The model to write (modified in place by the stamping).
        path: The destination ``.onnx`` file.
        check: Run ``onnx.checker.check_model(full_check=True)`` first.
        label: How to name the model in messages (default: the path).

    Returns:
        The model as written.

    Raises:
        ModelError: the model fails the checker or is larger than 2 GiB.
        InputError: the destination cannot be written.
    """
    name = label or str(path)
    model = stamp_versions(model, label=name)
    if check:
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ModelError(f"{name}: the model to write is not valid ONNX ({exc})") from exc
    data = serialize(model)
    if len(data) >= _TWO_GIB:
        raise ModelError(f"{name}: {len(data) / 2**30:.1f} GiB is over protobuf's 2 GiB single-file limit")
    atomic_write_bytes(path, data)
    logger.info("wrote %s (%d bytes, opset %d, IR %d)", path, len(data), default_opset(model), model.ir_version)
    return model


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
