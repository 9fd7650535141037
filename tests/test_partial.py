"""Partial zipping and the blocker list (issue 13): a model with a construct the op table does not
support is zipped up to the hidden layer before it, the rest copied per task; every blocker of
every model is listed at once, in an order independent of the models' order; nothing zippable is a
refusal (exit 2), never a silent 0%; conv -> flatten -> dense with different input sizes is refused
by ``align`` naming both feature counts."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import builders
from conftest import run_cli
from onnx_zip import runtime
from onnx_zip.errors import ModelError
from onnx_zip.graph.align import align_chains
from onnx_zip.graph.canonicalize import canonicalize
from onnx_zip.graph.discover import discover_layers
from onnx_zip.graph.partial import discover_partial
from onnx_zip.pipeline import zip_models

RTOL = 1e-5


def with_op_after(model: onnx.ModelProto, tensor: str, op: str = "Sin") -> onnx.ModelProto:
    """``model`` with ``op`` (outside the op table) inserted on ``tensor``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        for i, name in enumerate(node.output):
            if name == tensor:
                node.output[i] = f"{tensor}_pre"
    position = next(i for i, n in enumerate(out.graph.node) if f"{tensor}_pre" in n.output) + 1
    nodes = list(out.graph.node)
    del out.graph.node[:]
    inserted = helper.make_node(op, [f"{tensor}_pre"], [tensor], name="odd")
    out.graph.node.extend([*nodes[:position], inserted, *nodes[position:]])
    onnx.checker.check_model(out)
    return out


def _close(got: np.ndarray, want: np.ndarray) -> None:
    assert float(np.abs(got - want).max()) <= RTOL * float(np.abs(want).max())


