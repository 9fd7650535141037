"""The compensated fit of one aligned layer (mtz-method §10) on the planner's layout.

The :class:`~onnx_zip.zipper.plan.Planner` gives the layer's weights with the input axis in the
zipped order ``[shared ; own]`` of the layer below (``w̄``, the ridge prior of every task-specific
neuron). With each task's moments ``G_t, C_t, H_t`` of that layer (zipped input from the model
zipped so far, original input from the original model, same samples), :func:`compensated_layer`

1. chooses the pairs with the compensated cost ``Δ`` (:meth:`CompensatedLayer.pair_costs`, tasks
   0 and 1, then each further task against the shared groups with
   :meth:`CompensatedLayer.group_costs`), by the share policy and matching of the settings; a
   baseline pairing (``l2``, ``random``, ``correlation``) chooses them its own way instead; the
   later layers of a residual channel group take the pairs of its first layer (chosen on that
   layer's costs alone);
2. fits each shared neuron (shared weights and each task's inter weights) jointly to its tasks'
   original outputs and refits every other neuron (heads included) to its own original outputs;
3. writes the result as the :class:`~onnx_zip.zipper.plan.LayerZip` weight blocks.

Pure numpy; :mod:`onnx_zip.pipeline.compensated` runs it bottom-up with fresh moments per layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from onnx_zip import mtz
from onnx_zip.errors import InputError
from onnx_zip.graph.layers import Layer
from onnx_zip.mtz.comp_stats import CompensationStats
from onnx_zip.mtz.compensated import CompensatedLayer, TaskLayer
from onnx_zip.zipper.pairing import first_policy
from onnx_zip.zipper.plan import (
    Decision,
    LayerData,
    LayerZip,
    Planner,
    layer_tag,
    layer_weights,
    make_layer_zip,
    shares_nothing,
)
from onnx_zip.zipper.readings import ops_of
from onnx_zip.zipper.structure import source_position

__all__ = ["LayerFit", "choose_compensated_pairs", "compensated_layer", "fitted_layer", "original_rows", "output_space"]


def output_space(reading: str) -> bool:
    """The moments of a reading are taken against the original layer's OUTPUTS ``y = w·x`` (dense and
    patch readings: ``C w = E[x̃ yᵀ]`` and ``wᵀHw = E[y²]`` need only those, a ``D/N`` times smaller
    accumulation); the per-channel reading fits every tap, so it keeps the original inputs."""
    return reading != "channel"


def original_rows(planner: Planner, position: int, originals: Sequence[Mapping[str, np.ndarray]], t: int) -> np.ndarray:
    """Task ``t``'s original rows of a position in its reading (original input order):
    ``(N, D)`` dense/patch (bias last when the aligned layers have one) or ``(N, P, C+1)`` per-channel."""
    group = planner.aligned[position]
    has_bias = any(layer.bias is not None for layer in group)
    w, b = layer_weights(group[t], originals[t], has_bias)
    return ops_of(planner.settings.reading_for(group[0])).rows(group[t], w, b)


def fitted_layer(
    planner: Planner, position: int, originals: Sequence[Mapping[str, np.ndarray]],
    stats: Sequence[CompensationStats], rho: float,
) -> tuple[CompensatedLayer, LayerData, str]:
    """The :class:`CompensatedLayer` of a position, its planner data and its reading.

    Args:
        planner: The planner of the model zipped so far (the positions below are decided).
        position: The aligned position.
        originals: Each task's ORIGINAL initializers (the fit's targets ``w``).
        stats: Each task's moments of the layer (zipped input ``D̃_t``; original side: the input ``D_t``,
            or with :func:`output_space` readings the original outputs ``N_t`` (+ 1 with a bias), the
            original neurons then being unit rows).
        rho: Relative ridge.
    """
    group = planner.aligned[position]
    data = planner.layer_data(position)
    reading = planner.settings.reading_for(group[0])
    ops = ops_of(reading)
    tasks = []
    for t, layer in enumerate(group):
        if output_space(reading):
            rows = np.eye(layer.neurons, layer.neurons + int(data.has_bias))
        else:
            rows = original_rows(planner, position, originals, t)
        prior = ops.rows(layer, data.w_new[t], data.biases[t] if data.has_bias else None)
        tasks.append(TaskLayer(rows, stats[t], prior, name=str(t)))
    taps = int(np.prod(group[0].kernel_shape)) if reading == "patch" else 1
    name = f"{layer_tag(group[0], None if group[0].is_head else position)} ({group[0].node})"
    return CompensatedLayer(tasks, data.shared_in * taps, rho=rho, layer=name), data, reading


def choose_compensated_pairs(
    planner: Planner, position: int, data: LayerData, comp: CompensatedLayer
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(k, T)`` (shared order) and their summed costs ``(k,)`` of one position.

    Heads, layers without shared inputs and policies asking for none share nothing. A baseline
    pairing chooses with :meth:`Planner.decide` (its own costs); MTZ with the compensated costs.
    """
    group = planner.aligned[position]
    tasks = len(group)
    empty = (np.zeros((0, tasks), dtype=np.int64), np.zeros(0))
    settings = planner.settings
    deciding = planner.groups[position][0]
    if not group[0].is_head and deciding != position and deciding in planner.decided:
        return _group_pairs(planner, position, data, comp)
    if group[0].is_head or data.shared_in == 0 or shares_nothing(settings.policy_for(position), group):
        return empty
    if settings.method.costs != "hessian":
        decision = planner.decide(position, data)
        return np.asarray(decision.pairs, dtype=np.int64).reshape(-1, tasks), np.asarray(
            decision.costs, dtype=np.float64
        )
    policy = settings.policy_for(position)
    name = comp.layer
    first = mtz.select_pairs(comp.pair_costs(0, 1), first_policy(policy, group), method=settings.match, layer=name)  # type: ignore[arg-type]
    pairs = np.asarray(first.pairs, dtype=np.int64).reshape(-1, 2)
    costs = np.asarray(first.costs, dtype=np.float64)
    for t in range(2, tasks):
        if not len(pairs):
            break
        table = comp.group_costs(pairs, tuple(range(t)), t)
        count = mtz.ShareCount(min(len(pairs), table.shape[1]))
        found = mtz.select_pairs(table, count, method=settings.match, layer=f"{name}, task {t}")  # type: ignore[arg-type]
        keep = np.argsort(found.pairs[:, 0], kind="stable")
        index, partner, added = found.pairs[keep, 0], found.pairs[keep, 1], np.asarray(found.costs)[keep]
        if isinstance(policy, mtz.ShareThreshold):
            inside = costs[index] + added <= policy.epsilon
            index, partner, added = index[inside], partner[inside], added[inside]
        pairs = np.concatenate([pairs[index], partner[:, None]], axis=1)
        costs = costs[index] + added
    if not len(pairs):
        return empty
    return pairs, costs


