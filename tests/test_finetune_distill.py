"""Distillation from the original models, losses on pre-activation tensors, the automatic learning
rate, the divergence guard, and the task metrics of ``eval`` (issue 15).

Small two-head models built here with seeded weights; teachers are the single-task networks of
the same architecture (``y = head(relu(fc(x)))``), so every number has a numpy transcription."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from test_finetune import CLASSES_A, CLASSES_B, D_IN, HIDDEN, _init, data, two_head, values, weights

import builders
from conftest import run_cli
from onnx_zip import runtime
from onnx_zip.errors import InputError, NumericalError
from onnx_zip.finetune import finetune
from onnx_zip.finetune.evaluation import evaluate_tasks_metrics
from onnx_zip.finetune.lr_range import choose_lr
from onnx_zip.finetune.trainer import DivergenceGuard
from onnx_zip.metrics import TaskMeter
from onnx_zip.zipper.report import write_metadata

T = 2.0


def teacher(w: dict[str, np.ndarray], task: str, *, softmax: bool = False) -> onnx.ModelProto:
    """The original single-task model of ``task``: x (N, 6) → Gemm → Relu → Gemm → y (→ Softmax)."""
    inits = [_init("fc/weight", w["shared/fc/weight"]), _init("fc/bias", w["shared/fc/bias"]),
             _init("head/weight", w[f"{task}/head/weight"]), _init("head/bias", w[f"{task}/head/bias"])]
    nodes = [helper.make_node("Gemm", ["x", "fc/weight", "fc/bias"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "head/weight", "head/bias"], ["logits" if softmax else "y"], transB=1)]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["y"], axis=-1))
    classes = w[f"{task}/head/weight"].shape[0]
    return builders.make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D_IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
        inits,
        name=task,
    )


def softmax_head(w: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The two-head model with a Softmax after each head (outputs ``a/y``, ``b/y`` are probabilities)."""
    model = two_head(w)
    for t in ("a", "b"):
        for node in model.graph.node:
            if node.output[0] == f"{t}/y":
                node.output[0] = f"{t}/logits"
        model.graph.node.append(helper.make_node("Softmax", [f"{t}/logits"], [f"{t}/y"], name=f"{t}/softmax", axis=-1))
    return model


def unlabeled(n: int = 48) -> dict[str, dict[str, np.ndarray]]:
    return {t: {"x": d["x"]} for t, d in data(n).items()}


