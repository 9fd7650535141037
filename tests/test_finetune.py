"""``finetune`` / ``onnx-zip finetune``: the loss falls, a shared weight gets the sum of the tasks'
gradients, one step equals a numpy transcription, the export is the zipped graph with new values,
losses (ce/bce/mse), freezing and the no-gradient preflight, determinism, bad input, one zoo run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import builders
from conftest import CliResult, run_cli, zoo_model
from onnx_zip import runtime
from onnx_zip.errors import InputError, ModelError
from onnx_zip.finetune import evaluate_tasks, finetune
from onnx_zip.finetune.export import finetune_records
from onnx_zip.finetune.optim import learning_rate
from onnx_zip.model_io import load_model
from onnx_zip.zipper.report import write_metadata

D_IN, HIDDEN, CLASSES_A, CLASSES_B = 6, 5, 3, 4


# ----------------------------------------------------------------- tiny two-head models


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name)


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "shared/fc/weight": rng.standard_normal((HIDDEN, D_IN)).astype(np.float32) * 0.5,
        "shared/fc/bias": rng.standard_normal(HIDDEN).astype(np.float32) * 0.1,
        "a/head/weight": rng.standard_normal((CLASSES_A, HIDDEN)).astype(np.float32) * 0.5,
        "a/head/bias": rng.standard_normal(CLASSES_A).astype(np.float32) * 0.1,
        "b/head/weight": rng.standard_normal((CLASSES_B, HIDDEN)).astype(np.float32) * 0.5,
        "b/head/bias": rng.standard_normal(CLASSES_B).astype(np.float32) * 0.1,
    }


def two_head(w: dict[str, np.ndarray], *, untied: bool = False, act: str = "Relu") -> onnx.ModelProto:
    """x (N, 6) → Gemm(shared/fc) → act → heads a (N, 3) and b (N, 4), with zipper-style names.

    ``untied``: the shared layer is duplicated per task (``a/fc/...``, ``b/fc/...``), the
    network without weight sharing.
    """
    nodes, inits = [], []
    for t in ("a", "b"):
        fc = f"{t}/fc" if untied else "shared/fc"
        if untied or t == "a":
            inits += [_init(f"{fc}/weight", w["shared/fc/weight"]), _init(f"{fc}/bias", w["shared/fc/bias"])]
            nodes.append(
                helper.make_node(
                    "Gemm", ["x", f"{fc}/weight", f"{fc}/bias"], [f"{fc}/out"], name=f"{fc}_Gemm", transB=1
                )
            )
            act_inputs = [f"{fc}/out"]
            if act == "PRelu":
                inits.append(_init(f"{fc}/slope", np.full((HIDDEN,), 0.1)))
                act_inputs.append(f"{fc}/slope")
            nodes.append(helper.make_node(act, act_inputs, [f"{fc}/act"], name=f"{fc}_{act}", doc_string="activation"))
        inits += [_init(f"{t}/head/weight", w[f"{t}/head/weight"]), _init(f"{t}/head/bias", w[f"{t}/head/bias"])]
        nodes.append(
            helper.make_node(
                "Gemm",
                [f"{fc}/act", f"{t}/head/weight", f"{t}/head/bias"],
                [f"{t}/y"],
                name=f"{t}/head_Gemm",
                transB=1,
                doc_string=f"{t}'s head",
            )
        )
    outputs = [
        helper.make_tensor_value_info(f"{t}/y", TensorProto.FLOAT, ["N", c])
        for t, c in (("a", CLASSES_A), ("b", CLASSES_B))
    ]
    model = builders.make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D_IN])], outputs, inits, name="two_head"
    )
    write_metadata(model, {"tasks": ["a", "b"], "version": "test"})
    return model


def task_data(seed: int, n: int, classes: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, D_IN)).astype(np.float32)
    label = np.argmax(x[:, :classes] - 0.5 * x[:, D_IN - classes :], axis=1).astype(np.int64)
    return {"x": x, "label": label}


def data(n: int = 48) -> dict[str, dict[str, np.ndarray]]:
    return {"a": task_data(1, n, CLASSES_A), "b": task_data(2, n, CLASSES_B)}


def values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def one_step(model: onnx.ModelProto, d, **kw) -> onnx.ModelProto:
    """One plain SGD step with lr 1 over every sample of each task (batch = the whole data)."""
    n = len(next(iter(d.values()))["label"])
    kw.setdefault("losses", None)
    return finetune(model, d, steps=1, lr=1.0, batch_size=n, momentum=0.0, schedule="constant", threads=1, **kw).model


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def numpy_gradients(w: dict[str, np.ndarray], d) -> dict[str, np.ndarray]:
    """Literal transcription: gradients of CE_a + CE_b (means) for the two-head Relu model."""
    grads = {k: np.zeros_like(v, dtype=np.float64) for k, v in w.items()}
    for t in ("a", "b"):
        x, y = d[t]["x"].astype(np.float64), d[t]["label"]
        pre = x @ w["shared/fc/weight"].T + w["shared/fc/bias"]
        h = np.maximum(pre, 0)
        z = h @ w[f"{t}/head/weight"].T + w[f"{t}/head/bias"]
        dz = softmax(z)
        dz[np.arange(len(y)), y] -= 1
        dz /= len(y)
        grads[f"{t}/head/weight"] += dz.T @ h
        grads[f"{t}/head/bias"] += dz.sum(axis=0)
        dpre = (dz @ w[f"{t}/head/weight"]) * (pre > 0)
        grads["shared/fc/weight"] += dpre.T @ x
        grads["shared/fc/bias"] += dpre.sum(axis=0)
    return grads


# ----------------------------------------------------------------- gradients and export


def test_one_step_matches_numpy_and_export_keeps_the_graph():
    w = weights()
    model = two_head(w)
    d = data()
    tuned = one_step(model, d)
    grads = numpy_gradients(w, d)
    new = values(tuned)
    for name, g in grads.items():
        np.testing.assert_allclose(new[name], w[name] - g, rtol=0, atol=2e-6, err_msg=name)
    # the same graph: nodes, names, doc strings, inputs, outputs, opsets, metadata; new values only
    assert [n.SerializeToString() for n in tuned.graph.node] == [n.SerializeToString() for n in model.graph.node]
    assert tuned.graph.input == model.graph.input and tuned.graph.output == model.graph.output
    assert [t.name for t in tuned.graph.initializer] == [t.name for t in model.graph.initializer]
    assert list(tuned.opset_import) == list(model.opset_import) and tuned.ir_version <= 10
    original = {p.key: p.value for p in model.metadata_props}
    props = {p.key: p.value for p in tuned.metadata_props}
    assert {k: props[k] for k in original} == original
    (record,) = finetune_records(tuned)
    assert record["steps"] == 1 and record["optimizer"] == "sgd" and record["losses"] == {"a": "ce", "b": "ce"}
    assert record["frozen"] == [] and set(record["final_losses"]) == {"a", "b"}
    assert not any(n.domain for n in tuned.graph.node)
    runtime.make_session(tuned).run(None, {"x": d["a"]["x"]})


def test_shared_weight_gets_the_sum_of_untied_gradients():
    w = weights(3)
    d = data(40)
    tied = values(one_step(two_head(w), d))
    untied = values(one_step(two_head(w, untied=True), d))
    for part in ("weight", "bias"):
        start = w[f"shared/fc/{part}"]
        summed = (untied[f"a/fc/{part}"] - start) + (untied[f"b/fc/{part}"] - start)
        np.testing.assert_allclose(tied[f"shared/fc/{part}"] - start, summed, rtol=1e-5, atol=1e-6)
        assert np.abs(untied[f"a/fc/{part}"] - start).max() > 1e-3  # both tasks contribute
        assert np.abs(untied[f"b/fc/{part}"] - start).max() > 1e-3
    for t in ("a", "b"):
        np.testing.assert_allclose(tied[f"{t}/head/weight"], untied[f"{t}/head/weight"], rtol=1e-5, atol=1e-6)


def test_loss_falls_and_accuracy_rises_on_a_zipped_mlp():
    a, b = builders.mlp([D_IN, 8, 6, CLASSES_A], seed=0), builders.mlp([D_IN, 8, 6, CLASSES_B], seed=1)
    from onnx_zip.pipeline import zip_models

    d = {"a": task_data(1, 400, CLASSES_A), "b": task_data(2, 400, CLASSES_B)}
    zipped = zip_models([a, b], [{"x": d["a"]["x"]}, {"x": d["b"]["x"]}], names=["a", "b"], share=0.5).model
    before = evaluate_tasks(zipped, d)
    result = finetune(zipped, d, steps=150, eval=d, eval_every=50, seed=0, threads=1)
    first = np.mean([h["total"] for h in result.history[:10]])
    last = np.mean([h["total"] for h in result.history[-10:]])
    assert last < 0.7 * first
    assert all(result.accuracy[t] > before[t] for t in ("a", "b"))
    assert [h["step"] for h in result.history if "accuracy" in h] == [50, 100, 150]
    assert result.accuracy == evaluate_tasks(result.model, d)


def test_deterministic_bytes_with_one_thread():
    model, d = two_head(weights()), data(100)
    runs = [
        finetune(model, d, steps=20, batch_size=16, seed=s, threads=1).model.SerializeToString(deterministic=True)
        for s in (0, 0, 1)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_schedule_warmup_and_cosine():
    lrs = [learning_rate(s, 100, 0.02, "cosine") for s in range(100)]
    assert lrs[0] == pytest.approx(0.004) and lrs[4] == pytest.approx(0.02)
    assert max(lrs) == pytest.approx(0.02) and lrs[-1] < 1e-4
    assert all(x >= y for x, y in zip(lrs[4:], lrs[5:]))


# ----------------------------------------------------------------- losses


def _bce_mse_model(w) -> onnx.ModelProto:
    return two_head(w)


def test_first_step_losses_equal_numpy_for_bce_and_mse():
    w = weights(5)
    model = two_head(w)
    rng = np.random.default_rng(9)
    n = 32
    xa, xb = rng.standard_normal((n, D_IN)).astype(np.float32), rng.standard_normal((n, D_IN)).astype(np.float32)
    ya = (rng.random((n, CLASSES_A)) > 0.5).astype(np.float32)
    yb = rng.standard_normal((n, CLASSES_B)).astype(np.float32)
    result = finetune(
        model,
        {"a": {"x": xa, "label": ya}, "b": {"x": xb, "label": yb}},
        steps=2,
        batch_size=n,
        losses={"a": "bce", "b": "mse"},
        task_weights={"a": 1.0, "b": 0.5},
        threads=1,
    )
    za, zb = runtime.make_session(model).run(None, {"x": xa})[0], runtime.make_session(model).run(None, {"x": xb})[1]
    za, zb = za.astype(np.float64), zb.astype(np.float64)
    bce = np.mean(np.maximum(za, 0) - za * ya + np.log1p(np.exp(-np.abs(za))))
    mse = np.mean((zb - yb) ** 2)
    first = result.history[0]
    assert first["loss"]["a"] == pytest.approx(bce, rel=1e-5)
    assert first["loss"]["b"] == pytest.approx(mse, rel=1e-5)
    assert first["total"] == pytest.approx(bce + 0.5 * mse, rel=1e-5)
    assert result.accuracy is None


# ----------------------------------------------------------------- freezing and the preflight


def test_freeze_shared_keeps_shared_weights():
    w = weights()
    model = two_head(w)
    tuned = values(finetune(model, data(), steps=5, freeze=["shared"], threads=1).model)
    assert np.array_equal(tuned["shared/fc/weight"], w["shared/fc/weight"])
    assert not np.array_equal(tuned["a/head/weight"], w["a/head/weight"])
    with pytest.raises(InputError, match="matches no parameter"):
        finetune(model, data(), steps=5, freeze=["nothing/"])


def test_preflight_freezes_or_refuses_ops_without_gradient(caplog):
    model = two_head(weights(), act="PRelu")
    with pytest.raises(ModelError, match=r"shared/fc_PRelu \(PRelu\)"):
        finetune(model, data(), steps=2, no_grad="error")
    result = finetune(model, data(), steps=3, threads=1)
    frozen = result.record["frozen"]
    assert set(frozen) == {"shared/fc/weight", "shared/fc/bias", "shared/fc/slope"}
    assert "freezing the 3 parameter(s)" in caplog.text
    assert np.array_equal(values(result.model)["shared/fc/weight"], weights()["shared/fc/weight"])


# ----------------------------------------------------------------- bad input (API)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "finetune.steps is 0, must be ≥ 1"),
        ({"train": {"a": None, "c": None}}, "unknown task 'c'"),
        ({"train": {"a": None}}, "no training data for task 'b'"),
        ({"losses": {"a": "hinge"}}, "loss 'hinge'"),
        ({"losses": {"a": "bce"}}, "needs float targets"),
        ({"drop_labels": True}, "no 'label' array"),
        ({"bad_labels": True}, r"labels range over \[0, 7\] but output 'a/y' has 3 classes"),
    ],
)
def test_bad_input_is_refused_before_training(kwargs, message):
    d = data()
    if kwargs.pop("drop_labels", False):
        d["a"] = {"x": d["a"]["x"]}
    if kwargs.pop("bad_labels", False):
        d["a"] = {"x": d["a"]["x"], "label": np.arange(48) % 8}
    train = kwargs.pop("train", None)
    if train is not None:
        d = {t: data()[t if t in ("a", "b") else "a"] for t in train}
    kwargs.setdefault("steps", 3)
    with pytest.raises(InputError, match=message):
        finetune(two_head(weights()), d, **kwargs)


# ----------------------------------------------------------------- CLI


def _cli(*args: str) -> CliResult:
    return run_cli("finetune", *args)


@pytest.fixture()
def cli_files(tmp_path: Path) -> dict[str, str]:
    onnx.save(two_head(weights()), tmp_path / "z.onnx")
    d = data()
    files = {"model": str(tmp_path / "z.onnx"), "out": str(tmp_path / "tuned.onnx")}
    for t in ("a", "b"):
        np.savez(tmp_path / f"{t}.npz", **d[t])
        files[t] = str(tmp_path / f"{t}.npz")
    np.savez(tmp_path / "nolabel.npz", x=d["a"]["x"])
    np.savez(tmp_path / "range.npz", x=d["a"]["x"], label=np.arange(48) % 9)
    files["nolabel"], files["range"] = str(tmp_path / "nolabel.npz"), str(tmp_path / "range.npz")
    return files


def test_cli_trains_and_writes(cli_files):
    f = cli_files
    proc = _cli(
        f["model"],
        "--train",
        f"a={f['a']}",
        "--train",
        f"b={f['b']}",
        "--eval",
        f"a={f['a']}",
        "--eval",
        f"b={f['b']}",
        "--steps",
        "20",
        "--batch",
        "16",
        "-o",
        f["out"],
        "--threads",
        "1",
        "--task-weight",
        "a=1,b=2",
    )
    assert proc.returncode == 0, proc.stderr
    assert "acc before" in proc.stdout and "wrote" in proc.stdout
    tuned = load_model(f["out"])
    (record,) = finetune_records(tuned)
    assert record["task_weights"] == {"a": 1.0, "b": 2.0} and record["batch"] == 16
    assert json.loads({p.key: p.value for p in tuned.metadata_props}["onnx_zip.tasks"]) == ["a", "b"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("nolabel", "task 'a': its data has no 'label' array and it has no teacher"),
        ("range", "labels range over [0, 8] but output 'a/y' has 3 classes"),
        ("unknown", "unknown task 'c'"),
        ("bce", "the bce loss of output 'a/y' needs float targets"),
        ("zero", "--steps (finetune.steps) is 0, must be ≥ 1"),
    ],
)
def test_cli_bad_input_exits_2_without_output(cli_files, case, message):
    f = cli_files
    train_a = {"nolabel": f["nolabel"], "range": f["range"]}.get(case, f["a"])
    args = [
        f["model"],
        "--train",
        f"a={train_a}",
        "--train",
        f"{'c' if case == 'unknown' else 'b'}={f['b']}",
        "--steps",
        "0" if case == "zero" else "5",
        "-o",
        f["out"],
    ]
    if case == "bce":
        args += ["--loss", "a=bce"]
    proc = _cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnx-zip: error:") and message in lines[0], proc.stderr
    assert not Path(f["out"]).exists()


# ----------------------------------------------------------------- zoo


@pytest.mark.slow
def test_zoo_lenet300_pair_recovers_with_100_steps(zoo):
    from onnx_zip.pipeline import zip_models

    entries = [zoo_model(zoo, n) for n in ("lenet300_mnist_s0", "lenet300_mnist_s1")]
    zipped = zip_models(
        [e["file"] for e in entries],
        [e["data"]["train"] for e in entries],
        names=["a", "b"],
        share=1.0,
        calibration_limit=1000,
    ).model
    test = {t: e["data"]["test"] for t, e in zip("ab", entries)}
    before = evaluate_tasks(zipped, test)
    result = finetune(zipped, {t: e["data"]["train"] for t, e in zip("ab", entries)}, steps=100, eval=test)
    for t in ("a", "b"):
        assert result.accuracy[t] > before[t], (before, result.accuracy)
