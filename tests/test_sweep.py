"""``onnx-zip sweep``: one calibration, several sharing levels, a table, a JSON report, a summary
with the accuracy-vs-sharing curve; bad levels or data exit 2 and leave nothing behind."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli, zoo_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


cli = run_cli


def base_args(zoo) -> list[str]:
    a, b = zoo_model(zoo, "lenet300_mnist_s0"), zoo_model(zoo, "lenet300_mnist_s1")
    return ["sweep", a["file"], b["file"], "--calib", a["data"]["train"], "--calib", b["data"]["train"], "--names", "s0,s1",
            "--eval", f"s0={a['data']['test']}", "--eval", f"s1={b['data']['test']}", "--calib-limit", "256", "--eval-limit", "200"]


def test_sweep_table_report_and_curve(zoo, tmp_path):
    out = tmp_path / "sweep"
    result = cli(*base_args(zoo), "--shares", "0,0.5,1", "--out", out)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "sweep.json").read_text())
    levels = report["sweep"]
    assert [level["share"] for level in levels] == [0.0, 0.5, 1.0]
    assert levels[0]["params"]["shared"] == 0 and levels[0]["accuracy"] == report["original_accuracy"]
    assert levels[0]["shared_fraction"] < levels[1]["shared_fraction"] < levels[2]["shared_fraction"]
    assert all(set(level["accuracy"]) == {"s0", "s1"} for level in levels)
    lines = result.stdout.splitlines()
    assert lines[0].split()[:5] == ["share", "params", "shared", "s0", "s1"]
    assert [line.split()[0] for line in lines[1:5]] == ["orig", "0.00", "0.50", "1.00"]
    assert f"{levels[1]['params']['zipped']:,}" in lines[3]
    text = (out / "sweep.md").read_text()
    assert "## Sharing sweep" in text and f"| 0.5 | {levels[1]['params']['zipped']:,} |" in text
    if plots_available():
        image = out / "sweep_sweep.png"
        assert image.read_bytes().startswith(PNG_MAGIC) and image.stat().st_size > 5000
        assert "](sweep_sweep.png)" in text


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--shares", "0,1.5"], "1.5 is not a fraction"),
        (["--shares", "a,b"], "expected comma-separated fractions"),
        (["--finetune-steps", "3"], "--finetune-steps needs --train"),
    ],
)
def test_sweep_bad_input_exits_2_without_outputs(zoo, tmp_path, extra, needle):
    out = tmp_path / "sweep"
    result = cli(*base_args(zoo), *extra, "--out", out)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnx-zip: error: ") and needle in lines[0]
    assert not out.exists()


def test_sweep_missing_eval_task_exits_2(zoo, tmp_path):
    args = base_args(zoo)
    i = args.index("--eval", args.index("--eval") + 1)
    del args[i:i + 2]
    out = tmp_path / "sweep"
    result = cli(*args, "--out", out)
    assert result.returncode == 2 and "no eval data for task 's1'" in result.stderr, result.stderr
    assert not out.exists()
