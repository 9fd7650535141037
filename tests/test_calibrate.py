"""Calibration: Hessians against a brute force from onnx.reference intermediates, streaming, refusals."""

from __future__ import annotations

import tracemalloc

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

import builders
from conftest import zoo_model
from onnx_zip import data as data_mod
from onnx_zip import model_io
from onnx_zip.calibrate import calibrate, instrument
from onnx_zip.errors import DataError, InputError
from onnx_zip.graph.canonicalize import canonicalize
from onnx_zip.graph.discover import discover_layers


def prepared(model: onnx.ModelProto):
    canonical = canonicalize(model)
    return canonical, discover_layers(canonical, label="m")


def intermediates(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    values = ReferenceEvaluator(model).run(None, feeds, intermediate=True)
    return {**feeds, **values}


def augmented(x: np.ndarray, bias: bool) -> np.ndarray:
    x = x.astype(np.float64)
    return np.hstack([x, np.ones((x.shape[0], 1))]) if bias else x


def brute_patch(x: np.ndarray, kernel, strides, pads, dilations) -> np.ndarray:
    """Patches by explicit loops over positions: rows (n, oh, ow), columns (c, kh, kw)."""
    (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = kernel, strides, pads, dilations
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    n, c, h, w = xp.shape
    oh = (h - dh * (kh - 1) - 1) // sh + 1
    ow = (w - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for s in range(n):
        for i in range(oh):
            for j in range(ow):
                patch = xp[s, :, i * sh : i * sh + dh * (kh - 1) + 1 : dh, j * sw : j * sw + dw * (kw - 1) + 1 : dw]
                rows.append(patch.ravel())
    return np.array(rows)


def brute_hessian(layer, x: np.ndarray, reading: str) -> np.ndarray:
    bias = layer.bias is not None
    if layer.kind == "dense":
        rows = x.reshape(-1, x.shape[-1])
    elif reading == "channel":
        rows = x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])
    else:
        g = layer.conv
        rows = brute_patch(x, g.kernel_shape, g.strides, g.pads, g.dilations)
    a = augmented(rows, bias)
    return a.T @ a / a.shape[0]


@pytest.mark.parametrize("reading", ["patch", "channel"])
def test_cnn_hessians_match_brute_force(reading: str) -> None:
    model, chain = prepared(builders.cnn(3))
    feeds = builders.random_inputs(model, 9, seed=4)
    values = intermediates(model, feeds)
    accs = calibrate(model, list(chain.layers), feeds, reading=reading, batch_size=4, progress=False)
    assert set(accs) == {l.node for l in chain.layers}
    for layer in chain.layers:
        expected = brute_hessian(layer, values[layer.input], reading)
        np.testing.assert_allclose(accs[layer.node].hessian(), expected, rtol=1e-5, atol=1e-6, err_msg=layer.node)
    conv1 = chain.by_node("conv1")
    side = 4 * 9 + 1 if reading == "patch" else 4 + 1
    assert accs["conv1"].hessian().shape == (side, side)
    assert accs["conv0"].n_samples == 9 * 12 * 12  # samples x positions (pad 1 keeps 12x12)
    assert conv1.conv.pads == (0, 0, 0, 0)


def test_strided_padded_conv_and_no_bias() -> None:
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((3, 2, 3, 2)).astype(np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2])
    model = builders.make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 7, 6])],
                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 5, 3])], [w])
    model, chain = prepared(model)
    feeds = builders.random_inputs(model, 3, seed=1)
    layer = chain.layers[0]
    assert layer.bias is None
    acc = calibrate(model, [layer], feeds, progress=False)["c"]
    np.testing.assert_allclose(acc.hessian(), brute_hessian(layer, feeds["x"], "patch"), rtol=1e-6, atol=1e-7)
    assert acc.hessian().shape == (12, 12)