def _group_pairs(
    planner: Planner, position: int, data: LayerData, comp: CompensatedLayer
) -> tuple[np.ndarray, np.ndarray]:
    """A later layer of a residual channel group takes its group's pairs; their compensated costs."""
    pairs = planner.decided[planner.groups[position][0]].pairs
    if len(pairs) and data.shared_in == 0:
        raise InputError(
            f"layer {comp.layer} shares {len(pairs)} channels through a residual Add, but the layer it reads "
            f"shares none",
            hint="share some neurons of every layer inside a residual block, or none of the block's channels",
        )
    if not len(pairs):
        return pairs, np.zeros(0)
    costs = comp.pair_costs(0, 1)[pairs[:, 0], pairs[:, 1]]
    for t in range(2, pairs.shape[1]):
        costs = costs + comp.group_costs(pairs[:, :t], tuple(range(t)), t)[np.arange(len(pairs)), pairs[:, t]]
    return pairs, costs


@dataclass
class LayerFit:
    """One fitted position.

    Attributes:
        zip: Its :class:`LayerZip` (``costs``: the compensated ``Δ`` of the pairs, summed over tasks).
        weights: Per task the fitted weight ``(N_t, C_t, *kernel)``, neurons in the ORIGINAL order,
            inputs in the zipped order of the layer below (the planner's ``w_new`` layout).
        biases: Per task the fitted bias ``(N_t,)`` (original order), or ``None`` without biases.
    """

    zip: LayerZip
    weights: list[np.ndarray]
    biases: list[np.ndarray | None]


def _task_weights(
    comp: CompensatedLayer,
    layer: Layer,
    t: int,
    reading: str,
    pairs: np.ndarray,
    shared_rows: np.ndarray | None,
    inputs: int,
    has_bias: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Task ``t``'s fitted weight ``(N_t, C_t, *kernel)`` and bias, neurons in the ORIGINAL order."""
    n = comp.task_terms(t).n
    rest = np.setdiff1d(np.arange(n), pairs[:, t])
    refit = comp.refit(t, rest).rows if rest.size else None
    sample = shared_rows if shared_rows is not None else refit
    assert sample is not None
    rows = np.empty((n, *sample.shape[1:]))
    if shared_rows is not None:
        rows[pairs[:, t]] = shared_rows
    if refit is not None:
        rows[rest] = refit
    return ops_of(reading).to_weights(layer, rows, inputs, has_bias)


def compensated_layer(
    planner: Planner,
    position: int,
    originals: Sequence[Mapping[str, np.ndarray]],
    stats: Sequence[CompensationStats],
    rho: float,
) -> LayerFit:
    """Choose and fit one position; the planner records it as decided (see the module docstring).

    Args:
        planner: The planner of the model zipped so far (positions below decided, in order).
        position: The aligned position (hidden or head).
        originals: Each task's original initializers.
        stats: Each task's moments of the position's layer.
        rho: Relative ridge (``ρ``; ``λ_t = ρ·mean(diag G_t)``).

    Returns:
        The :class:`LayerFit` (the weight blocks, and each task's fitted weights).
    """
    comp, data, reading = fitted_layer(planner, position, originals, stats, rho)
    group = planner.aligned[position]
    pairs, costs = choose_compensated_pairs(planner, position, data, comp)
    shared = comp.fit_shared(pairs) if len(pairs) else None
    fitted = [
        _task_weights(
            comp,
            layer,
            t,
            reading,
            pairs,
            None if shared is None else shared.task_rows[t],
            data.w_new[t].shape[1],
            data.has_bias,
        )
        for t, layer in enumerate(group)
    ]
    weights = replace(data, w_new=[w for w, _ in fitted], biases=tuple(b for _, b in fitted))
    decision = Decision(pairs, costs, None if shared is None else shared.shared)
    reads_input = source_position(group, planner.aligned) is None
    result = make_layer_zip(position, group, None if reading == "dense" else reading, weights, decision, reads_input)
    deciding = planner.groups[position][0]
    if not group[0].is_head and deciding not in planner.decided:
        planner.decided[deciding] = result
    return LayerFit(result, [w for w, _ in fitted], [b for _, b in fitted])
