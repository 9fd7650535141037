"""The one place that knows the ONNX file edges: loading, opset/IR stamping, atomic saving.

Every model onnx_zip reads goes through :func:`load_model`, which parses the file without
its external data and hands it to :func:`onnx_zip.model_guard.guard_model` (external data
only from the model's own folder, payloads checked against dims, sparse initializers
densified, cycles, dtypes, empty layers and NaN/Inf refused).

Every model onnx_zip writes goes through :func:`save_model`, which

* brings the default-domain opset into the range both supported runtimes load
  (17 to 21; older models are converted up, newer ones refused),
* stamps the matching ``ir_version`` (8 for opset 17-18, 9 for 19-20, 10 for 21: the
  onnx package's own default is newer than any runtime loads),
* serialises deterministically and writes atomically (temporary file in the same
  folder, then rename), so a failure never leaves a partial file behind,
* never replaces an input (``protect=`` and :func:`onnx_zip.paths.track_inputs`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import onnx

from onnx_zip.errors import InputError, ModelError
from onnx_zip.model_guard import guard_model
from onnx_zip.paths import PathLike, refuse_protected, register_input

logger = logging.getLogger(__name__)

MIN_OPSET = 17
MAX_OPSET = 21
#: The lowest opset the front end accepts (older ones are converted up).
MIN_READ_OPSET = 11
#: ir_version for each default-domain opset the tool writes.
IR_FOR_OPSET = {17: 8, 18: 8, 19: 9, 20: 9, 21: 10}
MAX_IR_VERSION = 10
_TWO_GIB = 2**31


def _model_name(path: Path, label: str | None) -> str:
    """``model <path>``, or the label with the path added when the label lacks it."""
    if label is None:
        return f"model {path}"
    return label if str(path) in label else f"{label} ({path})"


def _sniff(head: bytes) -> str | None:
    """What a file that is not an ONNX model looks like, from its first bytes."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "a zip archive (an .npz data file?), not an ONNX model"
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy .npy array, not an ONNX model"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle, not an ONNX model (onnx_zip never unpickles)"
    return None


def _parse(data: bytes, name: str) -> onnx.ModelProto:
    """Parse model bytes (no external data) into a ModelProto, or one clear ModelError."""
    hint = "pass a .onnx file written by an ONNX exporter"
    what = _sniff(data[:8])
    if what is not None:
        raise ModelError(f"{name}: {what}", hint=hint)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - protobuf backends raise DecodeError, RuntimeWarning, ValueError, ...
        detail = str(exc) or type(exc).__name__
        raise ModelError(f"{name}: not a readable ONNX model ({detail})", hint=hint) from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelError(f"{name}: not an ONNX model (no graph or an empty graph)", hint=hint)
    if not any(entry.domain in ("", "ai.onnx") for entry in model.opset_import):
        raise ModelError(f"{name}: no default-domain (ai.onnx) opset import", hint=hint)
    return model


def load_model(path: str | os.PathLike[str], *, label: str | None = None) -> onnx.ModelProto:
    """Read an ONNX model file through the guard of :mod:`onnx_zip.model_guard`.

    External data is read only from inside the model's folder; every tensor's payload is
    checked against its dims before an array is built; sparse initializers are densified;
    cycles, non-float32 inputs or layer weights, empty layers and NaN/Inf weights are refused.
    The file is recorded as an input (:func:`onnx_zip.paths.register_input`), so that no write
    inside :func:`onnx_zip.paths.track_inputs` can replace it.

    Args:
        path: The ``.onnx`` file.
        label: How to name the model in messages (default ``model <path>``; the path is
            added when the label lacks it).

    Returns:
        The model, external data inlined.

    Raises:
        ModelError: the file is missing, unreadable, not an ONNX model, or fails a check
            (every blocker in one message, naming the file and the tensor or node).
    """
    path = Path(path)
    name = _model_name(path, label)
    if not path.exists():
        raise ModelError(f"{name}: file not found", hint="check the path")
    if path.is_dir():
        raise ModelError(f"{name}: is a folder, not an .onnx file")
    try:
        size = path.stat().st_size
        if size >= _TWO_GIB:
            raise ModelError(f"{name}: {size:,} bytes, over protobuf's 2 GiB limit for an .onnx file",
                             hint="store large weights as external data")
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{name}: cannot read the file ({exc.strerror or exc})") from None
    register_input(path)
    model = _parse(data, name)
    folder = path.parent if str(path.parent) else Path(".")
    return guard_model(model, folder, name)


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


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, protect: Iterable[PathLike] = ()) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    The temporary file is created with ``O_EXCL`` beside ``path``, so it never replaces
    anything; the rename replaces ``path`` itself (a symlink there is replaced, not followed).

    Args:
        path: The destination.
        data: The bytes.
        protect: Inputs that must not be replaced; inputs recorded by an active
            :func:`onnx_zip.paths.track_inputs` block are protected too.

    Raises:
        InputError: ``path`` is a protected input, or its folder does not exist or is not writable.
    """
    refuse_protected(path, protect)
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
    protect: Iterable[PathLike] = (),
) -> onnx.ModelProto:
    """Stamp versions, optionally check, and write a model atomically.

    Args:
        model: The model to write (modified in place by the stamping).
        path: The destination ``.onnx`` file.
        check: Run ``onnx.checker.check_model(full_check=True)`` first.
        label: How to name the model in messages (default: the path).
        protect: Inputs the write must not replace (see :func:`atomic_write_bytes`).

    Returns:
        The model as written.

    Raises:
        ModelError: the model fails the checker or is larger than 2 GiB.
        InputError: the destination cannot be written.
    """
    name = label or str(path)
    refuse_protected(path, protect)
    model = stamp_versions(model, label=name)
    if check:
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ModelError(f"{name}: the model to write is not valid ONNX ({exc})") from exc
    data = serialize(model)
    if len(data) >= _TWO_GIB:
        raise ModelError(f"{name}: {len(data) / 2**30:.1f} GiB is over protobuf's 2 GiB single-file limit")
    atomic_write_bytes(path, data, protect=protect)
    logger.info("wrote %s (%d bytes, opset %d, IR %d)", path, len(data), default_opset(model), model.ir_version)
    return model


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