def test_mlp_with_matmul_rank3_and_per_layer_reading() -> None:
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w0", (4, 5)), ("b0", (5,)), ("w1", (5, 2)))]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["m0"], name="mm0"),
             helper.make_node("Add", ["m0", "b0"], ["a0"], name="add0"),
             helper.make_node("Relu", ["a0"], ["r0"], name="relu0"),
             helper.make_node("MatMul", ["r0", "w1"], ["y"], name="mm1")]
    model = builders.make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])],
                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 2])], inits)
    model, chain = prepared(model)
    feeds = builders.random_inputs(model, 5)
    values = intermediates(model, feeds)
    accs = calibrate(model, list(chain.layers), feeds, progress=False)
    for layer in chain.layers:
        np.testing.assert_allclose(accs[layer.node].hessian(), brute_hessian(layer, values[layer.input], "patch"),
                                   rtol=1e-6, atol=1e-7)
    assert accs["mm0"].hessian().shape == (5, 5) and accs["mm1"].hessian().shape == (5, 5)  # mm1 has no bias
    assert accs["mm0"].n_samples == 15


def test_chunked_equals_single_pass_and_limit_and_reader() -> None:
    model, chain = prepared(builders.cnn(5))
    feeds = builders.random_inputs(model, 50, seed=2)
    layers = list(chain.layers)
    whole = calibrate(model, layers, feeds, batch_size=50, progress=False)
    chunked = calibrate(model, layers, feeds, batch_size=7, progress=False)
    limited = calibrate(model, layers, feeds, batch_size=8, limit=20, progress=False)
    first20 = calibrate(model, layers, {k: v[:20] for k, v in feeds.items()}, batch_size=20, progress=False)
    dataset = data_mod.bind_arrays(feeds, data_mod.model_inputs(model), source="t")
    reader = data_mod.ArrayReader(dataset, batch_size=13)
    from_reader = calibrate(model, layers, reader, limit=None, progress=False, reading={"conv0": "channel"})
    for layer in layers:
        node = layer.node
        np.testing.assert_allclose(chunked[node].hessian(), whole[node].hessian(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(limited[node].hessian(), first20[node].hessian(), rtol=1e-10, atol=1e-12)
        assert limited[node].n_samples == first20[node].n_samples
        if node != "conv0":
            np.testing.assert_allclose(from_reader[node].hessian(), whole[node].hessian(), rtol=1e-10, atol=1e-12)
    assert from_reader["conv0"].hessian().shape == (2, 2)


def test_input_buffer_not_modified_and_instrumented_outputs() -> None:
    model, chain = prepared(builders.mlp([6, 5, 3]))
    feeds = builders.random_inputs(model, 4)
    before = feeds["x"].copy()
    calibrate(model, list(chain.layers), feeds, progress=False)
    np.testing.assert_array_equal(feeds["x"], before)
    inst = instrument(model, ["relu0_out"])
    assert [o.name for o in inst.graph.output] == ["y", "relu0_out"]


def test_npz_file(tmp_path) -> None:
    model, chain = prepared(builders.mlp([6, 5, 3]))
    feeds = builders.random_inputs(model, 10)
    path = tmp_path / "d.npz"
    np.savez(path, x=feeds["x"], label=np.zeros(10, dtype=np.int64))
    a = calibrate(model, list(chain.layers), str(path), progress=False)
    b = calibrate(model, list(chain.layers), feeds, progress=False)
    np.testing.assert_allclose(a["fc1"].hessian(), b["fc1"].hessian(), rtol=1e-12)


class _BadReader:
    def __init__(self, batches):
        self.batches = list(batches)

    def get_next(self):
        return self.batches.pop(0) if self.batches else None


@pytest.mark.parametrize(
    "arrays, pattern",
    [
        ({"image": np.zeros((4, 6), np.float32)}, "no array named 'x'|'x'"),
        ({"x": np.zeros((4, 7), np.float32)}, "'x' has shape \\(4, 7\\)"),
        ({"x": np.zeros((4, 6), np.float64)}, "'x' has dtype float64"),
        ({"x": np.full((4, 6), np.nan, np.float32)}, "'x' holds 24 NaN"),
    ],
    ids=["name", "shape", "dtype", "nan"],
)
def test_bad_data_refused(arrays, pattern) -> None:
    model, chain = prepared(builders.mlp([6, 5, 3]))
    arrays = dict(arrays)
    if "image" in arrays:
        arrays["other"] = arrays["image"]  # two arrays: no single-input fallback
    with pytest.raises(DataError, match=pattern):
        calibrate(model, list(chain.layers), arrays, progress=False)
    good = {"x": np.zeros((4, 6), np.float32)}
    with pytest.raises(DataError, match=pattern):
        calibrate(model, list(chain.layers), _BadReader([good, arrays]), progress=False)


def test_bad_arguments() -> None:
    model, chain = prepared(builders.mlp([6, 5, 3]))
    feeds = builders.random_inputs(model, 4)
    with pytest.raises(InputError, match="unknown conv reading"):
        calibrate(model, list(chain.layers), feeds, reading="pixels", progress=False)
    with pytest.raises(InputError, match="no layers"):
        calibrate(model, [], feeds, progress=False)
    with pytest.raises(DataError, match="no calibration samples"):
        calibrate(model, list(chain.layers), _BadReader([]), progress=False)


def _peak(model, layers, arrays, limit) -> int:
    tracemalloc.start()
    calibrate(model, layers, arrays, limit=limit, batch_size=250, progress=False, reading="channel")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_samples(zoo_or_none) -> None:
    model, arrays = zoo_or_none
    chain = discover_layers(model, label="m")
    layers = list(chain.layers)
    small = _peak(model, layers, arrays, 2000)
    large = _peak(model, layers, arrays, 10000)
    # 5x the samples, same peak: bounded by a batch's activations (with the patch reading, also by
    # the accumulator's im2col chunk of at most 64 MiB, see onnx_zip.mtz.hessian), never by the
    # sample count. The channel reading keeps this test fast.
    batch_bytes = 250 * arrays[next(iter(arrays))][0].nbytes
    assert large < small * 1.1 + batch_bytes, (small, large)


@pytest.fixture
def zoo_or_none(request):
    """LeNet-5 from the zoo on 10,000 Fashion images if available; else a tiny CNN on random 28×28 data."""
    from conftest import load_zoo
    zoo = load_zoo()
    for name in ("lenet5_fashion", "lenet5_fashion_super4"):
        if name in zoo:
            entry = zoo[name]
            raw = model_io.load_model(entry["file"])
            dataset = data_mod.load_dataset(entry["data"]["train"], raw)
            if len(dataset) >= 10000:
                return canonicalize(raw), dataset.take(10000).inputs
    model = canonicalize(builders.cnn(0, size=28, channels=(4, 4)))
    return model, builders.random_inputs(model, 10000, seed=0)


@pytest.mark.parametrize("name", ["lenet5_mnist_s0", "lenet300_mnist_s0", "mlp_mnist_sklearn_s0"])
def test_zoo_calibration_matches_brute_force(zoo, name: str) -> None:
    entry = zoo_model(zoo, name)
    raw = model_io.load_model(entry["file"])
    model = canonicalize(raw, label=name)
    chain = discover_layers(model, label=name)
    dataset = data_mod.load_dataset(entry["data"]["train"], raw).take(40)
    accs = calibrate(model, list(chain.layers), dataset, batch_size=16, progress=False, reading="channel")
    values = intermediates(model, dataset.inputs)
    for layer in chain.layers:
        np.testing.assert_allclose(accs[layer.node].hessian(), brute_hessian(layer, values[layer.input], "channel"),
                                   rtol=1e-4, atol=1e-5, err_msg=layer.node)
