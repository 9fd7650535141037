"""One zipped layer in the multi-task graph: its shared and task-specific output blocks.

For task ``t`` with input blocks ``[shared inputs ; specific inputs]`` (the previous layer's
zipped order) a hidden layer with ``k`` shared neurons yields up to two blocks:

* shared ``(N, k, ...)``: ``Op(shared inputs, shared/<tag>/weight, shared/<tag>/bias)``, plus
  ``Op(specific inputs, <t>/<tag>/inter_weight)`` when the task has inter weights; computed once
  for every task when all read one common tensor and none adds inter weights;
* specific ``(N, N_t − k, ...)``: ``Op(Concat(all input blocks), <t>/<tag>/weight, <t>/<tag>/bias)``.

A head keeps all its neurons and writes its original (task-prefixed) output tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnx_zip.graph.layers import Layer, neuron_axis, stored_weights
from onnx_zip.graph.lookup import nodes_by_name
from onnx_zip.zipper.graph_builder import SHARED, Block, GraphBuilder, TaskCopier, block_names
from onnx_zip.zipper.plan import LayerZip


@dataclass(frozen=True)
class LayerSite:
    """Where one zipped layer is built: the builder, the tasks and their graphs and copiers."""

    builder: GraphBuilder
    tasks: Sequence[str]
    graphs: Sequence[gs.Graph]
    copiers: Sequence[TaskCopier]


def apply_layer(
    builder: GraphBuilder,
    layer: Layer,
    attrs: dict,
    x: gs.Tensor,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    names: tuple[str, str, str],
    doc: str,
    *,
    weight_const: gs.Tensor | None = None,
    bias_const: gs.Constant | None = None,
    out: gs.Tensor | None = None,
) -> gs.Tensor:
    """``Op(x, weight, bias)`` in the layer's own op and layout; creates the initializers.

    Args:
        weight: Neurons-first ``(n, C, *kernel)``, stored in the layer's layout (unless
            ``weight_const`` is given).
        names: ``(owner, tag, part)`` of the block (see :func:`block_names`).
        out: Write into this tensor (a head writes its original, prefixed output tensor).
    """
    owner, tag, part = names
    weight_name, bias_name = block_names(owner, tag, part)
    if weight_const is None:
        assert weight is not None
        weight_const = builder.constant(weight_name, stored_weights(layer, weight))
    if bias_const is None and bias is not None:
        bias_const = builder.constant(bias_name, bias)
    if out is None:
        out = builder.variable(f"{owner}/{tag}/{part}", dtype=np.float32)
    if layer.op_type == "MatMul":
        mm_out = out if bias_const is None else builder.variable(f"{owner}/{tag}/{part}_matmul")
        builder.node("MatMul", f"{owner}/{tag}/{part}_MatMul", [x, weight_const], [mm_out], doc=doc)
        if bias_const is not None:
            builder.node("Add", f"{owner}/{tag}/{part}_bias_Add", [mm_out, bias_const], [out], doc=doc)
        return out
    inputs = [x, weight_const] + ([bias_const] if bias_const is not None else [])
    builder.node(layer.op_type, f"{owner}/{tag}/{part}_{layer.op_type}", inputs, [out], attrs=attrs, doc=doc)
    return out


def narrowed(builder: GraphBuilder, layer: Layer, weight: gs.Constant, width: int, task: str, tag: str) -> gs.Variable:
    """The shared weight restricted to a narrower task's first ``width`` input features (``Slice``)."""
    axis = 1 if layer.op_type == "Gemm" and layer.trans_b else 0
    out = builder.variable(f"{task}/{tag}/shared_weight_narrowed")
    ints = {"starts": 0, "ends": width, "axes": axis}
    consts = [
        builder.constant(f"{task}/{tag}/shared_weight_{k}", np.array([v], dtype=np.int64)) for k, v in ints.items()
    ]
    builder.node(
        "Slice",
        f"{task}/{tag}/shared_weight_Slice",
        [weight, *consts],
        [out],
        doc=f"the shared weights of {task}'s {width} input features (the rest are fictive zeros for it)",
    )
    return out


def input_blocks(z: LayerZip, site: LayerSite, blocked: Sequence[dict[str, list[Block]]]) -> list[list[Block]]:
    """Each task's input of a layer as channel blocks: the zipped channels it reads, or (first
    layer) the pre-processed input as one block, common when every task has the same tensor."""
    if z.layers[0].input in blocked[0]:
        return [list(blocked[t][layer.input]) for t, layer in enumerate(z.layers)]
    blocks = []
    for t, layer in enumerate(z.layers):
        x = site.copiers[t].named(layer.input)
        blocks.append([Block(x, layer.inputs, common=False, channels=np.arange(layer.inputs))])
    if all(b[0].tensor is blocks[0][0].tensor for b in blocks):
        for b in blocks:
            b[0].common = True
    return blocks


def _origin(z: LayerZip, site: LayerSite) -> str:
    return ", ".join(f"{task}:{layer.node}" for task, layer in zip(site.tasks, z.layers))


