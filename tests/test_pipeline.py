"""The pipeline's stages: they compose to what zip_models gives, statistics files are reused or refused,
a sweep level is a job of its own, a recipe prepares each model once, the tables cover the registries."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import builders
from onnx_zip.calibrate import ACCUMULATORS
from onnx_zip.config import PAIRINGS, READINGS, CalibrationConfig, ZipConfig
from onnx_zip.errors import InputError
from onnx_zip.pipeline import (
    build,
    calibrate_models,
    gather_statistics,
    load_statistics,
    plan,
    prepare,
    save_statistics,
    zip_models,
)
from onnx_zip.pipeline.layerwise import zip_layerwise
from onnx_zip.zipper.pairing import COST_RULES
from onnx_zip.zipper.plan import layers_to_calibrate
from onnx_zip.zipper.readings import OPS


def _pair(seed: int = 1):
    a, b = builders.cnn(seed=seed), builders.cnn(seed=seed + 1)
    calib = [builders.random_inputs(a, 60, seed=1), builders.random_inputs(b, 60, seed=2)]
    return a, b, calib


def _bytes(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString(deterministic=True)


def test_stages_compose_to_zip_models():
    a, b, calib = _pair()
    job = prepare([a, b], calib, config=ZipConfig(share=0.5))
    stats = gather_statistics(job, layers_to_calibrate(job.chains, job.aligned, job.settings))
    model = build(job, plan(job, stats))
    result = zip_models([a, b], calib, share=0.5)
    assert _bytes(model) == _bytes(result.model)
    typed = result.zip_report
    assert typed.params == result.report["params"] and typed.settings["share"] == 0.5
    assert typed.calibrated_layers == [job.aligned[p][0].node for p in stats.positions]
    assert set(typed.timings) == {"validate", "calibrate", "plan", "rewrite", "save"}
    assert all(len(r) == 2 for r in stats.readings.values()) and stats.statistic == "hessian"


def test_statistics_file_is_reused_and_gives_the_same_model(tmp_path):
    a, b, calib = _pair()
    path = tmp_path / "stats.npz"
    calibrate_models([a, b], calib, path, config=ZipConfig(share=0.5))
    direct = zip_models([a, b], calib, share=0.75)
    reused = zip_models([a, b], calib, share=0.75, stats=path)
    assert _bytes(direct.model) == _bytes(reused.model)
    with np.load(path, allow_pickle=False) as npz:  # no pickles
        assert "__meta__" in npz.files


def test_statistics_file_from_other_models_or_readings_is_refused(tmp_path):
    a, b, calib = _pair()
    path = tmp_path / "stats.npz"
    calibrate_models([a, b], calib, path, calibration_config=CalibrationConfig(conv_hessian="patch"))
    other = prepare([a, builders.cnn(seed=7)], calib)
    with pytest.raises(InputError, match="other models"):
        load_statistics(path, other)
    channel = prepare([a, b], calib, calibration_config=CalibrationConfig(conv_hessian="channel"))
    with pytest.raises(InputError, match="other readings"):
        load_statistics(path, channel)
    onnx_file = tmp_path / "a.onnx"
    onnx.save(a, str(onnx_file))
    with pytest.raises(InputError, match="is an ONNX model, not a statistics .npz"):
        zip_models([a, b], calib, share=0.5, stats=onnx_file)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a statistics .npz"):
        zip_models([a, b], calib, share=0.5, stats=tmp_path / "junk.npz")


def test_statistics_round_trip_exactly(tmp_path):
    a, b, calib = _pair()
    job = prepare([a, b], calib)
    stats = gather_statistics(job, [0, 1])
    save_statistics(stats, tmp_path / "s.npz")
    loaded = load_statistics(tmp_path / "s.npz", job)
    assert loaded.positions == [0, 1] and loaded.readings == stats.readings
    for t in range(2):
        for node, h in stats.hessians[t].items():
            np.testing.assert_array_equal(loaded.hessians[t][node], h)


def test_a_level_is_a_new_job_and_the_validated_one_is_unchanged():
    a, b, calib = _pair()
    job = prepare([a, b], calib, config=ZipConfig(share=1.0))
    level = job.with_zip_config(job.config.replace(share=0.25))
    assert job.config.share == 1.0 and level.config.share == 0.25 and level.prepared is job.prepared
    with pytest.raises(InputError, match="within \\[0, 1\\]"):
        job.with_zip_config(job.config.replace(share=2.0))


def test_per_layer_loop_without_training():
    """Every step 0 and no training data: calibrate layer l on the model zipped so far, plan, move on."""
    a, b = builders.mlp([6, 8, 5, 3], seed=1), builders.mlp([6, 8, 5, 3], seed=2)
    calib = [builders.random_inputs(a, 64, seed=1), builders.random_inputs(b, 64, seed=2)]
    result = zip_layerwise([a, b], calib, None, retrain_steps=0, share=0.5)
    onepass = zip_models([a, b], calib, share=0.5)
    assert result.report["layers"][0]["pairs"] == onepass.report["layers"][0]["pairs"]
    assert [r["steps"] for r in result.report["layerwise"]] == [0, 0]


def test_tables_cover_the_registries():
    assert set(OPS) == set(ACCUMULATORS) == set(READINGS.names())
    assert {method.costs for method in PAIRINGS} <= set(COST_RULES)


def test_sweep_supports_correlation_pairing():
    from onnx_zip.sweep import sweep

    a, b, calib = _pair()
    labelled = {t: {**c, "label": np.zeros(len(c["x"]), dtype=np.int64)} for t, c in zip("ab", calib)}
    report = sweep([a, b], calib, [0.0, 0.5], labelled, pairing="correlation")
    assert [level["share"] for level in report["sweep"]] == [0.0, 0.5]
    assert report["settings"]["pairing"] == "correlation"


def test_plan_file_round_trip_builds_the_same_model(tmp_path):
    from onnx_zip.pipeline import load_plan, save_plan

    a, b, calib = _pair()
    job = prepare([a, b], calib, config=ZipConfig(share=0.5))
    zips = plan(job, gather_statistics(job, layers_to_calibrate(job.chains, job.aligned, job.settings)))
    save_plan(tmp_path / "plan.npz", job, zips)
    loaded = load_plan(tmp_path / "plan.npz", job)
    assert _bytes(build(job, loaded)) == _bytes(build(job, zips))
    other = prepare([a, builders.cnn(seed=9)], calib)
    with pytest.raises(InputError, match="other models"):
        load_plan(tmp_path / "plan.npz", other)


def _batch_of_one(model: onnx.ModelProto) -> onnx.ModelProto:
    fixed = onnx.ModelProto.FromString(model.SerializeToString())
    for value in [*fixed.graph.input, *fixed.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = 1
    return fixed


def test_models_with_a_batch_fixed_to_one_calibrate_and_keep_their_input():
    a, b, calib = _pair()
    free = zip_models([a, b], calib, share=0.5)
    fixed = zip_models([_batch_of_one(a), _batch_of_one(b)], calib, share=0.5)
    assert fixed.model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert fixed.report["layers"] == free.report["layers"]
    x = builders.random_inputs(a, 1, seed=4)
    from onnx_zip import runtime

    for got, want in zip(runtime.make_session(fixed.model).run(None, x), runtime.make_session(free.model).run(None, x)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
