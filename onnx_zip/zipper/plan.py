"""Bottom-up pairing and merged weights for aligned layers (mtz-method §3–§5), pure numpy.

For each aligned hidden layer ``l``, from the input up:

1. Each task's weight ``(N_t, C_t, *kernel)`` has its input axis re-ordered to the previous
   layer's new neuron order ``[shared (pair order) ; task-specific (ascending)]``; a Flatten
   between a conv and a dense layer turns each channel into a block of ``F`` features.
2. The neuron vectors are the weights from the ``S`` shared inputs (the first ``S·F`` of the
   new order; for the first layer every input), with the bias last; the Hessians are restricted
   to the same coordinates.
3. Costs (MTZ: Hessian-weighted; ``l2``: identity Hessians; ``random``: random costs), pairs by
   the share policy and matching method, merged vectors (identity Hessians give plain averages).
4. The layer becomes blocks: merged ``shared`` weights from shared inputs into shared neurons,
   per-task ``inter`` weights from the task-specific inputs into the shared neurons, and per-task
   ``specific`` weights from all inputs into the task's unshared neurons (its original weights).

Heads are never zipped: they keep all their neurons, with their input axis re-ordered.

The result is plain data (:class:`LayerZip`); :mod:`onnx_zip.zipper.rewrite` turns it into a graph.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from onnx_zip import mtz
from onnx_zip.errors import InputError
from onnx_zip.graph.layers import Layer, LayerChain, neuron_weights
from onnx_zip.zipper.pairing import Member, choose_pairs, group_share_count, merge_fixed
from onnx_zip.zipper.readings import ops_of
from onnx_zip.zipper.settings import PlanSettings
from onnx_zip.zipper.structure import channel_group_positions, source_position

logger = logging.getLogger(__name__)


@dataclass
class LayerZip:
    """One aligned layer after pairing, as weight blocks (neurons-first layouts, float32).

    ``T`` tasks; task ``t`` has ``N_t`` neurons and ``C_t`` input features (channels for a conv)
    in the new input order; ``S`` of them (``shared_inputs``) are shared; ``k`` pairs.

    Attributes:
        index: Position in the chain.
        tag: Readable name of the layer in the zipped graph (``layer2_conv``).
        layers: The layer of each task.
        reading: ``patch``/``channel`` for a conv, ``None`` for a dense layer.
        pairs: ``(k, T)`` original neuron indices, in shared-neuron order.
        costs: ``(k,)`` merge cost of each pair (0 for heads, which share nothing).
        shared_inputs: ``S``, the number of input features common to all tasks.
        order: Per task ``(N_t,)``: the new neuron order ``[pairs[:, t] ; specific ascending]``.
        shared_weight: ``(k, S, *kernel)`` merged weights, or ``None`` when ``k = 0``.
        shared_bias: ``(k,)`` merged bias, or ``None``.
        inter_weight: Per task ``(k, C_t − S, *kernel)`` or ``None`` (no shared neuron or no
            task-specific input).
        specific_weight: Per task ``(N_t − k, C_t, *kernel)`` or ``None`` when every neuron is shared.
        specific_bias: Per task ``(N_t − k,)`` or ``None``.
    """

    index: int
    tag: str
    layers: tuple[Layer, ...]
    reading: str | None
    pairs: np.ndarray
    costs: np.ndarray
    shared_inputs: int
    order: tuple[np.ndarray, ...]
    shared_weight: np.ndarray | None
    shared_bias: np.ndarray | None
    inter_weight: tuple[np.ndarray | None, ...]
    specific_weight: tuple[np.ndarray | None, ...]
    specific_bias: tuple[np.ndarray | None, ...]
    has_bias: bool = field(default=True)

    @property
    def shared(self) -> int:
        return int(self.pairs.shape[0])

    @property
    def is_head(self) -> bool:
        return self.layers[0].is_head

    def specific_count(self, task: int) -> int:
        return int(self.order[task].shape[0]) - self.shared


def layer_tag(layer: Layer, hidden_index: int | None) -> str:
    """``layer<i>_<kind>`` for hidden layers, ``head`` (or ``head<i>``) for heads."""
    if layer.is_head or hidden_index is None:
        return "head"
    return f"layer{hidden_index + 1}_{layer.kind}"


def _input_index(order: np.ndarray, features: int) -> np.ndarray:
    """Original input-feature index of each position of the new input order ``(len(order)·F,)``."""
    return (order[:, None] * features + np.arange(features)[None, :]).ravel()


def layer_weights(
    layer: Layer, tensors: Mapping[str, np.ndarray], has_bias: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """A layer's weight as neuron rows ``(N, D)`` or ``(N, C, *kernel)`` in float64 and its bias
    ``(N,)`` (zeros when ``has_bias`` and the layer has none, ``None`` otherwise)."""
    w = np.asarray(neuron_weights(layer, np.asarray(tensors[layer.weight])), dtype=np.float64)
    if layer.kind == "dense" and w.ndim != 2:
        raise InputError(f"layer {layer.node}: dense weight has shape {w.shape}")
    b: np.ndarray | None = None
    if layer.bias is not None:
        b = np.asarray(tensors[layer.bias], dtype=np.float64).reshape(-1)
    elif has_bias:
        b = np.zeros(w.shape[0])
    return w, b


def _fictive_inputs(w: np.ndarray, width: int) -> np.ndarray:
    """``w`` ``(N, d, *kernel)`` with zero weights for inputs ``d..width-1`` (a narrower first dense
    layer zipped with a wider one, mtz-method §7); ``w`` itself when ``d = width``."""
    if w.shape[1] >= width:
        return w
    pad = np.zeros((w.shape[0], width - w.shape[1], *w.shape[2:]), dtype=w.dtype)
    return np.concatenate([w, pad], axis=1)


def _fictive_hessian(h: np.ndarray, width: int, has_bias: bool) -> np.ndarray:
    """A dense Hessian over ``d`` inputs (+ bias last) embedded into ``width`` inputs: the fictive
    inputs never vary (zero rows and columns); the bias row stays last."""
    d = h.shape[0] - (1 if has_bias else 0)
    if d >= width:
        return h
    size = width + (1 if has_bias else 0)
    index = np.concatenate([np.arange(d), [width]]) if has_bias else np.arange(d)
    out = np.zeros((size, size))
    out[np.ix_(index, index)] = h
    return out


def _as_stored(x: np.ndarray | None) -> np.ndarray | None:
    return None if x is None else np.ascontiguousarray(x, dtype=np.float32)


def shares_nothing(policy: mtz.SharePolicy, group: Sequence[Layer]) -> bool:
    """True when a count or fraction policy asks for no pair (no costs needed)."""
    if isinstance(policy, mtz.ShareThreshold):
        return False
    return group_share_count(policy, group) == 0


def layers_to_calibrate(
    chains: Sequence[LayerChain], aligned: Sequence[Sequence[Layer]], settings: PlanSettings
) -> list[int]:
    """The hidden positions that may share neurons, so need statistics (in order).

    A layer shares when its channel group's deciding (first) layer's policy asks for pairs and the
    layer it reads shares (or it reads the input). A layer sharing nothing needs no statistics: a
    VGG fc6 Hessian alone is 25,089² floats.
    """
    groups = channel_group_positions(chains, aligned)
    hidden = [p for p, g in enumerate(aligned) if not g[0].is_head]
    sharing: dict[int, bool] = {}
    result = []
    for position in hidden:  # hidden layers come first: a hidden position is its hidden index
        deciding = groups[position][0]
        group_shares = not shares_nothing(settings.policy_for(deciding), aligned[deciding])
        source = source_position(aligned[position], aligned)
        shares = group_shares and (source is None or sharing.get(source, False))
        sharing[position] = shares
        if shares:
            result.append(position)
    return result


@dataclass
class _Inputs:
    """Per task the original input feature of each new input position ``(C_t,)``, and ``S``."""

    index: list[np.ndarray]
    shared: int


@dataclass
class LayerData:
    """One aligned layer's weights with the input axis in the new order (fictive inputs added)."""

    w_new: list[np.ndarray]
    biases: tuple[np.ndarray | None, ...]
    shared_in: int
    has_bias: bool


