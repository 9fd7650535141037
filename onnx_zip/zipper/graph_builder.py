"""The pieces the rewrite assembles the zipped graph with: deterministic names, a node/tensor
builder (the :class:`~onnx_zip.graph.ops.Emitter` the op table's rebuilds write through), channel
blocks, and the copier of each task's nodes outside the zipped segment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs
from numpy.typing import DTypeLike

from onnx_zip.errors import InternalError

#: Owner prefix of everything stored once for all tasks.
SHARED = "shared"


def block_names(owner: str, tag: str, part: str) -> tuple[str, str]:
    """Initializer names (weight, bias) of one block: ``shared/<layer>/weight``, ``<task>/<layer>/weight``
    (task-specific neurons) or ``<task>/<layer>/inter_weight`` (inter weights; no bias)."""
    if part in ("specific", "shared"):
        return f"{owner}/{tag}/weight", f"{owner}/{tag}/bias"
    return f"{owner}/{tag}/{part}_weight", f"{owner}/{tag}/{part}_bias"


def task_prefix(task: str, name: str) -> str:
    """``<task>/<name>``, without the leading ``/`` some exporters put on every name."""
    return f"{task}/{name.lstrip('/')}"


@dataclass
class Block:
    """A group of consecutive channels of a layer's output for one task.

    Attributes:
        tensor: The block's activation ``(N, units, ...)``.
        units: Channels (features after a Flatten) in the block.
        common: The same tensor for every task (computed once).
        channels: ``(units,)`` this task's original channel (feature) index of each channel of
            the block, in block order: what per-channel parameters are gathered with.
    """

    tensor: gs.Tensor
    units: int
    common: bool
    channels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass
class GraphBuilder:
    """Accumulates nodes, tensors and doc strings of the zipped graph, with unique names."""

    nodes: list[gs.Node] = field(default_factory=list)
    docs: dict[str, str] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)
    constants: dict[str, gs.Constant] = field(default_factory=dict)

    def unique(self, name: str) -> str:
        """``name``, or ``name_<i>`` with the first free ``i``."""
        if name not in self.names:
            self.names.add(name)
            return name
        i = 1
        while f"{name}_{i}" in self.names:
            i += 1
        self.names.add(f"{name}_{i}")
        return f"{name}_{i}"

    def constant(self, name: str, values: np.ndarray) -> gs.Constant:
        """A new initializer (names of initializers are never suffixed: a repeat is a bug)."""
        if name in self.constants:
            raise InternalError(f"initializer {name} created twice")
        const = gs.Constant(name, np.ascontiguousarray(values).reshape(np.shape(values)))  # keeps a 0-d scalar 0-d
        self.constants[name] = const
        return const

    def variable(self, name: str, dtype: DTypeLike = np.float32) -> gs.Variable:
        return gs.Variable(self.unique(name), dtype=dtype)

    def node(
        self, op: str, name: str, inputs: list, outputs: list, attrs: dict | None = None, doc: str = ""
    ) -> gs.Node:
        node = gs.Node(op, self.unique(name), attrs=dict(attrs or {}), inputs=inputs, outputs=outputs)
        self.nodes.append(node)
        if doc:
            self.docs[node.name] = doc
        return node


class TaskCopier:
    """Copies one task's graph outside the zipped segment, renaming tensors with ``<task>/``."""

    def __init__(self, builder: GraphBuilder, task: str, graph: gs.Graph, inputs: dict[str, gs.Variable]) -> None:
        self.builder = builder
        self.task = task
        self.graph = graph
        self.tensors: dict[str, gs.Tensor] = dict(inputs)

    def tensor(self, original: gs.Tensor) -> gs.Tensor:
        """The zipped graph's tensor for ``original`` (created on first use)."""
        if original.name == "":
            return gs.Variable.empty()
        if original.name not in self.tensors:
            name = task_prefix(self.task, original.name)
            if isinstance(original, gs.Constant):
                self.tensors[original.name] = self.builder.constant(name, original.values)
            else:
                self.tensors[original.name] = gs.Variable(
                    self.builder.unique(name), dtype=original.dtype, shape=original.shape
                )
        return self.tensors[original.name]

    def named(self, name: str) -> gs.Tensor:
        """The zipped graph's tensor for the task's tensor called ``name``."""
        return self.tensor(self.graph.tensors()[name])

    def copy(self, node: gs.Node) -> None:
        """``node`` with its tensors renamed, in the task's name space."""
        self.builder.node(
            node.op,
            task_prefix(self.task, node.name),
            [self.tensor(t) for t in node.inputs],
            [self.tensor(t) for t in node.outputs],
            attrs=node.attrs,
        )
        self.builder.nodes[-1].domain = node.domain