def forward(w: dict[str, np.ndarray], task: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(relu hidden, logits)`` in float64."""
    h = np.maximum(x.astype(np.float64) @ w["shared/fc/weight"].T + w["shared/fc/bias"], 0)
    return h, h @ w[f"{task}/head/weight"].T + w[f"{task}/head/bias"]


def soft(z: np.ndarray, temperature: float) -> np.ndarray:
    e = np.exp(z / temperature - (z / temperature).max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------- distillation


def test_kd_loss_and_head_gradient_equal_numpy():
    """One plain SGD step (lr 1, whole data): the loss is T² KL(p_T || q_T) and each head moves by
    exactly -T (q_T - p_T)ᵀ h / n."""
    student_w, teacher_w = weights(0), weights(3)
    d = unlabeled()
    teachers = {t: teacher(teacher_w, t) for t in ("a", "b")}
    result = finetune(
        two_head(student_w),
        d,
        teachers=teachers,
        steps=1,
        lr=1.0,
        batch_size=48,
        momentum=0.0,
        schedule="constant",
        threads=1,
        temperature=T,
        allow_worse=True,
    )
    new = values(result.model)
    for t in ("a", "b"):
        x = d[t]["x"]
        h, z = forward(student_w, t, x)
        p, q = soft(forward(teacher_w, t, x)[1], T), soft(z, T)
        kl = T**2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
        assert result.history[0]["loss"][t] == pytest.approx(kl, rel=1e-5)
        dz = T * (q - p) / len(x)
        np.testing.assert_allclose(new[f"{t}/head/weight"], student_w[f"{t}/head/weight"] - dz.T @ h, atol=2e-6)
        np.testing.assert_allclose(new[f"{t}/head/bias"], student_w[f"{t}/head/bias"] - dz.sum(axis=0), atol=2e-6)
    assert result.record["distill"]["a"] == {"loss": "kd", "alpha": 0.0, "temperature": T}


def test_a_student_equal_to_its_teachers_does_not_move():
    w = weights(1)
    teachers = {t: teacher(w, t) for t in ("a", "b")}
    result = finetune(two_head(w), unlabeled(), teachers=teachers, steps=3, lr=0.1, threads=1, allow_worse=True)
    assert all(abs(h["total"]) < 1e-6 for h in result.history)
    for name, value in values(result.model).items():
        np.testing.assert_allclose(value, w[name], atol=1e-6, err_msg=name)


def test_distillation_recovers_the_teachers_agreement():
    """A perturbed student distilled from the originals agrees with them more afterwards."""
    w = weights(2)
    rng = np.random.default_rng(4)
    noisy = {k: v + 0.3 * rng.standard_normal(v.shape).astype(np.float32) for k, v in w.items()}
    teachers = {t: teacher(w, t) for t in ("a", "b")}
    test = unlabeled(400)
    before = evaluate_tasks_metrics(two_head(noisy), test, references=teachers, threads=1)
    result = finetune(
        two_head(noisy), unlabeled(400), teachers=teachers, steps=150, batch_size=32, lr=0.05, threads=1, seed=0
    )
    after = evaluate_tasks_metrics(result.model, test, references=teachers, threads=1)
    for t in ("a", "b"):
        assert after[t].metrics["mean_abs_diff"] < 0.6 * before[t].metrics["mean_abs_diff"], (before[t], after[t])
        assert after[t].metrics["agreement"] >= before[t].metrics["agreement"]


def test_labels_mix_in_with_alpha():
    student_w, teacher_w = weights(0), weights(3)
    d = data()
    teachers = {t: teacher(teacher_w, t) for t in ("a", "b")}
    kw = dict(steps=1, lr=1.0, batch_size=48, momentum=0.0, schedule="constant", threads=1, allow_worse=True)
    ce = finetune(two_head(student_w), d, **kw).history[0]["loss"]
    kd = finetune(two_head(student_w), unlabeled(), teachers=teachers, **kw).history[0]["loss"]
    mixed = finetune(two_head(student_w), d, teachers=teachers, alpha=0.25, **kw).history[0]["loss"]
    for t in ("a", "b"):
        assert mixed[t] == pytest.approx(0.25 * ce[t] + 0.75 * kd[t], rel=1e-5)


def test_softmax_output_trains_on_its_logits():
    """ce on a Softmax output is built on the logits: the same step as on the logits model; a
    distilling Softmax student reads its teacher's logits too."""
    w = weights(0)
    d = data()
    kw = dict(steps=1, lr=1.0, batch_size=48, momentum=0.0, schedule="constant", threads=1, allow_worse=True)
    plain = values(finetune(two_head(w), d, **kw).model)
    tuned = finetune(softmax_head(w), d, **kw)
    assert tuned.record["loss_tensors"] == {"a": "a/logits", "b": "b/logits"}
    for name, value in values(tuned.model).items():
        np.testing.assert_allclose(value, plain[name], atol=1e-6, err_msg=name)
    teachers = {t: teacher(weights(3), t, softmax=True) for t in ("a", "b")}
    result = finetune(softmax_head(w), unlabeled(), teachers=teachers, **kw)
    assert result.record["distill"]["a"]["loss"] == "kd"
    x = d["a"]["x"]
    p, q = soft(forward(weights(3), "a", x)[1], 2.0), soft(forward(w, "a", x)[1], 2.0)
    assert result.history[0]["loss"]["a"] == pytest.approx(4.0 * np.mean(np.sum(p * np.log(p / q), axis=1)), rel=1e-5)


def test_bce_accepts_float_targets_on_a_sigmoid_output():
    w = weights(0)
    model = two_head(w)
    for node in model.graph.node:
        if node.output[0] == "a/y":
            node.output[0] = "a/logits"
    model.graph.node.append(helper.make_node("Sigmoid", ["a/logits"], ["a/y"], name="a/sigmoid"))
    x = data()["a"]["x"]
    target = np.random.default_rng(0).random((48, CLASSES_A)).astype(np.float32)
    result = finetune(
        model,
        {"a": {"x": x, "label": target}, "b": data()["b"]},
        losses={"a": "bce"},
        steps=1,
        batch_size=48,
        lr=0.01,
        threads=1,
        allow_worse=True,
    )
    z = forward(w, "a", x)[1]
    bce = np.mean(np.maximum(z, 0) - z * target + np.log1p(np.exp(-np.abs(z))))
    assert result.record["loss_tensors"]["a"] == "a/logits"
    assert result.history[0]["loss"]["a"] == pytest.approx(bce, rel=1e-5)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("classes", r"teacher .* tensor 'y' has shape \(1, 5\) per sample, the zipped task's \(1, 3\)"),
        ("output", "has no output 'y'"),
        ("none", "task 'a': its data has no 'label' array and it has no teacher"),
        ("kind", "the ce loss of output 'a/y' needs \\(N,\\) integer class indices"),
        ("unknown", "--teacher: unknown task 'c'"),
    ],
)
def test_bad_teachers_and_labels_are_refused_before_training(case, message):
    w = weights(0)
    teachers: dict[str, object] = {"a": teacher(w, "a"), "b": teacher(w, "b")}
    d: dict[str, dict[str, np.ndarray]] = unlabeled()
    if case == "classes":
        wide = dict(w, **{"a/head/weight": np.ones((5, HIDDEN), np.float32), "a/head/bias": np.zeros(5, np.float32)})
        teachers["a"] = teacher(wide, "a")
    elif case == "output":
        renamed = teacher(w, "a")
        renamed.graph.output[0].name = "z"
        renamed.graph.node[-1].output[0] = "z"
        teachers["a"] = renamed
    elif case == "none":
        del teachers["a"]
    elif case == "kind":
        d["a"]["label"] = np.zeros((48, CLASSES_A), np.float32)
    else:
        teachers["c"] = teacher(w, "a")
    with pytest.raises(InputError, match=message):
        finetune(two_head(w), d, teachers=teachers, steps=3, threads=1)


