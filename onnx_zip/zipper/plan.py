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
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from onnx_zip import mtz
from onnx_zip.errors import InputError
from onnx_zip.graph.layers import Layer, LayerChain, neuron_weights
from onnx_zip.zipper.pairing import Member, choose_pairs, group_share_count, merge_fixed
from onnx_zip.zipper.structure import channel_group_positions, source_position

logger = logging.getLogger(__name__)

#: Largest patch-reading vector size ``C·KH·KW + 1`` used by ``conv_hessian="auto"``. Beyond it the
#: per-channel reading is used: the patch Hessian costs about ``D / N_out`` conv forward passes to
#: accumulate and ``O(D³)`` to factor, against ``(C+1)²`` for the per-channel one.
PATCH_MAX_SIZE = 1024

Pairing = Literal["mtz", "l2", "random", "correlation"]


@dataclass(frozen=True)
class FixedPairs:
    """Share exactly these pairs, already chosen (the layer-wise loop's earlier layers).

    Attributes:
        pairs: ``(k, T)`` neuron indices, in shared-neuron order. The merge uses identity Hessians
            (a plain average, exact for neurons already tied by joint fine-tuning).
    """

    pairs: np.ndarray
Reading = Literal["patch", "channel"]


@dataclass(frozen=True)
class ZipSettings:
    """How to choose and merge pairs.

    Attributes:
        policy: One share policy for every hidden layer, or one per hidden layer.
        match: ``greedy`` (the released code's rule) or ``optimal`` (minimum total cost).
        conv_hessian: ``patch`` (paper), ``channel`` (released code) or ``auto`` (patch while
            ``C·KH·KW + 1 ≤`` :data:`PATCH_MAX_SIZE`).
        damping: Relative damping λ added to each Hessian (λ·mean(diag H)·I).
        pairing: ``mtz`` (Hessian costs and merge), ``l2`` (weight distance, plain average),
            ``random`` (random pairs, plain average) or ``correlation`` (activation correlation
            across the models, plain average): the baselines use the same pipeline.
        seed: Seed of the random pairing.
    """

    policy: mtz.SharePolicy | FixedPairs | tuple[mtz.SharePolicy | FixedPairs, ...] = mtz.ShareFraction(0.5)
    match: Literal["greedy", "optimal"] = "greedy"
    conv_hessian: Literal["patch", "channel", "auto"] = "auto"
    damping: float = 0.0
    pairing: Pairing = "mtz"
    seed: int = 0

    def policy_for(self, hidden_index: int, hidden_count: int) -> mtz.SharePolicy | FixedPairs:
        if isinstance(self.policy, tuple):
            if len(self.policy) != hidden_count:
                raise InputError(
                    f"{len(self.policy)} per-layer share settings for {hidden_count} hidden layers",
                    hint="give one entry per hidden layer (see `onnx-zip align`)",
                )
            return self.policy[hidden_index]
        return self.policy

    def reading_for(self, layer: Layer) -> Reading | None:
        """The convolution Hessian reading of a layer (``None`` for a dense layer)."""
        if layer.kind != "conv":
            return None
        if self.conv_hessian != "auto":
            return self.conv_hessian
        kh, kw = layer.kernel_shape
        return "patch" if layer.inputs * kh * kw + 1 <= PATCH_MAX_SIZE else "channel"


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
    reading: Reading | None
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
    if layer.is_head:
        return "head"
    return f"layer{hidden_index + 1}_{layer.kind}"


def _input_index(order: np.ndarray, features: int) -> np.ndarray:
    """Original input-feature index of each position of the new input order ``(len(order)·F,)``."""
    return (order[:, None] * features + np.arange(features)[None, :]).ravel()


def _weights(layer: Layer, tensors: Mapping[str, np.ndarray], has_bias: bool) -> tuple[np.ndarray, np.ndarray | None]:
    w = np.asarray(neuron_weights(layer, np.asarray(tensors[layer.weight])), dtype=np.float64)
    if layer.kind == "dense" and w.ndim != 2:
        raise InputError(f"layer {layer.node}: dense weight has shape {w.shape}")
    if layer.bias is not None:
        b = np.asarray(tensors[layer.bias], dtype=np.float64).reshape(-1)
    else:
        b = np.zeros(w.shape[0]) if has_bias else None
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


