"""What the front end tells the rest of the tool about a model: its zippable layers.

This module is the contract between the graph front end (canonicalise, discover,
align, calibrate) and the planner/rewriter. It holds plain, serialisable data and the
one registry of weight layouts: nothing else in the tool branches on ``op_type`` to
find a weight's axes.

Canonical weight view: every zippable layer's weight is seen as ``(N_out, N_in, *kernel)``
("neurons first"): Conv weights are stored that way (OIHW); a Gemm with ``transB=1`` stores
``(N_out, N_in)``; a Gemm with ``transB=0`` and a MatMul store ``(N_in, N_out)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from onnx_zip.errors import InternalError

#: How a node between two zippable layers treats the channel (feature) axis.
#: ``elementwise``: channel-agnostic (Relu, Sigmoid, ...); ``spatial``: acts per channel on the
#: spatial axes (MaxPool, AveragePool, GlobalAveragePool, spatial Pad); ``flatten``: turns
#: channel c into the contiguous feature block [c·F, (c+1)·F) with F = ``features_per_channel``;
#: ``channel_params``: holds per-channel parameters that must be permuted with the channels
#: (an unfolded BatchNormalization, a per-channel Mul/Add/PRelu); ``output``: post-processing
#: after a head (Softmax, ArgMax, ZipMap, ...) that reads the head's output as a whole (heads are
#: never zipped, so their output channels are never permuted); ``residual``: an Add of two
#: activations (a skip connection) summing channels of one channel group; ``channel_norm``: an op
#: across the channel axis (LayerNormalization, Softmax, LpNormalization over the channels),
#: computed per task on all of its channels (shared and own), its per-channel parameters listed in
#: ``channel_params``. The op-semantics table (``graph/ops.py``) says which op has which effect.
PATH_EFFECTS = ("elementwise", "spatial", "flatten", "channel_params", "output", "residual", "channel_norm")


@dataclass(frozen=True)
class PathStep:
    """One node on the way from a layer's output to the next layer's input.

    Attributes:
        node: Node name in the canonical graph.
        op_type: ONNX op type.
        effect: One of :data:`PATH_EFFECTS`.
        features_per_channel: For ``flatten``: features each channel becomes (H·W); else 1.
        channel_params: For ``channel_params``: names of the initializers indexed by channel
            (each holding one value per channel: 1-D ``(C,)``, or broadcast-shaped such as
            ``(C, 1, 1)`` / ``(1, C)`` for a per-channel Mul/Add); empty otherwise.
    """

    node: str
    op_type: str
    effect: str
    features_per_channel: int = 1
    channel_params: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConvGeometry:
    """Convolution attributes, explicit (no auto_pad), in ONNX order.

    Attributes:
        kernel_shape: (KH, KW).
        strides: (SH, SW).
        pads: (top, left, bottom, right), ONNX ``pads`` order.
        dilations: (DH, DW).
        input_spatial: (H, W) of the layer's input, when known from shape inference.
        output_spatial: (H', W') of the layer's output, when known.
    """

    kernel_shape: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    input_spatial: tuple[int, ...] | None = None
    output_spatial: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Layer:
    """A zippable layer (Conv, Gemm or MatMul with a constant weight) of a canonical graph.

    Attributes:
        index: Position in the chain, 0 for the first layer from the input.
        node: Node name in the canonical graph.
        op_type: ``Conv``, ``Gemm`` or ``MatMul``.
        kind: ``conv`` or ``dense``.
        weight: Name of the weight initializer.
        bias: Name of the 1-D bias initializer, or ``None``.
        neurons: Output channels / units (N_out).
        inputs: Input channels / features (N_in).
        input: Name of the activation tensor the layer reads.
        output: Name of the tensor the layer writes.
        is_head: True for a task head (its output reaches a graph output with no further
            zippable layer): never zipped.
        conv: Geometry for a conv layer, ``None`` for a dense one.
        trans_b: For Gemm: the ``transB`` attribute (1: weight stored (N_out, N_in)).
        path: Nodes from ``output`` to the next layer's ``input`` (for a head: to the graph
            outputs), in order.
        bias_node: For a MatMul whose bias is a separate ``Add`` (rank > 2 input, see
            ``canonicalize``): that Add node; ``bias`` is then its 1-D ``(N_out,)`` constant and
            ``output`` the Add's output. ``None`` otherwise.
        sources: The layers whose output channels reach ``input`` (through activations, pools,
            Flatten and residual Adds), in chain order; empty when it reads the graph input. A plain
            chain's layer has one source, the layer before it; after a residual Add, every layer
            the Add sums (one channel group).
        source_features: Input features of this layer per channel of its sources (``H·W`` across
            a Flatten; 1 otherwise).
    """

    index: int
    node: str
    op_type: str
    kind: str
    weight: str
    bias: str | None
    neurons: int
    inputs: int
    input: str
    output: str
    is_head: bool
    conv: ConvGeometry | None = None
    trans_b: int = 1
    path: tuple[PathStep, ...] = ()
    bias_node: str | None = None
    sources: tuple[str, ...] = ()
    source_features: int = 1

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        """(KH, KW) for a conv layer, () for a dense one."""
        return self.conv.kernel_shape if self.conv is not None else ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LayerChain:
    """The ordered zippable layers of one model, from the input to the head(s).

    Attributes:
        model: Label of the model (for messages).
        layers: Layers in order; hidden layers first, heads last.
        input: Name of the graph input the first layer depends on.
        outputs: Names of the graph outputs.
        channel_groups: Sets of layer node names whose channels are tied (residual Adds,
            Concats); empty for a plain chain.
        group_nodes: For each entry of ``channel_groups``, the Add/Concat nodes that tie it.
        group_ops: For each entry of ``channel_groups``, the op types of ``group_nodes``.
    """

    model: str
    layers: tuple[Layer, ...]
    input: str
    outputs: tuple[str, ...]
    channel_groups: tuple[tuple[str, ...], ...] = field(default=())
    group_nodes: tuple[tuple[str, ...], ...] = field(default=())
    group_ops: tuple[tuple[str, ...], ...] = field(default=())

    @property
    def hidden(self) -> tuple[Layer, ...]:
        """The layers that may be zipped (all but the heads)."""
        return tuple(layer for layer in self.layers if not layer.is_head)

    @property
    def heads(self) -> tuple[Layer, ...]:
        return tuple(layer for layer in self.layers if layer.is_head)

    def by_node(self, node: str) -> Layer:
        for layer in self.layers:
            if layer.node == node:
                return layer
        raise KeyError(node)

    def truncated(self, hidden: int) -> LayerChain:
        """The chain zipped only up to its first ``hidden`` hidden layers (a deeper model zipped
        with a shallower one): the next layer becomes the head (never zipped, so it and every layer
        after it stay task-specific, copied as they are)."""
        layers = self.layers[: hidden + 1]
        cut = replace(layers[-1], is_head=True, path=())
        kept = {layer.node for layer in layers[:-1]}
        groups = [
            (g, n, o)
            for g, n, o in zip(
                self.channel_groups,
                self.group_nodes or ((),) * len(self.channel_groups),
                self.group_ops or ((),) * len(self.channel_groups),
            )
            if set(g) & kept
        ]
        return replace(
            self,
            layers=(*layers[:-1], cut),
            channel_groups=tuple(g for g, _, _ in groups),
            group_nodes=tuple(n for _, n, _ in groups),
            group_ops=tuple(o for _, _, o in groups),
        )

    def group_of(self, node: str) -> tuple[str, ...]:
        """The layers whose channels are tied to ``node``'s (its channel group, or just itself)."""
        for group in self.channel_groups:
            if node in group:
                return group
        return (node,)


# ---------------------------------------------------------------- the layout registry


def neuron_weights(layer: Layer, stored: np.ndarray) -> np.ndarray:
    """A layer's stored weight as ``(N_out, N_in, *kernel)`` (a view where possible)."""
    if layer.op_type == "Conv":
        return stored
    if layer.op_type == "Gemm" and layer.trans_b:
        return stored
    if layer.op_type in ("Gemm", "MatMul"):
        return stored.T
    raise InternalError(f"layer {layer.node}: no weight layout for op {layer.op_type}")


def stored_weights(layer: Layer, neurons_first: np.ndarray) -> np.ndarray:
    """Inverse of :func:`neuron_weights`: ``(N_out, N_in, *kernel)`` to the node's layout."""
    if layer.op_type == "Conv" or (layer.op_type == "Gemm" and layer.trans_b):
        return np.ascontiguousarray(neurons_first)
    if layer.op_type in ("Gemm", "MatMul"):
        return np.ascontiguousarray(neurons_first.T)
    raise InternalError(f"layer {layer.node}: no weight layout for op {layer.op_type}")


#: The axis of a layer's output tensor that indexes its neurons (NCHW channels; dense: last).
def neuron_axis(layer: Layer) -> int:
    return 1 if layer.kind == "conv" else -1