# ----------------------------------------------------------------- safe defaults


def test_diverging_run_stops_restores_the_best_and_refuses(tmp_path):
    model, d = two_head(weights()), data(100)
    out = tmp_path / "tuned.onnx"
    with pytest.raises(NumericalError, match="diverged|made the loss worse"):
        finetune(model, d, steps=40, lr=10.0, batch_size=16, threads=1, output=out)
    assert not out.exists()
    result = finetune(model, d, steps=40, lr=10.0, batch_size=16, threads=1, output=out, allow_worse=True)
    assert out.exists() and result.record["diverged"]
    assert result.record["steps_run"] < 40
    assert all(np.isfinite(v).all() for v in values(result.model).values())


def test_a_good_run_passes_the_probe_test():
    result = finetune(two_head(weights()), data(100), steps=20, batch_size=16, lr=0.01, seed=0, threads=1)
    probe = result.record["probe_loss"]
    assert probe["after"] < probe["before"] and result.record["diverged"] is None


def test_automatic_learning_rate_is_recorded_and_trains():
    result = finetune(two_head(weights()), data(100), steps=30, batch_size=16, seed=0, threads=1)
    test = result.record["lr_test"]
    assert result.record["lr"] == test["lr"] and 1e-4 <= test["lr"] <= 0.05
    assert result.record["probe_loss"]["after"] < result.record["probe_loss"]["before"]


