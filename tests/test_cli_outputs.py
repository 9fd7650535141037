"""No command writes over a file it reads, and two outputs are never one file (issue 18, item 1).

``zip`` checks every output against every input before any work; every other command runs under the
safety net of :func:`onnx_zip.paths.track_inputs`, so a model or data file it has read cannot be replaced.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from conftest import assert_one_error_line, run_cli

MODELS = Path(__file__).resolve().parent.parent / "models"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    files = {
        "a": MODELS / "lenet300_mnist_s0.onnx",
        "b": MODELS / "lenet300_mnist_s1.onnx",
        "calib": MODELS / "data" / "mnist_test.npz",
    }
    copies = {}
    for key, source in files.items():
        copies[key] = tmp_path / source.name
        shutil.copyfile(source, copies[key])
    return copies


def _zip(inputs: dict[str, Path], *extra: object):
    return run_cli("-q", "zip", inputs["a"], inputs["b"], "--calib", inputs["calib"], "--calib", inputs["calib"],
                   "--calib-limit", 64, *extra)


@pytest.mark.parametrize("target", ["a", "calib"])
def test_zip_refuses_an_output_that_is_an_input_before_any_work(inputs, target):
    before = {k: _digest(p) for k, p in inputs.items()}
    assert_one_error_line(_zip(inputs, "-o", inputs[target]), "would overwrite the input")
    assert {k: _digest(p) for k, p in inputs.items()} == before


def test_zip_refuses_a_report_onto_its_own_model(inputs, tmp_path):
    out = tmp_path / "z.onnx"
    assert_one_error_line(_zip(inputs, "-o", out, "--report", out), "are the same file")
    assert not out.exists()


def test_zip_refuses_an_output_hard_linked_to_an_input(inputs, tmp_path):
    link = tmp_path / "link.onnx"
    link.hardlink_to(inputs["a"])
    before = _digest(inputs["a"])
    assert_one_error_line(_zip(inputs, "-o", link), "would overwrite the input")
    assert _digest(inputs["a"]) == before


def test_extract_cannot_replace_the_model_it_read(inputs, tmp_path):
    zipped = tmp_path / "z.onnx"
    assert _zip(inputs, "-o", zipped).returncode == 0
    before = _digest(zipped)
    assert_one_error_line(run_cli("-q", "extract", zipped, "--task", "a", "-o", zipped), "overwrite")
    assert _digest(zipped) == before
