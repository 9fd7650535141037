"""``onnx-zip demo``: runs with its defaults on the bundled models and prints its table; a missing
models folder exits 2 with a hint to pass --models and writes nothing."""

from __future__ import annotations

import json

from conftest import REPO_ROOT, run_cli

PAIR_FILES = ["lenet5_mnist_s0.onnx", "lenet5_fashion.onnx"]


cli = run_cli


def test_demo_with_defaults_prints_the_table(tmp_path):
    assert all((REPO_ROOT / "models" / f).is_file() for f in PAIR_FILES), "the bundled LeNet-5 models are missing"
    result = cli("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    labels = [line.split("  ")[0].strip() for line in lines[2:8]]
    assert labels == ["mnist accuracy", "fashion accuracy", "parameters", "file size", "latency batch 1", "latency batch 64"]
    assert lines[8].startswith("parameters saved: ")
    assert lines[1].split() == ["original", "zipped", "zipped", "+", "fine-tuned"]
    for line in lines[2:4]:
        assert line.count("%") == 3
    out = tmp_path / "onnx_zip_demo"
    demo = json.loads((out / "demo.json").read_text())
    assert f"{demo['params']['original']:,}" in lines[4] and f"{demo['params']['zipped']:,}" in lines[4]
    assert demo["params"]["zipped"] < demo["params"]["original"]
    for task in ("mnist", "fashion"):
        assert set(demo["accuracy"][task]) == {"original", "zipped", "finetuned"}
        assert demo["accuracy"][task]["finetuned"] > 0.8
    for name in ("zipped.onnx", "zipped_finetuned.onnx", "report.json", "summary.md"):
        assert (out / name).is_file()
    assert "| mnist |" in (out / "summary.md").read_text()


def test_demo_without_models_exits_2_with_a_hint(tmp_path):
    result = cli("demo", "--models", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnx-zip: error: demo: ") and "--models DIR" in lines[0]
    assert not (tmp_path / "out").exists()


def test_demo_bad_setting_exits_2(tmp_path):
    result = cli("demo", "--share", "2", "--out", tmp_path / "out")
    assert result.returncode == 2 and "zip.share is 2.0, must be within [0, 1]" in result.stderr
    assert not (tmp_path / "out").exists()