def _vectors(
    layer: Layer, reading: Reading | None, w_shared: np.ndarray, b: np.ndarray | None
) -> np.ndarray:
    """Neuron rows over the shared inputs: (N, D) dense/patch or (N, P, C+1) channel reading."""
    if layer.kind == "dense":
        return mtz.dense_rows(w_shared, b, layer=layer.node)
    if reading == "patch":
        return mtz.conv_patch_rows(w_shared, b, layer=layer.node)
    return mtz.conv_channel_rows(w_shared, b, layer=layer.node)


def _restricted_hessian(
    layer: Layer, reading: Reading | None, hessian: np.ndarray, kept: np.ndarray, has_bias: bool
) -> np.ndarray:
    """The Hessian over the kept original inputs (in the new order), bias row last."""
    if layer.kind == "conv" and reading == "patch":
        index = mtz.patch_keep_index(kept, layer.inputs, layer.kernel_shape, bias=has_bias, layer=layer.node)
    else:
        index = mtz.dense_keep_index(kept, layer.inputs, bias=has_bias, layer=layer.node)
    return mtz.restrict(hessian, index, layer=layer.node)


def _pair_operator(
    settings: ZipSettings, h_a: np.ndarray, h_b: np.ndarray, layer: str
) -> mtz.PairOperator:
    if settings.pairing == "mtz":
        return mtz.pair_operator(h_a, h_b, damping=settings.damping, layer=layer)
    eye = np.eye(h_a.shape[0])
    return mtz.pair_operator(eye, eye, layer=layer)


