"""Zipping more than two models (mtz-method §7): each further model is matched against the shared
neurons and merged in with the joint Hessian ``Σ_t H_t``; exactness at 0%, permuted copies recovered
exactly, an independent numpy transcription, smaller models, the CLI and fine-tuning."""

from __future__ import annotations

import json

import numpy as np
import pytest

import builders
from conftest import run_cli, zoo_model
from onnx_zip.errors import InputError
from onnx_zip.finetune import finetune
from onnx_zip.zipper.api import zip_models
from onnx_zip.zipper.extract import extract_task
from onnx_zip.zipper.report import parameter_count
from test_zip import augment, initializers, literal_greedy, permuted_cnn, permuted_mlp, run_model, with_initializers

# ----------------------------------------------------------------- exactness at 0% sharing


def test_three_zoo_models_at_share_zero_reproduce_every_output(zoo, tmp_path):
    names = ("lenet5_mnist_s0", "lenet5_fashion", "lenet5_fashion_super4")
    entries = [zoo_model(zoo, name) for name in names]
    result = zip_models(
        [e["file"] for e in entries], [e["data"]["train"] for e in entries], tmp_path / "z.onnx",
        names=["digits", "fashion", "super4"], share=0.0, calibration_limit=128,
    )
    x = np.load(entries[1]["data"]["test"])[entries[1]["input"]][:500]
    zipped = run_model(tmp_path / "z.onnx", {entries[1]["input"]: x})
    outputs = [o.name for o in result.model.graph.output]
    for task, entry in zip(("digits", "fashion", "super4"), entries):
        (reference,) = run_model(entry["file"], {entry["input"]: x})[:1]
        got = zipped[outputs.index(f"{task}/{entry['output']}")]
        assert np.abs(got - reference).max() <= 1e-5
    assert all(layer["shared"] == 0 for layer in result.report["layers"])
    assert result.report["calibrated_layers"] == []


# ----------------------------------------------------------------- permuted copies at 100%


@pytest.mark.parametrize("reading", ["patch", "channel"])
@pytest.mark.parametrize("match", ["greedy", "optimal"])
def test_cnn_zipped_with_two_permuted_copies_is_recovered_exactly(reading, match):
    a = builders.cnn(seed=3, size=12, channels=(4, 6), hidden=16)
    b, perms_b = permuted_cnn(a, seed=7)
    c, perms_c = permuted_cnn(a, seed=11)
    calib = builders.random_inputs(a, 300, seed=1)
    result = zip_models([a, b, c], [calib] * 3, share=1.0, conv_hessian=reading, match=match)
    for layer in result.report["layers"]:
        pairs = np.array(layer["pairs"])
        node = layer["nodes"]["a"]
        assert pairs.shape == (layer["neurons"][0], 3)
        np.testing.assert_array_equal(perms_b[node][pairs[:, 1]], pairs[:, 0])
        np.testing.assert_array_equal(perms_c[node][pairs[:, 2]], pairs[:, 0])
        assert max(layer["costs"]) <= 1e-9 * max(1.0, float(np.abs(initializers(a)[f"{node}.weight"]).max()))
    x = builders.random_inputs(a, 50, seed=2)
    (y,) = run_model(a, x)
    outputs = run_model(result.model, x)
    assert len(outputs) == 3
    for out in outputs:
        np.testing.assert_allclose(out, y, rtol=0, atol=1e-5)
    heads = 16 * 10 + 10
    assert result.report["params"]["zipped"] == parameter_count(a) + 2 * heads


# ----------------------------------------------------------------- independent transcription


