"""A cut layer: an identity layer inserted where a hidden layer's path meets a blocker, so that the
blocked layer itself can be zipped (partial zipping up to the last supported tensor).

The zipped graph carries a zipped layer's channels as blocks in the zipped order; a task-specific
tail needs them in the task's original order. A head does exactly that: it reads the
concatenation of the last zipped layer's blocks with its input axis re-ordered. Inserting an
identity layer (a 1×1 Conv of ``(N, C, H, W)`` or a Gemm of ``(N, C)`` with ``W = I_C``, no bias)
on the tensor ``T`` before the blocker, and rewiring every reader of ``T`` to its output, makes the
identity the head at the cut: the tail reads ``T`` exactly as the original computed it. It costs
``C²`` parameters per task (a permutation; a Gather would be free, a later optimisation).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

CUT_SUFFIX = "onnx_zip_cut"


def _rank_and_channels(model: onnx.ModelProto, tensor: str) -> tuple[int, int] | None:
    """``(rank, channels)`` of ``tensor`` from the model's value infos (channels: axis 1)."""
    for value in list(model.graph.value_info) + list(model.graph.output):
        if value.name != tensor:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) < 2 or not dims[1].HasField("dim_value"):
            return None
        return len(dims), int(dims[1].dim_value)
    return None


def with_cut_layer(model: onnx.ModelProto, tensor: str, layer: str) -> onnx.ModelProto | None:
    """``model`` with an identity layer ``<layer>/onnx_zip_cut`` reading ``tensor`` and every
    former reader of ``tensor`` reading its output; None when ``tensor`` is not ``(N, C)`` or
    ``(N, C, H, W)`` float with a known ``C``, or is a graph output."""
    found = _rank_and_channels(model, tensor)
    if found is None or found[0] not in (2, 4) or tensor in {o.name for o in model.graph.output}:
        return None
    rank, channels = found
    name = f"{layer}/{CUT_SUFFIX}"
    out = onnx.ModelProto()
    out.CopyFrom(model)
    cut_out = f"{tensor}/{CUT_SUFFIX}"
    for node in out.graph.node:
        for i, value in enumerate(node.input):
            if value == tensor:
                node.input[i] = cut_out
    eye = np.eye(channels, dtype=np.float32)
    if rank == 4:
        weight = numpy_helper.from_array(eye.reshape(channels, channels, 1, 1), f"{name}/weight")
        node = helper.make_node("Conv", [tensor, weight.name], [cut_out], name=name, kernel_shape=[1, 1],
                                strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=1)
    else:
        weight = numpy_helper.from_array(eye, f"{name}/weight")
        node = helper.make_node("Gemm", [tensor, weight.name], [cut_out], name=name, transB=1)
    out.graph.initializer.append(weight)
    nodes = list(out.graph.node)
    position = next((i + 1 for i, n in enumerate(nodes) if tensor in n.output), 0)
    del out.graph.node[:]
    out.graph.node.extend([*nodes[:position], node, *nodes[position:]])
    return onnx.shape_inference.infer_shapes(out)
