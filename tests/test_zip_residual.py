"""Residual networks (mtz-method §7): a residual Add ties the channels of the layers it sums (a
channel group), which share one pairing, chosen bottom-up from the summed costs of the group's
layers whose inputs are known; the Add is rebuilt block by block in the zipped graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import builders
from conftest import zoo_model
from onnx_zip.errors import InputError, ModelError
from onnx_zip.graph.canonicalize import canonicalize
from onnx_zip.model_io import load_model
from onnx_zip.zipper.api import zip_models
from onnx_zip.zipper.extract import extract_task
from onnx_zip.zipper.report import parameter_count, read_metadata
from test_zip import run_model


def _check_recovered(result, perms_by_task: list[dict[str, np.ndarray]]) -> None:
    for layer in result.report["layers"]:
        pairs = np.array(layer["pairs"])
        node = layer["nodes"]["a"]
        assert len(pairs) == layer["neurons"][0], layer["layer"]
        for t, perms in enumerate(perms_by_task, start=1):
            np.testing.assert_array_equal(perms[node][pairs[:, t]], pairs[:, 0])
        assert max(layer["costs"]) <= 1e-8


@pytest.mark.parametrize("reading", ["patch", "channel"])
@pytest.mark.parametrize("match", ["greedy", "optimal"])
def test_residual_block_zipped_with_its_permuted_copy_is_recovered_exactly(reading, match):
    a = canonicalize(builders.residual(seed=2, size=8, channels=6))
    b, perms = builders.permuted_copy(a, seed=5)
    calib = builders.random_inputs(a, 200, seed=1)
    result = zip_models([a, b], [calib, calib], share=1.0, conv_hessian=reading, match=match)
    _check_recovered(result, [perms])
    x = builders.random_inputs(a, 30, seed=2)
    (y,) = run_model(a, x)
    for out in run_model(result.model, x):
        np.testing.assert_allclose(out, y, rtol=0, atol=1e-5)
    heads = 10 * 6 + 10
    assert result.report["params"]["zipped"] == parameter_count(a) + heads
    # One residual Add, computed once for both tasks.
    adds = [n.name for n in result.model.graph.node if n.name.endswith("residual_Add")]
    assert adds == ["shared/layer3_conv/shared/residual_Add"]


def test_zoo_resnet_with_projection_shortcuts_and_two_permuted_copies_is_recovered_exactly(zoo):
    entry = zoo_model(zoo, "resnet_mnist")
    a = canonicalize(load_model(entry["file"]))
    b, perms_b = builders.permuted_copy(a, seed=5)
    c, perms_c = builders.permuted_copy(a, seed=9)
    calib = {entry["input"]: np.load(entry["data"]["train"])[entry["input"]][:256]}
    result = zip_models([a, b, c], [calib] * 3, share=1.0, conv_hessian="channel", calibration_limit=256)
    _check_recovered(result, [perms_b, perms_c])
    x = np.load(entry["data"]["test"])[entry["input"]][:64]
    (y,) = run_model(a, {entry["input"]: x})[:1]
    for out in run_model(result.model, {entry["input"]: x}):
        np.testing.assert_allclose(out, y, rtol=0, atol=1e-4)


def test_zoo_resnets_at_share_zero_reproduce_every_output(zoo, tmp_path):
    entries = [zoo_model(zoo, name) for name in ("resnet_mnist", "resnet_fashion")]
    result = zip_models(
        [e["file"] for e in entries], [e["data"]["train"] for e in entries], tmp_path / "z.onnx",
        names=["mnist", "fashion"], share=0.0,
    )
    x = np.load(entries[1]["data"]["test"])[entries[1]["input"]][:500]
    zipped = run_model(tmp_path / "z.onnx", {entries[1]["input"]: x})
    outputs = [o.name for o in result.model.graph.output]
    for task, entry in zip(("mnist", "fashion"), entries):
        (reference,) = run_model(entry["file"], {entry["input"]: x})[:1]
        assert np.abs(zipped[outputs.index(f"{task}/{entry['output']}")] - reference).max() <= 1e-4


def test_zoo_resnets_half_shared_keep_the_groups_consistent_and_extract(zoo):
    entries = [zoo_model(zoo, name) for name in ("resnet_mnist", "resnet_fashion")]
    result = zip_models(
        [e["file"] for e in entries], [e["data"]["train"] for e in entries], names=["mnist", "fashion"],
        share=0.5, calibration_limit=256,
    )
    layers = {layer["nodes"]["mnist"]: layer for layer in result.report["layers"]}
    # The layers a residual Add sums share the same pairs.
    for group in (("/stem/stem.0/Conv", "/layer1/conv2/Conv"),
                  ("/layer2/shortcut/shortcut.0/Conv", "/layer2/conv2/Conv"),
                  ("/layer3/shortcut/shortcut.0/Conv", "/layer3/conv2/Conv")):
        assert layers[group[0]]["pairs"] == layers[group[1]]["pairs"] and layers[group[0]]["shared"] > 0
    meta = read_metadata(result.model)
    assert meta["residual_groups"] == [["layer1_conv", "layer3_conv"], ["layer5_conv", "layer6_conv"], ["layer8_conv", "layer9_conv"]]
    x = np.load(entries[0]["data"]["test"])[entries[0]["input"]][:50]
    both = run_model(result.model, {entries[0]["input"]: x})
    for t, task in enumerate(("mnist", "fashion")):
        (single,) = run_model(extract_task(result.model, task), {entries[0]["input"]: x})
        np.testing.assert_allclose(single, both[t], rtol=0, atol=1e-5)


def test_a_residual_block_whose_inner_layer_shares_nothing_is_refused():
    a = canonicalize(builders.residual(seed=2))
    b = canonicalize(builders.residual(seed=3))
    calib = builders.random_inputs(a, 50, seed=1)
    with pytest.raises(InputError, match="residual Add.*shares none"):
        zip_models([a, b], [calib, calib], share_per_layer=[2, 0, 2])


def test_channel_concat_and_the_layerwise_loop_are_refused_with_the_nodes_named():
    model = builders.residual(seed=1)
    graph = model.graph
    for node in graph.node:
        if node.name == "add":
            node.op_type = "Concat"
            node.attribute.append(helper.make_attribute("axis", 1))
        if node.name == "fc":
            pass
    weight = next(t for t in graph.initializer if t.name == "fc.weight")
    fc = onnx.numpy_helper.to_array(weight)
    weight.CopyFrom(onnx.numpy_helper.from_array(np.concatenate([fc, fc], axis=1), "fc.weight"))
    onnx.checker.check_model(model)
    with pytest.raises(ModelError, match="add concatenate"):
        zip_models([model, model], None, pairing="l2")
    from onnx_zip.pipeline.layerwise import zip_layerwise

    a = builders.residual(seed=1)
    calib = builders.random_inputs(a, 20)
    with pytest.raises(InputError, match="residual Adds"):
        zip_layerwise([a, a], [calib, calib], {"a": {}, "b": {}})


def test_three_residual_models_give_identical_bytes_twice(tmp_path):
    models = [canonicalize(builders.residual(seed=s, channels=6)) for s in (1, 2, 3)]
    calib = [builders.random_inputs(models[0], 60, seed=s) for s in (1, 2, 3)]
    for name in ("1.onnx", "2.onnx"):
        zip_models(models, calib, tmp_path / name, share=0.5, seed=3)
    assert (tmp_path / "1.onnx").read_bytes() == (tmp_path / "2.onnx").read_bytes()
    for name in ("r1.onnx", "r2.onnx"):
        zip_models(models, None, tmp_path / name, share=0.5, pairing="random", seed=4)
    assert (tmp_path / "r1.onnx").read_bytes() == (tmp_path / "r2.onnx").read_bytes()