def _rows_to_weights(
    layer: Layer, reading: Reading | None, rows: np.ndarray, shared_in: int, has_bias: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Merged rows ``(k, D)`` / ``(k, P, C+1)`` back to a weight ``(k, S, *kernel)`` and bias ``(k,)``."""
    if layer.kind == "dense":
        return mtz.rows_to_dense(rows, bias=has_bias, layer=layer.node)
    if reading == "patch":
        return mtz.patch_rows_to_conv(rows, shared_in, layer.kernel_shape, bias=has_bias, layer=layer.node)
    return mtz.channel_rows_to_conv(rows, layer.kernel_shape, bias=has_bias, layer=layer.node)


def shares_nothing(policy: mtz.SharePolicy | FixedPairs, group: Sequence[Layer]) -> bool:
    """True when a count or fraction policy asks for no pair (no costs needed)."""
    if isinstance(policy, FixedPairs):
        return len(policy.pairs) == 0
    if isinstance(policy, mtz.ShareThreshold):
        return False
    return group_share_count(policy, group) == 0


def _as_stored(x: np.ndarray | None) -> np.ndarray | None:
    return None if x is None else np.ascontiguousarray(x, dtype=np.float32)


def layers_to_calibrate(
    chains: Sequence[LayerChain], aligned: Sequence[Sequence[Layer]], settings: ZipSettings
) -> list[int]:
    """The hidden positions that may share neurons, so need Hessians (in order).

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
        group_shares = not shares_nothing(settings.policy_for(deciding, len(hidden)), aligned[deciding])
        source = source_position(aligned[position], aligned)
        shares = group_shares and (source is None or sharing.get(source, False))
        sharing[position] = shares
        if shares:
            result.append(position)
    return result


def plan_layers(
    chains: Sequence[LayerChain],
    aligned: Sequence[Sequence[Layer]],
    tensors: Sequence[Mapping[str, np.ndarray]],
    hessians: Sequence[Mapping[str, np.ndarray]],
    settings: ZipSettings,
    pair_costs: Mapping[int, np.ndarray] | None = None,
) -> list[LayerZip]:
    """Pair and merge every aligned hidden layer bottom-up; re-order the heads' inputs.

    Args:
        chains: Each task's layer chain (canonical graphs).
        aligned: Aligned layers, one tuple per position, one layer per task (hidden layers first,
            heads last, as :func:`onnx_zip.graph.align.align_chains` gives them).
        tensors: Each task's initializers by name (float arrays).
        hessians: Each task's finished Hessians by layer node name, in the reading
            :meth:`ZipSettings.reading_for` chooses (not needed for heads or random pairing).
        settings: The pairing settings.
        pair_costs: For ``pairing="correlation"``: the ``(N_A, N_B)`` cost matrix of each aligned
            position, in the original neuron indices.

    Returns:
        One :class:`LayerZip` per aligned position.
    """
    tasks = len(chains)
    if tasks < 2:
        raise InputError(f"zipping needs at least two models, got {tasks}")
    hidden_count = sum(1 for group in aligned if not group[0].is_head)
    groups = channel_group_positions(chains, aligned)
    rng = np.random.default_rng(settings.seed)
    decided: dict[int, LayerZip] = {}  # a channel group's pairs and orders, by its first position
    inputs: dict[int, tuple[list[np.ndarray], int]] = {}  # position → (input index per task, S)
    members: dict[int, Member] = {}

    def input_order(position: int) -> tuple[list[np.ndarray], int]:
        """Per task the original input feature of each new input position, and the shared count S."""
        if position in inputs:
            return inputs[position]
        group = tuple(aligned[position])
        source = source_position(group, aligned)
        features = group[0].source_features
        if any(layer.source_features != features for layer in group):
            raise InputError(f"layers {[layer.node for layer in group]} read their inputs flattened to different feature counts")
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
            state = decided[groups[source][0]]
            index = [_input_index(state.order[t], features) for t in range(tasks)]
            shared_in = len(state.pairs) * features
        inputs[position] = (index, shared_in)
        return index, shared_in

    def is_ready(position: int) -> bool:
        source = source_position(aligned[position], aligned)
        return source is None or groups[source][0] in decided

    def member(position: int, w_new, biases, shared_in: int, policy) -> Member:
        if position in members:
            return members[position]
        group = tuple(aligned[position])
        first = group[0]
        reading = settings.reading_for(first)
        tag = layer_tag(first, position)
        has_bias = any(layer.bias is not None for layer in group)
        index, _ = input_order(position)
        rows = [_vectors(first, reading, w_new[t][:, :shared_in], biases[t]) for t in range(tasks)]
        eye = np.eye(rows[0].shape[-1])
        if isinstance(policy, FixedPairs) or settings.pairing != "mtz":
            hessians_t = [eye] * tasks
        else:
            hessians_t = [
                _fictive_hessian(
                    _restricted_hessian(group[t], reading, np.asarray(hessians[t][group[t].node]), index[t][:shared_in], has_bias),
                    shared_in, has_bias,
                )
                for t in range(tasks)
            ]
        name = f"{tag} ({first.node})"
        if isinstance(policy, FixedPairs):
            op = _pair_operator(replace(settings, pairing="l2"), eye, eye, tag)
        else:
            op = _pair_operator(settings, hessians_t[0], hessians_t[1], name if settings.pairing == "mtz" else tag)
        members[position] = Member(position, name, rows, hessians_t, op)
        return members[position]

    def layer_data(position: int):
        group = tuple(aligned[position])
        has_bias = any(layer.bias is not None for layer in group)
        weights = [_weights(layer, tensors[t], has_bias) for t, layer in enumerate(group)]
        index, shared_in = input_order(position)
        for t, layer in enumerate(group):
            if index[t].shape[0] != weights[t][0].shape[1]:
                raise InputError(
                    f"layer {layer.node} of task {t}: {weights[t][0].shape[1]} inputs, "
                    f"but the previous layer gives {index[t].shape[0]}"
                )
        w_new = [_fictive_inputs(w[:, index[t]], shared_in) for t, (w, _) in enumerate(weights)]
        biases = tuple(b for _, b in weights)
        return weights, w_new, biases, shared_in, has_bias

    result: list[LayerZip] = []
    for position, group in enumerate(aligned):
        group = tuple(group)
        first = group[0]
        is_head = first.is_head
        hidden_index = position if not is_head else None
        reading = settings.reading_for(first)
        weights, w_new, biases, shared_in, has_bias = layer_data(position)
        tag = layer_tag(first, hidden_index)
        deciding = groups[position][0]
        merged_rows = None
        empty = np.zeros((0, tasks), dtype=np.int64)
        if is_head:
            pairs, costs = empty, np.zeros(0)
        elif deciding in decided:  # a later layer of a residual channel group: the group's pairs
            pairs = decided[deciding].pairs
            policy = settings.policy_for(hidden_index, hidden_count)
            if len(pairs) and shared_in == 0:
                raise InputError(
                    f"layer {tag} ({first.node}) shares {len(pairs)} channels with "
                    f"{aligned[deciding][0].node} through a residual Add, but the layer it reads shares none",
                    hint="share some neurons of every layer inside a residual block, or none of the block's channels",
                )
            if len(pairs):
                m = member(position, w_new, biases, shared_in, policy)
                merged_rows, costs = merge_fixed(m, pairs, settings if not isinstance(policy, FixedPairs) else replace(settings, pairing="l2"))
                if isinstance(policy, FixedPairs):
                    costs = np.zeros(len(pairs))
            else:
                costs = np.zeros(0)
        elif shared_in == 0:
            logger.info("layer %s: no shared inputs (the previous layer shares nothing): sharing nothing", tag)
            pairs, costs = empty, np.zeros(0)
        elif shares_nothing(settings.policy_for(hidden_index, hidden_count), group):
            pairs, costs = empty, np.zeros(0)
        else:
            policy = settings.policy_for(hidden_index, hidden_count)
            current = member(position, w_new, biases, shared_in, policy)
            if isinstance(policy, FixedPairs):
                pairs = np.asarray(policy.pairs, dtype=np.int64).reshape(-1, tasks)
                merged_rows, _ = merge_fixed(current, pairs, replace(settings, pairing="l2"))
                costs = np.zeros(len(pairs))
            else:
                ready = [current]
                for other in groups[position]:
                    if other != position and is_ready(other):
                        _, other_w, other_b, other_in, _ = layer_data(other)
                        if other_in > 0:
                            ready.append(member(other, other_w, other_b, other_in, policy))
                pairs, costs, merged_rows = choose_pairs(ready, policy, group, settings, rng, pair_costs)
        k = pairs.shape[0]
        reads_input = source_position(group, aligned) is None
        new_orders = []
        inter, specific_w, specific_b = [], [], []
        for t in range(tasks):
            n = w_new[t].shape[0]
            rest = np.setdiff1d(np.arange(n), pairs[:, t], assume_unique=False)
            new_orders.append(np.concatenate([pairs[:, t], rest]).astype(np.int64))
            inter.append(_as_stored(w_new[t][pairs[:, t], shared_in:]) if k and w_new[t].shape[1] > shared_in else None)
            own = w_new[t][:, : group[t].inputs] if reads_input else w_new[t]  # without fictive inputs
            specific_w.append(_as_stored(own[rest]) if rest.size else None)
            specific_b.append(_as_stored(biases[t][rest]) if rest.size and biases[t] is not None else None)
        shared_weight = shared_bias = None
        if k:
            shared_weight, shared_bias = _rows_to_weights(first, reading, merged_rows, shared_in, has_bias)
        result.append(
            LayerZip(
                index=position,
                tag=tag,
                layers=group,
                reading=reading,
                pairs=pairs,
                costs=np.asarray(costs, dtype=np.float64),
                shared_inputs=shared_in,
                order=tuple(new_orders),
                shared_weight=_as_stored(shared_weight),
                shared_bias=_as_stored(shared_bias),
                inter_weight=tuple(inter),
                specific_weight=tuple(specific_w),
                specific_bias=tuple(specific_b),
                has_bias=has_bias,
            )
        )
        if not is_head and deciding not in decided:
            decided[deciding] = result[-1]
    return result
