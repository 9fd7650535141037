"""``extract`` writes a slim stand-alone model: only the task's weights, original names, never
larger than the original model plus the metadata, same outputs as the zipped model's task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import builders
from conftest import zoo_model
from onnx_zip import runtime
from onnx_zip.cli.main import main
from onnx_zip.errors import InputError
from onnx_zip.pipeline import zip_models
from onnx_zip.zipper.extract import extract_file, extract_task, fold_constants, strip_task_prefix, task_subgraph

#: What an extracted model may add to its original: the provenance metadata.
METADATA_ALLOWANCE = 10 * 1024


def _run(model, feeds):
    # one thread, no graph optimisations: the same arithmetic in both graphs, so 1e-6 is a fair bound
    # (onnxruntime's fusions and thread-split sums otherwise move float32 logits by ~1e-6)
    return runtime.make_session(model, threads=1, optimize=False).run(None, feeds)


@pytest.fixture(scope="module")
def narrower_pair():
    """Two MLPs with different input widths zipped with separate inputs: task b reads a Slice
    of the shared first-layer weight in the zipped graph."""
    a, b = builders.mlp([8, 12, 6, 3], seed=1), builders.mlp([6, 12, 6, 3], seed=2)
    calib = [builders.random_inputs(a, 64, seed=1), builders.random_inputs(b, 64, seed=2)]
    zipped = zip_models([a, b], calib, share=0.5, separate_inputs=True).model
    return a, b, calib, zipped


def test_a_narrower_task_gets_only_its_columns_and_its_original_names(narrower_pair):
    a, b, calib, zipped = narrower_pair
    assert "Slice" in [n.op_type for n in task_subgraph(zipped, "b").graph.node]
    feeds = {"a/x": calib[0]["x"][:10], "b/x": calib[1]["x"][:10]}
    both = _run(zipped, feeds)
    for t, (task, original) in enumerate((("a", a), ("b", b))):
        slim = extract_task(zipped, task, keep_prefix=False)
        assert {n.op_type for n in slim.graph.node}.isdisjoint({"Slice", "Constant"})
        assert [i.name for i in slim.graph.input] == ["x"] and [o.name for o in slim.graph.output] == ["y"]
        (y,) = _run(slim, {"x": feeds[f"{task}/x"]})
        np.testing.assert_allclose(y, both[t], rtol=0, atol=1e-6)
        assert slim.ByteSize() <= original.ByteSize() + METADATA_ALLOWANCE


def test_keep_prefix_keeps_the_task_names(narrower_pair):
    _, _, _, zipped = narrower_pair
    kept = extract_task(zipped, "b")
    assert [i.name for i in kept.graph.input] == ["b/x"] and [o.name for o in kept.graph.output] == ["b/y"]


def test_folding_keeps_a_weight_other_nodes_still_read():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])
    w = onnx.numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4), "w")
    consts = [onnx.numpy_helper.from_array(np.array([v], dtype=np.int64), n)
              for n, v in (("s", 0), ("e", 2), ("ax", 1))]
    nodes = [
        onnx.helper.make_node("Slice", ["w", "s", "e", "ax"], ["w2"]),
        onnx.helper.make_node("MatMul", ["x", "w"], ["h"]),
        onnx.helper.make_node("MatMul", ["h", "w2"], ["y"]),
    ]
    model = onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", [x], [y], [w, *consts]),
                                   opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = {"x": np.ones((1, 4), dtype=np.float32)}
    (expected,) = _run(model, feeds)
    folded = fold_constants(model)
    assert [n.op_type for n in folded.graph.node] == ["MatMul", "MatMul"]
    assert sorted(t.name for t in folded.graph.initializer) == ["w", "w2"]
    np.testing.assert_array_equal(_run(folded, feeds)[0], expected)


@pytest.mark.slow
def test_every_bundled_task_is_no_larger_than_its_original(zoo, tmp_path: Path):
    entries = [zoo_model(zoo, n) for n in ("lenet5_mnist_s0", "lenet5_fashion", "lenet5_fashion_super4")]
    zipped_path = tmp_path / "z.onnx"
    result = zip_models(
        [e["file"] for e in entries], [e["data"]["train"] for e in entries], zipped_path,
        names=["mnist", "fashion", "super4"], share=0.9, calibration_limit=128,
    )
    x = np.load(entries[1]["data"]["test"])[entries[1]["input"]][:64]
    both = _run(result.model, {"image": x})
    for t, (task, entry) in enumerate(zip(("mnist", "fashion", "super4"), entries)):
        out = tmp_path / f"{task}.onnx"
        assert main(["-q", "extract", str(zipped_path), "--task", task, "-o", str(out)]) == 0
        assert out.stat().st_size <= Path(entry["file"]).stat().st_size + METADATA_ALLOWANCE
        slim = onnx.load(str(out))
        assert [o.name for o in slim.graph.output] == [entry["output"]]
        (y,) = _run(out, {"image": x})
        np.testing.assert_allclose(y, both[t], rtol=0, atol=1e-6)


def test_stripping_the_prefix_renames_an_inner_tensor_that_has_the_wanted_name():
    x = onnx.helper.make_tensor_value_info("t/x", onnx.TensorProto.FLOAT, [1, 2])
    y = onnx.helper.make_tensor_value_info("t/y", onnx.TensorProto.FLOAT, [1, 2])
    nodes = [onnx.helper.make_node("Relu", ["t/x"], ["y"]), onnx.helper.make_node("Neg", ["y"], ["t/y"])]
    model = onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", [x], [y]),
                                   opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert strip_task_prefix(model, "t") == {"t/x": "x", "t/y": "y"}
    assert [list(n.input) + list(n.output) for n in model.graph.node] == [["x", "y__1"], ["y__1", "y"]]
    onnx.checker.check_model(model, full_check=True)
    (out,) = _run(model, {"x": np.array([[1.0, -2.0]], dtype=np.float32)})
    np.testing.assert_array_equal(out, [[-1.0, 0.0]])


def test_a_model_that_is_not_zipped_is_refused(tmp_path: Path):
    plain = tmp_path / "plain.onnx"
    onnx.save(builders.mlp([4, 5, 3]), str(plain))
    with pytest.raises(InputError, match="not a zipped model"):
        extract_file(plain, "a", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
