"""Choosing and merging the shared neurons of one layer (or one residual channel group) across
two or more tasks (mtz-method §3, §4 and §7), on neuron rows and Hessians already restricted to
the layer's shared inputs. Pure numpy; :mod:`onnx_zip.zipper.plan` prepares the rows.

Tasks 0 and 1 are paired by the share policy; each further task's neurons are matched to the
shared neurons and merged in with the joint Hessian ``Σ_t H_t`` of the tasks before it, so the
merged vector is ``(Σ_t H_t)⁻¹ Σ_t H_t w_t`` whatever the order the tasks come in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from onnx_zip import mtz
from onnx_zip.errors import InputError
from onnx_zip.graph.layers import Layer

if TYPE_CHECKING:
    from onnx_zip.zipper.plan import ZipSettings


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
    return mtz.ShareCount(group_share_count(policy, group))


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


def task_operator(member: Member, merged: Merged, task: int, settings: ZipSettings) -> mtz.PairOperator:
    """The operator of the joint model (``Σ`` of the tasks added so far) and task ``task``."""
    hessian = member.hessians[task]
    if settings.pairing == "mtz":
        hessian = mtz.damp(hessian, settings.damping, layer=member.name)
    return mtz.pair_operator(merged.joint, hessian, layer=f"{member.name}, task {task}")


def merge_fixed(member: Member, pairs: np.ndarray, settings: ZipSettings) -> tuple[np.ndarray, np.ndarray]:
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
        op_t = task_operator(member, merged, t, settings)
        costs = costs + mtz.paired_costs(merged.rows, member.rows[t][pairs[:, t]], op_t)
        rows = mtz.merge_pairs(merged.rows, member.rows[t], np.stack([index, pairs[:, t]], axis=1), op_t, layer=member.name)
        merged = Merged(rows, op_t.h_a + op_t.h_b)
    return merged.rows, costs


def choose_pairs(
    members: Sequence[Member],
    policy: mtz.SharePolicy,
    group: Sequence[Layer],
    settings: ZipSettings,
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

    Returns:
        Pairs ``(k, T)`` (shared-neuron order), the deciding layer's own costs ``(k,)`` (summed over
        the tasks; the group's summed costs choose the pairs), and its merged rows ``(k, ...)``.
    """
    first = members[0]
    name = first.name
    if settings.pairing == "random":
        table = rng.random((first.rows[0].shape[0], first.rows[1].shape[0]))
    elif settings.pairing == "correlation":
        known = [m for m in members if pair_costs is not None and m.position in pair_costs]
        if not known or known[0] is not first:
            raise InputError(f"layer {name}: correlation pairing needs its activation correlations")
        table = np.asarray(pair_costs[first.position], dtype=np.float64)  # type: ignore[index]
        for m in known[1:]:
            table = table + np.asarray(pair_costs[m.position], dtype=np.float64)  # type: ignore[index]
    else:
        table = mtz.cost_matrix(first.rows[0], first.rows[1], first.op01, layer=name)
        for m in members[1:]:
            table = table + mtz.cost_matrix(m.rows[0], m.rows[1], m.op01, layer=m.name)
    matching = mtz.select_pairs(table, first_policy(policy, group), method=settings.match, layer=name)
    pairs = np.asarray(matching.pairs, dtype=np.int64).reshape(-1, 2)
    costs = np.asarray(matching.costs if settings.pairing != "random" else np.zeros(len(pairs)), dtype=np.float64)
    alone = len(members) == 1 or settings.pairing == "random"  # the matching's costs are the deciding layer's
    own = costs if alone else mtz.paired_costs(first.rows[0][pairs[:, 0]], first.rows[1][pairs[:, 1]], first.op01)
    # The other members' merged rows are only needed to match further tasks.
    merging = members if len(first.rows) > 2 else members[:1]
    states = [
        Merged(mtz.merge_pairs(m.rows[0], m.rows[1], pairs, m.op01, layer=m.name), m.op01.h_a + m.op01.h_b)
        for m in merging
    ]
    for t in range(2, len(first.rows)):
        if not len(pairs):
            break
        if settings.pairing == "correlation":
            raise InputError("correlation pairing zips two models", hint="use mtz, l2 or random pairing")
        k, n_t = len(pairs), first.rows[t].shape[0]
        ops = [task_operator(m, state, t, settings) for m, state in zip(members, states)]
        if settings.pairing == "random":
            table = rng.random((k, n_t))
        else:
            table = mtz.cost_matrix(states[0].rows, first.rows[t], ops[0], layer=name)
            for m, state, op in zip(members[1:], states[1:], ops[1:]):
                table = table + mtz.cost_matrix(state.rows, m.rows[t], op, layer=m.name)
        matching = mtz.select_pairs(table, mtz.ShareCount(min(k, n_t)), method=settings.match, layer=f"{name}, task {t}")
        keep = np.argsort(matching.pairs[:, 0], kind="stable")
        shared_index, partner = matching.pairs[keep, 0], matching.pairs[keep, 1]
        added = matching.costs[keep] if settings.pairing != "random" else np.zeros(len(keep))
        if isinstance(policy, mtz.ShareThreshold):
            within = costs[shared_index] + added <= policy.epsilon
            shared_index, partner, added = shared_index[within], partner[within], added[within]
        if alone:
            own = own[shared_index] + added
        else:
            own = own[shared_index] + mtz.paired_costs(states[0].rows[shared_index], first.rows[t][partner], ops[0])
        link = np.stack([shared_index, partner], axis=1)
        states = [
            Merged(mtz.merge_pairs(state.rows, m.rows[t], link, op, layer=m.name), op.h_a + op.h_b)
            for m, state, op in zip(members, states, ops)
        ]
        pairs = np.concatenate([pairs[shared_index], partner[:, None]], axis=1)
        costs = costs[shared_index] + added
    if len(pairs) == 0:
        pairs = np.zeros((0, len(first.rows)), dtype=np.int64)
    return pairs, own, states[0].rows
