"""Task views: each task's single-model equivalent of a zipped model.

Task ``t``'s view of a zipped layer is one weight ``(N_t, C_t, *kernel)`` whose rows are the
layer's neurons in the zipped order ``[shared ; specific]`` and whose columns are its inputs in
the previous layer's zipped order:

    W_t = [[ shared/<layer>/weight , <t>/<layer>/inter_weight ],
           [          <t>/<layer>/weight (specific)           ]]

and the bias ``[shared/<layer>/bias ; <t>/<layer>/bias]``. Per-channel parameters on the path after
a layer (an unfolded BatchNormalization, a per-channel Mul...) are the task's blocks of them
(``<t>/<tag>/<part>/<param>``) concatenated, in the same zipped order. Writing these into task ``t``'s
canonical graph gives a plain model that computes exactly what the zipped model computes for
``t`` (its neurons permuted into the zipped order). The layer-wise loop (Algorithm 1) calibrates
the next layer's Hessians on these views after each joint fine-tuning.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnx_zip.errors import ModelError
from onnx_zip.graph.layers import Layer, neuron_weights, stored_weights
from onnx_zip.graph.lookup import import_graph
from onnx_zip.graph.ops import channel_param_name, gather_channels
from onnx_zip.zipper.graph_builder import SHARED, block_names
from onnx_zip.zipper.plan import LayerZip


def _get(values: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name not in values:
        raise ModelError(f"zipped model: initializer {name} is missing", hint="pass the model the zip step wrote")
    return values[name]


def task_layer_weights(
    values: dict[str, np.ndarray], task: str, t: int, z: LayerZip
) -> tuple[np.ndarray, np.ndarray | None]:
    """Task ``t``'s full weight ``(N_t, C_t, *kernel)`` and bias ``(N_t,)`` of one zipped layer."""
    layer = z.layers[t]
    rows, biases = [], []
    if z.shared:
        weight_name, bias_name = block_names(SHARED, z.tag, "shared")
        shared = neuron_weights(layer, _get(values, weight_name))
        if z.inter_weight[t] is not None:
            inter = neuron_weights(layer, _get(values, block_names(task, z.tag, "inter")[0]))
            shared = np.concatenate([shared, inter], axis=1)
        rows.append(shared)
        if z.has_bias:
            biases.append(_get(values, bias_name))
    if z.specific_count(t):
        weight_name, bias_name = block_names(task, z.tag, "specific")
        rows.append(neuron_weights(layer, _get(values, weight_name)))
        if z.has_bias:
            biases.append(_get(values, bias_name))
    weight = np.concatenate(rows, axis=0)
    bias = np.concatenate(biases) if biases else None
    return weight, bias


def _channel_param(
    values: dict[str, np.ndarray], original: np.ndarray, param: str, task: str, t: int, z: LayerZip, tags: Sequence[str]
) -> np.ndarray:
    """Task ``t``'s per-channel parameter ``param`` after layer ``z`` in the zipped order.

    The zipped model holds it as one block per part (``<task>/<tag>/<part>/<param>``, ``tag`` the
    layer whose path built it: after a residual Add, any layer of the group); a parameter the
    zipped model does not hold is the task's original gathered to the zipped order.
    """
    parts = (["shared"] if z.shared else []) + (["specific"] if z.specific_count(t) else [])
    for tag in tags:
        blocks = [values.get(channel_param_name(f"{task}/{tag}/{part}", param)) for part in parts]
        if all(b is not None for b in blocks):
            axes = [i for i, d in enumerate(original.shape) if d != 1]
            return np.concatenate([b for b in blocks if b is not None], axis=axes[0] if axes else 0)
    return gather_channels(original, z.order[t])


def _path_params(layer: Layer) -> list[str]:
    """The per-channel parameters on a hidden layer's path, each once, in path order."""
    names: list[str] = []
    for step in layer.path:
        names.extend(p for p in step.channel_params if p not in names)
    return names


def _constants(graph: gs.Graph) -> dict[str, gs.Constant]:
    return {name: t for name, t in graph.tensors().items() if isinstance(t, gs.Constant)}


def _set_constant(constants: dict[str, gs.Constant], name: str, array: np.ndarray) -> None:
    if name not in constants:
        raise ModelError(f"task model: initializer {name} is missing")
    constants[name].values = np.ascontiguousarray(array, dtype=np.float32)


def _task_view(
    values: dict[str, np.ndarray], task: str, t: int, model: onnx.ModelProto, zips: Sequence[LayerZip]
) -> onnx.ModelProto:
    """Task ``t``'s canonical model with its zipped weights and per-channel parameters."""
    graph = import_graph(model)
    constants = _constants(graph)
    originals = {name: np.asarray(c.values) for name, c in constants.items()}
    tags = [z.tag for z in zips]
    for z in zips:
        layer = z.layers[t]
        weight, bias = task_layer_weights(values, task, t, z)
        _set_constant(constants, layer.weight, stored_weights(layer, weight))
        if bias is not None:
            if layer.bias is None:
                raise ModelError(
                    f"layer {layer.node} of {task} has no bias but its partner has one",
                    hint="the layer-wise loop needs aligned layers that agree on having a bias",
                )
            _set_constant(constants, layer.bias, bias)
        for param in [] if z.is_head else _path_params(layer):
            _set_constant(constants, param, _channel_param(values, originals[param], param, task, t, z, tags))
    return gs.export_onnx(graph, do_type_check=False)


def task_views(
    zipped: onnx.ModelProto, tasks: Sequence[str], models: Sequence[onnx.ModelProto], zips: Sequence[LayerZip]
) -> list[onnx.ModelProto]:
    """Each task's canonical model with the zipped model's weights, in the zipped neuron order.

    Args:
        zipped: A zipped model built from ``zips`` (possibly fine-tuned since).
        tasks: Task names.
        models: The canonical models ``zips`` was planned on (their layers are ``zips[i].layers``).
        zips: The planned layers.

    Returns:
        One model per task computing what ``zipped`` computes for that task.
    """
    values = {name: np.asarray(c.values) for name, c in _constants(import_graph(zipped)).items()}
    return [_task_view(values, task, t, model, zips) for t, (task, model) in enumerate(zip(tasks, models))]
