"""The declared settings: defaults, validation (every problem at once), mappings, registries."""

from __future__ import annotations

import json

import pytest

from onnx_zip import mtz
from onnx_zip.config import (
    GROUPS,
    MATCHINGS,
    PAIRINGS,
    READINGS,
    CalibrationConfig,
    FinetuneConfig,
    PairingMethod,
    Registry,
    RetrainConfig,
    ZipConfig,
    conv_readings,
    iter_options,
    option_groups,
    sections_from_mapping,
)
from onnx_zip.errors import InputError


def test_defaults_are_valid_and_round_trip_through_json():
    for group in (ZipConfig, CalibrationConfig, RetrainConfig):
        config = group()
        assert group.from_mapping(json.loads(json.dumps(config.to_dict()))) == config
    tuned = FinetuneConfig(steps=3, freeze=["shared"], task_weights={"a": 1})
    assert tuned.freeze == ("shared",) and tuned.task_weights == {"a": 1.0}
    assert FinetuneConfig.from_mapping(json.loads(json.dumps(tuned.to_dict()))) == tuned


def test_calibration_defaults_are_declared_once():
    config = CalibrationConfig()
    assert (config.limit, config.batch_size, config.conv_hessian) == (4096, 256, "auto")


def test_every_problem_is_reported_at_once_naming_the_keys():
    with pytest.raises(InputError) as info:
        ZipConfig.from_mapping({"share": 1.5, "max_cost": 0.1, "pairng": "mtz", "match": "best"})
    text = str(info.value)
    for part in ("zip.share", "within [0, 1]", "did you mean 'pairing'", "zip.match", "greedy, optimal",
                 "only one sharing policy"):
        assert part in text


def test_sections_report_problems_of_every_section():
    with pytest.raises(InputError) as info:
        sections_from_mapping({"zip": {"damping": -1}, "calibration": {"limit": 0}, "retrain": {"steps": [1, -1]}},
                              ("zip", "calibration", "retrain"))
    text = str(info.value)
    assert "3 problems" in text and "zip.damping" in text and "calibration.limit" in text and "retrain.steps" in text
    built = sections_from_mapping({"zip": {"share": 1}}, ("zip", "calibration", "retrain"))
    assert built["retrain"] is None and built["zip"].share == 1.0 and built["calibration"] == CalibrationConfig()


def test_construction_validates_too():
    with pytest.raises(InputError, match="calibration.batch_size"):
        CalibrationConfig(batch_size=0)
    with pytest.raises(InputError, match="finetune.steps is missing"):
        FinetuneConfig()
    with pytest.raises(InputError, match="share_per_layer\\[1\\]"):
        ZipConfig(share_per_layer=[0.5, 1.5])


def test_share_policies():
    assert ZipConfig().share_policies(2) == (mtz.ShareFraction(0.5),) * 2
    assert ZipConfig(share_per_layer=[0.25, 3]).share_policies(2) == (mtz.ShareFraction(0.25), mtz.ShareCount(3))
    assert ZipConfig(max_cost=0.1).share_policies(1) == (mtz.ShareThreshold(0.1),)
    with pytest.raises(InputError, match="2 per-layer share settings for 3 hidden layers"):
        ZipConfig(share_per_layer=[0.5, 0.5]).share_policies(3)


def test_retrain_steps_per_layer():
    assert RetrainConfig(steps=5).steps_per_layer(3) == [5, 5, 5]
    with pytest.raises(InputError, match="2 counts for 3"):
        RetrainConfig(steps=[1, 2]).steps_per_layer(3)
    assert RetrainConfig(lr=0.1).finetune_config(7, seed=2).lr == 0.1


def test_options_are_declared_with_flags_and_help():
    groups = option_groups()
    assert set(groups) == set(GROUPS)
    flags = {}
    for options in groups.values():
        for opt in options:
            assert opt.help and opt.section and opt.name
            if opt.flag is not None:
                assert opt.flag.startswith("--")
                flags.setdefault(opt.flag, set()).add(opt.kind)
    assert all(len(kinds) == 1 for kinds in flags.values())  # one flag, one meaning
    zip_flags = {o.flag for o in iter_options(ZipConfig)}
    assert {"--share", "--pairing", "--match", "--damping"} <= zip_flags
    assert next(o for o in iter_options(CalibrationConfig) if o.name == "conv_hessian").flag == "--conv-hessian"


def test_registries_and_later_registration():
    assert READINGS.names() == ("dense", "patch", "channel") and conv_readings() == ("patch", "channel")
    assert PAIRINGS.names() == ("mtz", "l2", "random", "correlation") and MATCHINGS.names() == ("greedy", "optimal")
    assert PAIRINGS.get("mtz").needs_calibration and not PAIRINGS.get("l2").needs_calibration
    with pytest.raises(InputError, match="did you mean 'mtz'"):
        PAIRINGS.get("mzt")
    registry: Registry[PairingMethod] = Registry("pairing")
    registry.register(PairingMethod("x", "x", "none", "l2", False))
    with pytest.raises(ValueError):
        registry.register(PairingMethod("x", "x", "none", "l2", False))


def test_a_registered_pairing_is_accepted(monkeypatch):
    monkeypatch.setitem(
        PAIRINGS._entries, "compensated", PairingMethod("compensated", "test", "hessian", "hessian", True)
    )
    assert ZipConfig(pairing="compensated").pairing_method.name == "compensated"


def test_the_mapping_takes_node_pairs_or_rows_of_node_names():
    assert ZipConfig(mapping={"fc0": "dense0"}).mapping == {"fc0": "dense0"}
    rows = ZipConfig.from_mapping({"mapping": [["fc0", "fc0", "d0"], ["fc1", "fc1", "d1"]]})
    assert rows.mapping == (("fc0", "fc0", "d0"), ("fc1", "fc1", "d1"))
    assert ZipConfig.from_mapping(json.loads(json.dumps(rows.to_dict()))) == rows
    assert rows.to_dict()["mapping"] == [["fc0", "fc0", "d0"], ["fc1", "fc1", "d1"]]
    for bad in ([["fc0", "fc0"], ["fc1"]], [["fc0"]], [], [["fc0", 3]], {"fc0": 1}, "fc0"):
        with pytest.raises(InputError, match="zip.mapping"):
            ZipConfig(mapping=bad)
