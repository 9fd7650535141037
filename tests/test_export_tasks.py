"""``export-tasks``: one model per task over one shared weights file, equal to the zipped tasks."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

import builders
from conftest import zoo_model
from onnx_zip import model_io, runtime
from onnx_zip.cli.main import main
from onnx_zip.deploy.export import export_tasks
from onnx_zip.deploy.manifest import SHARED_WEIGHTS, read_manifest
from onnx_zip.deploy.weights import PAGE, PAGE_ALIGN_FROM, external_tensors
from onnx_zip.errors import InputError
from onnx_zip.pipeline import zip_models

TASKS = ("a", "b", "c")
OTHER = os.environ.get("ONNX_ZIP_OTHER_PYTHON")


def _exact(model, feeds):
    """Outputs without graph optimisations (fusions change the rounding by ~1e-7 relative)."""
    return runtime.make_session(model, threads=1, optimize=False).run(None, feeds)


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """Three CNNs zipped at share 0.9 and exported."""
    folder = tmp_path_factory.mktemp("three")
    models = [builders.cnn(seed=s) for s in (1, 2, 3)]
    calib = [builders.random_inputs(models[0], 64, seed=s) for s in (1, 2, 3)]
    result = zip_models(models, calib, folder / "z.onnx", names=list(TASKS), share=0.9)
    return folder / "z.onnx", result, export_tasks(folder / "z.onnx", folder / "out")


def test_each_task_model_equals_the_zipped_task_with_its_original_names(three):
    zipped_path, result, export = three
    feeds = builders.random_inputs(result.model, 8, seed=5)
    both = _exact(zipped_path, feeds)
    for t, task in enumerate(TASKS):
        path = export.directory / f"{task}.onnx"
        model = onnx.load(str(path), load_external_data=False)
        assert model.ir_version <= model_io.MAX_IR_VERSION
        assert [o.name for o in model.graph.output] == ["y"] and [i.name for i in model.graph.input] == ["x"]
        (y,) = _exact(path, feeds)
        np.testing.assert_allclose(y, both[t], rtol=0, atol=1e-6)


def test_shared_weights_hold_each_shared_tensor_once_page_aligned(three):
    zipped_path, result, export = three
    manifest = export.manifest
    shared = {t.name: t for t in result.model.graph.initializer if t.name.startswith("shared/")}
    placed: dict[str, tuple[int, int]] = {}
    for task in TASKS:
        for tensor in external_tensors(onnx.load(str(export.directory / f"{task}.onnx"), load_external_data=False)):
            if tensor.location == SHARED_WEIGHTS:
                assert placed.setdefault(tensor.name, (tensor.offset, tensor.length)) == (tensor.offset, tensor.length)
                if tensor.length >= PAGE_ALIGN_FROM:
                    assert tensor.offset % PAGE == 0
            else:
                assert tensor.location == f"{task}.weights"
    assert set(placed) == set(shared)
    data_bytes = sum(length for _, length in placed.values())
    assert data_bytes == 4 * result.report["params"]["shared"]
    size = (export.directory / SHARED_WEIGHTS).stat().st_size
    assert data_bytes <= size < data_bytes + PAGE * len(placed)
    assert manifest.shared_bytes == size and manifest.shared_tensors == len(shared)
    files = json.loads((export.directory / "manifest.json").read_text())["files"]
    assert set(files) == {SHARED_WEIGHTS, *(f"{t}.onnx" for t in TASKS), *(f"{t}.weights" for t in TASKS)}
    assert read_manifest(export.directory) == manifest
    assert [t.specific_bytes for t in manifest.tasks] == [files[f"{t}.weights"]["bytes"] for t in TASKS]


def test_the_same_model_exports_to_the_same_bytes(three, tmp_path: Path):
    zipped_path, _, export = three
    again = export_tasks(zipped_path, tmp_path / "again")
    for name in sorted(p.name for p in export.directory.iterdir()):
        assert (export.directory / name).read_bytes() == (again.directory / name).read_bytes(), name


def test_the_cli_writes_the_folder_and_refuses_a_non_empty_one(three, tmp_path: Path, capsys):
    zipped_path, _, _ = three
    out = tmp_path / "cli"
    out.mkdir()  # an empty folder is fine
    assert main(["export-tasks", str(zipped_path), "-o", str(out)]) == 0
    assert (out / "manifest.json").is_file()
    before = sorted(p.name for p in out.iterdir())
    assert main(["export-tasks", str(zipped_path), "-o", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli"]  # no staging folder left


def test_a_model_that_is_not_zipped_is_refused_and_nothing_is_written(tmp_path: Path, capsys):
    plain = tmp_path / "plain.onnx"
    onnx.save(builders.mlp([4, 5, 3]), str(plain))
    with pytest.raises(InputError, match="not a zipped model"):
        export_tasks(plain, tmp_path / "out")
    assert main(["export-tasks", str(plain), "-o", str(tmp_path / "out")]) == 2
    assert "not a zipped model" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.onnx"]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(InputError, match="not empty.*; .*not a zipped model"):  # every blocker at once
        export_tasks(plain, tmp_path / "full")


@pytest.mark.slow
def test_three_zoo_tasks_at_share_0_9_export_exactly(zoo, tmp_path: Path):
    entries = [zoo_model(zoo, n) for n in ("lenet5_mnist_s0", "lenet5_fashion", "lenet5_fashion_super4")]
    result = zip_models([e["file"] for e in entries], [e["data"]["train"] for e in entries], tmp_path / "z.onnx",
                        names=list(TASKS), share=0.9, calibration_limit=128)
    export = export_tasks(tmp_path / "z.onnx", tmp_path / "out")
    shared_data = 4 * result.report["params"]["shared"]
    assert shared_data <= export.manifest.shared_bytes < shared_data + PAGE * export.manifest.shared_tensors
    x = {"image": np.load(entries[1]["data"]["test"])["image"][:32]}
    both = _exact(tmp_path / "z.onnx", x)
    for t, (task, entry) in enumerate(zip(TASKS, entries)):
        (y,) = _exact(export.directory / f"{task}.onnx", x)
        np.testing.assert_allclose(y, both[t], rtol=0, atol=1e-6)
        assert export.manifest.task(task).outputs == [entry["output"]]


def test_a_narrower_task_keeps_reading_the_shared_weight(tmp_path: Path):
    a, b = builders.mlp([8, 12, 6, 3], seed=1), builders.mlp([6, 12, 6, 3], seed=2)
    calib = [builders.random_inputs(a, 64, seed=1), builders.random_inputs(b, 64, seed=2)]
    zipped = zip_models([a, b], calib, tmp_path / "z.onnx", share=0.5, separate_inputs=True).model
    export = export_tasks(tmp_path / "z.onnx", tmp_path / "out")
    feeds = {"a/x": calib[0]["x"][:7], "b/x": calib[1]["x"][:7]}
    both = _exact(zipped, feeds)
    for t, task in enumerate(("a", "b")):
        assert export.manifest.task(task).inputs == ["x"]
        (y,) = _exact(export.directory / f"{task}.onnx", {"x": feeds[f"{task}/x"]})
        np.testing.assert_allclose(y, both[t], rtol=0, atol=1e-6)
    model_b = onnx.load(str(export.directory / "b.onnx"), load_external_data=False)
    assert "Slice" in [n.op_type for n in model_b.graph.node]  # the shared weight is stored once, sliced at run time


RUNNER = """
import json, sys
import numpy as np
import onnxruntime as ort
options = ort.SessionOptions()
options.add_session_config_entry("session.disable_prepacking", "1")
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
feeds = dict(np.load(sys.argv[1]))
out = {"version": ort.__version__}
for path in sys.argv[2:]:
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    out[path] = [o.tolist() for o in session.run(None, feeds)]
print(json.dumps(out))
"""


@pytest.mark.skipif(not OTHER, reason="set ONNX_ZIP_OTHER_PYTHON to a Python with the other onnxruntime (.ci/run does)")
def test_exported_models_run_in_the_other_runtime(three, tmp_path: Path):
    zipped_path, result, export = three
    feeds = builders.random_inputs(result.model, 3, seed=4)
    np.savez(tmp_path / "in.npz", **feeds)
    paths = [str(export.directory / f"{t}.onnx") for t in TASKS]
    done = subprocess.run([OTHER, "-c", RUNNER, str(tmp_path / "in.npz"), *paths], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["version"] != runtime.runtime_version()
    for path in paths:
        (mine,) = _exact(path, feeds)
        np.testing.assert_allclose(np.asarray(got[path][0], dtype=np.float32), mine, rtol=1e-5, atol=1e-5)