def test_choose_lr_and_the_guard():
    lrs = [1e-4, 1e-3, 1e-2, 1e-1]
    assert choose_lr(lrs, [1.0, 0.8, 0.5, math.nan], 1.1, "sgd") == pytest.approx(1e-2)
    assert choose_lr(lrs, [1.2, 1.3, 2.0, 9.0], 1.1, "sgd") == 1e-4  # nothing helped: the smallest rate
    assert choose_lr([1e-4, 1.0], [1.0, 0.1], 1.1, "sgd") == 0.05  # capped

    class Runner:
        def values(self) -> dict[str, np.ndarray]:
            return {"w": np.zeros(1)}

    guard = DivergenceGuard(100, 1.5)
    assert guard.window == 5
    assert all(guard.observe(1.0, Runner()) is None for _ in range(10))
    assert guard.observe(math.nan, Runner()) is not None
    guard = DivergenceGuard(100, 1.5)
    stops = [guard.observe(loss, Runner()) for loss in [1.0] * 5 + [2.0] * 10]
    assert stops[-1] is not None and "rose above 1.5x" in stops[-1] and guard.best_step == 5


# ----------------------------------------------------------------- metrics and eval


def test_task_meter_numbers():
    meter = TaskMeter("t")
    out = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    ref = np.array([[1.0, 2.0], [0.0, 3.0], [2.0, 0.0]])
    meter.update(out[:2], np.array([0, 1]), ref[:2])
    meter.update(out[2:], np.array([1]), ref[2:])
    r = meter.result()
    assert r["accuracy"] == pytest.approx(2 / 3) and r["agreement"] == pytest.approx(2 / 3)
    assert r["max_abs_diff"] == 1.0 and r["mean_abs_diff"] == pytest.approx(3 / 6)
    assert r["cosine"] == pytest.approx((0.8 + 1.0 + 1.0) / 3)
    maps = TaskMeter("m", maps=True)
    maps.update(np.array([[0.9, 0.8, 0.1, 0.6]]), None, np.array([[0.7, 0.2, 0.1, 0.9]]))
    assert maps.result()["iou"] == pytest.approx(2 / 3) and "agreement" not in maps.result()


def test_eval_cli_scores_the_task_named_and_every_task_by_default(tmp_path: Path):
    w = weights(0)
    onnx.save(two_head(w), tmp_path / "z.onnx")
    onnx.save(teacher(w, "b"), tmp_path / "b.onnx")
    d = data(60)
    np.savez(tmp_path / "b.npz", **d["b"])
    one = run_cli(
        "eval",
        str(tmp_path / "z.onnx"),
        "--data",
        str(tmp_path / "b.npz"),
        "--task",
        "b",
        "--teacher",
        f"b={tmp_path / 'b.onnx'}",
    )
    assert one.returncode == 0, one.stderr
    assert one.stdout.startswith("b: accuracy") and "top-1 agreement 100.00%" in one.stdout and "\na:" not in one.stdout
    both = run_cli("eval", str(tmp_path / "z.onnx"), "--data", str(tmp_path / "b.npz"))
    assert both.returncode == 0, both.stderr
    assert "every task is scored on it" in both.stdout and "\na: " in both.stdout and "\nb: " in both.stdout
    bad = run_cli("eval", str(tmp_path / "z.onnx"), "--data", str(tmp_path / "b.npz"), "--task", "c")
    assert bad.returncode == 2 and "--task 'c'" in bad.stderr


def test_evaluator_matches_numpy_for_a_zipped_model():
    w = weights(0)
    d = data(60)
    result = evaluate_tasks_metrics(two_head(w), {"b": d["b"]}, references={"b": teacher(weights(3), "b")}, threads=1)
    z, ref = forward(w, "b", d["b"]["x"])[1], forward(weights(3), "b", d["b"]["x"])[1]
    m = result["b"].metrics
    assert m["accuracy"] == pytest.approx(np.mean(z.argmax(1) == d["b"]["label"]))
    assert m["agreement"] == pytest.approx(np.mean(z.argmax(1) == ref.argmax(1)))
    assert m["max_abs_diff"] == pytest.approx(np.abs(z - ref).max(), rel=1e-5)


