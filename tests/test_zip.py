"""``zip_models`` / ``onnx-zip zip``: exactness, the permuted-copy property, an independent
numpy transcription of the method, parameter accounting, extraction, determinism, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import builders
from conftest import run_cli, zoo_model
from onnx_zip import runtime
from onnx_zip.errors import InputError, ModelError
from onnx_zip.pipeline import zip_models
from onnx_zip.zipper.extract import extract_task
from onnx_zip.zipper.report import parameter_count


def run_model(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return runtime.make_session(model).run(None, feeds)


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}


def with_initializers(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, t in enumerate(out.graph.initializer):
        if t.name in values:
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(values[t.name].astype(np.float32), t.name))
    return out


def permuted_cnn(model: onnx.ModelProto, seed: int = 7) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """builders.cnn with every hidden neuron permuted (outputs unchanged): B's neuron j is A's p[j]."""
    rng = np.random.default_rng(seed)
    w = initializers(model)
    p0 = rng.permutation(w["conv0.weight"].shape[0])
    p1 = rng.permutation(w["conv1.weight"].shape[0])
    p2 = rng.permutation(w["fc0.weight"].shape[0])
    per_channel = w["fc0.weight"].shape[1] // w["conv1.weight"].shape[0]
    cols = (p1[:, None] * per_channel + np.arange(per_channel)).ravel()
    new = {
        "conv0.weight": w["conv0.weight"][p0], "conv0.bias": w["conv0.bias"][p0],
        "conv1.weight": w["conv1.weight"][p1][:, p0], "conv1.bias": w["conv1.bias"][p1],
        "fc0.weight": w["fc0.weight"][p2][:, cols], "fc0.bias": w["fc0.bias"][p2],
        "fc1.weight": w["fc1.weight"][:, p2],
    }
    return with_initializers(model, new), {"conv0": p0, "conv1": p1, "fc0": p2}


def permuted_mlp(model: onnx.ModelProto, seed: int = 7) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    w = initializers(model)
    p0 = rng.permutation(w["fc0.weight"].shape[0])
    p1 = rng.permutation(w["fc1.weight"].shape[0])
    new = {
        "fc0.weight": w["fc0.weight"][p0], "fc0.bias": w["fc0.bias"][p0],
        "fc1.weight": w["fc1.weight"][p1][:, p0], "fc1.bias": w["fc1.bias"][p1],
        "fc2.weight": w["fc2.weight"][:, p1],
    }
    return with_initializers(model, new), {"fc0": p0, "fc1": p1}


# ----------------------------------------------------------------- exactness at 0% sharing


@pytest.mark.parametrize("pair", [("lenet300_mnist_s0", "lenet300_mnist_s1"), ("lenet5_mnist_s0", "lenet5_fashion")])
@pytest.mark.slow
def test_share_zero_reproduces_every_original_output(zoo, pair, tmp_path):
    entries = [zoo_model(zoo, name) for name in pair]
    result = zip_models(
        [e["file"] for e in entries], [e["data"]["train"] for e in entries], tmp_path / "z.onnx",
        names=["a", "b"], share=0.0, calibration_limit=256,
    )
    test = np.load(entries[0]["data"]["test"])
    x = test[entries[0]["input"]][:1000]
    zipped = run_model(tmp_path / "z.onnx", {entries[0]["input"]: x})
    names = [o.name for o in result.model.graph.output]
    for task, entry in zip(("a", "b"), entries):
        (reference,) = run_model(entry["file"], {entry["input"]: x})[:1]
        got = zipped[names.index(f"{task}/{entry['output']}")]
        assert np.abs(got - reference).max() <= 1e-5
    assert all(layer["shared"] == 0 for layer in result.report["layers"])


@pytest.mark.slow
def test_zoo_pair_file_shrinks_with_the_saved_weights(zoo, tmp_path):
    entries = [zoo_model(zoo, name) for name in ("lenet300_mnist_s0", "lenet300_mnist_s1")]
    result = zip_models(
        [e["file"] for e in entries], [e["data"]["train"] for e in entries], tmp_path / "z.onnx",
        share=1.0, calibration_limit=512,
    )
    params = result.report["params"]
    saved = params["a"] + params["b"] - params["zipped"]
    assert saved == 784 * 300 + 300 + 300 * 100 + 100
    originals = sum(Path(e["file"]).stat().st_size for e in entries)
    size = (tmp_path / "z.onnx").stat().st_size
    assert originals - size >= 0.98 * 4 * saved


# ----------------------------------------------------------------- permuted copy at 100%


@pytest.mark.parametrize("reading", ["patch", "channel"])
@pytest.mark.parametrize("match", ["greedy", "optimal"])
def test_cnn_zipped_with_its_permuted_copy_is_recovered_exactly(reading, match):
    a = builders.cnn(seed=3, size=12, channels=(4, 6), hidden=16)
    b, perms = permuted_cnn(a)
    calib = builders.random_inputs(a, 300, seed=1)
    result = zip_models([a, b], [calib, calib], names=["a", "b"], share=1.0, conv_hessian=reading, match=match)
    for layer in result.report["layers"]:
        pairs = np.array(layer["pairs"])
        perm = perms[layer["nodes"]["a"]]
        assert len(pairs) == layer["neurons"][0]
        np.testing.assert_array_equal(perm[pairs[:, 1]], pairs[:, 0])
        assert max(layer["costs"]) <= 1e-9 * max(
            1.0, float(np.abs(initializers(a)[f"{layer['nodes']['a']}.weight"]).max())
        )
    x = builders.random_inputs(a, 50, seed=2)
    (y,) = run_model(a, x)
    za, zb = run_model(result.model, x)
    np.testing.assert_allclose(za, y, rtol=0, atol=1e-5)
    np.testing.assert_allclose(zb, y, rtol=0, atol=1e-5)
    # Fully shared and one input: one model's worth of hidden weights, each task keeps its head.
    heads = 2 * (16 * 10 + 10)
    assert result.report["params"]["zipped"] == parameter_count(a) + heads - (16 * 10 + 10)


def test_mlp_permuted_copy_with_matmul_layout():
    a = builders.mlp([8, 12, 6, 4], seed=5, use_matmul=True)
    b = builders.mlp([8, 12, 6, 4], seed=5, use_matmul=True)
    w = initializers(a)
    rng = np.random.default_rng(0)
    p0, p1 = rng.permutation(12), rng.permutation(6)
    b = with_initializers(
        b,
        {
            "fc0.weight": w["fc0.weight"][:, p0],
            "fc0.bias": w["fc0.bias"][p0],
            "fc1.weight": w["fc1.weight"][p0][:, p1],
            "fc1.bias": w["fc1.bias"][p1],
            "fc2.weight": w["fc2.weight"][p1],
        },
    )
    calib = builders.random_inputs(a, 200, seed=1)
    result = zip_models([a, b], [calib, calib], share=1.0)
    for layer, perm in zip(result.report["layers"], (p0, p1)):
        pairs = np.array(layer["pairs"])
        np.testing.assert_array_equal(perm[pairs[:, 1]], pairs[:, 0])
    x = builders.random_inputs(a, 20, seed=3)
    (y,) = run_model(a, x)
    for out in run_model(result.model, x):
        np.testing.assert_allclose(out, y, rtol=0, atol=1e-5)


# ----------------------------------------------------------------- independent transcription


def augment(x: np.ndarray) -> np.ndarray:
    """``[x ; 1]`` rows: the input of a layer with a bias."""
    return np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)


def literal_greedy(costs: np.ndarray, k: int) -> list[tuple[int, int, float]]:
    """Literal greedy: cheapest remaining pair first, each neuron used once, ties by index."""
    entries = sorted((costs[i, j], i, j) for i in range(costs.shape[0]) for j in range(costs.shape[1]))
    used_a, used_b, chosen = set(), set(), []
    for cost, i, j in entries:
        if len(chosen) == k:
            break
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        chosen.append((i, j, cost))
    return chosen


def _reference_layer(wa, ba, wb, bb, ha, hb, k):
    """Literal §3–§4: per-pair costs with M = (H_A⁻¹ + H_B⁻¹)⁻¹, greedy, merged vectors."""
    va, vb = np.concatenate([wa, ba[:, None]], 1), np.concatenate([wb, bb[:, None]], 1)
    m = np.linalg.inv(np.linalg.inv(ha) + np.linalg.inv(hb))
    table = np.array([[0.5 * (va[i] - vb[j]) @ m @ (va[i] - vb[j]) for j in range(len(vb))] for i in range(len(va))])
    chosen = literal_greedy(table, k)
    pairs = [(i, j) for i, j, _ in chosen]
    costs = [c for _, _, c in chosen]
    merged = np.stack([np.linalg.solve(ha + hb, ha @ va[i] + hb @ vb[j]) for i, j in pairs])
    return np.array(pairs), np.array(costs), merged[:, :-1], merged[:, -1]


def test_mlp_with_different_calibration_data_matches_an_independent_numpy_transcription():
    sizes, ks = [6, 9, 7, 3], [5, 4]
    models = [builders.mlp(sizes, seed=11), builders.mlp(sizes, seed=12)]
    rng = np.random.default_rng(0)
    xs = [
        rng.standard_normal((400, 6)).astype(np.float32),
        (rng.standard_normal((400, 6)) * 2 + 0.5).astype(np.float32),
    ]
    result = zip_models(models, [{"x": xs[0]}, {"x": xs[1]}], names=["a", "b"], share_per_layer=ks)
    w = [{k: v.astype(np.float64) for k, v in initializers(m).items()} for m in models]
    relu = lambda z: np.maximum(z, 0)  # noqa: E731
    # One-pass Hessians from the original models.
    h0 = [augment(x.astype(np.float64)) for x in xs]
    a1 = [relu(x.astype(np.float64) @ w[t]["fc0.weight"].T + w[t]["fc0.bias"]) for t, x in enumerate(xs)]
    h1 = [augment(a) for a in a1]
    hess0 = [z.T @ z / len(z) for z in h0]
    hess1 = [z.T @ z / len(z) for z in h1]
    # Layer 1.
    pairs0, costs0, wm0, bm0 = _reference_layer(
        w[0]["fc0.weight"], w[0]["fc0.bias"], w[1]["fc0.weight"], w[1]["fc0.bias"], hess0[0], hess0[1], ks[0]
    )
    orders0 = [np.concatenate([pairs0[:, t], np.setdiff1d(np.arange(9), pairs0[:, t])]) for t in range(2)]
    # Layer 2: inputs in the new order, the first ks[0] shared.
    keep = [np.concatenate([orders0[t][: ks[0]], [9]]) for t in range(2)]
    hs = [hess1[t][np.ix_(keep[t], keep[t])] for t in range(2)]
    wsh = [w[t]["fc1.weight"][:, orders0[t][: ks[0]]] for t in range(2)]
    pairs1, costs1, wm1, bm1 = _reference_layer(wsh[0], w[0]["fc1.bias"], wsh[1], w[1]["fc1.bias"], hs[0], hs[1], ks[1])
    orders1 = [np.concatenate([pairs1[:, t], np.setdiff1d(np.arange(7), pairs1[:, t])]) for t in range(2)]
    layers = result.report["layers"]
    np.testing.assert_array_equal(np.array(layers[0]["pairs"]), pairs0)
    np.testing.assert_array_equal(np.array(layers[1]["pairs"]), pairs1)
    np.testing.assert_allclose(layers[0]["costs"], costs0, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(layers[1]["costs"], costs1, rtol=1e-5, atol=1e-9)
    # The zipped network, task by task, in numpy.
    x = rng.standard_normal((30, 6))
    got = run_model(result.model, {"x": x.astype(np.float32)})
    for t in range(2):
        rest0 = orders0[t][ks[0] :]
        s1 = relu(x @ wm0.T + bm0)
        p1 = relu(x @ w[t]["fc0.weight"][rest0].T + w[t]["fc0.bias"][rest0])
        full1 = np.concatenate([s1, p1], axis=1)
        rest1 = orders1[t][ks[1] :]
        s2 = s1 @ wm1.T + bm1 + p1 @ w[t]["fc1.weight"][pairs1[:, t]][:, rest0].T
        p2 = full1 @ w[t]["fc1.weight"][rest1][:, orders0[t]].T + w[t]["fc1.bias"][rest1]
        full2 = relu(np.concatenate([s2, p2], axis=1))
        y = full2 @ w[t]["fc2.weight"][:, orders1[t]].T + w[t]["fc2.bias"]
        np.testing.assert_allclose(got[t], y, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------- accounting, file, extract


def test_params_file_size_metadata_and_extract(tmp_path):
    a, b = builders.cnn(seed=1), builders.cnn(seed=2)
    calib = [builders.random_inputs(a, 200, seed=1), builders.random_inputs(b, 200, seed=2)]
    out = tmp_path / "z.onnx"
    zip_models([a, b], calib, out, names=["left", "right"], share=0.5, report_path=tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    saved = tmp_path / "z.onnx"
    model = onnx.load(str(saved))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version <= 10 and 17 <= model.opset_import[0].version <= 21
    params = report["params"]
    assert params["zipped"] == parameter_count(model)
    # Saved weights: per hidden layer, shared neurons × shared inputs (× kernel) plus their biases.
    saved_weights = 0
    kernels = {"conv": 9, "dense": 1}
    for layer in report["layers"]:
        saved_weights += layer["shared"] * layer["shared_inputs"] * kernels[layer["kind"]] + layer["shared"]
    assert params["zipped"] == params["left"] + params["right"] - saved_weights
    assert params["shared"] > 0
    weight_bytes = lambda m: sum(len(t.raw_data) for t in m.graph.initializer)  # noqa: E731
    assert weight_bytes(model) == weight_bytes(a) + weight_bytes(b) - 4 * saved_weights
    # Names and provenance.
    names = {t.name for t in model.graph.initializer}
    assert any(n.startswith("shared/layer1_conv/") for n in names)
    assert any(n.startswith("left/layer2_conv/") for n in names)
    assert [o.name for o in model.graph.output] == ["left/y", "right/y"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["onnx_zip.tasks"]) == ["left", "right"]
    assert [entry["shared"] for entry in json.loads(meta["onnx_zip.shared_per_layer"])] == [
        lay["shared"] for lay in report["layers"]
    ]
    assert all(node.doc_string for node in model.graph.node if "shared_" in node.name)
    # Extraction: same outputs as the zipped model's task, fewer parameters.
    x = builders.random_inputs(a, 10, seed=5)
    both = run_model(model, x)
    for i, task in enumerate(["left", "right"]):
        single = extract_task(model, task)
        (y,) = run_model(single, x)
        np.testing.assert_allclose(y, both[i], rtol=0, atol=1e-6)
        assert parameter_count(single) < params["zipped"]
        assert [o.name for o in single.graph.output] == [f"{task}/y"]


def test_same_inputs_and_seed_give_identical_bytes(tmp_path):
    a, b = builders.cnn(seed=1), builders.cnn(seed=2)
    calib = [builders.random_inputs(a, 100, seed=1), builders.random_inputs(b, 100, seed=2)]
    for name in ("1.onnx", "2.onnx"):
        zip_models([a, b], calib, tmp_path / name, share=0.75, seed=3)
    assert (tmp_path / "1.onnx").read_bytes() == (tmp_path / "2.onnx").read_bytes()
    zip_models([a, b], None, tmp_path / "r1.onnx", share=0.5, pairing="random", seed=4)
    zip_models([a, b], None, tmp_path / "r2.onnx", share=0.5, pairing="random", seed=4)
    assert (tmp_path / "r1.onnx").read_bytes() == (tmp_path / "r2.onnx").read_bytes()


def test_separate_inputs_and_compute_once(tmp_path):
    a, b = builders.mlp([5, 8, 4], seed=1), builders.mlp([5, 8, 4], seed=2)
    calib = [builders.random_inputs(a, 100, seed=1)] * 2
    shared = zip_models([a, b], calib, share=1.0).model
    shared_nodes = [n.name for n in shared.graph.node if n.name.startswith("shared/")]
    assert "shared/layer1_dense/shared_Gemm" in shared_nodes  # computed once for both tasks
    separate = zip_models([a, b], calib, share=1.0, separate_inputs=True).model
    assert [i.name for i in separate.graph.input] == ["a/x", "b/x"]
    x = builders.random_inputs(a, 7, seed=9)["x"]
    np.testing.assert_allclose(
        run_model(separate, {"a/x": x, "b/x": x})[0], run_model(shared, {"x": x})[0], rtol=0, atol=1e-6
    )


# ----------------------------------------------------------------- bad input


def test_bad_input_is_refused_before_any_work(tmp_path):
    a, b = builders.cnn(seed=1), builders.cnn(seed=2)
    calib = [builders.random_inputs(a, 50, seed=1)] * 2
    out = tmp_path / "z.onnx"
    with pytest.raises(InputError, match="within \\[0, 1\\]"):
        zip_models([a, b], calib, out, share=1.5)
    with pytest.raises(InputError, match="cannot share 99 pairs"):
        zip_models([a, b], calib, out, share_per_layer=[99, 1, 1])
    with pytest.raises(InputError, match="3 task names for 2 models"):
        zip_models([a, b], calib, out, names=["x", "y", "z"])
    with pytest.raises(ModelError, match="do not align"):
        zip_models([a, builders.mlp([144, 8, 10], seed=1, input_name="x")], calib, out)
    with pytest.raises(InputError, match="does not exist"):
        zip_models([a, b], calib, tmp_path / "missing" / "z.onnx")
    with pytest.raises(InputError, match="calibration"):
        zip_models([a, b], calib[:1], out)
    assert not out.exists()


_cli = run_cli


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("share", "--share (zip.share) is 1.5, must be within [0, 1]"),
        ("names", "3 task names for 2 models"),
        ("unaligned", "do not align"),
        ("unwritable", "does not exist"),
        ("wrong_calib", "no array named 'x'"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line_and_no_output(tmp_path, case, message):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(builders.cnn(seed=1), str(a))
    onnx.save(builders.cnn(seed=2), str(b))
    calib = tmp_path / "c.npz"
    np.savez(calib, **builders.random_inputs(builders.cnn(), 20))
    other = tmp_path / "other.onnx"
    onnx.save(builders.mlp([4, 3, 2], seed=1, input_name="v"), str(other))
    other_calib = tmp_path / "o.npz"
    np.savez(other_calib, v=np.ones((5, 4), np.float32), w=np.ones((5, 4), np.float32))
    out = tmp_path / "z.onnx"
    args = {
        "share": [str(a), str(b), "--calib", str(calib), "--calib", str(calib), "-o", str(out), "--share", "1.5"],
        "names": [str(a), str(b), "--calib", str(calib), "--calib", str(calib), "-o", str(out), "--names", "p,q,r"],
        "unaligned": [str(a), str(other), "--calib", str(calib), "--calib", str(calib), "-o", str(out)],
        "unwritable": [
            str(a),
            str(b),
            "--calib",
            str(calib),
            "--calib",
            str(calib),
            "-o",
            str(tmp_path / "no" / "z.onnx"),
        ],
        "wrong_calib": [str(a), str(b), "--calib", str(calib), "--calib", str(other_calib), "-o", str(out)],
    }[case]
    result = _cli("zip", *args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("onnx-zip: error")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and not (tmp_path / "no").exists()


def test_cli_zip_then_extract(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(builders.cnn(seed=1), str(a))
    onnx.save(builders.cnn(seed=2), str(b))
    calib = tmp_path / "c.npz"
    np.savez(calib, **builders.random_inputs(builders.cnn(), 64))
    out, report = tmp_path / "z.onnx", tmp_path / "r.json"
    result = _cli(
        "zip",
        str(a),
        str(b),
        "--calib",
        str(calib),
        "--calib",
        str(calib),
        "-o",
        str(out),
        "--share",
        "0.5",
        "--names",
        "one,two",
        "--report",
        str(report),
    )
    assert result.returncode == 0, result.stderr
    assert "saved" in result.stdout
    assert json.loads(report.read_text())["tasks"] == ["one", "two"]
    single = tmp_path / "one.onnx"
    result = _cli("extract", str(out), "--task", "one", "-o", str(single))
    assert result.returncode == 0, result.stderr
    x = builders.random_inputs(builders.cnn(), 5, seed=3)
    np.testing.assert_allclose(run_model(single, x)[0], run_model(out, x)[0], rtol=0, atol=1e-6)
    result = _cli("extract", str(out), "--task", "three", "-o", str(tmp_path / "t.onnx"))
    assert result.returncode == 2 and "no task 'three'" in result.stderr


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_task_views_compute_what_the_zipped_model_computes(share):
    from onnx_zip.config import ZipConfig
    from onnx_zip.pipeline import prepare
    from onnx_zip.zipper.views import task_views

    a, b = builders.cnn(seed=1), builders.cnn(seed=2)
    calib = [builders.random_inputs(a, 100, seed=1), builders.random_inputs(b, 100, seed=2)]
    result = zip_models([a, b], calib, share=share)
    job = prepare([a, b], calib, config=ZipConfig(share=share))
    views = task_views(result.model, job.tasks, [p.canonical for p in job.prepared], result.layers)
    x = builders.random_inputs(a, 8, seed=3)
    zipped = run_model(result.model, x)
    for t, view in enumerate(views):
        np.testing.assert_allclose(run_model(view, x)[0], zipped[t], rtol=0, atol=1e-5)


def test_correlation_pairing_recovers_a_permuted_copy():
    a = builders.cnn(seed=3)
    b, perms = permuted_cnn(a)
    calib = builders.random_inputs(a, 200, seed=1)
    result = zip_models([a, b], [calib, calib], share=1.0, pairing="correlation")
    for layer in result.report["layers"]:
        pairs = np.array(layer["pairs"])
        np.testing.assert_array_equal(perms[layer["nodes"]["a"]][pairs[:, 1]], pairs[:, 0])
    x = builders.random_inputs(a, 10, seed=2)
    np.testing.assert_allclose(run_model(result.model, x)[1], run_model(a, x)[0], rtol=0, atol=1e-5)


def test_cross_correlation_matches_numpy():
    from onnx_zip.zipper.correlation import CrossCorrelation

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((300, 4)), rng.standard_normal((300, 3))
    b[:, 0] = 2 * a[:, 1] + 0.1 * b[:, 0]
    stat = CrossCorrelation()
    for part in (slice(0, 100), slice(100, 300)):
        stat.update(a[part], b[part])
    expected = np.corrcoef(a.T, b.T)[:4, 4:]
    np.testing.assert_allclose(stat.correlation(), expected, rtol=1e-10, atol=1e-12)


def test_split_shared_input_computes_the_same_per_task():
    from onnx_zip.zipper.extract import split_shared_input

    a, b = builders.cnn(seed=1), builders.cnn(seed=2)
    calib = [builders.random_inputs(a, 100, seed=1), builders.random_inputs(b, 100, seed=2)]
    zipped = zip_models([a, b], calib, share=0.5).model
    split = split_shared_input(zipped, ["a", "b"])
    onnx.checker.check_model(split, full_check=True)
    assert [i.name for i in split.graph.input] == ["a/x", "b/x"]
    assert parameter_count(split) == parameter_count(zipped)
    xa, xb = builders.random_inputs(a, 5, seed=3)["x"], builders.random_inputs(a, 5, seed=4)["x"]
    got = run_model(split, {"a/x": xa, "b/x": xb})
    np.testing.assert_allclose(got[0], run_model(zipped, {"x": xa})[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[1], run_model(zipped, {"x": xb})[1], rtol=0, atol=1e-5)


def _sequence_mlp(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """x (N, 5, 6) → MatMul → Add → Relu → MatMul → Add → y (N, 5, 3): rank-3 MatMul layers."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["m0"], name="mm0"),
        helper.make_node("Add", ["m0", "b0"], ["a0"], name="add0"),
        helper.make_node("Relu", ["a0"], ["r0"], name="relu0"),
        helper.make_node("MatMul", ["r0", "w1"], ["m1"], name="mm1"),
        helper.make_node("Add", ["m1", "b1"], ["y"], name="add1"),
    ]
    graph = helper.make_graph(
        nodes,
        "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 3])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_rank3_matmul_layers_with_separate_bias_adds():
    rng = np.random.default_rng(0)
    w = {
        "w0": rng.standard_normal((6, 8)),
        "b0": rng.standard_normal(8),
        "w1": rng.standard_normal((8, 3)),
        "b1": rng.standard_normal(3),
    }
    perm = rng.permutation(8)
    a = _sequence_mlp(w)
    b = _sequence_mlp({"w0": w["w0"][:, perm], "b0": w["b0"][perm], "w1": w["w1"][perm], "b1": w["b1"]})
    calib = {"x": rng.standard_normal((60, 5, 6)).astype(np.float32)}
    x = {"x": calib["x"][:4]}
    (y,) = run_model(a, x)
    for share in (0.0, 1.0):
        result = zip_models([a, b], [calib, calib], share=share)
        for out in run_model(result.model, x):
            np.testing.assert_allclose(out, y, rtol=0, atol=1e-4)
    pairs = np.array(result.report["layers"][0]["pairs"])
    np.testing.assert_array_equal(perm[pairs[:, 1]], pairs[:, 0])


def test_layers_that_cannot_share_are_not_calibrated():
    a, b = builders.mlp([6, 9, 7, 3], seed=1), builders.mlp([6, 9, 7, 3], seed=2)
    calib = [builders.random_inputs(a, 50, seed=1)] * 2
    assert zip_models([a, b], calib, share_per_layer=[1.0, 1.0]).report["calibrated_layers"] == ["fc0", "fc1"]
    assert zip_models([a, b], calib, share_per_layer=[0.0, 1.0]).report["calibrated_layers"] == []
    assert zip_models([a, b], calib, share_per_layer=[1.0, 0.0]).report["calibrated_layers"] == ["fc0"]
