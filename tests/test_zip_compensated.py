"""``--method compensated`` in the pipeline (mtz-method §10): permuted copies recovered, share 0
reproduces the originals, agreement with the numpy reference zip, N models, baseline pairings,
refusals and settings."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import builders
from onnx_zip.config import ZipConfig
from onnx_zip.errors import InputError
from onnx_zip.mtz.comp_chain import forward_rows, zip_mlp_pair
from onnx_zip.pipeline import zip_models
from test_zip import (
    initializers,
    permuted_cnn,
    permuted_mlp,
    run_model,
    with_initializers,
)


def _assert_recovered(result, perms) -> None:
    for layer in result.report["layers"]:
        pairs = np.array(layer["pairs"])
        if not len(pairs):
            continue
        perm = perms[layer["nodes"]["a"]]
        assert len(pairs) == layer["neurons"][0]
        np.testing.assert_array_equal(perm[pairs[:, 1]], pairs[:, 0])
        assert max(layer["costs"]) <= 1e-9


@pytest.mark.parametrize("match", ["greedy", "optimal"])
def test_mlp_permuted_copy_is_recovered_exactly(match):
    a = builders.mlp([8, 12, 6, 4], seed=5)
    b, perms = permuted_mlp(a)
    calib = builders.random_inputs(a, 300, seed=1)
    result = zip_models([a, b], [calib, calib], share=1.0, method="compensated", match=match)
    _assert_recovered(result, perms)
    x = builders.random_inputs(a, 30, seed=3)
    (y,) = run_model(a, x)
    for out in run_model(result.model, x):
        np.testing.assert_allclose(out, y, rtol=0, atol=1e-5)
    assert result.report["settings"]["method"] == "compensated" and "compensate" in result.report["timings"]


@pytest.mark.parametrize("reading", ["patch", "channel"])
def test_cnn_permuted_copy_is_recovered_exactly(reading):
    a = builders.cnn(seed=3, size=12, channels=(4, 6), hidden=16)
    b, perms = permuted_cnn(a)
    calib = builders.random_inputs(a, 200, seed=1)
    result = zip_models([a, b], [calib, calib], share=1.0, method="compensated", conv_hessian=reading)
    _assert_recovered(result, perms)
    x = builders.random_inputs(a, 20, seed=2)
    (y,) = run_model(a, x)
    for out in run_model(result.model, x):
        np.testing.assert_allclose(out, y, rtol=0, atol=1e-5)


def test_three_permuted_copies_are_recovered_exactly():
    a = builders.mlp([8, 12, 6, 4], seed=5)
    b, perms_b = permuted_mlp(a, seed=7)
    c, perms_c = permuted_mlp(a, seed=11)
    calib = builders.random_inputs(a, 300, seed=1)
    result = zip_models([a, b, c], [calib] * 3, share=1.0, method="compensated")
    for layer in result.report["layers"][:-1]:
        pairs = np.array(layer["pairs"])
        node = layer["nodes"]["a"]
        np.testing.assert_array_equal(perms_b[node][pairs[:, 1]], pairs[:, 0])
        np.testing.assert_array_equal(perms_c[node][pairs[:, 2]], pairs[:, 0])
    x = builders.random_inputs(a, 20, seed=3)
    (y,) = run_model(a, x)
    outs = run_model(result.model, x)
    assert len(outs) == 3
    for out in outs:
        np.testing.assert_allclose(out, y, rtol=0, atol=1e-5)


@pytest.mark.parametrize("build", [
    lambda seed: builders.mlp([8, 12, 6, 4], seed=seed),
    lambda seed: builders.cnn(seed=seed, size=12, channels=(4, 6), hidden=16),
], ids=["mlp", "cnn"])
def test_share_zero_reproduces_each_original(build):
    a, b = build(3), build(4)
    calib = [builders.random_inputs(a, 200, seed=1), builders.random_inputs(a, 200, seed=2)]
    result = zip_models([a, b], calib, share=0.0, method="compensated")
    x = builders.random_inputs(a, 20, seed=5)
    za, zb = run_model(result.model, x)
    np.testing.assert_allclose(za, run_model(a, x)[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(zb, run_model(b, x)[0], rtol=0, atol=1e-5)


def test_pipeline_agrees_with_the_numpy_reference_zip():
    sizes = [10, 16, 12, 5]
    models = [builders.mlp(sizes, seed=s) for s in (21, 22)]
    calib = [builders.random_inputs(models[0], 400, seed=s) for s in (1, 2)]
    result = zip_models(models, calib, share=0.5, method="compensated", rho=1e-2, calibration_limit=None)
    layers = [[(initializers(m)[f"fc{i}.weight"].astype(np.float64), initializers(m)[f"fc{i}.bias"].astype(np.float64))
               for i in range(len(sizes) - 1)] for m in models]
    reference = zip_mlp_pair(layers, [c["x"].astype(np.float64) for c in calib], 0.5, rho=1e-2)
    for layer, pairs in zip(result.report["layers"], reference.cross):
        np.testing.assert_array_equal(np.array(layer["pairs"]), pairs)
    x = builders.random_inputs(models[0], 30, seed=9)["x"]
    outs = run_model(result.model, {"x": x})
    for t in (0, 1):
        np.testing.assert_allclose(outs[t], forward_rows(reference.nets[t], x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("pairing", ["l2", "random", "correlation"])
def test_baseline_pairings_with_the_compensated_fit(pairing):
    a = builders.mlp([8, 12, 6, 4], seed=5)
    b = builders.mlp([8, 12, 6, 4], seed=6)
    calib = builders.random_inputs(a, 300, seed=1)
    fitted = zip_models([a, b], [calib, calib], share=0.5, method="compensated", pairing=pairing)
    plain = zip_models([a, b], [calib, calib], share=0.5, method="paper", pairing=pairing)
    for mine, theirs in zip(fitted.report["layers"], plain.report["layers"]):
        assert len(mine["pairs"]) == len(theirs["pairs"])
        if pairing != "random":  # the first layer's pairs do not depend on the fit below
            break
    x = builders.random_inputs(a, 200, seed=4)
    errors = {}
    for name, result in (("fitted", fitted), ("plain", plain)):
        outs = run_model(result.model, x)
        errors[name] = sum(float(np.mean((o - run_model(m, x)[0]) ** 2)) for o, m in zip(outs, (a, b)))
    assert errors["fitted"] < errors["plain"]


def test_same_inputs_give_the_same_bytes():
    a, b = builders.mlp([8, 12, 6, 4], seed=5), builders.mlp([8, 12, 6, 4], seed=6)
    calib = builders.random_inputs(a, 100, seed=1)
    first = zip_models([a, b], [calib, calib], method="compensated").model.SerializeToString()
    assert zip_models([a, b], [calib, calib], method="compensated").model.SerializeToString() == first


def test_residual_permuted_copy_is_recovered_and_share_zero_reproduces():
    from onnx_zip.graph.canonicalize import canonicalize

    a = canonicalize(builders.residual(seed=1))
    b, perms = builders.permuted_copy(a)
    calib = builders.random_inputs(a, 200, seed=1)
    x = builders.random_inputs(a, 20, seed=2)
    (y,) = run_model(a, x)
    result = zip_models([a, b], [calib, calib], share=1.0, method="compensated")
    _assert_recovered(result, perms)
    for out in run_model(result.model, x):
        np.testing.assert_allclose(out, y, rtol=0, atol=1e-5)
    c = builders.residual(seed=2)
    apart = zip_models([a, c], [calib, calib], share=0.0, method="compensated")
    for out, model in zip(run_model(apart.model, x), (a, c)):
        np.testing.assert_allclose(out, run_model(model, x)[0], rtol=0, atol=1e-5)


def test_a_narrower_dense_input_reads_fictive_zeros_and_is_recovered():
    a = builders.mlp([6, 10, 8, 3], seed=1)
    w = initializers(a)
    rng = np.random.default_rng(2)
    p0, p1 = rng.permutation(10), rng.permutation(8)
    b = with_initializers(builders.mlp([4, 10, 8, 3], seed=5), {  # a without its last two input features
        "fc0.weight": w["fc0.weight"][p0][:, :4], "fc0.bias": w["fc0.bias"][p0],
        "fc1.weight": w["fc1.weight"][p1][:, p0], "fc1.bias": w["fc1.bias"][p1],
        "fc2.weight": w["fc2.weight"][:, p1], "fc2.bias": w["fc2.bias"],
    })
    xa = builders.random_inputs(a, 300, seed=1)
    xa["x"][:, 4:] = 0.0  # a's extra features never vary: b computes the same function
    xb = {"x": np.ascontiguousarray(xa["x"][:, :4])}
    result = zip_models([a, b], [xa, xb], share=1.0, separate_inputs=True, method="compensated")
    for layer, perm in zip(result.report["layers"], (p0, p1)):
        pairs = np.array(layer["pairs"])
        np.testing.assert_array_equal(perm[pairs[:, 1]], pairs[:, 0])
    test = builders.random_inputs(a, 30, seed=7)
    test["x"][:, 4:] = 0.0
    (y,) = run_model(a, test)
    for out in run_model(result.model, {"a/x": test["x"], "b/x": np.ascontiguousarray(test["x"][:, :4])}):
        np.testing.assert_allclose(out, y, rtol=0, atol=1e-5)


def test_statistics_file_and_missing_data_are_refused(tmp_path):
    a, b = builders.mlp([8, 12, 4], seed=5), builders.mlp([8, 12, 4], seed=6)
    calib = builders.random_inputs(a, 50, seed=1)
    with pytest.raises(InputError, match="--method compensated needs"):
        zip_models([a, b], None, method="compensated", pairing="l2")
    from onnx_zip.pipeline import calibrate_models

    stats = tmp_path / "stats.npz"
    calibrate_models([a, b], [calib, calib], stats)
    with pytest.raises(InputError, match="--stats"):
        zip_models([a, b], [calib, calib], method="compensated", stats=stats)


def test_method_and_rho_are_checked():
    assert ZipConfig().method == "paper" and ZipConfig().rho == 1e-2
    with pytest.raises(InputError, match="zip.method"):
        ZipConfig(method="compensate")
    with pytest.raises(InputError, match="zip.rho"):
        ZipConfig(rho=-1.0)


def test_different_depths_widths_and_separate_inputs():
    from test_zip_depths import _deeper_equivalent

    a = builders.mlp([6, 10, 8, 3], seed=1)
    deep, perms = _deeper_equivalent(a)
    calib = builders.random_inputs(a, 300, seed=1)
    result = zip_models([deep, a], [calib, calib], names=["deep", "shallow"], share=1.0, method="compensated")
    for layer, perm in zip(result.report["layers"], perms):
        pairs = np.array(layer["pairs"])
        np.testing.assert_array_equal(perm[pairs[:, 0]], pairs[:, 1])
    x = builders.random_inputs(a, 30, seed=2)
    (y,) = run_model(a, x)
    for out in run_model(result.model, x):
        np.testing.assert_allclose(out, y, rtol=0, atol=1e-5)
    narrow = builders.mlp([6, 14, 5, 3], seed=2)
    widths = zip_models([a, narrow], [calib, calib], share=0.0, method="compensated")
    for out, model in zip(run_model(widths.model, x), (a, narrow)):
        np.testing.assert_allclose(out, run_model(model, x)[0], rtol=0, atol=1e-5)
    c = builders.cnn(seed=1, size=12)
    d, _ = permuted_cnn(c)
    xc = builders.random_inputs(c, 60, seed=3)
    separate = zip_models([c, d], [xc, xc], share=1.0, separate_inputs=True, method="compensated")
    y = run_model(c, xc)[0]
    for out in run_model(separate.model, {"a/x": xc["x"], "b/x": xc["x"]}):
        np.testing.assert_allclose(out, y, rtol=0, atol=1e-5)


def test_a_sweep_fits_every_level_and_the_plan_stage_refuses():
    from onnx_zip.pipeline import plan, prepare
    from onnx_zip.pipeline.statistics import empty_statistics
    from onnx_zip.sweep import sweep

    a, b = builders.mlp([8, 12, 6, 4], seed=5), builders.mlp([8, 12, 6, 4], seed=6)
    calib = builders.random_inputs(a, 200, seed=1)
    labels = np.zeros(50, dtype=np.int64)
    test = {"a": {"x": calib["x"][:50], "label": labels}, "b": {"x": calib["x"][:50], "label": labels}}
    done = sweep([a, b], [calib, calib], [0.0, 1.0], test, method="compensated")
    fitted = zip_models([a, b], [calib, calib], share=1.0, method="compensated")
    x = {"x": calib["x"][:50]}
    expected = [float(np.mean(np.argmax(o, axis=1) == 0)) for o in run_model(fitted.model, x)]
    assert list(done["sweep"][1]["accuracy"].values()) == pytest.approx(expected)
    job = prepare([a, b], [calib, calib], config=ZipConfig(method="compensated"))
    with pytest.raises(InputError, match="--method paper"):
        plan(job, empty_statistics(job))


def test_first_layer_with_no_ridge_is_the_papers_merge():
    """x̃ = x and every input shared (the first layer), ρ = 0: the paper's pairs and merged weights,
    at twice its cost (mtz-method §10)."""
    a, b = builders.mlp([8, 12, 4], seed=5), builders.mlp([8, 12, 4], seed=6)
    calib = [builders.random_inputs(a, 300, seed=1), builders.random_inputs(a, 300, seed=2)]
    fitted = zip_models([a, b], calib, share=0.5, method="compensated", rho=0.0).layers[0]
    paper = zip_models([a, b], calib, share=0.5, method="paper").layers[0]
    np.testing.assert_array_equal(fitted.pairs, paper.pairs)
    np.testing.assert_allclose(fitted.costs, 2 * paper.costs, rtol=1e-9)
    np.testing.assert_allclose(fitted.shared_weight, paper.shared_weight, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fitted.shared_bias, paper.shared_bias, rtol=0, atol=1e-6)


def test_layers_that_disagree_on_a_bias_are_refused_with_the_fix():
    a, b = builders.mlp([8, 12, 4], seed=5), builders.mlp([8, 12, 4], seed=6, bias=False)
    calib = builders.random_inputs(a, 50, seed=1)
    with pytest.raises(InputError, match="some have a bias") as info:
        zip_models([a, b], [calib, calib], method="compensated")
    assert "--method paper" in (info.value.hint or "")


@pytest.mark.slow
def test_command_line_method_compensated(tmp_path):
    a, b = builders.mlp([8, 12, 4], seed=5), builders.mlp([8, 12, 4], seed=6)
    paths = []
    for name, model in (("a", a), ("b", b)):
        (tmp_path / f"{name}.onnx").write_bytes(model.SerializeToString())
        np.savez(tmp_path / f"{name}.npz", **builders.random_inputs(a, 100, seed=1))
        paths.append(str(tmp_path / f"{name}.onnx"))
    calib = ["--calib", str(tmp_path / "a.npz"), "--calib", str(tmp_path / "b.npz")]
    out = tmp_path / "z.onnx"
    done = subprocess.run([sys.executable, "-m", "onnx_zip", "zip", *paths, *calib, "--method", "compensated",
                           "--rho", "0.05", "--share", "1.0", "-o", str(out), "--report", str(tmp_path / "r.json")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    settings = json.loads((tmp_path / "r.json").read_text())["settings"]
    assert settings["method"] == "compensated" and settings["rho"] == 0.05
    bad = subprocess.run([sys.executable, "-m", "onnx_zip", "zip", *paths, "--pairing", "l2", "--method", "compensated",
                          "-o", str(tmp_path / "y.onnx")], capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 2 and "--method compensated needs one calibration data set per model" in bad.stderr
