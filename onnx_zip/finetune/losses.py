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

Distillation (``finetune/<task>/teacher``: the teacher's tensor for the same rows, see
:mod:`~onnx_zip.finetune.distill`): ``kd`` is ``T² · mean_rows KL(softmax(t/T) || softmax(x/T))``,
``mse`` is ``mean((x - t)^2)``. A task's loss is ``alpha · label loss + (1 - alpha) · distillation``.

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


def teacher_input(task: str) -> str:
    """Name of a task's teacher-tensor input ``(n_t, ...)`` float32 (distillation)."""
    return f"finetune/{task}/teacher"


class _Builder:
    """Appends nodes and scalar constants to a graph under unique names."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.nodes: list[onnx.NodeProto] = []

    def node(self, op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=f"{name}_{op}", **attrs))
        return name

    def const(self, name: str, value: float) -> str:
        self.graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.float32), name))
        return name


def _label_loss(b: _Builder, spec: TaskSpec, x: str, p: str) -> str:
    """The label loss of ``x`` (selected rows) against ``finetune/<task>/target``."""
    y = target_input(spec.name)
    if spec.loss == "ce":
        return b.node("SoftmaxCrossEntropyLoss", [x, y], f"{p}/label_loss", reduction="mean")
    if spec.loss == "bce":
        relu = b.node("Relu", [x], f"{p}/relu")
        xy = b.node("Mul", [x, y], f"{p}/xy")
        two_relu = b.node("Mul", [relu, b.const(f"{p}/two", 2.0)], f"{p}/two_relu")
        neg_abs = b.node("Sub", [x, two_relu], f"{p}/neg_abs")
        one_plus = b.node("Add", [b.node("Exp", [neg_abs], f"{p}/exp"), b.const(f"{p}/one", 1.0)], f"{p}/one_plus")
        log1p = b.node("Log", [one_plus], f"{p}/log1p")
        elem = b.node("Add", [b.node("Sub", [relu, xy], f"{p}/relu_minus_xy"), log1p], f"{p}/elementwise")
        return b.node("ReduceMean", [elem], f"{p}/label_loss", keepdims=0)
    diff = b.node("Sub", [x, y], f"{p}/diff")
    return b.node("ReduceMean", [b.node("Mul", [diff, diff], f"{p}/square")], f"{p}/label_loss", keepdims=0)


def _distill_loss(b: _Builder, spec: TaskSpec, x: str, p: str, shape: tuple[int, ...]) -> str:
    """KL(teacher || student) at temperature T times T² (``kd``, rank 2), or the MSE to the teacher."""
    t = teacher_input(spec.name)
    if spec.distill == "mse":
        diff = b.node("Sub", [x, t], f"{p}/kd_diff")
        return b.node("ReduceMean", [b.node("Mul", [diff, diff], f"{p}/kd_square")], f"{p}/distill_loss", keepdims=0)
    inv_t = b.const(f"{p}/inv_temperature", 1.0 / spec.temperature)
    log_q = b.node("LogSoftmax", [b.node("Mul", [x, inv_t], f"{p}/student_soft")], f"{p}/student_log", axis=-1)
    log_p = b.node("LogSoftmax", [b.node("Mul", [t, inv_t], f"{p}/teacher_soft")], f"{p}/teacher_log", axis=-1)
    prob = b.node("Exp", [log_p], f"{p}/teacher_prob")
    elem = b.node("Mul", [prob, b.node("Sub", [log_p, log_q], f"{p}/log_ratio")], f"{p}/kl_elementwise")
    mean = b.node("ReduceMean", [elem], f"{p}/kl_mean", keepdims=0)
    # mean over rows and classes; times C gives the mean over rows of the per-row KL
    scale = b.const(f"{p}/kl_scale", float(shape[-1]) * spec.temperature**2)
    return b.node("Mul", [mean, scale], f"{p}/distill_loss")


def add_loss_nodes(
    model: onnx.ModelProto, specs: Sequence[TaskSpec], shapes: Sequence[tuple[int, ...]]
) -> list[str]:
    """Append the joint loss to ``model`` in place (inputs, constants, nodes).

    A task's loss is ``alpha * label_loss + (1 - alpha) * distill_loss`` (a term with weight 0
    is left out, with its input).

    Args:
        model: The forward model (the zipped graph).
        specs: The tasks, with their loss tensor, losses and weight.
        shapes: Each task's loss tensor shape for one sample ``(1, ...)``.

    Returns:
        ``[finetune/loss, finetune/<task>/loss, ...]``.
    """
    graph = model.graph
    b = _Builder(graph)
    weighted: list[str] = []
    losses: list[str] = []
    for spec, shape in zip(specs, shapes):
        t, p = spec.name, f"finetune/{spec.name}"
        rank = len(shape)
        graph.input.append(helper.make_tensor_value_info(rows_input(t), TensorProto.INT64, [f"finetune_{t}_n"]))
        x = b.node("Gather", [spec.loss_tensor, rows_input(t)], f"{p}/scores", axis=0)
        terms: list[tuple[str, float]] = []
        if spec.uses_labels:
            graph.input.append(_target_value(spec, rank))
            terms.append((_label_loss(b, spec, x, p), spec.alpha))
        if spec.distill is not None and spec.alpha < 1:
            dims: list[str | int] = [f"finetune_{t}_n", *[f"finetune_{t}_d{i}" for i in range(1, rank)]]
            graph.input.append(helper.make_tensor_value_info(teacher_input(t), TensorProto.FLOAT, dims))
            terms.append((_distill_loss(b, spec, x, p, shape), 1.0 - spec.alpha))
        if len(terms) == 1:
            loss = b.node("Identity", [terms[0][0]], task_loss_output(t))
        else:
            parts = [
                b.node("Mul", [name, b.const(f"{p}/mix{i}", w)], f"{p}/mixed{i}") for i, (name, w) in enumerate(terms)
            ]
            loss = b.node("Add", parts, task_loss_output(t))
        losses.append(loss)
        weighted.append(b.node("Mul", [loss, b.const(f"{p}/weight", spec.weight)], f"{p}/weighted_loss"))
    total = weighted[0]
    for i, term in enumerate(weighted[1:], start=1):
        total = b.node("Add", [total, term], TOTAL_LOSS if i == len(weighted) - 1 else f"finetune/partial_sum_{i}")
    if total != TOTAL_LOSS:
        total = b.node("Identity", [total], TOTAL_LOSS)
    graph.node.extend(b.nodes)
    return [TOTAL_LOSS, *losses]


def joint_loss_block(specs: Sequence[TaskSpec], shapes: Sequence[tuple[int, ...]]) -> object:
    """An ``onnxblock.Block`` adding :func:`add_loss_nodes` to the base model.

    The block ignores the graph outputs ``generate_artifacts`` passes it: each task's output
    is named in its :class:`TaskSpec`.
    """
    onnxblock = runtime.training_modules().onnxblock

    class JointLoss(onnxblock.Block):  # type: ignore[name-defined]
        def build(self, *graph_outputs: str) -> tuple[str, ...]:
            return tuple(add_loss_nodes(self.base, specs, shapes))

    return JointLoss()
