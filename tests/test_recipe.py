"""Recipes: ``onnx-zip run recipe.yaml`` validates everything first (unknown keys with a suggestion,
before any model work), reproduces the same model bytes, stores the recipe in the model; the bundled
recipes validate; bad recipes exit 2 with one error line and write nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import onnx
import pytest
import yaml

from conftest import REPO_ROOT, assert_one_error_line, run_cli, zoo_model
from onnx_zip.errors import InputError
from onnx_zip.recipes import load_recipe, normalize, prepare_run
from onnx_zip.zipper.report import read_metadata

RECIPES = sorted((REPO_ROOT / "recipes").glob("*.yaml"))


cli = run_cli


def small_recipe(zoo, folder: Path, **changes) -> dict:
    """A fast recipe on the LeNet-300 pair: 256 calibration samples, 4 fine-tuning steps."""
    a, b = zoo_model(zoo, "lenet300_mnist_s0"), zoo_model(zoo, "lenet300_mnist_s1")
    recipe = {
        "description": "test recipe",
        "seed": 0,
        "models": [
            {"task": t, "model": e["file"], "calibration": e["data"]["train"], "train": e["data"]["train"], "eval": e["data"]["test"]}
            for t, e in (("s0", a), ("s1", b))
        ],
        "zip": {"share": 0.5, "calibration_limit": 256},
        "finetune": {"steps": 2, "batch_size": 32},
        "evaluation": {"limit": 100},
        "output": {"model": "out/zipped.onnx", "report": "out/zipped.json", "summary": "out/zipped.md"},
    }
    for key, value in changes.items():
        recipe[key] = value
    return recipe


def write(folder: Path, recipe: dict, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_misspelled_key_fails_fast_with_a_suggestion_before_any_model_work(zoo, tmp_path, monkeypatch):
    recipe = small_recipe(zoo, tmp_path)
    recipe["zip"] = {"shrae": 0.5}
    path = write(tmp_path, recipe)

    def no_model_work(*args, **kwargs):
        raise AssertionError("a model was loaded before the recipe's keys were checked")

    monkeypatch.setattr("onnx_zip.model_io.load_model", no_model_work)
    monkeypatch.setattr("onnx_zip.pipeline.job.load_model", no_model_work)
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"zip\.shrae: unknown key \(did you mean 'share'\?\)"):
        prepare_run(load_recipe(path))
    assert time.perf_counter() - start < 1.0
    result = cli("run", path)
    assert_one_error_line(result, "zip.shrae", "did you mean 'share'?")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        ({"modles": []}, ["modles: unknown key", "did you mean 'models'?"]),
        ({"zip": {"share": 1.5}}, ["zip.share is 1.5", "≤ 1"]),
        ({"zip": {"share": 0.5, "max_cost": 0.1}}, ["share and max_cost"]),
        ({"finetune": {"steps": "many"}}, ["finetune.steps is 'many'", "whole number"]),
        ({"finetune": {"stpes": 3}}, ["finetune.stpes", "did you mean 'steps'?"]),
        ({"zip": {"match": "best"}}, ["zip.match is 'best'", "greedy, optimal"]),
        ({"output": {"report": "x.json"}}, ["output.model is missing"]),
    ],
)
def test_bad_values_name_the_key(zoo, tmp_path, change, needles):
    recipe = small_recipe(zoo, tmp_path)
    recipe.update(change)
    with pytest.raises(InputError) as info:
        load_recipe(write(tmp_path, recipe))
    for needle in needles:
        assert needle in str(info.value)


def test_missing_file_and_bad_data_exit_2_and_write_nothing(zoo, tmp_path):
    recipe = small_recipe(zoo, tmp_path)
    recipe["models"][1]["calibration"] = "nowhere.npz"
    assert_one_error_line(cli("run", write(tmp_path, recipe, "missing.yaml")), "models[1].calibration", "nowhere.npz not found")
    recipe = small_recipe(zoo, tmp_path)
    recipe["models"][0]["eval"] = str(REPO_ROOT / "models" / "data" / "mnist_flat_test.npz")  # (N, 784) for (N, 1, 28, 28)
    result = cli("run", write(tmp_path, recipe, "shape.yaml"))
    assert_one_error_line(result, "mnist_flat_test.npz", "shape")
    assert not (tmp_path / "out").exists()
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("models: [\n")
    assert_one_error_line(cli("run", bad_yaml), "not valid YAML")
    assert_one_error_line(cli("run", tmp_path / "absent.yaml"), "file not found")


def test_recipe_runs_twice_to_the_same_bytes_and_is_stored(zoo, tmp_path):
    path = write(tmp_path, small_recipe(zoo, tmp_path))
    first = cli("run", path, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out"
    model_bytes = (out / "zipped.onnx").read_bytes()
    assert "fine-tuned" in first.stdout and "s0" in first.stdout
    second = cli("run", "recipe.yaml", cwd=tmp_path)  # relative path, other working directory
    assert second.returncode == 0, second.stderr
    assert (out / "zipped.onnx").read_bytes() == model_bytes
    meta = read_metadata(onnx.load(out / "zipped.onnx"))
    assert meta["recipe"] == normalize(yaml.safe_load(path.read_text()))
    report = json.loads((out / "zipped.json").read_text())
    assert set(report["evaluation"]["s0"]) == {"original", "zipped", "finetuned"}
    assert report["finetune"]["steps"] == 2
    assert "| layer1_dense |" in (out / "zipped.md").read_text()
    done = cli("inspect", out / "zipped.onnx", "--json")
    assert done.returncode == 0, done.stderr
    inspected = json.loads(done.stdout)
    assert inspected["provenance"]["recipe"]["finetune"]["steps"] == 2


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_bundled_recipes_validate(zoo, recipe):
    loaded = load_recipe(recipe)
    for i in range(2):
        assert loaded.model_file(i, "model").is_file(), f"{loaded.model_file(i, 'model')} is not in the bundled zoo"
    data = dict(loaded.data)
    data["evaluation"] = {"limit": 64}  # check binding and labels on a few samples only
    plan = prepare_run(type(loaded)(path=loaded.path, data=data))
    assert set(plan.original_accuracy) == set(loaded.tasks)
    assert len(plan.job.hidden) >= 2


def test_run_check_only_validates(zoo, tmp_path):
    path = write(tmp_path, small_recipe(zoo, tmp_path))
    result = cli("run", path, "--check")
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout and not (tmp_path / "out").exists()


def test_a_run_prepares_each_model_once_and_reads_each_data_file_once(zoo, tmp_path, monkeypatch):
    import onnx_zip.pipeline.job as job_module
    import onnx_zip.recipes.run as run_module

    calls = {"prepare": 0, "data": 0}
    real_prepare, real_job_load, real_run_load = job_module.prepare_model, job_module.load_dataset, run_module.load_dataset

    def counting(real, key):
        def wrapped(*args, **kwargs):
            calls[key] += 1
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(job_module, "prepare_model", counting(real_prepare, "prepare"))
    monkeypatch.setattr(job_module, "load_dataset", counting(real_job_load, "data"))
    monkeypatch.setattr(run_module, "load_dataset", counting(real_run_load, "data"))
    plan = prepare_run(load_recipe(write(tmp_path, small_recipe(zoo, tmp_path))))
    # calibration (also the training data, with labels: not read again) and evaluation, per model
    assert calls == {"prepare": 2, "data": 4}
    assert plan.finetune is not None and plan.finetune.steps == 2 and plan.job.calibration_config.limit == 256