@dataclass
class Decision:
    """A layer's chosen pairs ``(k, T)``, their costs ``(k,)`` and, when already merged, the shared
    neuron rows ``(k, D)``."""

    pairs: np.ndarray
    costs: np.ndarray
    merged_rows: np.ndarray | None = None


class Planner:
    """Pairs and merges aligned layers bottom-up, one position after the other.

    :meth:`plan` must see the positions in order (a layer's input order is its source's new neuron
    order). :func:`plan_layers` runs every position; a per-layer workflow may add the statistics of
    position ``l`` (:attr:`hessians`, :attr:`pair_costs`) just before planning it.

    Args:
        chains: Each task's layer chain (canonical graphs).
        aligned: Aligned layers, one tuple per position, one layer per task (hidden layers first,
            heads last, as :func:`onnx_zip.graph.align.align_chains` gives them).
        tensors: Each task's initializers by name (float arrays).
        settings: Policies, method, matching, damping, seed, convolution reading.
        hessians: Each task's finished Hessians ``(D, D)`` by layer node name, in the reading
            :meth:`PlanSettings.reading_for` chooses (Hessian methods only).
        pair_costs: Correlation pairing: the ``(N_0, N_1)`` cost matrix of each aligned position.
        fixed: Pairs already chosen ``(k, T)`` by position (the layer-wise loop's earlier layers,
            whose neurons are already tied): merged by plain averaging, costs reported as 0.
    """

    def __init__(
        self,
        chains: Sequence[LayerChain],
        aligned: Sequence[Sequence[Layer]],
        tensors: Sequence[Mapping[str, np.ndarray]],
        settings: PlanSettings,
        hessians: Sequence[Mapping[str, np.ndarray]] | None = None,
        pair_costs: Mapping[int, np.ndarray] | None = None,
        fixed: Mapping[int, np.ndarray] | None = None,
    ) -> None:
        if len(chains) < 2:
            raise InputError(f"zipping needs at least two models, got {len(chains)}")
        self.tasks = len(chains)
        self.aligned = [tuple(g) for g in aligned]
        self.tensors = tensors
        self.settings = settings
        self.hessians: list[dict[str, np.ndarray]] = [dict(h) for h in (hessians or [{} for _ in chains])]
        self.pair_costs: dict[int, np.ndarray] = dict(pair_costs or {})
        self.fixed = {p: np.asarray(v, dtype=np.int64).reshape(-1, self.tasks) for p, v in (fixed or {}).items()}
        self.groups = channel_group_positions(chains, aligned)
        self.rng = np.random.default_rng(settings.seed)
        self.decided: dict[int, LayerZip] = {}  # a channel group's pairs and orders, by its first position
        self._inputs: dict[int, _Inputs] = {}
        self._members: dict[int, Member] = {}

    def input_order(self, position: int) -> _Inputs:
        """The new input order of a position (its source must be planned)."""
        if position in self._inputs:
            return self._inputs[position]
        group = self.aligned[position]
        features = group[0].source_features
        mixed = any(layer.source_features != features for layer in group)
        if mixed and not all(layer.is_head for layer in group):  # heads are task-specific: each its own
            raise InputError(f"layers {[layer.node for layer in group]} read their inputs flattened to "
                f"different feature counts")
        source = source_position(group, self.aligned)
        if source is None:
            shared_in = max(layer.inputs for layer in group)
            if any(layer.inputs != shared_in for layer in group) and group[0].kind != "dense":
                raise InputError(
                    f"first layers {[layer.node for layer in group]} read inputs of different channel counts "
                    f"{[layer.inputs for layer in group]}",
                    hint="zip convolutional models with the same input channels (dense first layers may differ)",
                )
            # A narrower dense input gets fictive zero weights for the missing features (mtz-method §7).
            index = [np.arange(layer.inputs) for layer in group]
        else:
            state = self.decided[self.groups[source][0]]
            index = [_input_index(state.order[t], group[t].source_features) for t in range(self.tasks)]
            shared_in = 0 if mixed else len(state.pairs) * features
        self._inputs[position] = _Inputs(index, shared_in)
        return self._inputs[position]

    def is_ready(self, position: int) -> bool:
        """The position's inputs are known (its source is planned, or it reads the input)."""
        source = source_position(self.aligned[position], self.aligned)
        return source is None or self.groups[source][0] in self.decided

    def layer_data(self, position: int) -> LayerData:
        """The position's weights with the input axis re-ordered (fictive inputs added)."""
        group = self.aligned[position]
        has_bias = any(layer.bias is not None for layer in group)
        weights = [layer_weights(layer, self.tensors[t], has_bias) for t, layer in enumerate(group)]
        inputs = self.input_order(position)
        for t, layer in enumerate(group):
            if inputs.index[t].shape[0] != weights[t][0].shape[1]:
                raise InputError(
                    f"layer {layer.node} of task {t}: {weights[t][0].shape[1]} inputs, "
                    f"but the previous layer gives {inputs.index[t].shape[0]}"
                )
        w_new = [_fictive_inputs(w[:, inputs.index[t]], inputs.shared) for t, (w, _) in enumerate(weights)]
        return LayerData(w_new, tuple(b for _, b in weights), inputs.shared, has_bias)

    def _averages(self, position: int) -> bool:
        return position in self.fixed or not self.settings.method.hessian_merge

    def member(self, position: int, data: LayerData) -> Member:
        """The position's neuron rows over its shared inputs, Hessians and pair operator of tasks 0, 1."""
        if position in self._members:
            return self._members[position]
        group = self.aligned[position]
        first = group[0]
        reading = self.settings.reading_for(first)
        ops = ops_of(reading)
        tag = layer_tag(first, position)
        shared_in = data.shared_in
        rows = [ops.rows(first, data.w_new[t][:, :shared_in], data.biases[t]) for t in range(self.tasks)]
        name = f"{tag} ({first.node})"
        if self._averages(position):
            eye = np.eye(rows[0].shape[-1])
            hessians = [eye] * self.tasks
            op = mtz.pair_operator(eye, eye, layer=tag)
        else:
            index = self.input_order(position).index
            hessians = [
                _fictive_hessian(
                    mtz.restrict(
                        np.asarray(self._hessian(t, group[t])),
                        ops.keep_index(group[t], index[t][:shared_in], data.has_bias),
                        layer=group[t].node,
                    ),
                    shared_in,
                    data.has_bias,
                )
                for t in range(self.tasks)
            ]
            op = mtz.pair_operator(hessians[0], hessians[1], damping=self.settings.damping, layer=name)
        self._members[position] = Member(position, name, rows, hessians, op)
        return self._members[position]

    def _hessian(self, task: int, layer: Layer) -> np.ndarray:
        if layer.node not in self.hessians[task]:
            raise InputError(f"no statistics for layer {layer.node} of task {task}", hint="calibrate this layer first")
        return self.hessians[task][layer.node]

    def _damping(self, position: int) -> float:
        return 0.0 if self._averages(position) else self.settings.damping

    def _follow_group(self, position: int, deciding: int, data: LayerData) -> Decision:
        """A later layer of a residual channel group takes the group's pairs."""
        pairs = self.decided[deciding].pairs
        first = self.aligned[position][0]
        if len(pairs) and data.shared_in == 0:
            raise InputError(
                f"layer {layer_tag(first, position)} ({first.node}) shares {len(pairs)} channels with "
                f"{self.aligned[deciding][0].node} through a residual Add, but the layer it reads shares none",
                hint="share some neurons of every layer inside a residual block, or none of the block's channels",
            )
        if not len(pairs):
            return Decision(pairs, np.zeros(0))
        merged, costs = merge_fixed(self.member(position, data), pairs, self._damping(position))
        return Decision(pairs, np.zeros(len(pairs)) if position in self.fixed else costs, merged)

    def _choose(self, position: int, data: LayerData) -> Decision:
        """A deciding layer: fixed pairs, or pairs chosen from the costs of its ready group members."""
        current = self.member(position, data)
        if position in self.fixed:
            pairs = self.fixed[position]
            merged, _ = merge_fixed(current, pairs, 0.0)
            return Decision(pairs, np.zeros(len(pairs)), merged)
        ready = [current]
        for other in self.groups[position]:
            if other != position and self.is_ready(other):
                other_data = self.layer_data(other)
                if other_data.shared_in > 0:
                    ready.append(self.member(other, other_data))
        policy = self.settings.policy_for(position)
        pairs, costs, merged = choose_pairs(
            ready, policy, self.aligned[position], self.settings, self.rng, self.pair_costs
        )
        return Decision(pairs, costs, merged)

    def decide(self, position: int, data: LayerData) -> Decision:
        """The pairs of one position, their costs and merged rows."""
        group = self.aligned[position]
        empty = Decision(np.zeros((0, self.tasks), dtype=np.int64), np.zeros(0))
        if group[0].is_head:
            return empty
        deciding = self.groups[position][0]
        if deciding in self.decided:
            return self._follow_group(position, deciding, data)
        if data.shared_in == 0:
            logger.info(
                "layer %s: no shared inputs (the previous layer shares nothing): sharing nothing",
                layer_tag(group[0], position),
            )
            return empty
        if position in self.fixed:
            return self._choose(position, data) if len(self.fixed[position]) else empty
        if shares_nothing(self.settings.policy_for(position), group):
            return empty
        return self._choose(position, data)

    def plan(self, position: int) -> LayerZip:
        """Plan one position (the positions it reads must be planned)."""
        group = self.aligned[position]
        first = group[0]
        data = self.layer_data(position)
        decision = self.decide(position, data)
        reading = self.settings.reading_for(first)
        reads_input = source_position(group, self.aligned) is None
        result = make_layer_zip(position, group, None if reading == "dense" else reading, data, decision, reads_input)
        deciding = self.groups[position][0]
        if not first.is_head and deciding not in self.decided:
            self.decided[deciding] = result
        return result


