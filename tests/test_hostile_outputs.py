"""Outputs never replace inputs: paths.check_outputs, protect= on writes, the track_inputs safety net."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from hostile import good_data, mlp, write_model

from onnx_zip import model_io
from onnx_zip.cli.main import main
from onnx_zip.errors import InputError
from onnx_zip.paths import check_outputs, identity, track_inputs


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    write_model(mlp(0), tmp_path / "a.onnx")
    write_model(mlp(1), tmp_path / "b.onnx")
    np.savez(tmp_path / "d.npz", **good_data())
    return {"a": tmp_path / "a.onnx", "b": tmp_path / "b.onnx", "d": tmp_path / "d.npz"}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_distinct_paths_pass(files, tmp_path):
    check_outputs(
        {"model a": files["a"], "calib": files["d"]}, {"-o": tmp_path / "z.onnx", "--report": tmp_path / "z.json"}
    )
    check_outputs([files["a"], None], [None, tmp_path / "missing_folder" / "z.onnx"])


@pytest.mark.parametrize("spelling", ["same", "relative", "dotdot", "symlink", "hardlink", "symlinked-folder"])
def test_output_that_is_an_input_is_refused(files, tmp_path, monkeypatch, spelling):
    a = files["a"]
    if spelling == "same":
        out = a
    elif spelling == "relative":
        monkeypatch.chdir(tmp_path)
        out = Path("a.onnx")
    elif spelling == "dotdot":
        (tmp_path / "sub").mkdir()
        out = tmp_path / "sub" / ".." / "a.onnx"
    elif spelling == "symlink":
        out = tmp_path / "link.onnx"
        os.symlink(a, out)
    elif spelling == "hardlink":
        out = tmp_path / "hard.onnx"
        os.link(a, out)
    else:
        os.symlink(tmp_path, tmp_path / "alias")
        out = tmp_path / "alias" / "a.onnx"
    with pytest.raises(InputError, match="would overwrite the input") as info:
        check_outputs({"model a": a}, {"-o": out})
    assert str(a) in str(info.value) and str(out) in str(info.value)
    assert "--force or not" in str(info.value)


def test_two_outputs_that_are_one_file_are_refused(files, tmp_path):
    out = tmp_path / "z.onnx"
    with pytest.raises(InputError, match="are the same file"):
        check_outputs([files["a"]], {"-o": out, "--report": tmp_path / "." / "z.onnx"})


def test_every_clash_is_reported_at_once(files, tmp_path):
    with pytest.raises(InputError) as info:
        check_outputs({"a": files["a"], "d": files["d"]}, {"-o": files["a"], "--summary": files["d"]})
    assert str(info.value).count("would overwrite") == 2


def test_identity_of_missing_file_has_no_inode(tmp_path):
    assert identity(tmp_path / "nope").inode is None


def test_save_model_protect_refuses_and_keeps_the_input(files):
    before = digest(files["a"])
    with pytest.raises(InputError, match="would overwrite the input"):
        model_io.save_model(mlp(2), files["a"], protect=[files["a"]])
    with pytest.raises(InputError, match="would overwrite the input"):
        model_io.atomic_write_bytes(files["a"], b"{}", protect=[files["b"], files["a"]])
    assert digest(files["a"]) == before
    assert sorted(p.name for p in files["a"].parent.iterdir()) == ["a.onnx", "b.onnx", "d.npz"]


def test_tracked_inputs_cannot_be_replaced(files):
    with track_inputs():
        model_io.load_model(files["a"])
        with pytest.raises(InputError, match=f"would overwrite the input {files['a']}"):
            model_io.atomic_write_bytes(files["a"], b"x")
        model_io.atomic_write_bytes(files["a"].with_name("new.onnx"), b"x")  # a new path is fine
    model_io.atomic_write_bytes(files["a"].with_name("new.onnx"), b"y")  # outside the block nothing is tracked


@pytest.mark.parametrize("target", ["a", "d"])
def test_cli_inside_track_inputs_never_replaces_a_model_or_calibration_file(files, capsys, target):
    """The safety net the CLI gets by wrapping a command in track_inputs(): -o onto an input exits 2."""
    before = {k: digest(p) for k, p in files.items()}
    logging.getLogger().handlers.clear()
    with track_inputs():
        code = main(
            [
                "-q",
                "zip",
                str(files["a"]),
                str(files["b"]),
                "--calib",
                str(files["d"]),
                "--calib",
                str(files["d"]),
                "-o",
                str(files[target]),
                "--no-progress",
            ]
        )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "would overwrite the input" in err and len(err.strip().splitlines()) == 1
    assert {k: digest(p) for k, p in files.items()} == before
    assert sorted(p.name for p in files["a"].parent.iterdir()) == ["a.onnx", "b.onnx", "d.npz"]