def test_cli_distils_without_labels(tmp_path: Path):
    w = weights(0)
    model = two_head(w)
    write_metadata(
        model, {"tasks": ["a", "b"], "version": "test", "sources": {"a": {"file": "a.onnx"}, "b": {"file": "b.onnx"}}}
    )
    onnx.save(model, tmp_path / "z.onnx")
    onnx.save(teacher(weights(3), "a"), tmp_path / "a.onnx")  # found next to the zipped model
    onnx.save(teacher(weights(3), "b"), tmp_path / "teacher_b.onnx")
    for t, arrays in unlabeled().items():
        np.savez(tmp_path / f"{t}.npz", **arrays)
    out = tmp_path / "tuned.onnx"
    proc = run_cli(
        "finetune",
        str(tmp_path / "z.onnx"),
        "--train",
        f"a={tmp_path / 'a.npz'}",
        "--train",
        f"b={tmp_path / 'b.npz'}",
        "--teacher",
        f"b={tmp_path / 'teacher_b.onnx'}",
        "--steps",
        "10",
        "--batch",
        "16",
        "--lr",
        "0.01",
        "--threads",
        "1",
        "-o",
        str(out),
        "--eval",
        f"a={tmp_path / 'a.npz'}",
        "--eval",
        f"b={tmp_path / 'b.npz'}",
    )
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and "wrote" in proc.stdout and "agree after" in proc.stdout
    row = next(line for line in proc.stdout.splitlines() if line.startswith("a "))
    assert row.split()[2:4] == ["-", "-"] and row.split()[-1].endswith("%")  # no labels: agreement only
    probe = runtime.make_session(str(out)).run(None, {"x": unlabeled()["a"]["x"]})
    assert probe[0].shape == (48, CLASSES_A) and probe[1].shape == (48, CLASSES_B)


# ----------------------------------------------------------------- BatchNormalization


