"""The command line as users meet it: exit codes (2 for input, 1 for internal failures), -v/-q after the
subcommand, a quiet end on a closed pipe, swapped or already zipped files named, every mistake at
once, ``align --json`` accepted by ``zip --map``, options generated from the configuration."""

from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import builders
from conftest import REPO_ROOT, assert_one_error_line, run_cli
from onnx_zip.cli.options import options_of
from onnx_zip.config import GROUPS, iter_options
from onnx_zip.errors import InputError, InternalError, ModelError, OnnxZipError

cli_main = importlib.import_module("onnx_zip.cli.main")  # the package exports main() under the same name


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny MLPs (6 → 10 → 4 → 3), their calibration data, and their zip (share 0.5)."""
    folder = tmp_path_factory.mktemp("cli")
    files: dict[str, Path] = {}
    for s, name in ((1, "a"), (2, "b")):
        model = builders.mlp([6, 10, 4, 3], seed=s)
        files[name] = folder / f"{name}.onnx"
        files[name].write_bytes(model.SerializeToString())
        files[f"{name}_data"] = folder / f"{name}.npz"
        np.savez(files[f"{name}_data"], **builders.random_inputs(model, 64, seed=s))
    files["zipped"] = folder / "zipped.onnx"
    done = run_cli(
        "zip",
        files["a"],
        files["b"],
        "--calib",
        files["a_data"],
        "--calib",
        files["b_data"],
        "-o",
        files["zipped"],
        "--calib-limit",
        "0",
    )
    assert done.returncode == 0, done.stderr
    return files


def zip_args(pair: dict[str, Path], out: Path) -> list[object]:
    return ["zip", pair["a"], pair["b"], "--calib", pair["a_data"], "--calib", pair["b_data"], "-o", out]


def test_internal_errors_are_not_input_errors() -> None:
    assert issubclass(InternalError, OnnxZipError) and not issubclass(InternalError, InputError)
    assert issubclass(ModelError, InputError)


@pytest.mark.parametrize(
    ("raised", "code", "needle"),
    [
        (InputError("model m.onnx: bad", hint="fix it"), 2, "onnx-zip: error: model m.onnx: bad (fix it)"),
        (InternalError("initializer w created twice"), 1, "internal error: InternalError: initializer w created twice"),
        (KeyError("oops"), 1, "internal error: KeyError"),
    ],
)
def test_exit_codes(monkeypatch, pair, raised, code, needle) -> None:
    def fail(args):
        raise raised

    monkeypatch.setattr("onnx_zip.cli.inspect_cmd.run", fail)
    result = run_cli("inspect", pair["a"])
    assert_one_error_line(result, code=code) if code == 2 else None
    assert result.returncode == code and needle in result.stderr and "Traceback" not in result.stderr
    if code == 1:
        assert "please report" in result.stderr and "-v" in result.stderr
        verbose = run_cli("inspect", pair["a"], "-v")
        assert verbose.returncode == 1 and "Traceback" in verbose.stderr


def test_verbosity_before_and_after_the_subcommand(pair) -> None:
    for args in (["-q", "inspect", pair["a"]], ["inspect", pair["a"], "-q"], ["inspect", "-v", pair["a"]]):
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
    quiet_and_verbose = run_cli("-q", "inspect", pair["a"], "-v")
    assert quiet_and_verbose.returncode == 2 and "exclude each other" in quiet_and_verbose.stderr


def test_usage_errors_help_and_version_are_exit_codes() -> None:
    assert run_cli("--version").returncode == 0
    assert run_cli("zip", "--help").returncode == 0
    assert run_cli("nosuchcommand").returncode == 2


class _ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_pipe_ends_quietly_in_process(monkeypatch, pair, capsys) -> None:
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert cli_main.main(["inspect", str(pair["a"])]) == 0


def test_entry_point_in_a_real_process_with_a_closed_pipe(pair) -> None:
    """The one test through a real interpreter: ``python -m onnx_zip``, its stdout closed before it writes."""
    version = subprocess.run(
        [sys.executable, "-m", "onnx_zip", "--version"], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )
    assert version.returncode == 0 and version.stdout.startswith("onnx-zip ")
    process = subprocess.Popen(
        [sys.executable, "-m", "onnx_zip", "inspect", "--json", str(pair["zipped"])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # like `| head` having exited
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_a_model_given_as_data_and_data_given_as_a_model_are_named(pair, tmp_path) -> None:
    result = run_cli("eval", pair["a"], "--data", pair["b"])
    assert_one_error_line(result, "--data", "is an .onnx model where .npz data is expected")
    result = run_cli(
        "zip", pair["a"], pair["b_data"], "--calib", pair["a_data"], "--calib", pair["a"], "-o", tmp_path / "z.onnx"
    )
    assert_one_error_line(result, "2 problems", "is .npz data, not an .onnx model", "is an .onnx model where .npz")
    assert not (tmp_path / "z.onnx").exists()


def test_zipping_a_zipped_model_says_so(pair, tmp_path) -> None:
    result = run_cli(
        "zip",
        pair["zipped"],
        pair["b"],
        "--calib",
        pair["a_data"],
        "--calib",
        pair["b_data"],
        "-o",
        tmp_path / "again.onnx",
    )
    assert_one_error_line(result, str(pair["zipped"]), "already a zipped model", "tasks a, b", "extract")
    assert not (tmp_path / "again.onnx").exists()


def test_every_mistake_of_a_command_line_at_once(pair, tmp_path) -> None:
    result = run_cli(
        "zip",
        pair["a"],
        pair["b"],
        "--calib",
        pair["a_data"],
        "--share",
        "1.5",
        "--max-cost",
        "0.1",
        "--match",
        "best",
        "--calib-limit",
        "-3",
        "-o",
        tmp_path / "missing" / "z.onnx",
    )
    assert_one_error_line(
        result,
        "6 problems",
        "--share (zip.share) is 1.5",
        "--match (zip.match) is 'best'",
        "only one sharing policy",
        "--calib-limit",
        "1 --calib for 2 models",
        "does not exist",
    )


def test_align_json_is_accepted_by_zip_map(pair, tmp_path) -> None:
    aligned = run_cli("align", pair["a"], pair["b"], "--json")
    assert aligned.returncode == 0, aligned.stderr
    mapping = tmp_path / "alignment.json"
    mapping.write_text(aligned.stdout)
    assert [layer["nodes"] for layer in json.loads(aligned.stdout)["layers"]]
    plain, mapped = tmp_path / "plain.onnx", tmp_path / "mapped.onnx"
    assert run_cli(*zip_args(pair, plain)).returncode == 0
    done = run_cli(*zip_args(pair, mapped), "--map", mapping)
    assert done.returncode == 0, done.stderr
    # the positional alignment, stated explicitly: the same graph (the metadata records the mapping)
    assert onnx.load(mapped).graph == onnx.load(plain).graph
    again = run_cli("align", pair["a"], pair["b"], "--map", mapping)
    assert again.returncode == 0, again.stderr
    mapping.write_text(json.dumps({"layers": "nonsense"}))
    assert_one_error_line(run_cli(*zip_args(pair, mapped), "--map", mapping), "--map", "align --json")


def test_options_are_generated_from_the_configuration_once_each() -> None:
    parser = cli_main.build_parser()
    sub = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for command, sections in (("zip", ("zip", "calibration", "retrain")), ("finetune", ("finetune",))):
        flags = [s for a in sub[command]._actions for s in a.option_strings]
        assert len(flags) == len(set(flags)), command
        for flag in options_of(sections):
            assert flag in flags, (command, flag)
    helps = {}
    for section in ("zip", "calibration", "finetune", "retrain"):
        for option in iter_options(GROUPS[section]):
            if option.flag:
                helps.setdefault(option.flag, set()).add(option.kind)
    assert all(len(kinds) == 1 for kinds in helps.values()), helps  # one meaning per spelling


def test_old_spellings_still_work(pair, tmp_path) -> None:
    out = tmp_path / "z.onnx"
    done = run_cli(*zip_args(pair, out), "--batch-size", "16")
    assert done.returncode == 0, done.stderr
    help_text = run_cli("zip", "--help").stdout
    assert "--calib-batch" in help_text and "--batch-size" not in help_text


def test_calibrate_once_then_zip_from_the_statistics_gives_the_same_bytes(pair, tmp_path) -> None:
    stats = tmp_path / "stats.npz"
    done = run_cli("calibrate", pair["a"], pair["b"], "--calib", pair["a_data"], "--calib", pair["b_data"], "-o", stats)
    assert done.returncode == 0, done.stderr
    assert stats.is_file() and "hessian statistics" in done.stdout
    fresh, reused = tmp_path / "fresh.onnx", tmp_path / "reused.onnx"
    assert run_cli(*zip_args(pair, fresh), "--share", "0.75").returncode == 0
    done = run_cli(*zip_args(pair, reused), "--share", "0.75", "--stats", stats)
    assert done.returncode == 0, done.stderr
    assert reused.read_bytes() == fresh.read_bytes()
    no_data = run_cli("calibrate", pair["a"], pair["b"], "--pairing", "l2", "-o", tmp_path / "s2.npz")
    assert_one_error_line(no_data, "2 problems", "l2 pairing uses no statistics", "0 --calib for 2 models")
