"""The runtime layer: exactly one onnxruntime distribution, torch-free training import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from onnx_zip import runtime
from onnx_zip.errors import RuntimeSetupError


def _fake_distribution(site: Path, name: str, version: str) -> None:
    """A dist-info folder claiming the top-level package ``onnxruntime``."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "top_level.txt").write_text("onnxruntime\n")


@pytest.fixture
def clear_caches():
    original = runtime.installed_runtimes
    original.cache_clear()
    yield
    original.cache_clear()


def test_exactly_one_runtime_is_installed_here():
    assert len(runtime.installed_runtimes()) == 1
    assert runtime.check_installation() in runtime.INFER_DISTRIBUTIONS + runtime.TRAIN_DISTRIBUTIONS


def test_both_runtimes_give_the_repair_command(monkeypatch, clear_caches):
    monkeypatch.setattr(runtime, "installed_runtimes", lambda: ("onnxruntime", "onnxruntime-training-cpu"))
    with pytest.raises(RuntimeSetupError) as err:
        runtime.check_installation()
    message = str(err.value)
    assert "pip uninstall -y onnxruntime onnxruntime-training-cpu" in message
    assert runtime.TRAINING_PIN in message


def test_no_runtime_says_what_to_install(monkeypatch, clear_caches):
    monkeypatch.setattr(runtime, "installed_runtimes", lambda: ())
    with pytest.raises(RuntimeSetupError, match=r"onnx-zip\[infer\]"):
        runtime.check_installation()


def test_cli_exits_2_with_repair_command_when_both_are_installed(tmp_path):
    """A real second distribution on sys.path, seen by importlib.metadata, as pip would leave it."""
    present = runtime.installed_runtimes()[0]
    other = "onnxruntime" if present in runtime.TRAIN_DISTRIBUTIONS else "onnxruntime-training-cpu"
    _fake_distribution(tmp_path, other, "9.9.9")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    result = subprocess.run(
        [sys.executable, "-m", "onnx_zip", "eval", "model.onnx", "--data", "d.npz"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "pip uninstall -y" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(not runtime.has_training(), reason="the installed runtime is onnxruntime (inference only)")
def test_training_imports_without_torch():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # make any torch import fail\n"
        "from onnx_zip import runtime\n"
        "m = runtime.training_modules()\n"
        "assert m.artifacts.generate_artifacts and m.api.Module\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.skipif(runtime.has_training(), reason="the installed runtime is a training build")
def test_training_on_inference_runtime_gives_repair_command():
    with pytest.raises(RuntimeSetupError, match="onnxruntime-training-cpu==1.19.2"):
        runtime.training_modules()
