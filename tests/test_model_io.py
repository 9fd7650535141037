"""Saving: opset/IR stamping, atomic writes, determinism; loading: clear errors."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_zip import model_io, runtime
from onnx_zip.errors import InputError, ModelError


def tiny_model(opset: int = 17, ir_version: int = 8) -> onnx.ModelProto:
    """x (N, 3) -> Gemm(W (2, 3), b (2,)) -> Relu -> y (N, 2)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((2, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(2).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc", transB=1),
         helper.make_node("Relu", ["h"], ["y"], name="relu")],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


@pytest.mark.parametrize(("opset", "want_opset", "want_ir"),
                         [(13, 17, 8), (17, 17, 8), (18, 18, 8), (20, 20, 9), (21, 21, 10)])
def test_save_stamps_opset_and_ir_and_loads(tmp_path, opset, want_opset, want_ir):
    model = tiny_model(opset=opset, ir_version=7)
    path = tmp_path / "m.onnx"
    model_io.save_model(model, path)
    saved = onnx.load(str(path))
    assert model_io.default_opset(saved) == want_opset
    assert saved.ir_version == want_ir <= model_io.MAX_IR_VERSION
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (y,) = runtime.make_session(path).run(None, {"x": x})
    (y0,) = runtime.make_session(tiny_model()).run(None, {"x": x})
    np.testing.assert_allclose(y, y0, rtol=0, atol=1e-6)


def test_save_refuses_opset_newer_than_21(tmp_path):
    with pytest.raises(ModelError, match="opset 22"):
        model_io.save_model(tiny_model(opset=22, ir_version=10), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_onnx_default_ir_version_is_overridden(tmp_path):
    model = tiny_model()
    model.ir_version = onnx.IR_VERSION  # what onnx.helper.make_model would stamp
    model_io.save_model(model, tmp_path / "m.onnx")
    assert onnx.load(str(tmp_path / "m.onnx")).ir_version == 8


def test_same_model_same_bytes(tmp_path):
    model_io.save_model(tiny_model(), tmp_path / "a.onnx")
    model_io.save_model(tiny_model(), tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(InputError, match="No space left"):
        model_io.save_model(tiny_model(), target)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_invalid_model_is_refused_before_writing(tmp_path):
    model = tiny_model()
    model.graph.node[0].input[1] = "missing_weight"
    with pytest.raises(ModelError, match="not valid ONNX"):
        model_io.save_model(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_destination(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        model_io.save_model(tiny_model(), tmp_path / "no" / "m.onnx")
    with pytest.raises(InputError, match="does not exist"):
        model_io.check_writable(tmp_path / "no" / "m.onnx")
    with pytest.raises(InputError, match="is a folder"):
        model_io.check_writable(tmp_path)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ModelError, match="file not found"):
        model_io.load_model(tmp_path / "absent.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not protobuf \x00\x01\x02")
    with pytest.raises(ModelError, match=r"junk\.onnx"):
        model_io.load_model(junk)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match="empty graph"):
        model_io.load_model(empty)


def test_sha256_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert model_io.sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_written_files_get_the_usual_permissions(tmp_path):
    model_io.save_model(tiny_model(), tmp_path / "m.onnx")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "m.onnx").stat().st_mode & 0o777 == 0o666 & ~mask