def make_layer_zip(
    position: int,
    group: tuple[Layer, ...],
    reading: str | None,
    data: LayerData,
    decision: Decision,
    reads_input: bool,
) -> LayerZip:
    """The weight blocks of one planned position."""
    first = group[0]
    pairs, shared_in, w_new = decision.pairs, data.shared_in, data.w_new
    k = pairs.shape[0]
    orders, inter, specific_w, specific_b = [], [], [], []
    for t in range(len(group)):
        rest = np.setdiff1d(np.arange(w_new[t].shape[0]), pairs[:, t], assume_unique=False)
        orders.append(np.concatenate([pairs[:, t], rest]).astype(np.int64))
        inter.append(_as_stored(w_new[t][pairs[:, t], shared_in:]) if k and w_new[t].shape[1] > shared_in else None)
        own = w_new[t][:, : group[t].inputs] if reads_input else w_new[t]  # without fictive inputs
        specific_w.append(_as_stored(own[rest]) if rest.size else None)
        bias = data.biases[t]
        specific_b.append(_as_stored(bias[rest]) if rest.size and bias is not None else None)
    shared_weight = shared_bias = None
    if k:
        assert decision.merged_rows is not None
        name = reading if reading is not None else "dense"
        shared_weight, shared_bias = ops_of(name).to_weights(first, decision.merged_rows, shared_in, data.has_bias)
    return LayerZip(
        index=position,
        tag=layer_tag(first, position if not first.is_head else None),
        layers=group,
        reading=reading,
        pairs=pairs,
        costs=np.asarray(decision.costs, dtype=np.float64),
        shared_inputs=shared_in,
        order=tuple(orders),
        shared_weight=_as_stored(shared_weight),
        shared_bias=_as_stored(shared_bias),
        inter_weight=tuple(inter),
        specific_weight=tuple(specific_w),
        specific_bias=tuple(specific_b),
        has_bias=data.has_bias,
    )


def plan_layers(
    chains: Sequence[LayerChain],
    aligned: Sequence[Sequence[Layer]],
    tensors: Sequence[Mapping[str, np.ndarray]],
    hessians: Sequence[Mapping[str, np.ndarray]] | None,
    settings: PlanSettings,
    pair_costs: Mapping[int, np.ndarray] | None = None,
    fixed: Mapping[int, np.ndarray] | None = None,
) -> list[LayerZip]:
    """Pair and merge every aligned hidden layer bottom-up; re-order the heads' inputs.

    See :class:`Planner` for the arguments.

    Returns:
        One :class:`LayerZip` per aligned position.
    """
    planner = Planner(chains, aligned, tensors, settings, hessians, pair_costs, fixed)
    return [planner.plan(position) for position in range(len(aligned))]
