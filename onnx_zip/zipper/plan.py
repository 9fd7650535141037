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
        features_per_unit: ``F`` of the NEXT layer: input features per neuron of this layer.
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
    features_per_unit: int = 1
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


def flatten_features(layer: Layer) -> int:
    """Input features of the next layer per neuron of ``layer`` (``H·W`` across a Flatten)."""
    factor = 1
    for step in layer.path:
        if step.effect == "flatten":
            factor *= step.features_per_channel
    return factor


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


@dataclass
class _Sharing:
    """The shared neurons of one layer while tasks are added one at a time.

    Attributes:
        pairs: ``(k, t)`` original neuron indices of the tasks added so far, in shared-neuron order.
        costs: ``(k,)`` summed merge costs.
        rows: ``(k, D)`` or ``(k, P, C+1)`` merged rows.
        hessian: ``(D, D)`` joint Hessian of the tasks added so far (``Σ_t H_t``, damped), or
            identities summed for the averaging pairings.
    """

    pairs: np.ndarray
    costs: np.ndarray
    rows: np.ndarray
    hessian: np.ndarray


def _add_task(
    sharing: _Sharing,
    rows: np.ndarray,
    hessian: np.ndarray,
    settings: ZipSettings,
    policy: mtz.SharePolicy | FixedPairs,
    rng: np.random.Generator,
    name: str,
) -> _Sharing:
    """Match a further task's neurons to the shared neurons and merge them (mtz-method §7).

    The joint model's Hessian is ``Σ_t H_t`` over the tasks already added, so the final merged
    vector is ``(Σ_t H_t)⁻¹ Σ_t H_t w_t`` whatever the order the tasks are added in (the released
    code used the softer ``(Σ_t H_t⁻¹)⁻¹``). Every shared neuron gets a partner while the task has
    enough neurons (``min(k, N_t)`` pairs, greedy or optimal); unmatched shared neurons, and for a
    ``max_cost`` policy those whose added cost exceeds it, stop being shared.

    Args:
        sharing: The shared neurons of the tasks added so far.
        rows: The new task's neuron rows ``(N_t, D)`` or ``(N_t, P, C+1)`` over the shared inputs.
        hessian: The new task's Hessian ``(D, D)`` (undamped; identity for the averaging pairings).
    """
    k = sharing.pairs.shape[0]
    if settings.pairing == "mtz":
        hessian = mtz.damp(hessian, settings.damping, layer=name)
    op = mtz.pair_operator(sharing.hessian, hessian, layer=name)
    if isinstance(policy, FixedPairs):
        fixed = np.asarray(policy.pairs, dtype=np.int64)
        shared_index = np.arange(k)
        partner = fixed[:, sharing.pairs.shape[1]]
        added = np.zeros(k)
    else:
        if settings.pairing == "random":
            costs = rng.random((k, rows.shape[0]))
        else:
            costs = mtz.cost_matrix(sharing.rows, rows, op, layer=name)
        matching = mtz.select_pairs(costs, mtz.ShareCount(min(k, rows.shape[0])), method=settings.match, layer=name)
        keep = np.argsort(matching.pairs[:, 0], kind="stable")
        shared_index, partner = matching.pairs[keep, 0], matching.pairs[keep, 1]
        added = matching.costs[keep] if settings.pairing != "random" else np.zeros(len(keep))
        if isinstance(policy, mtz.ShareThreshold):
            within = sharing.costs[shared_index] + added <= policy.epsilon
            shared_index, partner, added = shared_index[within], partner[within], added[within]
    merged = mtz.merge_pairs(
        sharing.rows, rows, np.stack([shared_index, partner], axis=1), op, layer=name
    )
    return _Sharing(
        pairs=np.concatenate([sharing.pairs[shared_index], partner[:, None]], axis=1),
        costs=sharing.costs[shared_index] + added,
        rows=merged,
        hessian=op.h_a + op.h_b,
    )


def shares_nothing(policy: mtz.SharePolicy | FixedPairs, group: Sequence[Layer]) -> bool:
    """True when a count or fraction policy asks for no pair (no costs needed)."""
    if isinstance(policy, FixedPairs):
        return len(policy.pairs) == 0
    if isinstance(policy, mtz.ShareThreshold):
        return False
    fewest = min(layer.neurons for layer in group[1:])
    return mtz.share_count(policy, group[0].neurons, fewest, layer=group[0].node) == 0


def _first_policy(policy: mtz.SharePolicy, group: Sequence[Layer]) -> mtz.SharePolicy:
    """The policy of the first two tasks: with more tasks, a count/fraction of the smallest layer."""
    if len(group) == 2 or isinstance(policy, mtz.ShareThreshold):
        return policy
    fewest = min(layer.neurons for layer in group)
    return mtz.ShareCount(mtz.share_count(policy, fewest, fewest, layer=group[0].node))


