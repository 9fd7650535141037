"""Alignment of layer chains, its diff on mismatch, explicit mappings, and the ``align`` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

import builders
from conftest import REPO_ROOT, CliResult, run_cli, zoo_model
from onnx_zip.errors import ModelError
from onnx_zip.graph.align import Alignment, align_chains
from onnx_zip.graph.canonicalize import canonicalize
from onnx_zip.graph.discover import discover_layers


def chain(model: onnx.ModelProto, label: str):
    return discover_layers(canonicalize(model, label=label), label=label)


def cli(*args: str) -> CliResult:
    return run_cli(*args, cwd=REPO_ROOT)


def test_positional_pairs_allow_different_widths() -> None:
    a = chain(builders.cnn(0, channels=(4, 6), hidden=16), "A")
    b = chain(builders.cnn(1, channels=(5, 6), hidden=12), "B")
    alignment = align_chains([a, b])
    assert [x.nodes for x in alignment.layers] == [
        ("conv0", "conv0"),
        ("conv1", "conv1"),
        ("fc0", "fc0"),
        ("fc1", "fc1"),
    ]
    assert alignment.layers[0].neurons == (4, 5) and alignment.layers[1].inputs == (4, 5)
    assert [x.is_head for x in alignment.layers] == [False, False, False, True]
    assert alignment.layers[0].kernel_shape == (3, 3)
    assert Alignment.from_dict(json.loads(json.dumps(alignment.to_dict()))) == alignment


def test_three_models() -> None:
    chains = [chain(builders.mlp([8, 6, 3], seed=s), f"m{s}") for s in range(3)]
    alignment = align_chains(chains)
    assert alignment.models == ("m0", "m1", "m2")
    assert alignment.hidden[0].nodes == ("fc0",) * 3 and len(alignment.heads) == 1


def test_mismatch_diff_table() -> None:
    a = chain(builders.mlp([144, 16, 10]), "mlp")
    b = chain(builders.cnn(), "cnn")
    with pytest.raises(ModelError) as info:
        align_chains([a, b])
    text = str(info.value)
    assert "position 0: kind differs" in text
    lines = text.splitlines()
    assert lines[1].split() == ["#", "mlp", "cnn"]
    assert "fc0 dense 16<-144" in lines[2] and "conv0 conv 4<-1 k3x3" in lines[2] and "<- kind differs" in lines[2]
    assert "missing layer" in text


def test_first_conv_input_channels_must_match_but_a_dense_input_may_be_narrower() -> None:
    with pytest.raises(ModelError, match="input size differs"):
        align_chains([chain(builders.cnn(in_channels=1), "a"), chain(builders.cnn(in_channels=3), "b")])
    alignment = align_chains([chain(builders.mlp([8, 6, 3]), "a"), chain(builders.mlp([9, 6, 3]), "b")])
    assert alignment.layers[0].inputs == (8, 9)


def test_kernel_must_match() -> None:
    a = chain(builders.cnn(0), "a")
    b_model = builders.cnn(0)
    b = chain(b_model, "b")
    conv1 = b.layers[1]
    from dataclasses import replace

    b = replace(b, layers=(b.layers[0], replace(conv1, conv=replace(conv1.conv, kernel_shape=(5, 5))), *b.layers[2:]))
    with pytest.raises(ModelError, match="position 1: kernel differs"):
        align_chains([a, b])


def test_explicit_mapping() -> None:
    a = chain(builders.mlp([8, 6, 4, 3], seed=0), "a")
    b = chain(builders.mlp([8, 5, 4, 3], seed=1), "b")
    alignment = align_chains([a, b], mapping={"fc0": "fc0", "fc1": "fc1"})
    assert [x.nodes for x in alignment.layers] == [("fc0", "fc0"), ("fc1", "fc1"), ("fc2", "fc2")]
    with pytest.raises(ModelError, match="no zippable layer named 'nope'.*fc0, fc1, fc2"):
        align_chains([a, b], mapping={"fc0": "nope", "fc1": "fc1"})
    with pytest.raises(ModelError, match="not mapped"):
        align_chains([a, b], mapping={"fc0": "fc0"})
    with pytest.raises(ModelError, match="not in model order"):
        align_chains([a, b], mapping=[["fc0", "fc1"], ["fc1", "fc0"]])


def test_align_json_is_accepted_as_a_mapping(tmp_path: Path) -> None:
    """``align --json`` output given back as ``--map`` (to align or zip) pairs the same layers."""
    a = chain(builders.mlp([8, 6, 4, 3], seed=0), "a")
    b = chain(builders.mlp([8, 5, 4, 3], seed=1), "b")
    alignment = align_chains([a, b])
    document = json.loads(json.dumps(alignment.to_dict()))
    assert align_chains([a, b], mapping=document) == alignment
    paths = []
    for name, model in (("a", builders.cnn(0)), ("b", builders.cnn(1, channels=(5, 7)))):
        paths.append(str(tmp_path / f"{name}.onnx"))
        onnx.save(model, paths[-1])
    mapping = tmp_path / "align.json"
    mapping.write_text(cli("align", *paths, "--json").stdout)
    again = cli("align", *paths, "--json", "--map", str(mapping))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == json.loads(mapping.read_text())


def test_cli_tiny(tmp_path: Path) -> None:
    paths = {}
    for name, model in {
        "a": builders.cnn(0),
        "b": builders.cnn(1, channels=(5, 7)),
        "m": builders.mlp([144, 16, 10]),
    }.items():
        paths[name] = str(tmp_path / f"{name}.onnx")
        onnx.save(model, paths[name])
    ok = cli("align", paths["a"], paths["b"], "--json")
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert [lay["neurons"] for lay in data["layers"]] == [[4, 5], [6, 7], [16, 16], [10, 10]]
    bad = cli("align", paths["m"], paths["a"])
    assert bad.returncode == 2
    assert "kind differs" in bad.stderr and "conv0 conv 4<-1 k3x3" in bad.stderr
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps([["conv0", "conv0", "conv0"], ["conv1", "conv1", "conv1"], ["fc0", "fc0", "fc0"]]))
    three = cli("align", paths["a"], paths["b"], paths["a"], "--map", str(mapping))
    assert three.returncode == 0, three.stderr
    assert "head" in three.stdout.splitlines()[-1]


def _zoo_pairs(zoo) -> list[tuple[str, str]]:
    by_arch: dict[str, list[str]] = {}
    for name, entry in sorted(zoo.items()):
        by_arch.setdefault(entry.get("arch", name), []).append(name)
    return [(names[0], other) for names in by_arch.values() for other in names[1:]]


def test_cli_zoo_pairs(zoo) -> None:
    pairs = _zoo_pairs(zoo)
    assert len(pairs) >= 4, "the bundled zoo has pairs of LeNet-300, LeNet-5, ResNet and sklearn MLP models"
    for a, b in pairs:
        result = cli("align", zoo[a]["file"], zoo[b]["file"], "--json")
        assert result.returncode == 0, (a, b, result.stderr)
        layers = json.loads(result.stdout)["layers"]
        chain_a = chain(onnx.load(zoo[a]["file"]), a)
        assert [lay["nodes"][0] for lay in layers] == [lay.node for lay in chain_a.layers]
        assert [lay["neurons"][0] for lay in layers] == [lay.neurons for lay in chain_a.layers]
        assert [lay["is_head"] for lay in layers] == [False] * len(chain_a.hidden) + [True]


def test_cli_zoo_mismatch(zoo) -> None:
    zoo_model(zoo, "lenet300_mnist_s0"), zoo_model(zoo, "lenet5_mnist_s0")
    result = cli("align", zoo["lenet300_mnist_s0"]["file"], zoo["lenet5_mnist_s0"]["file"])
    assert result.returncode == 2
    assert "do not align" in result.stderr and "<- kind differs" in result.stderr
