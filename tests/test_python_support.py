"""Inference-only users on Python 3.13+ may install the package; fine-tuning says which Python it needs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from onnx_zip import runtime
from onnx_zip.errors import RuntimeSetupError

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def test_only_the_train_extra_is_capped(repo_root: Path):
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    assert "<" not in project["requires-python"]
    (train,) = project["optional-dependencies"]["train"]
    assert train.startswith(runtime.TRAINING_PIN) and 'python_version < "3.13"' in train


def test_fine_tuning_on_python_3_13_names_the_python_it_needs(monkeypatch):
    monkeypatch.setattr(sys, "version_info", (3, 13, 0, "final", 0))
    monkeypatch.setattr(runtime, "has_training", lambda: False)
    runtime.training_modules.cache_clear()
    try:
        with pytest.raises(RuntimeSetupError, match=r"wheels for Python 3\.10 to 3\.12 only; this is Python 3\.13"):
            runtime.training_modules()
    finally:
        runtime.training_modules.cache_clear()
