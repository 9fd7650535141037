"""Partial zipping of the real architectures in models/zoo (issue 13): every pair zips something
(no silent 0%), share 0 reproduces every output (<= 1e-5 relative) and a neuron-permuted copy is
recovered exactly; the blockers of both models are listed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnx_zip import runtime
from onnx_zip.graph.canonicalize import canonicalize
from onnx_zip.graph.partial import discover_partial
from onnx_zip.pipeline import zip_models

ZOO = Path(__file__).resolve().parent.parent / "models" / "zoo"
RTOL = 1e-5
PAIRS = [
    ("crnn_mnist", "crnn_fashion", 2),  # CNN front end before an LSTM: both convs zipped
    ("paddle_lcnet_mnist", "paddle_lcnet_fashion", 2),  # Constant-node weights, depthwise convs
    ("mbv3_mnist_s0", "mbv3_fashion", 1),  # the stem and its depthwise conv, up to squeeze-excitation
    ("keras_mlp_mnist_s0", "keras_mlp_fashion", 1),  # up to the decomposed LayerNorm
    ("dbnet_mnist_stroke", "dbnet_fashion_silhouette", 1),
    ("csp_fashion", "csp_fashion_super4", 1),
]


def _load(name: str) -> onnx.ModelProto:
    path = ZOO / f"{name}.onnx"
    assert path.exists(), f"zoo model {name} is part of the repository (models/zoo/)"
    return onnx.load(str(path))


def _image(model: onnx.ModelProto, count: int, seed: int) -> dict[str, np.ndarray]:
    value = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else count for d in value.type.tensor_type.shape.dim]
    return {value.name: np.random.default_rng(seed).random(dims, dtype=np.float32)}


def _close(got: np.ndarray, want: np.ndarray) -> None:
    assert float(np.abs(got - want).max()) <= RTOL * max(float(np.abs(want).max()), 1e-12)


@pytest.mark.parametrize(("a", "b", "zipped"), PAIRS, ids=[p[0] for p in PAIRS])
def test_zoo_pair_share0_reproduces_both(a: str, b: str, zipped: int) -> None:
    models = [_load(a), _load(b)]
    partial = discover_partial(canonicalize(models[0]), label=a)
    assert partial.chain is not None and len(partial.chain.hidden) == zipped
    assert partial.cut is not None and partial.blockers  # the rest is task-specific, and why
    calib = [_image(m, 32, seed) for m, seed in zip(models, (1, 2))]
    result = zip_models(models, calib, names=["a", "b"], share=0.0)
    session = runtime.make_session(result.model)
    for task, model in zip("ab", models):
        x = _image(model, 4, 3)
        want = runtime.make_session(model).run(None, x)
        feed = {session.get_inputs()[0].name: next(iter(x.values()))}
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
        for out, value in zip(model.graph.output, want):
            _close(got[f"{task}/{out.name}"], value)


def test_crnn_permuted_copy_recovered() -> None:
    """crnn_mnist with conv0's neurons permuted (conv1's input axis with them) zips with the original
    at share 1.0 into a model whose both outputs are the original's."""
    model = canonicalize(_load("crnn_mnist"))
    chain = discover_partial(model, label="crnn").chain
    assert chain is not None
    first, second = chain.hidden[0], chain.hidden[1]
    values = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    perm = np.random.default_rng(5).permutation(first.neurons)
    values[first.weight] = values[first.weight][perm]
    if first.bias:
        values[first.bias] = values[first.bias][perm]
    values[second.weight] = values[second.weight][:, perm]
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for i, t in enumerate(copy.graph.initializer):
        copy.graph.initializer[i].CopyFrom(numpy_helper.from_array(values[t.name], t.name))
    x = _image(model, 4, 3)
    want = runtime.make_session(model).run(None, x)[0]
    _close(runtime.make_session(copy).run(None, x)[0], want)
    calib = _image(model, 64, 1)
    result = zip_models([model, copy], [calib, calib], names=["a", "b"], share=1.0)
    for out in runtime.make_session(result.model).run(None, x):
        _close(out, want)
