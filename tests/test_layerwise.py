"""The layer-wise zip-and-retrain loop (Algorithm 1)."""

from __future__ import annotations

import numpy as np
import pytest

import builders
from onnx_zip import runtime
from onnx_zip.errors import InputError
from onnx_zip.pipeline import zip_models
from onnx_zip.pipeline.layerwise import zip_layerwise

pytestmark = pytest.mark.skipif(
    not runtime.has_training(), reason="the layer-wise loop fine-tunes: needs the train extra"
)


def labelled(model, count, seed):
    """Random inputs labelled by the model itself (a learnable task)."""
    x = builders.random_inputs(model, count, seed=seed)
    (scores,) = runtime.make_session(model).run(None, x)
    return {**x, "label": scores.argmax(1).astype(np.int64)}


def test_loop_records_each_layer_and_reports_original_pair_indices():
    a, b = builders.cnn(seed=1), builders.cnn(seed=2)
    data = {"a": labelled(a, 256, 1), "b": labelled(b, 256, 2)}
    calib = [{"x": data["a"]["x"]}, {"x": data["b"]["x"]}]
    result = zip_layerwise(
        [a, b],
        calib,
        data,
        retrain_steps=[3, 3, 4],
        evaluation=data,
        share=0.5,
        finetune_options={"batch_size": 16, "seed": 0},
    )
    records = result.report["layerwise"]
    assert [r["layer"] for r in records] == ["layer1_conv", "layer2_conv", "layer3_dense"]
    assert [r["steps"] for r in records] == [3, 3, 4]
    for record, layer in zip(records, result.report["layers"]):
        assert record["shared"] == layer["shared"] == round(0.5 * layer["neurons"][0] + 1e-9)
        assert set(record["accuracy_before"]) == set(record["accuracy_after"]) == {"a", "b"}
        pairs = np.array(layer["pairs"])
        for t in range(2):
            assert len(set(pairs[:, t])) == len(pairs) and pairs[:, t].max() < layer["neurons"][t]
    # One-pass pairs of the first layer equal the loop's: its Hessians come from the same originals.
    onepass = zip_models([a, b], calib, share=0.5)
    assert result.report["layers"][0]["pairs"] == onepass.report["layers"][0]["pairs"]
    assert result.report["settings"]["procedure"] == "layerwise"
    names = {t.name for t in result.model.graph.initializer}
    assert {"shared/layer1_conv/weight", "shared/layer2_conv/weight", "shared/layer3_dense/weight"} <= names


def test_zero_steps_and_zero_sharing_reproduce_the_originals():
    a, b = builders.mlp([6, 8, 5, 3], seed=1), builders.mlp([6, 8, 5, 3], seed=2)
    data = {"a": labelled(a, 64, 1), "b": labelled(b, 64, 2)}
    calib = [{"x": data["a"]["x"]}, {"x": data["b"]["x"]}]
    result = zip_layerwise([a, b], calib, data, retrain_steps=0, share=0.0)
    x = builders.random_inputs(a, 9, seed=5)
    za, zb = runtime.make_session(result.model).run(None, x)
    np.testing.assert_allclose(za, runtime.make_session(a).run(None, x)[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(zb, runtime.make_session(b).run(None, x)[0], rtol=0, atol=1e-5)


def test_bad_loop_settings_are_refused_before_work():
    a, b = builders.mlp([6, 8, 5, 3], seed=1), builders.mlp([6, 8, 5, 3], seed=2)
    data = {"a": labelled(a, 16, 1), "b": labelled(b, 16, 2)}
    calib = [{"x": data["a"]["x"]}] * 2
    with pytest.raises(InputError, match="3 counts for 2 hidden layers"):
        zip_layerwise([a, b], calib, data, retrain_steps=[1, 2, 3])
    with pytest.raises(InputError, match="tasks are"):
        zip_layerwise([a, b], calib, {"a": data["a"], "c": data["b"]}, retrain_steps=1)
