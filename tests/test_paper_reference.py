"""The paper's one-pass zip gives the same outputs as at commit 6652cf6 (before the spine refactor).

The reference file was written by ``tools/paper_reference.py --write`` at that commit; a refactor that
changes any task output by more than 1e-6, or any parameter count, fails here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "tests" / "data" / "paper_reference.npz"


def _tool():
    spec = importlib.util.spec_from_file_location("paper_reference", ROOT / "tools" / "paper_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("setting", sorted(_tool().SETTINGS))
def test_paper_zip_outputs_are_unchanged(setting: str) -> None:
    tool = _tool()
    reference = {k: v for k, v in np.load(REFERENCE).items() if k.startswith(setting + "|")}
    assert f"{setting}|params" in reference
    diffs = tool.differences(reference, tool.compute(setting))
    assert max(diffs.values()) <= 1e-6, {k: v for k, v in diffs.items() if v > 1e-6}
