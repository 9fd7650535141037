"""The recipe schema derived from the configuration: every mistake at once, the calibration section and
its earlier spellings, typed groups, and the file checks (swapped .onnx/.npz, an already zipped model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

import builders
from conftest import assert_one_error_line, run_cli
from onnx_zip.config import CalibrationConfig, FinetuneConfig, ZipConfig
from onnx_zip.errors import InputError
from onnx_zip.recipes import load_recipe, normalize
from onnx_zip.recipes.schema import section_keys


def recipe(**changes) -> dict:
    data = {
        "models": [{"task": "a", "model": "a.onnx", "calibration": "a.npz"},
                   {"task": "b", "model": "b.onnx", "calibration": "b.npz"}],
        "output": {"model": "out/z.onnx"},
    }
    data.update(changes)
    return data


def test_every_mistake_of_a_recipe_at_once() -> None:
    bad = recipe(zip={"shrae": 0.5, "match": "best", "seed": 3}, calibration={"limit": 0},
                 finetune={"stpes": 3}, evaluation={"limit": "all"})
    bad["models"][1]["task"] = "a"
    with pytest.raises(InputError) as info:
        normalize(bad, "recipe r.yaml")
    text = str(info.value)
    for part in ("recipe r.yaml: 8 problems", "task 'a' twice", "zip.shrae: unknown key (did you mean 'share'?)",
                 "zip.match is 'best'", "zip.seed: give seed once", "calibration.limit is 0",
                 "finetune.stpes", "finetune.steps is missing", "evaluation.limit is 'all'"):
        assert part in text, part


def test_calibration_section_and_its_earlier_spelling_give_the_same_recipe() -> None:
    new = normalize(recipe(calibration={"limit": 256, "conv_hessian": "patch"}))
    old = normalize(recipe(zip={"calibration_limit": 256, "conv_hessian": "patch"}))
    assert new == old
    assert new["calibration"] == {"limit": 256, "batch_size": 256, "conv_hessian": "patch"}
    assert "calibration_limit" not in new["zip"] and new["zip"]["share"] == 0.5
    with pytest.raises(InputError, match="zip.calibration_limit is 0"):
        normalize(recipe(zip={"calibration_limit": 0}))
    with pytest.raises(InputError, match="both given"):
        normalize(recipe(zip={"calibration_limit": 10}, calibration={"limit": 20}))


def test_the_sections_are_the_configuration_options() -> None:
    assert set(section_keys("calibration")) == {"limit", "batch_size", "conv_hessian"}  # threads: top level
    assert "seed" not in section_keys("finetune") and "momentum" in section_keys("finetune")
    assert {"share", "pairing", "mapping", "calibration_limit"} <= set(section_keys("zip"))


def test_recipe_configs_are_typed_with_the_top_level_seed_and_threads(tmp_path) -> None:
    files = write_pair(tmp_path)
    data = recipe(seed=7, threads=2, finetune={"steps": 3, "lr": 0.1})
    for i, task in enumerate("ab"):
        data["models"][i].update(model=files[task], calibration=files[f"{task}_data"], train=files[f"{task}_data"])
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    configs = load_recipe(path).configs()
    assert isinstance(configs["zip"], ZipConfig) and configs["zip"].seed == 7
    assert configs["calibration"] == CalibrationConfig(threads=2)
    assert configs["finetune"] == FinetuneConfig(steps=3, lr=0.1, seed=7, threads=2) and configs["retrain"] is None


def write_pair(folder: Path) -> dict[str, str]:
    files = {}
    for s, task in ((1, "a"), (2, "b")):
        model = builders.mlp([6, 10, 4, 3], seed=s)
        (folder / f"{task}.onnx").write_bytes(model.SerializeToString())
        np.savez(folder / f"{task}.npz", **builders.random_inputs(model, 32, seed=s),
                 label=np.zeros(32, dtype=np.int64))
        files[task], files[f"{task}_data"] = str(folder / f"{task}.onnx"), str(folder / f"{task}.npz")
    return files


def test_swapped_files_and_a_zipped_model_are_named_together(tmp_path) -> None:
    files = write_pair(tmp_path)
    zipped = tmp_path / "zipped.onnx"
    assert run_cli("zip", files["a"], files["b"], "--calib", files["a_data"], "--calib", files["b_data"],
                   "-o", zipped).returncode == 0
    data = recipe()
    data["models"][0].update(model=str(zipped), calibration=files["a"])
    data["models"][1].update(model=files["b_data"], calibration=files["b_data"])
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    result = run_cli("run", path)
    assert_one_error_line(result, "3 problems", "already a zipped model", "is an .onnx model where .npz data",
                          "is .npz data, not an .onnx model")
    assert not (tmp_path / "out").exists()


def test_key_and_file_problems_are_reported_together(tmp_path) -> None:
    data = recipe(zip={"share": 2})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError) as info:
        load_recipe(path)
    text = str(info.value)
    assert "zip.share is 2" in text and "models[0].model:" in text and "a.onnx not found" in text
