"""``onnx-zip inspect``: a zipped model's tasks, sharing, parameters and provenance; a plain model's
layers; bad input exits 2 with one error line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import builders
from conftest import run_cli
from onnx_zip.zipper.api import zip_models
from onnx_zip.zipper.report import parameter_count

cli = run_cli


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny MLPs, their calibration data, and their zip (share 0.5)."""
    folder = tmp_path_factory.mktemp("inspect")
    paths = {}
    for name, seed in (("a", 0), ("b", 1)):
        model = builders.mlp([12, 16, 10, 4], seed=seed)
        onnx.save(model, folder / f"{name}.onnx")
        np.savez(folder / f"{name}.npz", **builders.random_inputs(model, 64, seed=seed))
        paths[name] = folder / f"{name}.onnx"
    zipped = folder / "zipped.onnx"
    zip_models([paths["a"], paths["b"]], [folder / "a.npz", folder / "b.npz"], zipped, names=["left", "right"], share=0.5)
    paths["zipped"] = zipped
    return paths


def test_inspect_zipped_json(models):
    result = cli("inspect", models["zipped"], "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["zipped"] is True and info["tasks"] == ["left", "right"]
    hidden = [layer for layer in info["layers"] if layer["shared"] is not None]
    assert [layer["shared"] for layer in hidden] == [8, 5]
    assert [layer["specific"]["left"] for layer in hidden] == [8, 5]
    model = onnx.load(models["zipped"])
    params = info["params"]
    assert params["total"] == parameter_count(model)
    assert params["shared"] == parameter_count(model, prefix="shared/")
    assert params["per_task"]["left"] == params["shared"] + params["specific"]["left"]
    assert params["total"] == params["shared"] + sum(params["specific"].values())
    assert sum(layer["params"]["shared"] for layer in info["layers"]) == params["shared"]
    provenance = info["provenance"]
    assert provenance["sources"]["left"]["file"] == "a.onnx"
    assert len(provenance["sources"]["right"]["sha256"]) == 64
    assert provenance["settings"]["share"] == 0.5
    assert provenance["recipe"] is None


def test_inspect_zipped_text(models):
    result = cli("inspect", models["zipped"])
    assert result.returncode == 0, result.stderr
    assert "zipped model of 2 tasks: left, right" in result.stdout
    assert "source left: a.onnx" in result.stdout
    assert "layer" in result.stdout and "recipe: none" in result.stdout


def test_inspect_plain_model_lists_its_layers(models):
    result = cli("inspect", models["a"], "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["zipped"] is False
    assert [(x["role"], x["neurons"], x["inputs"]) for x in info["layers"]] == [("hidden", 16, 12), ("hidden", 10, 16), ("head", 4, 10)]
    text = cli("inspect", models["a"])
    assert text.returncode == 0 and "not a zipped model" in text.stdout and "head" in text.stdout


@pytest.mark.parametrize("kind", ["missing", "not_onnx"])
def test_inspect_bad_input_exits_2(tmp_path, kind):
    path = tmp_path / "model.onnx"
    if kind == "not_onnx":
        path.write_text("hello")
    result = cli("inspect", path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnx-zip: error: model ") and "Traceback" not in result.stderr
    assert result.stdout == ""
