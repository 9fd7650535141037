"""Shared fixtures: the repository root and the bundled model zoo (``models/manifest.json``)."""

from __future__ import annotations

import json
import sys
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
        pytest.fail(f"no model zoo: {MANIFEST} is absent or lists no existing model (the zoo is part of the repository)")
    return models


def zoo_model(zoo: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """One zoo entry; fails when that model is not in the bundled zoo."""
    if name not in zoo:
        pytest.fail(f"zoo model {name} is not in models/manifest.json (or its file is missing)")
    return zoo[name]
