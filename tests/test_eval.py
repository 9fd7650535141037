"""Accuracy evaluation, data binding and the eval CLI's error exits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_cli
from onnx_zip import model_io
from onnx_zip.data import bind_arrays, model_inputs
from onnx_zip.errors import DataError
from onnx_zip.evaluate import evaluate

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "models" / "manifest.json"


def classifier(path: Path, classes: int = 3) -> Path:
    """image (N, 2) -> Gemm -> logits (N, classes): class = argmax(W x), W = identity-like."""
    w = np.zeros((classes, 2), dtype=np.float32)
    w[0, 0] = 1.0
    w[1, 1] = 1.0
    w[2:, :] = -1.0
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["image", "w"], ["logits"], name="fc", transB=1)],
        "clf",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(w, "w")],
    )
    model_io.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path




def test_accuracy_counts_argmax_matches(tmp_path):
    model = classifier(tmp_path / "m.onnx")
    x = np.array([[1, 0], [0, 1], [-1, -1], [2, 0], [0, 3]], dtype=np.float32)
    label = np.array([0, 1, 2, 1, 1])
    np.savez(tmp_path / "d.npz", image=x, label=label)
    result = evaluate(model, tmp_path / "d.npz", batch_size=2)
    assert (result.correct, result.count, result.output) == (4, 5, "logits")
    assert result.accuracy == pytest.approx(0.8, abs=0)


def test_single_input_accepts_another_array_name(tmp_path):
    model = classifier(tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", pixels=np.ones((4, 2), np.float32), label=np.zeros(4, np.int64))
    assert evaluate(model, tmp_path / "d.npz").count == 4


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"a": np.ones((4, 2), np.float32), "b": np.ones((4, 2), np.float32), "label": np.zeros(4, int)},
            "no array named 'image'",
        ),
        ({"image": np.ones((4, 3), np.float32), "label": np.zeros(4, int)}, r"shape \(4, 3\).*image \(float32, Nx2\)"),
        ({"image": np.ones((4, 2), np.float64), "label": np.zeros(4, int)}, "dtype float64, the model expects float32"),
        ({"image": np.ones((4, 2), np.float32)}, "no 'label' array"),
        ({"image": np.ones((4, 2), np.float32), "label": np.zeros(3, int)}, "3 labels for 4 samples"),
        ({"image": np.full((4, 2), np.nan, np.float32), "label": np.zeros(4, int)}, "NaN or Inf"),
        ({"image": np.ones((4, 2), np.float32), "label": np.full(4, 0.5)}, "integer class indices"),
    ],
)
def test_bad_data_is_named(tmp_path, arrays, message):
    model = onnx.load(str(classifier(tmp_path / "m.onnx")))
    with pytest.raises(DataError, match=message):
        bind_arrays(arrays, model_inputs(model), source="data d.npz", need_labels=True)


def test_labels_out_of_range(tmp_path):
    model = classifier(tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", image=np.ones((2, 2), np.float32), label=np.array([0, 7]))
    with pytest.raises(DataError, match="model has 3 classes"):
        evaluate(model, tmp_path / "d.npz")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("not_onnx", "not a readable ONNX model"),
        ("wrong_name", "no array named 'image'"),
        ("wrong_shape", "the model expects image"),
        ("wrong_dtype", "dtype int32"),
        ("no_labels", "no 'label' array"),
        ("pickle", "without pickles"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, setup, message):
    model = classifier(tmp_path / "m.onnx")
    data = tmp_path / "d.npz"
    good = np.ones((4, 2), np.float32)
    arrays = {
        "not_onnx": {"image": good, "label": np.zeros(4, int)},
        "wrong_name": {"a": good, "b": good, "label": np.zeros(4, int)},
        "wrong_shape": {"image": np.ones((4, 5), np.float32), "label": np.zeros(4, int)},
        "wrong_dtype": {"image": np.ones((4, 2), np.int32), "label": np.zeros(4, int)},
        "no_labels": {"image": good},
        "pickle": {"image": good, "label": np.array([{"a": 1}] * 4, dtype=object)},
    }[setup]
    np.savez(data, **arrays)
    if setup == "not_onnx":
        model = tmp_path / "bad.onnx"
        model.write_text("hello")
    result = run_cli("eval", str(model), "--data", str(data))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_cli_json(tmp_path):
    model = classifier(tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", image=np.eye(2, dtype=np.float32), label=np.array([0, 1]))
    result = run_cli("eval", str(model), "--data", str(tmp_path / "d.npz"), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["accuracy"] == 1.0


ZOO = json.loads(MANIFEST.read_text())["models"] if MANIFEST.exists() else []
FLOORS = {
    "mlp_mnist_sklearn": 0.955,
    "lenet300": 0.955,
    "lenet5_mnist": 0.98,
    "lenet5_fashion_super4": 0.96,
    "lenet5_fashion": 0.89,
    "resnet_mnist": 0.985,
    "resnet_fashion": 0.90,
}


def test_the_zoo_is_bundled():
    assert {m["name"] for m in ZOO} >= {
        "lenet300_mnist_s0",
        "lenet300_mnist_s1",
        "lenet5_mnist_s0",
        "lenet5_mnist_s1",
        "lenet5_fashion",
        "lenet5_fashion_super4",
        "resnet_mnist",
        "resnet_fashion",
        "mlp_mnist_sklearn_s0",
        "mlp_mnist_sklearn_s1",
    }


@pytest.mark.parametrize("entry", ZOO, ids=[m["name"] for m in ZOO])
@pytest.mark.slow
def test_zoo_accuracy_reproduces_the_manifest_and_meets_its_floor(entry):
    models = MANIFEST.parent
    assert model_io.sha256_file(models / entry["file"]) == entry["sha256"]
    result = evaluate(models / entry["file"], models / entry["data"]["test"], output=entry["output"])
    assert (result.correct, result.count) == (entry["correct"], entry["count"])
    assert result.accuracy == entry["accuracy"]
    floor = next((v for k, v in FLOORS.items() if entry["name"].startswith(k)), None)
    if floor is not None:
        assert result.accuracy >= floor
