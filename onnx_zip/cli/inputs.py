"""Reading what a command line names, collecting problems instead of stopping at the first one.

The checks of the files themselves are :mod:`onnx_zip.input_checks` (shared with the recipes); one
:class:`~onnx_zip.errors.InputError` lists everything (:func:`onnx_zip.errors.raise_all`).

* :func:`task_files`: ``TASK=FILE`` arguments;
* :func:`read_mapping`: the ``--map`` file, either the ``{"a_node": "b_node"}`` / ``[[a, b, c], …]``
  forms or the output of ``onnx-zip align --json`` as it is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onnx_zip.errors import InputError, raise_all
from onnx_zip.input_checks import data_problems, model_problems, zipped_tasks

__all__ = ["collect", "data_problems", "mapping_from_json", "model_problems", "raise_all", "read_json",
           "read_mapping", "task_files", "zipped_tasks"]


def collect(problems: list[str], check: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``check(*args, **kwargs)``; an :class:`InputError` it raises is added to ``problems``
    (the result is then ``None``)."""
    try:
        return check(*args, **kwargs)
    except InputError as exc:
        problems.append(str(exc))
        return None


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
