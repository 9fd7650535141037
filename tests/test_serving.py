"""``TaskSwitcher`` and ``serve-bench`` on an exported folder; load-time errors are one InputError."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import builders
from onnx_zip import runtime
from onnx_zip.cli.main import main
from onnx_zip.deploy.export import export_tasks
from onnx_zip.errors import InputError
from onnx_zip.serving import TaskSwitcher
from onnx_zip.zipper.api import zip_models


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Two MLPs zipped at share 0.75 (``z.onnx``) and exported next to it (``out/``)."""
    folder = tmp_path_factory.mktemp("serving")
    a, b = builders.mlp([6, 16, 8, 3], seed=1), builders.mlp([6, 16, 8, 3], seed=2)
    calib = [builders.random_inputs(a, 64, seed=1), builders.random_inputs(b, 64, seed=2)]
    zip_models([a, b], calib, folder / "z.onnx", names=["a", "b"], share=0.75)
    export_tasks(folder / "z.onnx", folder / "out")
    return folder


def _copy(exported: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(exported / "out", tmp_path / "copy"))


@pytest.mark.parametrize("map_shared", [True, False])
def test_switching_runs_each_task_like_the_zipped_model(exported, map_shared):
    x = {"x": np.random.default_rng(3).standard_normal((5, 6)).astype(np.float32)}
    both = runtime.make_session(exported / "z.onnx").run(None, x)
    switcher = TaskSwitcher(exported / "out", map_shared=map_shared, threads=1)
    assert switcher.tasks == ["a", "b"] and switcher.open_tasks == []
    for t, task in enumerate(switcher.tasks):
        switcher.switch(task)
        assert switcher.active == task
        np.testing.assert_allclose(switcher.run(x)["y"], both[t], rtol=1e-6, atol=1e-6)
    first = switcher.session("a")
    np.testing.assert_allclose(switcher.run(x, task="a")["y"], both[0], rtol=1e-6, atol=1e-6)
    assert switcher.session("a") is first and switcher.open_tasks == ["a", "b"]
    switcher.close("a")
    assert switcher.open_tasks == ["b"] and switcher.active is None


def test_running_without_a_task_or_with_an_unknown_one_is_refused(exported):
    switcher = TaskSwitcher(exported / "out")
    with pytest.raises(InputError, match="no active task"):
        switcher.run({"x": np.zeros((1, 6), np.float32)})
    with pytest.raises(InputError, match="no task 'c'"):
        switcher.switch("c")


def test_a_missing_weights_file_is_one_input_error(exported, tmp_path: Path):
    folder = _copy(exported, tmp_path)
    (folder / "shared.weights").unlink()
    (folder / "b.weights").unlink()
    with pytest.raises(InputError, match=r"b\.weights is missing; shared\.weights is missing"):
        TaskSwitcher(folder)


def test_a_truncated_weights_file_is_one_input_error(exported, tmp_path: Path):
    folder = _copy(exported, tmp_path)
    data = (folder / "shared.weights").read_bytes()
    (folder / "shared.weights").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="shared.weights has .* bytes.*truncated"):
        TaskSwitcher(folder, verify=False)


def test_an_altered_weights_file_fails_the_sha256_check(exported, tmp_path: Path):
    folder = _copy(exported, tmp_path)
    data = bytearray((folder / "a.weights").read_bytes())
    data[-1] ^= 0xFF
    (folder / "a.weights").write_bytes(bytes(data))
    with pytest.raises(InputError, match="a.weights does not match its sha256"):
        TaskSwitcher(folder)


def test_a_folder_without_a_manifest_is_refused(tmp_path: Path):
    with pytest.raises(InputError, match="no manifest.json"):
        TaskSwitcher(tmp_path)


def test_a_model_that_cannot_be_loaded_is_one_input_error(exported, tmp_path: Path):
    folder = _copy(exported, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "a.onnx").write_bytes(b"not a model")
    manifest["files"]["a.onnx"] = {"bytes": 11, "sha256": hashlib.sha256(b"not a model").hexdigest()}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="task a: cannot load"):
        TaskSwitcher(folder).switch("a")


@pytest.mark.slow
def test_serve_bench_prints_every_way_of_serving(exported, capsys):
    assert main(["serve-bench", str(exported / "out"), "--repeats", "1", "--json", str(exported / "bench.json")]) == 0
    table = capsys.readouterr().out
    for label in ("TaskSwitcher", "one session per task file", "stand-alone", "multi-output"):
        assert label in table
    figures = json.loads((exported / "bench.json").read_text())
    assert len(figures["rows"]) == 4 and all(row["cold_ms"] > 0 for row in figures["rows"])


def test_serve_bench_refuses_a_broken_folder(exported, tmp_path: Path, capsys):
    folder = _copy(exported, tmp_path)
    (folder / "a.weights").unlink()
    assert main(["serve-bench", str(folder)]) == 2
    assert "a.weights is missing" in capsys.readouterr().err