def _outputs(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return runtime.make_session(model).run(None, {"x": x})


def test_cut_layer_before_the_first_blocker() -> None:
    # fc0's path meets Sin: an identity cut layer on relu2_out lets fc0 be zipped too
    partial = discover_partial(canonicalize(with_op_after(builders.cnn(), "relu2_out")), label="m")
    assert partial.chain is not None and partial.canonical is not None
    assert [layer.node for layer in partial.chain.hidden] == ["conv0", "conv1", "fc0"]
    assert partial.cut == "fc0/onnx_zip_cut" and partial.hidden_total == 3
    assert [(b.node, b.op) for b in partial.blockers] == [("odd", "Sin")]


def test_cut_at_a_layer_when_a_flatten_precedes_the_blocker() -> None:
    # conv1's path is Relu, Flatten, Sin: no cut layer after a Flatten, so conv1 becomes the head
    partial = discover_partial(canonicalize(with_op_after(builders.cnn(), "flat_out")), label="m")
    assert partial.chain is not None and partial.canonical is None
    assert [layer.node for layer in partial.chain.hidden] == ["conv0"] and partial.cut == "conv1"


def test_until_cuts_earlier() -> None:
    partial = discover_partial(canonicalize(builders.cnn()), label="m", until="conv0")
    assert partial.chain is not None and [layer.node for layer in partial.chain.hidden] == ["conv0"]
    assert partial.cut == "conv1" and partial.blockers == ()
    with pytest.raises(ModelError, match="--until 'nope' is not a hidden layer"):
        discover_partial(canonicalize(builders.cnn()), label="m", until="nope")


def test_partial_zip_share0_reproduces_each_model() -> None:
    a = with_op_after(builders.cnn(seed=0), "relu2_out")
    b = with_op_after(builders.cnn(seed=1), "relu2_out")
    x = builders.random_inputs(a, 16, seed=2)["x"]
    calib = [builders.random_inputs(a, 64, seed=s) for s in (3, 4)]
    zipped = zip_models([a, b], calib, names=["a", "b"], share=0.0).model
    got = _outputs(zipped, x)
    _close(got[0], _outputs(a, x)[0])
    _close(got[1], _outputs(b, x)[0])


def test_partial_zip_recovers_a_permuted_copy() -> None:
    base = canonicalize(builders.cnn(seed=0))
    copy, _ = builders.permuted_copy(base)
    a, b = with_op_after(base, "relu2_out"), with_op_after(copy, "relu2_out")
    x = builders.random_inputs(a, 16, seed=2)["x"]
    want = _outputs(a, x)[0]
    _close(_outputs(b, x)[0], want)
    calib = builders.random_inputs(a, 128, seed=3)
    result = zip_models([a, b], [calib, calib], names=["a", "b"], share=1.0)
    for out in _outputs(result.model, x):
        _close(out, want)


def _exposed(model: onnx.ModelProto, tensor: str) -> onnx.ModelProto:
    """``model`` with a hidden activation also a graph output (no cut can be made there)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.append(helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    return out


def test_nothing_zippable_lists_every_blocker_of_both_models(tmp_path) -> None:
    paths = []
    for seed in (0, 1):
        model = _exposed(with_op_after(builders.cnn(seed=seed), "relu2_out"), "relu0_out")
        paths.append(tmp_path / f"m{seed}.onnx")
        onnx.save(model, paths[-1])
    forward = run_cli("align", *paths)
    backward = run_cli("align", *reversed(paths))
    assert forward.returncode == backward.returncode == 2
    lines = [line for line in forward.stderr.splitlines() if line.strip().startswith("- ")]
    assert lines == [line for line in backward.stderr.splitlines() if line.strip().startswith("- ")]
    assert len(lines) == 4, forward.stderr  # the exposed relu0_out and Sin, in both models
    assert "m0.onnx: node 'pool0' (MaxPool)" in lines[0] and "graph output" in lines[0]
    assert "m0.onnx: node 'odd' (Sin)" in lines[1] and "m1.onnx" in lines[-1]
    out = tmp_path / "z.onnx"
    zipped = run_cli("zip", *paths, "--pairing", "l2", "--share", "0.5", "-o", out)
    assert zipped.returncode == 2 and "nothing to zip" in zipped.stderr and not out.exists()
    assert sum("node 'odd' (Sin)" in line for line in zipped.stderr.splitlines()) == 2


def test_align_and_inspect_show_the_zippable_part(tmp_path) -> None:
    paths = []
    for seed in (0, 1):
        paths.append(tmp_path / f"m{seed}.onnx")
        onnx.save(with_op_after(builders.cnn(seed=seed), "relu2_out"), paths[-1])
    result = run_cli("align", *paths)
    assert result.returncode == 0, result.stderr
    assert "3 of 3 hidden layers zippable" in result.stdout and "zipping stops at 'fc0/onnx_zip_cut'" in result.stdout
    assert "node 'odd' (Sin)" in result.stdout
    info = run_cli("inspect", paths[0])
    assert info.returncode == 0 and "zippable: 3 of 3 hidden layers" in info.stdout


def test_flatten_feature_counts_differ_refused_by_align() -> None:
    chains = [discover_layers(canonicalize(builders.cnn(size=s)), label=f"s{s}") for s in (12, 8)]
    with pytest.raises(ModelError) as info:
        align_chains(chains)
    message = str(info.value)
    assert "flattened features differ: 96 (6 channels x 16 positions) vs 24 (6 channels x 4 positions)" in message
    assert "resize one model's input" in message and "--until" in message


def test_until_zips_the_conv_front_end_of_different_input_sizes() -> None:
    """conv -> flatten -> dense with 12x12 and 8x8 inputs: ``until`` the last conv zips the convs;
    each dense layer reads its own flattened features (share 0 reproduces both)."""
    a, b = builders.cnn(seed=0, size=12), builders.cnn(seed=1, size=8)
    xa, xb = builders.random_inputs(a, 16, seed=2)["x"], builders.random_inputs(b, 16, seed=3)["x"]
    calib = [builders.random_inputs(m, 64, seed=4) for m in (a, b)]
    for share in (0.0, 0.5):
        result = zip_models([a, b], calib, names=["a", "b"], share=share, separate_inputs=True, until="conv1")
        session = runtime.make_session(result.model)
        got = session.run(None, {"a/x": xa, "b/x": xb})
        if share == 0.0:
            _close(got[0], _outputs(a, xa)[0])
            _close(got[1], _outputs(b, xb)[0])
        assert [layer["layer"] for layer in result.report["layers"]] == ["layer1_conv", "layer2_conv"]
