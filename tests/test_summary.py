"""Summaries: ``onnx-zip report`` and ``zip --summary`` write Markdown tables holding the report's
numbers and real PNG plots beside them; bad reports exit 2 and write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import builders
from conftest import assert_one_error_line, run_cli
from onnx_zip.reporting import plots, render_markdown, write_summary
from onnx_zip.zipper.api import zip_models

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


cli = run_cli


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny MLPs with calibration data, and the JSON report of their zip."""
    folder = tmp_path_factory.mktemp("summary")
    for name, seed in (("a", 0), ("b", 1)):
        model = builders.mlp([12, 16, 10, 4], seed=seed)
        onnx.save(model, folder / f"{name}.onnx")
        np.savez(folder / f"{name}.npz", **builders.random_inputs(model, 64, seed=seed))
    zip_models([folder / "a.onnx", folder / "b.onnx"], [folder / "a.npz", folder / "b.npz"], folder / "z.onnx",
               names=["left", "right"], share_per_layer=[0.25, 3], report_path=folder / "z.json")
    return {"folder": folder, "report": folder / "z.json"}


def layerwise_and_sweep_report() -> dict:
    """A hand-made report with every section (no model work)."""
    return {
        "tasks": ["a", "b"],
        "params": {"a": 100, "b": 100, "zipped": 150, "shared": 50},
        "layers": [
            {"layer": "layer1_dense", "kind": "dense", "neurons": [10, 10], "shared": 7, "costs": list(np.linspace(0.1, 2, 7))},
            {"layer": "layer2_dense", "kind": "dense", "neurons": [6, 8], "shared": 2, "costs": [0.0, 0.5]},
        ],
        "layerwise": [
            {"layer": "layer1_dense", "shared": 7, "steps": 10, "accuracy_before": {"a": 0.9, "b": 0.8},
             "accuracy_after": {"a": 0.95, "b": 0.85}, "seconds": 1.0},
            {"layer": "layer2_dense", "shared": 2, "steps": 10, "accuracy_before": {"a": 0.93, "b": 0.83},
             "accuracy_after": {"a": 0.96, "b": 0.86}, "seconds": 1.0},
        ],
        "sweep": [
            {"share": s, "params": {"zipped": 200 - 50 * s, "shared": 50 * s}, "shared_fraction": s / 2,
             "accuracy": {"a": 0.9 - 0.1 * s, "b": 0.8 - 0.2 * s}} for s in (0.0, 0.5, 1.0)
        ],
        "original_accuracy": {"a": 0.9, "b": 0.8},
        "evaluation": {"a": {"original": 0.9, "zipped": 0.85, "finetuned": 0.89}, "b": {"original": 0.8, "zipped": 0.7}},
    }


def test_report_command_writes_tables_and_plots(pair, tmp_path):
    pytest.importorskip("matplotlib")
    report = json.loads(pair["report"].read_text())
    result = cli("report", pair["report"], "-o", tmp_path / "summary.md")
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "summary.md").read_text()
    for layer in report["layers"]:
        own = [n - layer["shared"] for n in layer["neurons"]]
        row = f"| {layer['layer']} | {layer['kind']}"
        line = next(line for line in text.splitlines() if line.startswith(row))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2:7] == [str(n) for n in [*layer["neurons"], layer["shared"], *own]]
    assert f"| zipped (stored) | {report['params']['zipped']:,} |" in text
    images = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in images] == ["summary_costs.png", "summary_shared.png"]
    for image in images:
        data = image.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
        assert f"]({image.name})" in text


def test_every_plot_is_drawn_from_a_full_report(tmp_path):
    pytest.importorskip("matplotlib")
    summary = write_summary(layerwise_and_sweep_report(), tmp_path / "card.md")
    assert [p.name for p in summary.images] == ["card_shared.png", "card_costs.png", "card_layerwise.png", "card_sweep.png"]
    assert all(p.read_bytes().startswith(PNG_MAGIC) and p.stat().st_size > 5000 for p in summary.images)
    text = summary.markdown.read_text()
    assert "| layer1_dense | 7 | 10 | 90.00% | 80.00% | 95.00% | 85.00% |" in text
    assert "| a | 90.00% | 85.00% | 89.00% |" in text and "| b | 80.00% | 70.00% | - |" in text
    again = write_summary(layerwise_and_sweep_report(), tmp_path / "card.md")
    assert [p.read_bytes() for p in again.images] == [p.read_bytes() for p in summary.images]


def test_without_matplotlib_tables_and_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "available", lambda: False)
    summary = write_summary(layerwise_and_sweep_report(), tmp_path / "s.md")
    assert summary.images == [] and list(tmp_path.glob("*.png")) == []
    text = summary.markdown.read_text()
    assert "matplotlib is not installed" in text and "| layer2_dense | dense | 6 | 8 | 2 | 4 | 6 |" in text
    assert render_markdown(layerwise_and_sweep_report()).count("## ") >= 5


def test_zip_summary_option(pair, tmp_path):
    folder = pair["folder"]
    result = cli("zip", folder / "a.onnx", folder / "b.onnx", "--calib", folder / "a.npz", "--calib", folder / "b.npz",
                 "--names", "left,right", "--summary", tmp_path / "zip.md", "-o", tmp_path / "z.onnx")
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "zip.md").read_text()
    assert "| layer1_dense | dense | 16 | 16 | 8 | 8 | 8 |" in text


@pytest.mark.parametrize("content", [None, "{not json", '{"tasks": []}', '{"tasks": ["a"], "layers": [{"layer": 1}]}'])
def test_report_bad_input_exits_2_and_writes_nothing(tmp_path, content):
    report = tmp_path / "report.json"
    if content is not None:
        report.write_text(content)
    out = tmp_path / "out"
    out.mkdir()
    result = cli("report", report, "-o", out / "summary.md")
    assert_one_error_line(result)
    assert list(out.iterdir()) == []


def test_report_to_a_missing_folder_exits_2(pair, tmp_path):
    result = cli("report", pair["report"], "-o", tmp_path / "nowhere" / "summary.md")
    assert_one_error_line(result)
    assert "does not exist" in result.stderr