def _reference_layer(vectors: list[np.ndarray], hessians: list[np.ndarray], k: int):
    """§3–§4 and §7 literally: pair tasks 0 and 1, then add each further task to the shared neurons.

    Args:
        vectors: Per task ``(N_t, D)`` neuron rows (bias last).
        hessians: Per task ``(D, D)``.

    Returns:
        pairs ``(k', T)``, summed costs ``(k',)``, merged rows ``(k', D)``.
    """
    def operator(h_a, h_b):
        return h_a @ np.linalg.inv(h_a + h_b) @ h_b

    def cost_table(rows_a, rows_b, m):
        return np.array([[0.5 * (u - v) @ m @ (u - v) for v in rows_b] for u in rows_a])

    chosen = literal_greedy(cost_table(vectors[0], vectors[1], operator(hessians[0], hessians[1])), k)
    pairs = [[i, j] for i, j, _ in chosen]
    costs = [c for _, _, c in chosen]
    merged = [np.linalg.solve(hessians[0] + hessians[1], hessians[0] @ vectors[0][i] + hessians[1] @ vectors[1][j]) for i, j, _ in chosen]
    joint = hessians[0] + hessians[1]
    for t in range(2, len(vectors)):
        table = cost_table(merged, vectors[t], operator(joint, hessians[t]))
        step = sorted(literal_greedy(table, min(len(merged), len(vectors[t]))))
        pairs = [pairs[i] + [j] for i, j, _ in step]
        costs = [costs[i] + c for i, _, c in step]
        merged = [np.linalg.solve(joint + hessians[t], joint @ merged[i] + hessians[t] @ vectors[t][j]) for i, j, _ in step]
        joint = joint + hessians[t]
    return np.array(pairs), np.array(costs), np.array(merged)


