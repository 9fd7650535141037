"""A bounded run of tools/fuzz.py: no hang, no modified input, no leftover, no invalid output,
and no unhandled failure raised by the guarded loaders themselves."""

from __future__ import annotations

import importlib.util
import random
import sys

import pytest

from conftest import REPO_ROOT

#: Files whose unhandled exceptions this suite owns (the guarded I/O edges).
GUARDED = ("onnx_zip/model_io.py", "onnx_zip/model_guard.py", "onnx_zip/data.py", "onnx_zip/data_files.py",
           "onnx_zip/paths.py", "onnx_zip/recipes/yaml_safe.py")


def load_fuzz():
    spec = importlib.util.spec_from_file_location("onnx_zip_fuzz", REPO_ROOT / "tools" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["onnx_zip_fuzz"] = module
    spec.loader.exec_module(module)
    return module


def test_mutations_are_deterministic():
    fuzz = load_fuzz()
    data = (REPO_ROOT / "models" / "lenet300_mnist_s0.onnx").read_bytes()
    for kind in fuzz.MUTATIONS:
        first = fuzz.mutate(data, kind, random.Random(7))
        assert first == fuzz.mutate(data, kind, random.Random(7)), kind


@pytest.mark.slow
def test_bounded_fuzz_run():
    fuzz = load_fuzz()
    summary = fuzz.fuzz(30, seed=3, timeout=120, calib_limit=16)
    totals = summary["totals"]
    assert summary["cases"] == 30
    assert totals["hang"] == 0 and totals["crash"] == 0, summary["failures"]
    assert totals["input_modified"] == 0 and totals["leftover"] == 0, summary
    assert totals["invalid_output"] == 0, summary
    ours = [k for k in summary["failures"] if any(f in k for f in GUARDED)]
    assert not ours, ours
    assert totals["refused"] + totals["success"] > 0


@pytest.mark.slow
def test_loader_survives_mutants(tmp_path):
    """400 mutants of the bundled models through load_model alone: loaded, or one ModelError line naming the file."""
    from onnx_zip import model_io
    from onnx_zip.errors import ModelError

    fuzz = load_fuzz()
    models = {p.stem: p.read_bytes() for p in sorted((REPO_ROOT / "models").glob("*.onnx"))}
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(400):
        rng = random.Random(10_000 + i)
        name = rng.choice(sorted(models))
        data, side = fuzz.mutate(models[name], rng.choice(fuzz.MUTATIONS), rng)
        folder = tmp_path / f"c{i}"
        folder.mkdir()
        (folder / "m.onnx").write_bytes(data)
        for side_name, payload in side.items():
            (folder / side_name).write_bytes(payload)
        try:
            model_io.load_model(folder / "m.onnx")
            outcomes["loaded"] += 1
        except ModelError as exc:
            assert str(folder / "m.onnx") in str(exc) and "\n" not in str(exc), str(exc)
            outcomes["refused"] += 1
    assert outcomes["loaded"] > 0 and outcomes["refused"] > 0, outcomes