def _shared_block(
    z: LayerZip, site: LayerSite, t: int, blocks: list[Block], attrs: dict, consts: tuple, common: gs.Tensor | None
) -> tuple[gs.Tensor, bool]:
    """Task ``t``'s shared neurons from its shared inputs (``common``: the block computed once)."""
    task, layer, k = site.tasks[t], z.layers[t], z.shared
    w_const, b_const = consts
    doc = f"{k} shared neurons merged by MTZ from {_origin(z, site)}; weights from the {z.shared_inputs} shared inputs"
    if common is not None:
        core, is_common = common, True
    else:
        weight = w_const
        if not layer.sources and blocks[0].units < z.shared_inputs:  # a narrower first dense input
            weight = narrowed(site.builder, layer, w_const, blocks[0].units, task, z.tag)
        core = apply_layer(
            site.builder,
            layer,
            attrs,
            blocks[0].tensor,
            z.shared_weight,
            None,
            (task, z.tag, "shared"),
            doc,
            weight_const=weight,
            bias_const=b_const,
        )
        is_common = False
    if z.inter_weight[t] is None:
        return core, is_common
    inter = apply_layer(
        site.builder,
        layer,
        attrs,
        blocks[1].tensor,
        z.inter_weight[t],
        None,
        (task, z.tag, "inter"),
        f"{task}'s inter weights: its task-specific inputs into the {k} shared neurons of {_origin(z, site)}",
    )
    summed = site.builder.variable(f"{task}/{z.tag}/shared_sum")
    site.builder.node(
        "Add",
        f"{task}/{z.tag}/shared_Add",
        [core, inter],
        [summed],
        doc=f"{task}'s view of the {k} shared neurons: merged weights plus its inter weights",
    )
    return summed, False


def shared_blocks(z: LayerZip, site: LayerSite, blocks: list[list[Block]], attrs: list[dict]) -> list[list[Block]]:
    """Per task: ``[shared block]`` (``k`` neurons), or ``[]`` when the layer shares none."""
    k = z.shared
    if not k:
        return [[] for _ in site.tasks]
    assert z.shared_weight is not None
    weight_name, bias_name = block_names(SHARED, z.tag, "shared")
    w_const = site.builder.constant(weight_name, stored_weights(z.layers[0], z.shared_weight))
    b_const = site.builder.constant(bias_name, z.shared_bias) if z.shared_bias is not None else None
    common_input = all(b[0].common for b in blocks) and z.shared_inputs > 0
    common: gs.Tensor | None = None
    if common_input:
        doc = (
            f"{k} shared neurons merged by MTZ from {_origin(z, site)}; weights from the {z.shared_inputs} "
            f"shared inputs"
        )
        common = apply_layer(
            site.builder,
            z.layers[0],
            attrs[0],
            blocks[0][0].tensor,
            z.shared_weight,
            None,
            (SHARED, z.tag, "shared"),
            doc,
            weight_const=w_const,
            bias_const=b_const,
        )
    result = []
    for t in range(len(site.tasks)):
        core, is_common = _shared_block(z, site, t, blocks[t], attrs[t], (w_const, b_const), common)
        result.append([Block(core, k, is_common, channels=z.order[t][:k])])
    return result


def specific_block(z: LayerZip, site: LayerSite, t: int, blocks: list[Block], attrs: dict) -> Block | None:
    """Task ``t``'s unshared neurons from all its inputs (a head: all its neurons), or None."""
    count = z.specific_count(t)
    if count == 0:
        return None
    task, layer, builder = site.tasks[t], z.layers[t], site.builder
    if len(blocks) == 1:
        x = blocks[0].tensor
    else:
        x = builder.variable(f"{task}/{z.tag}/input")
        builder.node(
            "Concat",
            f"{task}/{z.tag}/input_Concat",
            [b.tensor for b in blocks],
            [x],
            attrs={"axis": neuron_axis(layer)},
        )
    if z.is_head:
        doc = f"{task}'s head ({layer.node}), input re-ordered to the zipped channel order"
    else:
        doc = f"{count} neurons specific to {task} from {layer.node} (all inputs)"
    target = site.copiers[t].named(layer.output) if z.is_head else None
    out = apply_layer(
        builder, layer, attrs, x, z.specific_weight[t], z.specific_bias[t], (task, z.tag, "specific"), doc, out=target
    )
    return Block(out, count, common=False, channels=z.order[t][z.shared :])


def layer_blocks(z: LayerZip, site: LayerSite, blocks: list[list[Block]]) -> list[list[Block]]:
    """Each task's output blocks of one zipped layer, ``[shared ; specific]`` (either may be absent)."""
    attrs = [dict(nodes_by_name(site.graphs[t])[layer.node].attrs) for t, layer in enumerate(z.layers)]
    result = shared_blocks(z, site, blocks, attrs)
    for t in range(len(site.tasks)):
        block = specific_block(z, site, t, blocks[t], attrs[t])
        if block is not None:
            result[t].append(block)
    return result