def _bn_model(w: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The two-head model with a BatchNormalization (inference mode) after the shared layer."""
    model = two_head(w)
    rng = np.random.default_rng(7)
    stats = {
        "scale": 1 + 0.1 * rng.standard_normal(HIDDEN),
        "bias": 0.1 * rng.standard_normal(HIDDEN),
        "mean": rng.standard_normal(HIDDEN),
        "var": 0.5 + rng.random(HIDDEN),
    }
    model.graph.initializer.extend(_init(f"shared/bn/{k}", v) for k, v in stats.items())
    for node in model.graph.node:
        if node.output[0] == "shared/fc/out":
            node.output[0] = "shared/fc/pre_bn"
    bn = helper.make_node(
        "BatchNormalization",
        ["shared/fc/pre_bn", *[f"shared/bn/{k}" for k in stats]],
        ["shared/fc/out"],
        name="shared/bn",
        epsilon=1e-5,
    )
    model.graph.node.insert(1, bn)
    return model


def test_batchnorm_trains_in_inference_mode_by_default():
    """Statistics kept; one step equals the step of the same model with the BN folded by hand."""
    w = weights(0)
    model = _bn_model(w)
    d = data()
    kw = dict(steps=1, lr=0.1, batch_size=48, momentum=0.0, schedule="constant", threads=1, allow_worse=True)
    result = finetune(model, d, freeze=["shared/fc/"], **kw)
    new, old = values(result.model), values(model)
    for k in ("mean", "var"):
        assert np.array_equal(new[f"shared/bn/{k}"], old[f"shared/bn/{k}"])
    assert not np.array_equal(new["shared/bn/scale"], old["shared/bn/scale"])
    before = runtime.make_session(model).run(None, {"x": d["a"]["x"]})[0]
    gain = old["shared/bn/scale"] / np.sqrt(old["shared/bn/var"] + 1e-5)
    folded = dict(
        w,
        **{
            "shared/fc/weight": w["shared/fc/weight"] * gain[:, None],
            "shared/fc/bias": (w["shared/fc/bias"] - old["shared/bn/mean"]) * gain + old["shared/bn/bias"],
        },
    )
    np.testing.assert_allclose(forward(folded, "a", d["a"]["x"])[1], before, atol=1e-5)
    plain = values(finetune(two_head(folded), d, freeze=["shared/"], **kw).model)
    np.testing.assert_allclose(new["a/head/weight"], plain["a/head/weight"], atol=1e-5)
    trained = finetune(model, d, batchnorm="train", freeze=["shared/fc/"], **kw)
    assert not np.array_equal(values(trained.model)["shared/bn/mean"], old["shared/bn/mean"])


def test_layerwise_loop_distils_tasks_without_labels():
    """zip_layerwise with unlabeled training data: each layer's retraining distils from the originals."""
    from onnx_zip.pipeline.layerwise import zip_layerwise

    a, b = builders.cnn(seed=1), builders.cnn(seed=2)
    data = {"a": builders.random_inputs(a, 128, seed=1), "b": builders.random_inputs(b, 128, seed=2)}
    result = zip_layerwise(
        [a, b],
        [data["a"], data["b"]],
        data,
        retrain_steps=[3, 3, 4],
        share=0.5,
        finetune_options={"batch_size": 16, "seed": 0, "lr": 0.001},
    )
    records = result.report["layerwise"]
    assert [r["steps"] for r in records] == [3, 3, 4]
    assert all(r["final_loss"] is not None for r in records)


def _with_sigmoid(model: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    """The model with a Sigmoid after each of ``outputs`` (same output names: probability maps)."""
    for out in outputs:
        for node in model.graph.node:
            if node.output[0] == out:
                node.output[0] = f"{out}_logits"
        model.graph.node.append(helper.make_node("Sigmoid", [f"{out}_logits"], [out], name=f"{out}_sigmoid"))
    return model


def test_score_maps_distil_with_mse_on_logits_and_agreement_improves():
    """Sigmoid outputs (scores/maps): mse on the pre-Sigmoid tensors; IoU and |diff| against the originals improve."""
    w = weights(2)
    rng = np.random.default_rng(5)
    noisy = {k: v + 0.3 * rng.standard_normal(v.shape).astype(np.float32) for k, v in w.items()}
    teachers = {t: _with_sigmoid(teacher(w, t), ["y"]) for t in ("a", "b")}
    student = _with_sigmoid(two_head(noisy), ["a/y", "b/y"])
    test = unlabeled(400)
    before = evaluate_tasks_metrics(student, test, references=teachers, threads=1)
    result = finetune(student, unlabeled(400), teachers=teachers, steps=150, batch_size=32, lr=0.05, threads=1)
    assert result.record["distill"]["a"]["loss"] == "mse" and result.record["loss_tensors"]["a"] == "a/y_logits"
    after = evaluate_tasks_metrics(result.model, test, references=teachers, threads=1)
    for t in ("a", "b"):
        assert after[t].metrics["iou"] > before[t].metrics["iou"]
        assert after[t].metrics["mean_abs_diff"] < before[t].metrics["mean_abs_diff"]


def test_a_teacher_other_than_the_recorded_source_is_reported(tmp_path: Path, caplog):
    from onnx_zip.finetune.distill import warn_if_not_recorded
    from onnx_zip.model_io import sha256_file

    onnx.save(teacher(weights(0), "a"), tmp_path / "a.onnx")
    onnx.save(teacher(weights(3), "a"), tmp_path / "other.onnx")
    model = two_head(weights(0))
    write_metadata(
        model, {"tasks": ["a", "b"], "sources": {"a": {"file": "a.onnx", "sha256": sha256_file(tmp_path / "a.onnx")}}}
    )
    with caplog.at_level("WARNING"):
        assert not warn_if_not_recorded(model, "a", tmp_path / "a.onnx")
        assert warn_if_not_recorded(model, "a", tmp_path / "other.onnx") and "not the recorded source" in caplog.text
