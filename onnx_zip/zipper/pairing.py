"""Choosing and merging the shared neurons of one layer (or one residual channel group) across
two or more tasks (mtz-method §3, §4 and §7), on neuron rows and Hessians already restricted to
the layer's shared inputs. Pure numpy; :mod:`onnx_zip.zipper.plan` prepares the rows.

Tasks 0 and 1 are paired by the share policy; each further task's neurons are matched to the
shared neurons and merged in with the joint Hessian ``Σ_t H_t`` of the tasks before it, so the
merged vector is ``(Σ_t H_t)⁻¹ Σ_t H_t w_t`` whatever the order the tasks come in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnx_zip import mtz
from onnx_zip.errors import InputError
from onnx_zip.graph.layers import Layer
from onnx_zip.zipper.settings import PlanSettings


def group_share_count(policy: mtz.SharePolicy, group: Sequence[Layer], *, layer: str | None = None) -> int | None:
    """Pairs a count/fraction policy asks for in an aligned layer of any number of tasks: the count,
    or the fraction of the smallest task's neurons (``None`` for a threshold policy).

    Raises:
        InputError: a count above the smallest layer, a fraction outside ``[0, 1]``.
    """
    fewest = min(member.neurons for member in group[1:])
    return mtz.share_count(policy, group[0].neurons, fewest, layer=layer or group[0].node)


def first_policy(policy: mtz.SharePolicy, group: Sequence[Layer]) -> mtz.SharePolicy:
    """The policy of the first two tasks: with more tasks, a count/fraction of the smallest layer."""
    if len(group) == 2 or isinstance(policy, mtz.ShareThreshold):
        return policy
    count = group_share_count(policy, group)
    assert count is not None  # a count or fraction policy
    return mtz.ShareCount(count)


@dataclass
class Member:
    """One hidden layer prepared for pairing: its neurons over its shared inputs, in every task.

    Attributes:
        position: Aligned position.
        name: ``<tag> (<node>)`` for messages.
        rows: Per task ``(N_t, D)`` (dense / patch reading) or ``(N_t, P, C+1)`` (per-channel).
        hessians: Per task ``(D, D)``, undamped (identities for the averaging pairings).
        op01: The pair operator of tasks 0 and 1.
    """

    position: int
    name: str
    rows: list[np.ndarray]
    hessians: list[np.ndarray]
    op01: mtz.PairOperator


@dataclass
class Merged:
    """A member's shared neurons while tasks are added: merged rows and the joint Hessian ``Σ_t H_t``."""

    rows: np.ndarray
    joint: np.ndarray


def task_operator(member: Member, merged: Merged, task: int, damping: float) -> mtz.PairOperator:
    """The operator of the joint model (``Σ`` of the tasks added so far) and task ``task``
    (``damping`` applies to Hessian-merging methods; 0 for averaging)."""
    hessian = member.hessians[task]
    if damping:
        hessian = mtz.damp(hessian, damping, layer=member.name)
    return mtz.pair_operator(merged.joint, hessian, layer=f"{member.name}, task {task}")


def merge_fixed(member: Member, pairs: np.ndarray, damping: float) -> tuple[np.ndarray, np.ndarray]:
    """Merged rows ``(k, ...)`` and summed costs ``(k,)`` of a member for pairs already chosen ``(k, T)``.

    Tasks 0 and 1 are merged with their operator, then each further task with the joint Hessian
    ``Σ_t H_t`` of the tasks before it: the merged vector is ``(Σ_t H_t)⁻¹ Σ_t H_t w_t``.
    """
    op = member.op01
    rows = mtz.merge_pairs(member.rows[0], member.rows[1], pairs[:, :2], op, layer=member.name)
    costs = mtz.paired_costs(member.rows[0][pairs[:, 0]], member.rows[1][pairs[:, 1]], op)
    merged = Merged(rows, op.h_a + op.h_b)
    index = np.arange(len(pairs))
    for t in range(2, len(member.rows)):
        op_t = task_operator(member, merged, t, damping)
        costs = costs + mtz.paired_costs(merged.rows, member.rows[t][pairs[:, t]], op_t)
        rows = mtz.merge_pairs(
            merged.rows, member.rows[t], np.stack([index, pairs[:, t]], axis=1), op_t, layer=member.name
        )
        merged = Merged(rows, op_t.h_a + op_t.h_b)
    return merged.rows, costs