def test_three_mlps_match_an_independent_numpy_transcription():
    sizes, ks = [6, 9, 7, 3], [5, 4]
    models = [builders.mlp(sizes, seed=s) for s in (11, 12, 13)]
    rng = np.random.default_rng(0)
    xs = [(rng.standard_normal((400, 6)) * scale + shift).astype(np.float32) for scale, shift in ((1, 0), (2, 0.5), (0.5, -1))]
    result = zip_models(models, [{"x": x} for x in xs], names=["a", "b", "c"], share_per_layer=ks)
    w = [{k: v.astype(np.float64) for k, v in initializers(m).items()} for m in models]
    relu = lambda z: np.maximum(z, 0)  # noqa: E731
    tasks = range(3)
    # Layer 1: every input shared.
    hess0 = [augment(x.astype(np.float64)).T @ augment(x.astype(np.float64)) / len(x) for x in xs]
    rows0 = [np.concatenate([w[t]["fc0.weight"], w[t]["fc0.bias"][:, None]], 1) for t in tasks]
    pairs0, costs0, merged0 = _reference_layer(rows0, hess0, ks[0])
    orders0 = [np.concatenate([pairs0[:, t], np.setdiff1d(np.arange(9), pairs0[:, t])]) for t in tasks]
    # Layer 2: Hessians of the original activations, restricted to the shared inputs (new order).
    acts = [augment(relu(x.astype(np.float64) @ w[t]["fc0.weight"].T + w[t]["fc0.bias"])) for t, x in enumerate(xs)]
    keep = [np.concatenate([orders0[t][: ks[0]], [9]]) for t in tasks]
    hess1 = [(acts[t].T @ acts[t] / len(acts[t]))[np.ix_(keep[t], keep[t])] for t in tasks]
    rows1 = [np.concatenate([w[t]["fc1.weight"][:, orders0[t][: ks[0]]], w[t]["fc1.bias"][:, None]], 1) for t in tasks]
    pairs1, costs1, merged1 = _reference_layer(rows1, hess1, ks[1])
    orders1 = [np.concatenate([pairs1[:, t], np.setdiff1d(np.arange(7), pairs1[:, t])]) for t in tasks]
    layers = result.report["layers"]
    np.testing.assert_array_equal(np.array(layers[0]["pairs"]), pairs0)
    np.testing.assert_array_equal(np.array(layers[1]["pairs"]), pairs1)
    np.testing.assert_allclose(layers[0]["costs"], costs0, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(layers[1]["costs"], costs1, rtol=1e-5, atol=1e-9)
    stored = initializers(result.model)
    np.testing.assert_allclose(stored["shared/layer1_dense/weight"], merged0[:, :-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stored["shared/layer2_dense/bias"], merged1[:, -1], rtol=1e-5, atol=1e-6)
    # The zipped network, task by task, in numpy.
    x = rng.standard_normal((30, 6))
    got = run_model(result.model, {"x": x.astype(np.float32)})
    s1 = relu(x @ merged0[:, :-1].T + merged0[:, -1])
    for t in tasks:
        rest0 = orders0[t][ks[0]:]
        p1 = relu(x @ w[t]["fc0.weight"][rest0].T + w[t]["fc0.bias"][rest0])
        full1 = np.concatenate([s1, p1], axis=1)
        rest1 = orders1[t][ks[1]:]
        s2 = s1 @ merged1[:, :-1].T + merged1[:, -1] + p1 @ w[t]["fc1.weight"][pairs1[:, t]][:, rest0].T
        p2 = full1 @ w[t]["fc1.weight"][rest1][:, orders0[t]].T + w[t]["fc1.bias"][rest1]
        full2 = relu(np.concatenate([s2, p2], axis=1))
        y = full2 @ w[t]["fc2.weight"][:, orders1[t]].T + w[t]["fc2.bias"]
        np.testing.assert_allclose(got[t], y, rtol=1e-4, atol=1e-4)


def _noisy(model, seed: int):
    rng = np.random.default_rng(seed)
    return with_initializers(model, {k: v + 0.01 * rng.standard_normal(v.shape) for k, v in initializers(model).items()})


def test_the_merged_weights_do_not_depend_on_the_order_the_models_come_in():
    a = builders.mlp([5, 8, 6, 3], seed=1)
    b = _noisy(permuted_mlp(a, seed=7)[0], 1)
    c = _noisy(permuted_mlp(a, seed=11)[0], 2)
    models = [a, b, c]
    rng = np.random.default_rng(4)
    calib = [{"x": (rng.standard_normal((300, 5)) * (1 + t)).astype(np.float32)} for t in range(3)]
    forward = zip_models(models, calib, share=1.0)
    order = [2, 0, 1]
    backward = zip_models([models[i] for i in order], [calib[i] for i in order], share=1.0)
    # The merged vector is (Σ_t H_t)⁻¹ Σ_t H_t w_t whatever the order: the same shared neurons (the
    # permutations) with the same weights, up to the order of the shared neurons.
    for tag in ("layer1_dense", "layer2_dense"):
        f_layer = next(layer for layer in forward.report["layers"] if layer["layer"] == tag)
        b_layer = next(layer for layer in backward.report["layers"] if layer["layer"] == tag)
        pairs = np.array(f_layer["pairs"])
        back_pairs = np.array(b_layer["pairs"])[:, np.argsort(order)]
        index = {tuple(p): i for i, p in enumerate(pairs)}
        assert set(index) == {tuple(p) for p in back_pairs}
        rows = [index[tuple(p)] for p in back_pairs]
        if tag == "layer1_dense":
            np.testing.assert_allclose(
                initializers(backward.model)[f"shared/{tag}/weight"], initializers(forward.model)[f"shared/{tag}/weight"][rows],
                rtol=1e-4, atol=1e-6,
            )
        np.testing.assert_allclose(
            initializers(backward.model)[f"shared/{tag}/bias"], initializers(forward.model)[f"shared/{tag}/bias"][rows],
            rtol=1e-4, atol=1e-6,
        )
    x = builders.random_inputs(a, 20, seed=3)
    got_f, got_b = run_model(forward.model, x), run_model(backward.model, x)
    for t in range(3):
        np.testing.assert_allclose(got_b[order.index(t)], got_f[t], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------- a smaller model, policies


def test_a_smaller_third_model_caps_the_shared_neurons():
    a, b = builders.mlp([6, 12, 6, 3], seed=1), builders.mlp([6, 12, 6, 3], seed=2)
    c = builders.mlp([6, 8, 6, 3], seed=3)
    calib = [builders.random_inputs(a, 200, seed=s) for s in (1, 2, 3)]
    result = zip_models([a, b, c], calib, share=1.0)
    layers = result.report["layers"]
    assert [layer["neurons"] for layer in layers] == [[12, 12, 8], [6, 6, 6]]
    assert [layer["shared"] for layer in layers] == [8, 6]
    half = zip_models([a, b, c], calib, share=0.5)
    assert [layer["shared"] for layer in half.report["layers"]] == [4, 3]  # half of the smallest layer
    # Every task's output equals its extracted single-task model's.
    x = builders.random_inputs(a, 20, seed=9)
    outputs = run_model(result.model, x)
    for t, task in enumerate(("a", "b", "c")):
        (single,) = run_model(extract_task(result.model, task), x)
        np.testing.assert_allclose(single, outputs[t], rtol=0, atol=1e-6)


def test_a_cost_threshold_keeps_a_neuron_shared_only_while_every_added_cost_is_below_it():
    a = builders.mlp([6, 10, 3], seed=1)
    b, c = builders.mlp([6, 10, 3], seed=1), builders.mlp([6, 10, 3], seed=2)
    calib = [builders.random_inputs(a, 200, seed=1)] * 3
    result = zip_models([a, b, c], calib, max_cost=1e-9)  # a and b are identical; c is not
    assert result.report["layers"][0]["shared"] == 0
    two = zip_models([a, b], calib[:2], max_cost=1e-9)
    assert two.report["layers"][0]["shared"] == 10


@pytest.mark.parametrize("pairing", ["l2", "random"])
def test_averaging_pairings_give_the_plain_mean_of_all_tasks(pairing):
    models = [builders.mlp([5, 7, 3], seed=s) for s in (1, 2, 3)]
    result = zip_models(models, None, share=1.0, pairing=pairing, seed=5)
    pairs = np.array(result.report["layers"][0]["pairs"])
    w = [initializers(m) for m in models]
    mean = np.mean([w[t]["fc0.weight"][pairs[:, t]] for t in range(3)], axis=0)
    np.testing.assert_allclose(initializers(result.model)["shared/layer1_dense/weight"], mean, rtol=1e-6, atol=1e-6)


def test_correlation_pairing_refuses_more_than_two_models():
    models = [builders.mlp([5, 7, 3], seed=s) for s in (1, 2, 3)]
    with pytest.raises(InputError, match="correlation pairing zips two models"):
        zip_models(models, [builders.random_inputs(models[0], 10)] * 3, pairing="correlation")


# ----------------------------------------------------------------- CLI


_cli = run_cli


def test_cli_zips_three_models_and_refuses_a_missing_calibration_set(tmp_path):
    paths, calibs = [], []
    for s in (1, 2, 3):
        model = builders.mlp([6, 10, 4, 3], seed=s)
        path = tmp_path / f"m{s}.onnx"
        path.write_bytes(model.SerializeToString())
        data = tmp_path / f"c{s}.npz"
        np.savez(data, **builders.random_inputs(model, 100, seed=s))
        paths.append(str(path))
        calibs.append(str(data))
    out = tmp_path / "z.onnx"
    missing = _cli("zip", *paths, "--calib", calibs[0], "--calib", calibs[1], "-o", str(out))
    assert missing.returncode == 2 and "3 models" in missing.stderr and not out.exists()
    done = _cli("zip", *paths, *[f"--calib={c}" for c in calibs], "-o", str(out), "--names", "x,y,z",
                "--share", "1.0", "--report", str(tmp_path / "r.json"), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "10 / 10 / 10" in done.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["tasks"] == ["x", "y", "z"] and [layer["shared"] for layer in report["layers"]] == [10, 4]
    one = _cli("zip", paths[0], "--calib", calibs[0], "-o", str(out))
    assert one.returncode == 2 and "two or more models" in one.stderr


# ----------------------------------------------------------------- fine-tuning three tasks


def test_three_task_model_fine_tunes():
    models = [builders.mlp([6, 10, 3], seed=s) for s in (1, 2, 3)]
    calib = [builders.random_inputs(models[0], 100, seed=s) for s in (1, 2, 3)]
    zipped = zip_models(models, calib, names=["a", "b", "c"], share=1.0).model
    rng = np.random.default_rng(0)
    train = {
        task: {"x": calib[t]["x"], "label": rng.integers(0, 3, size=100).astype(np.int64)}
        for t, task in enumerate(("a", "b", "c"))
    }
    tuned = finetune(zipped, train, steps=5, batch_size=16, seed=0)
    assert len(tuned.history) == 5
    last = tuned.history[-1]
    assert sorted(last["loss"]) == ["a", "b", "c"] and all(np.isfinite(v) for v in last["loss"].values())
    assert [o.name for o in tuned.model.graph.output] == ["a/y", "b/y", "c/y"]
