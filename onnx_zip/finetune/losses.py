"""The joint loss: an ``onnxblock`` Block over the task heads, labels as named graph inputs.

Design (one batch per task and step, every task's loss on its own rows):

* A zipped model usually has ONE shared input: the trainer feeds the concatenation of the
  tasks' batches ``[batch of task 1; batch of task 2; ...]`` (``sum n_t`` rows), so the shared
  layers run once. Every head then scores every row, and the block picks each task's rows
  with ``Gather(<task output>, finetune/<task>/rows, axis=0)`` where ``finetune/<task>/rows``
  is an ``(n_t,)`` int64 graph input holding the row numbers of that task's batch. Rows of
  the other tasks get a zero gradient, so each head learns from its own data only, and a
  shared parameter receives the sum of the tasks' gradients.
* With per-task inputs (``zip --separate-inputs``) each task's input holds its own batch and
  its rows are ``0 .. n_t - 1``: the same block, no special case.
* Targets are the graph inputs ``finetune/<task>/target``: ``(n_t,)`` int64 for ``ce``,
  ``(n_t, ...)`` float32 for ``bce`` and ``mse``.

The built-in ``LossType.CrossEntropyLoss`` is not usable here: on a model with several
outputs it takes the second output as the labels.

Per task (``x``: selected scores, ``y``: targets, means over every element):

* ``ce``: ``SoftmaxCrossEntropyLoss(x, y, reduction="mean")``;
* ``bce``: ``mean(relu(x) - x*y + log(1 + exp(x - 2*relu(x))))`` (``x - 2 relu(x) = -|x|``:
  the overflow-free form, built from ops that all have gradients in onnxruntime 1.19.2;
  Softplus and Abs are avoided);
* ``mse``: ``mean((x - y)^2)``.

The block's outputs are ``finetune/loss`` (``sum_t w_t * loss_t``, where backpropagation
starts) followed by ``finetune/<task>/loss`` per task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_zip import runtime
from onnx_zip.finetune.tasks import TaskSpec

TOTAL_LOSS = "finetune/loss"


def rows_input(task: str) -> str:
    """Name of the ``(n_t,)`` int64 input holding a task's row numbers in the joint batch."""
    return f"finetune/{task}/rows"


def target_input(task: str) -> str:
    """Name of a task's target input."""
    return f"finetune/{task}/target"


def task_loss_output(task: str) -> str:
    """Name of a task's (unweighted) loss output."""
    return f"finetune/{task}/loss"


def _target_value(spec: TaskSpec, out_rank: int) -> onnx.ValueInfoProto:
    dims: list[str | int] = [f"finetune_{spec.name}_n"]
    if spec.loss == "ce":
        return helper.make_tensor_value_info(target_input(spec.name), TensorProto.INT64, dims)
    dims += [f"finetune_{spec.name}_d{i}" for i in range(1, out_rank)]
    return helper.make_tensor_value_info(target_input(spec.name), TensorProto.FLOAT, dims)


def add_loss_nodes(model: onnx.ModelProto, specs: Sequence[TaskSpec], out_ranks: Sequence[int]) -> list[str]:
    """Append the joint loss to ``model`` in place (inputs, constants, nodes).

    Args:
        model: The forward model (the zipped graph).
        specs: The tasks, with their output, loss and weight.
        out_ranks: The rank of each task's output.

    Returns:
        ``[finetune/loss, finetune/<task>/loss, ...]``.
    """
    graph = model.graph
    nodes: list[onnx.NodeProto] = []

    def node(op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=f"{name}_{op}", **attrs))
        return name

    def const(name: str, value: float) -> str:
        graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.float32), name))
        return name

    weighted: list[str] = []
    losses: list[str] = []
    for spec, rank in zip(specs, out_ranks):
        t = spec.name
        graph.input.append(helper.make_tensor_value_info(rows_input(t), TensorProto.INT64, [f"finetune_{t}_n"]))
        graph.input.append(_target_value(spec, rank))
        p = f"finetune/{t}"
        x = node("Gather", [spec.output, rows_input(t)], f"{p}/scores", axis=0)
        y = target_input(t)
        if spec.loss == "ce":
            loss = node("SoftmaxCrossEntropyLoss", [x, y], task_loss_output(t), reduction="mean")
        elif spec.loss == "bce":
            relu = node("Relu", [x], f"{p}/relu")
            xy = node("Mul", [x, y], f"{p}/xy")
            two_relu = node("Mul", [relu, const(f"{p}/two", 2.0)], f"{p}/two_relu")
            neg_abs = node("Sub", [x, two_relu], f"{p}/neg_abs")
            log1p = node("Log", [node("Add", [node("Exp", [neg_abs], f"{p}/exp"), const(f"{p}/one", 1.0)], f"{p}/one_plus")], f"{p}/log1p")
            elem = node("Add", [node("Sub", [relu, xy], f"{p}/relu_minus_xy"), log1p], f"{p}/elementwise")
            loss = node("ReduceMean", [elem], task_loss_output(t), keepdims=0)
        else:
            diff = node("Sub", [x, y], f"{p}/diff")
            loss = node("ReduceMean", [node("Mul", [diff, diff], f"{p}/square")], task_loss_output(t), keepdims=0)
        losses.append(loss)
        weighted.append(node("Mul", [loss, const(f"{p}/weight", spec.weight)], f"{p}/weighted_loss"))
    total = weighted[0]
    for i, term in enumerate(weighted[1:], start=1):
        total = node("Add", [total, term], TOTAL_LOSS if i == len(weighted) - 1 else f"finetune/partial_sum_{i}")
    if total != TOTAL_LOSS:
        total = node("Identity", [total], TOTAL_LOSS)
    graph.node.extend(nodes)
    return [TOTAL_LOSS, *losses]


def joint_loss_block(specs: Sequence[TaskSpec], out_ranks: Sequence[int]) -> object:
    """An ``onnxblock.Block`` adding :func:`add_loss_nodes` to the base model.

    The block ignores the graph outputs ``generate_artifacts`` passes it: each task's output
    is named in its :class:`TaskSpec`.
    """
    onnxblock = runtime.training_modules().onnxblock

    class JointLoss(onnxblock.Block):  # type: ignore[name-defined]
        def build(self, *graph_outputs: str) -> tuple[str, ...]:
            return tuple(add_loss_nodes(self.base, specs, out_ranks))

    return JointLoss()
