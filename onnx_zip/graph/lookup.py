"""Look-ups on the one in-memory graph model, onnx-graphsurgeon (``gs.Graph``).

Everything above the protobuf edge (``model_io``) reads graphs through ``gs``: a tensor knows its
producer (``tensor.inputs``) and its consumers (``tensor.outputs``). These helpers add what the
front end and the rewrite need on top: constants (initializers and ``Constant`` nodes alike),
activation inputs, static shapes with unknown dimensions as ``None``, and nodes by name.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

Shape = tuple[int | None, ...]


def import_graph(model: onnx.ModelProto | gs.Graph) -> gs.Graph:
    """``model`` as a graphsurgeon graph (a ``gs.Graph`` is returned as it is)."""
    return model if isinstance(model, gs.Graph) else gs.import_onnx(model)


def is_constant(tensor: gs.Tensor) -> bool:
    """True for an initializer or the output of a ``Constant`` node holding a tensor ``value``."""
    if isinstance(tensor, gs.Constant):
        return True
    node = producer(tensor)
    return node is not None and node.op == "Constant" and isinstance(node.attrs.get("value"), gs.Constant)


def constant_values(tensor: gs.Tensor) -> np.ndarray:
    """The array of a constant tensor (see :func:`is_constant`)."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = producer(tensor)
    if node is None or not isinstance(node.attrs.get("value"), gs.Constant):
        raise ValueError(f"tensor {tensor.name!r} is not a constant")
    return np.asarray(node.attrs["value"].values)


def producer(tensor: gs.Tensor) -> gs.Node | None:
    """The node writing ``tensor``, or None (graph input, initializer)."""
    return tensor.inputs[0] if tensor.inputs else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    """The nodes reading ``tensor``, each once, in graph order of import."""
    seen: set[int] = set()
    found = []
    for node in tensor.outputs:
        if id(node) not in seen:
            seen.add(id(node))
            found.append(node)
    return found


def activations(node: gs.Node) -> list[gs.Tensor]:
    """The node's non-empty, non-constant inputs."""
    return [t for t in node.inputs if t.name and not is_constant(t)]


def shape_of(tensor: gs.Tensor) -> Shape | None:
    """Static shape; symbolic or unknown dimensions are ``None``; None when the rank is unknown."""
    if is_constant(tensor):
        return tuple(int(d) for d in constant_values(tensor).shape)
    shape = tensor.shape
    if shape is None:
        return None
    return tuple(int(d) if isinstance(d, (int, np.integer)) and not isinstance(d, bool) else None for d in shape)


def nodes_by_name(graph: gs.Graph) -> dict[str, gs.Node]:
    """Node name → node (canonical graphs have unique names)."""
    return {node.name: node for node in graph.nodes}


def output_names(graph: gs.Graph) -> tuple[str, ...]:
    """The graph's output tensor names, in order."""
    return tuple(t.name for t in graph.outputs)


def input_names(graph: gs.Graph) -> tuple[str, ...]:
    """The graph's inputs that are not constants, in order."""
    return tuple(t.name for t in graph.inputs if not isinstance(t, gs.Constant))


def domain_of(node: gs.Node) -> str:
    """The node's op domain, ``""`` for the default one."""
    return node.domain or ""