@dataclass(frozen=True)
class CostRule:
    """How a pairing method's cost tables are made (one entry per ``PairingMethod.costs``).

    Attributes:
        first: ``(members, rng, pair_costs) → (N_0, N_1)`` costs of tasks 0 and 1, summed over the group.
        further: ``(members, states, ops, task, rng) → (k, N_t)`` costs of the shared neurons against
            task ``t``'s, or ``None`` when the method zips two models only.
        scored: The matching's costs are merge costs (``False``: random tables, costs reported as 0).
    """

    first: Callable[[Sequence[Member], np.random.Generator, Mapping[int, np.ndarray] | None], np.ndarray]
    further: (
        Callable[[Sequence[Member], Sequence[Merged], Sequence[mtz.PairOperator], int, np.random.Generator], np.ndarray]
        | None
    )
    scored: bool = True


def _model_first(
    members: Sequence[Member], rng: np.random.Generator, pair_costs: Mapping[int, np.ndarray] | None
) -> np.ndarray:
    table = mtz.cost_matrix(members[0].rows[0], members[0].rows[1], members[0].op01, layer=members[0].name)
    for m in members[1:]:
        table = table + mtz.cost_matrix(m.rows[0], m.rows[1], m.op01, layer=m.name)
    return table


def _model_further(
    members: Sequence[Member],
    states: Sequence[Merged],
    ops: Sequence[mtz.PairOperator],
    t: int,
    rng: np.random.Generator,
) -> np.ndarray:
    table = mtz.cost_matrix(states[0].rows, members[0].rows[t], ops[0], layer=members[0].name)
    for m, state, op in zip(members[1:], states[1:], ops[1:]):
        table = table + mtz.cost_matrix(state.rows, m.rows[t], op, layer=m.name)
    return table


def _random_first(
    members: Sequence[Member], rng: np.random.Generator, pair_costs: Mapping[int, np.ndarray] | None
) -> np.ndarray:
    return rng.random((members[0].rows[0].shape[0], members[0].rows[1].shape[0]))


def _random_further(
    members: Sequence[Member],
    states: Sequence[Merged],
    ops: Sequence[mtz.PairOperator],
    t: int,
    rng: np.random.Generator,
) -> np.ndarray:
    return rng.random((states[0].rows.shape[0], members[0].rows[t].shape[0]))


def _correlation_first(
    members: Sequence[Member], rng: np.random.Generator, pair_costs: Mapping[int, np.ndarray] | None
) -> np.ndarray:
    first = members[0]
    known = [m for m in members if pair_costs is not None and m.position in pair_costs]
    if not known or known[0] is not first or pair_costs is None:
        raise InputError(f"layer {first.name}: correlation pairing needs its activation correlations")
    table = np.asarray(pair_costs[first.position], dtype=np.float64)
    for m in known[1:]:
        table = table + np.asarray(pair_costs[m.position], dtype=np.float64)
    return table


#: Cost rules by :attr:`onnx_zip.config.PairingMethod.costs`.
COST_RULES: dict[str, CostRule] = {
    "hessian": CostRule(_model_first, _model_further),
    "l2": CostRule(_model_first, _model_further),
    "random": CostRule(_random_first, _random_further, scored=False),
    "correlation": CostRule(_correlation_first, None),
}


def _merged_states(members: Sequence[Member], pairs: np.ndarray) -> list[Merged]:
    # The other members' merged rows are only needed to match further tasks.
    merging = members if len(members[0].rows) > 2 else members[:1]
    return [
        Merged(mtz.merge_pairs(m.rows[0], m.rows[1], pairs, m.op01, layer=m.name), m.op01.h_a + m.op01.h_b)
        for m in merging
    ]


@dataclass
class _Choice:
    """Pairs ``(k, t)`` chosen so far, their summed costs over the group and the deciding layer's own."""

    pairs: np.ndarray
    costs: np.ndarray
    own: np.ndarray
    states: list[Merged]