def _as_stored(x: np.ndarray | None) -> np.ndarray | None:
    return None if x is None else np.ascontiguousarray(x, dtype=np.float32)


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
    rng = np.random.default_rng(settings.seed)
    orders: list[np.ndarray] | None = None
    shared_units = None  # S of the previous layer, in its neurons
    features = 1
    result: list[LayerZip] = []
    for position, group in enumerate(aligned):
        group = tuple(group)
        first = group[0]
        is_head = first.is_head
        hidden_index = position if not is_head else None
        has_bias = any(layer.bias is not None for layer in group)
        reading = settings.reading_for(first)
        weights = [_weights(layer, tensors[t], has_bias) for t, layer in enumerate(group)]
        # New input order and the number of shared input features.
        if orders is None:
            index = [np.arange(layer.inputs) for layer in group]
            shared_in = group[0].inputs
            if any(layer.inputs != shared_in for layer in group):
                raise InputError(
                    f"first layers {[layer.node for layer in group]} read inputs of different sizes "
                    f"{[layer.inputs for layer in group]}",
                    hint="zip models with the same input",
                )
        else:
            index = [_input_index(orders[t], features) for t in range(tasks)]
            shared_in = shared_units * features
        for t, layer in enumerate(group):
            if index[t].shape[0] != weights[t][0].shape[1]:
                raise InputError(
                    f"layer {layer.node} of task {t}: {weights[t][0].shape[1]} inputs, "
                    f"but the previous layer gives {index[t].shape[0]}"
                )
        w_new = [w[:, index[t]] for t, (w, _) in enumerate(weights)]
        biases = tuple(b for _, b in weights)
        tag = layer_tag(first, hidden_index)

        if is_head:
            pairs = np.zeros((0, tasks), dtype=np.int64)
            costs = np.zeros(0)
        elif shared_in == 0:
            logger.info("layer %s: no shared inputs (the previous layer shares nothing): sharing nothing", tag)
            pairs = np.zeros((0, tasks), dtype=np.int64)
            costs = np.zeros(0)
        elif shares_nothing(settings.policy_for(hidden_index, hidden_count), group):
            pairs = np.zeros((0, tasks), dtype=np.int64)
            costs = np.zeros(0)
        else:
            policy = settings.policy_for(hidden_index, hidden_count)
            name = f"{tag} ({first.node})"
            rows = [_vectors(first, reading, w_new[t][:, :shared_in], biases[t]) for t in range(tasks)]
            eye = np.eye(rows[0].shape[-1])
            if isinstance(policy, FixedPairs) or settings.pairing != "mtz":
                hessians_t = [eye] * tasks
            else:
                hessians_t = [
                    _restricted_hessian(
                        group[t], reading, np.asarray(hessians[t][group[t].node]), index[t][:shared_in], has_bias
                    )
                    for t in range(tasks)
                ]
            if isinstance(policy, FixedPairs):
                op = _pair_operator(replace(settings, pairing="l2"), eye, eye, tag)
                fixed = np.asarray(policy.pairs, dtype=np.int64).reshape(-1, tasks)
                first_pairs = fixed[:, :2]
                costs = np.zeros(len(fixed))
            else:
                op = _pair_operator(settings, hessians_t[0], hessians_t[1], name if settings.pairing == "mtz" else tag)
                if settings.pairing == "random":
                    cost_matrix = rng.random((rows[0].shape[0], rows[1].shape[0]))
                elif settings.pairing == "correlation":
                    if pair_costs is None or position not in pair_costs:
                        raise InputError(f"layer {tag}: correlation pairing needs its activation correlations")
                    cost_matrix = np.asarray(pair_costs[position], dtype=np.float64)
                else:
                    cost_matrix = mtz.cost_matrix(rows[0], rows[1], op, layer=tag)
                matching = mtz.select_pairs(
                    cost_matrix, _first_policy(policy, group), method=settings.match, layer=name
                )
                first_pairs = matching.pairs
                costs = matching.costs if settings.pairing != "random" else np.zeros(len(first_pairs))
            sharing = _Sharing(
                pairs=np.asarray(first_pairs, dtype=np.int64).reshape(-1, 2),
                costs=np.asarray(costs, dtype=np.float64),
                rows=mtz.merge_pairs(rows[0], rows[1], first_pairs, op, layer=tag),
                hessian=op.h_a + op.h_b,
            )
            for t in range(2, tasks):
                if not len(sharing.pairs):
                    break
                if settings.pairing == "correlation":
                    raise InputError("correlation pairing zips two models", hint="use mtz, l2 or random pairing")
                sharing = _add_task(
                    sharing, rows[t], hessians_t[t], replace(settings, pairing="l2") if isinstance(policy, FixedPairs) else settings,
                    policy, rng, f"{name}, task {t}",
                )
            pairs, costs = sharing.pairs, sharing.costs
            if not len(pairs):
                pairs = np.zeros((0, tasks), dtype=np.int64)
        k = pairs.shape[0]
        new_orders = []
        inter, specific_w, specific_b = [], [], []
        for t in range(tasks):
            n = w_new[t].shape[0]
            rest = np.setdiff1d(np.arange(n), pairs[:, t], assume_unique=False)
            new_orders.append(np.concatenate([pairs[:, t], rest]).astype(np.int64))
            inter.append(_as_stored(w_new[t][pairs[:, t], shared_in:]) if k and w_new[t].shape[1] > shared_in else None)
            specific_w.append(_as_stored(w_new[t][rest]) if rest.size else None)
            specific_b.append(_as_stored(biases[t][rest]) if rest.size and biases[t] is not None else None)
        shared_weight = shared_bias = None
        if k:
            shared_weight, shared_bias = _rows_to_weights(first, reading, sharing.rows, shared_in, has_bias)
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
                features_per_unit=flatten_features(first),
                has_bias=has_bias,
            )
        )
        orders = new_orders
        shared_units = k
        features = flatten_features(first)
        if any(flatten_features(layer) != features for layer in group):
            raise InputError(f"layers {[layer.node for layer in group]} flatten to different feature counts per channel")
    return result
