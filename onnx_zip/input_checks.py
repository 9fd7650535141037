"""Checks of input files named by a user, made before any long work starts (CLI and recipes).

Each check returns the problems it found as strings (empty: none), so that the caller can report
every mistake at once (:func:`onnx_zip.errors.raise_all`) instead of the first one.

* :func:`data_problems`: an ``.npz`` argument that is missing, or is an ONNX model (swapped arguments);
* :func:`model_problems`: a model argument that is missing, is ``.npz`` data, or (for zipping) is
  already a zipped model (:func:`zipped_tasks`: its ``onnx_zip.*`` metadata).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import onnx

#: Metadata keys of a model written by ``onnx-zip zip`` start with this.
ZIPPED_PREFIX = "onnx_zip."
#: The first bytes of a ``.npz`` (a zip archive).
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def _head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(4)


def _missing(path: Path, what: str) -> str | None:
    if not path.exists():
        return f"{what} {path}: file not found"
    if not path.is_file():
        return f"{what} {path}: is a folder, not a file"
    return None


def data_problems(paths: Iterable[str | None], what: str) -> list[str]:
    """Problems of ``.npz`` data arguments: missing files and ONNX models given as data.

    Args:
        paths: The paths as typed (``None`` entries are skipped).
        what: The option, for messages (``--calib``).
    """
    out = []
    for text in paths:
        if text is None:
            continue
        path = Path(text)
        missing = _missing(path, what)
        if missing:
            out.append(missing)
        elif _head(path) not in _ZIP_MAGIC and path.suffix.lower() == ".onnx":
            out.append(f"{what} {path}: is an .onnx model where .npz data is expected "
                       "(models come first, each data file after its option)")
    return out


def zipped_tasks(path: str | Path) -> list[str] | None:
    """The task names of a model written by ``onnx-zip zip`` (``None``: not a zipped model).

    Reads the model's metadata only (no external data); a file that is not ONNX gives ``None``.
    """
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not readable as ONNX: the model loader reports it properly
        return None
    props = {p.key: p.value for p in model.metadata_props}
    if not any(key.startswith(ZIPPED_PREFIX) for key in props):
        return None
    try:
        tasks = json.loads(props.get(f"{ZIPPED_PREFIX}tasks", "[]"))
    except json.JSONDecodeError:
        tasks = []
    return [str(t) for t in tasks] if isinstance(tasks, list) else []


def model_problems(paths: Iterable[str], what: str = "model", *, refuse_zipped: bool = False) -> list[str]:
    """Problems of model arguments: missing files, ``.npz`` data given as a model and, with
    ``refuse_zipped``, models that are already zipped."""
    out = []
    for text in paths:
        path = Path(text)
        missing = _missing(path, what)
        if missing:
            out.append(missing)
        elif _head(path) in _ZIP_MAGIC:
            out.append(f"{what} {path}: is .npz data, not an .onnx model")
        elif refuse_zipped:
            tasks = zipped_tasks(path)
            if tasks is not None:
                out.append(f"{what} {path}: is already a zipped model (tasks {', '.join(tasks) or '?'}); "
                           "zip the original single-task models, or `onnx-zip extract` one task first")
    return out
