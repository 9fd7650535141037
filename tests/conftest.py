"""Shared fixtures: the repository root, the bundled model zoo (``models/manifest.json``) and the
in-process ``onnx-zip`` command line (:func:`run_cli`, fixture ``cli``)."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
MANIFEST = REPO_ROOT / "models" / "manifest.json"

# tests/ is not a package: make ``import builders`` work from every test module.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the folder holding ``onnx_zip/`` and ``models/``)."""
    return REPO_ROOT


def load_zoo() -> dict[str, dict[str, Any]]:
    """The manifest's models by name, with ``file`` and ``data`` paths made absolute.

    Models whose ``.onnx`` file is missing (the zoo is still being built) are left out.
    """
    if not MANIFEST.is_file():
        return {}
    manifest = json.loads(MANIFEST.read_text())
    base = MANIFEST.parent
    zoo = {}
    for entry in manifest.get("models", []):
        entry = dict(entry)
        entry["file"] = str(base / entry["file"])
        entry["data"] = {k: str(base / v) for k, v in entry.get("data", {}).items()}
        if Path(entry["file"]).is_file():
            zoo[entry["name"]] = entry
    return zoo


@pytest.fixture(scope="session")
def zoo() -> dict[str, dict[str, Any]]:
    """name → manifest entry (absolute paths); fails when the bundled zoo is missing."""
    models = load_zoo()
    if not models:
        pytest.fail(
            f"no model zoo: {MANIFEST} is absent or lists no existing model (the zoo is part of the repository)"
        )
    return models


def zoo_model(zoo: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """One zoo entry; fails when that model is not in the bundled zoo."""
    if name not in zoo:
        pytest.fail(f"zoo model {name} is not in models/manifest.json (or its file is missing)")
    return zoo[name]


def _import_cli() -> None:
    """Import every command and the modules they import lazily, now: a module first imported while a
    test has monkeypatched a function it imports by name would keep the patched function for good."""
    from onnx_zip.cli.main import command_modules  # noqa: PLC0415

    command_modules()
    for name in ("onnx_zip.finetune", "onnx_zip.pipeline", "onnx_zip.pipeline.layerwise", "onnx_zip.recipes",
                 "onnx_zip.sweep", "onnx_zip.reporting", "onnx_zip.demo"):
        try:
            importlib.import_module(name)
        except ImportError:  # an optional runtime missing: the tests that need it say so themselves
            pass


_import_cli()


@dataclass
class CliResult:
    """What one ``onnx-zip`` run gave: exit code and captured output (like ``subprocess.CompletedProcess``)."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: object, cwd: str | os.PathLike[str] | None = None) -> CliResult:
    """Run ``onnx-zip ARGS`` in this process: ``main(argv)`` with stdout/stderr captured and ``cwd``
    as the working directory for the call; argparse exits and uncaught errors become exit codes."""
    from onnx_zip.cli.main import main  # noqa: PLC0415 - after sys.path is set up

    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    package_logger = logging.getLogger("onnx_zip")
    level, handlers, propagate = package_logger.level, list(package_logger.handlers), package_logger.propagate
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # pragma: no cover - main returns argparse's exits
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.chdir(previous)
        package_logger.setLevel(level)  # -q/-v of this run must not change what later tests log
        package_logger.handlers[:] = handlers
        package_logger.propagate = propagate
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli() -> Callable[..., CliResult]:
    """``cli("zip", a, b, "--calib", …)`` → :class:`CliResult`, run in-process (see :func:`run_cli`)."""
    return run_cli


def assert_one_error_line(result: CliResult, *needles: str, code: int = 2) -> None:
    """Exit ``code`` with exactly one ``onnx-zip: error: …`` line on stderr containing every needle."""
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnx-zip: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