def _add_task(
    choice: _Choice,
    members: Sequence[Member],
    t: int,
    policy: mtz.SharePolicy,
    rule: CostRule,
    settings: PlanSettings,
    rng: np.random.Generator,
    alone: bool,
) -> _Choice:
    """Match task ``t``'s neurons to the shared neurons and merge them in (mtz-method §7)."""
    first, name = members[0], members[0].name
    if rule.further is None:
        raise InputError(f"{settings.method.name} pairing zips two models", hint="use mtz, l2 or random pairing")
    k, n_t = len(choice.pairs), first.rows[t].shape[0]
    damping = settings.damping if settings.method.hessian_merge else 0.0
    ops = [task_operator(m, state, t, damping) for m, state in zip(members, choice.states)]
    table = rule.further(members, choice.states, ops, t, rng)
    matching = mtz.select_pairs(table, mtz.ShareCount(min(k, n_t)), method=settings.match, layer=f"{name}, task {t}")  # type: ignore[arg-type]
    keep = np.argsort(matching.pairs[:, 0], kind="stable")
    shared_index, partner = matching.pairs[keep, 0], matching.pairs[keep, 1]
    added = matching.costs[keep] if rule.scored else np.zeros(len(keep))
    if isinstance(policy, mtz.ShareThreshold):
        within = choice.costs[shared_index] + added <= policy.epsilon
        shared_index, partner, added = shared_index[within], partner[within], added[within]
    if alone:
        own = choice.own[shared_index] + added
    else:
        own = choice.own[shared_index] + mtz.paired_costs(
            choice.states[0].rows[shared_index], first.rows[t][partner], ops[0]
        )
    link = np.stack([shared_index, partner], axis=1)
    states = [
        Merged(mtz.merge_pairs(state.rows, m.rows[t], link, op, layer=m.name), op.h_a + op.h_b)
        for m, state, op in zip(members, choice.states, ops)
    ]
    pairs = np.concatenate([choice.pairs[shared_index], partner[:, None]], axis=1)
    return _Choice(pairs, choice.costs[shared_index] + added, own, states)


def choose_pairs(
    members: Sequence[Member],
    policy: mtz.SharePolicy,
    group: Sequence[Layer],
    settings: PlanSettings,
    rng: np.random.Generator,
    pair_costs: Mapping[int, np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Choose the shared neurons of a channel group from the costs of its members, summed.

    A plain layer is a group of one. Tasks 0 and 1 are paired by the policy; each further task's
    neurons are matched to the shared neurons (mtz-method §7): ``min(k, N_t)`` pairs, so every
    shared neuron gets a partner while the task has enough neurons; unmatched shared neurons, and
    for a ``max_cost`` policy those whose summed cost exceeds it, stop being shared.

    Args:
        members: The group's layers whose inputs are known, the deciding layer first.
        policy: The deciding layer's share policy.
        group: The deciding layer in every task.
        settings: The method (its :class:`CostRule`), matching and damping.
        rng: The random pairing's generator.
        pair_costs: Correlation costs ``(N_0, N_1)`` by aligned position (correlation pairing).

    Returns:
        Pairs ``(k, T)`` (shared-neuron order), the deciding layer's own costs ``(k,)`` (summed over
        the tasks; the group's summed costs choose the pairs), and its merged rows ``(k, ...)``.
    """
    first = members[0]
    rule = COST_RULES[settings.method.costs]
    table = rule.first(members, rng, pair_costs)
    matching = mtz.select_pairs(table, first_policy(policy, group), method=settings.match, layer=first.name)  # type: ignore[arg-type]
    pairs = np.asarray(matching.pairs, dtype=np.int64).reshape(-1, 2)
    costs = np.asarray(matching.costs if rule.scored else np.zeros(len(pairs)), dtype=np.float64)
    alone = len(members) == 1 or not rule.scored  # the matching's costs are the deciding layer's
    own = costs if alone else mtz.paired_costs(first.rows[0][pairs[:, 0]], first.rows[1][pairs[:, 1]], first.op01)
    choice = _Choice(pairs, costs, own, _merged_states(members, pairs))
    for t in range(2, len(first.rows)):
        if not len(choice.pairs):
            break
        choice = _add_task(choice, members, t, policy, rule, settings, rng, alone)
    pairs = choice.pairs if len(choice.pairs) else np.zeros((0, len(first.rows)), dtype=np.int64)
    return pairs, choice.own, choice.states[0].rows
