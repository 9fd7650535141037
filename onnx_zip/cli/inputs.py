"""Checks of the files named on a command line, made before any long work starts.

Each check returns the problems it found as strings (empty: none), so that a command can report
every mistake of its command line at once (:func:`raise_all`) instead of the first one.

* :func:`data_problems`: an ``.npz`` argument that is missing, or is an ONNX model (swapped arguments);
* :func:`model_problems`: a model argument that is missing, is ``.npz`` data, or (for ``zip``) is
  already a zipped model (its ``onnx_zip.*`` metadata);
* :func:`read_mapping`: the ``--map`` file, either the ``{"a_node": "b_node"}`` / ``[[a, b, c], …]``
  forms or the output of ``onnx-zip align --json`` as it is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import onnx

from onnx_zip.errors import InputError

#: Metadata keys of a model written by ``onnx-zip zip`` start with this.
ZIPPED_PREFIX = "onnx_zip."
#: The first bytes of a ``.npz`` (a zip archive).
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def raise_all(problems: Sequence[str], *, hint: str | None = None) -> None:
    """Raise one :class:`InputError` listing every problem (nothing when there is none)."""
    if not problems:
        return
    if len(problems) == 1:
        raise InputError(problems[0], hint=hint)
    listed = "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
    raise InputError(f"{len(problems)} problems: {listed}", hint=hint)


def collect(problems: list[str], check: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``check(*args, **kwargs)``; an :class:`InputError` it raises is added to ``problems``
    (the result is then ``None``)."""
    try:
        return check(*args, **kwargs)
    except InputError as exc:
        problems.append(str(exc))
        return None


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


def task_files(items: Sequence[str] | None, option: str, problems: list[str]) -> dict[str, str]:
    """``["a=x.npz", "b=y.npz"]`` → ``{"a": "x.npz", "b": "y.npz"}``; malformed items go to ``problems``."""
    out: dict[str, str] = {}
    for item in items or []:
        task, sep, path = item.partition("=")
        if not sep or not task.strip() or not path.strip():
            problems.append(f"{option} {item!r}: expected TASK=FILE (for example {option} a=a_train.npz)")
        elif task.strip() in out:
            problems.append(f"{option} names task {task.strip()!r} twice")
        else:
            out[task.strip()] = path.strip()
    return out


def read_json(path: str, what: str) -> Any:
    """A JSON file's content.

    Raises:
        InputError: missing, unreadable or not JSON.
    """
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{what} {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} {path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} {path}: not valid JSON ({exc})") from None


def mapping_from_json(data: Any, what: str) -> dict[str, str] | list[list[str]]:
    """An explicit alignment from parsed JSON: ``{"a_node": "b_node"}``, ``[[a, b, c], …]``, or the
    ``onnx-zip align --json`` output (``{"models": [...], "layers": [{"nodes": [...]}, …]}``), whose
    rows become the list form (two models: the dict form).

    Raises:
        InputError: any other shape.
    """
    if isinstance(data, dict) and "layers" in data:
        layers = data["layers"]
        if not isinstance(layers, list) or not all(isinstance(a, dict) and isinstance(a.get("nodes"), list) for a in layers):
            raise InputError(f"{what}: 'layers' must be a list of {{\"nodes\": [...]}} as `onnx-zip align --json` writes")
        data = [[str(n) for n in a["nodes"]] for a in layers]
    if isinstance(data, list):
        if not all(isinstance(row, list) and all(isinstance(n, str) for n in row) for row in data):
            raise InputError(f"{what}: expected a list of lists of node names, one node per model")
        if data and all(len(row) == 2 for row in data):
            return {a: b for a, b in data}
        return data
    if isinstance(data, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        return dict(data)
    raise InputError(f"{what}: expected {{\"a_node\": \"b_node\"}}, [[a, b, c], ...] or the output of `onnx-zip align --json`")


def read_mapping(path: str, what: str = "--map") -> dict[str, str] | list[list[str]]:
    """:func:`mapping_from_json` of a file."""
    return mapping_from_json(read_json(path, what), f"{what} {path}")
