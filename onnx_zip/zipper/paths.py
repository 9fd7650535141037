"""The nodes between two zipped layers, rebuilt block by block through the op table.

A hidden layer's path (from discovery) is split at the nodes that tie two channel groups' tensors
(residual Adds): each *run* between ties is rebuilt on every block of the task
(:func:`onnx_zip.graph.ops.rebuild`); a tie waits until both its operands exist, then combines them
block by block. A block common to all tasks is rebuilt once, up to the first node with per-channel
parameters: from there on each task has its own parameters, so its own block.

``blocked[t][name]`` holds task ``t``'s tensor ``name`` (its original name) as channel blocks in
the zipped order ``[shared ; specific]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnx_zip.errors import InternalError
from onnx_zip.graph import ops
from onnx_zip.graph.layers import PathStep
from onnx_zip.graph.lookup import nodes_by_name
from onnx_zip.zipper.graph_builder import SHARED, Block, GraphBuilder

#: Tie ops whose operands may be given in any order: kept in the order the path reaches them
#: (the zipped graph's names and bytes stay as they were); others follow the node's input order.
COMMUTATIVE = frozenset({"Add", "Mul", "Sum", "Max", "Min"})


@dataclass
class PathState:
    """What the path rebuild shares across layers and tasks.

    Attributes:
        builder: The graph builder.
        nodes: Per task, node name → node of its canonical graph.
        blocked: Per task, original tensor name → its blocks.
        run_cache: A common block's tensor id → its run rebuilt once (up to per-channel parameters).
        tie_cache: The two operand blocks' tensor ids → their tie, for common blocks.
    """

    builder: GraphBuilder
    nodes: list[dict[str, gs.Node]]
    blocked: list[dict[str, list[Block]]]
    run_cache: dict[int, tuple[gs.Tensor, int]] = field(default_factory=dict)
    tie_cache: dict[tuple[int, int], gs.Tensor] = field(default_factory=dict)

    @classmethod
    def of(cls, builder: GraphBuilder, graphs: Sequence[gs.Graph]) -> PathState:
        return cls(builder, [nodes_by_name(g) for g in graphs], [{} for _ in graphs])


def path_runs(steps: Sequence[PathStep]) -> list[tuple[list[PathStep], PathStep | None]]:
    """Split a path at its ties: ``[(steps before the tie, tie), ..., (last steps, None)]``."""
    runs: list[tuple[list[PathStep], PathStep | None]] = []
    run: list[PathStep] = []
    for step in steps:
        if step.effect in ops.TIE_EFFECTS:
            runs.append((run, step))
            run = []
        else:
            run.append(step)
    runs.append((run, None))
    return runs


def _flattened_channels(channels: np.ndarray, step: PathStep) -> np.ndarray:
    """The features a block's channels become across a Flatten (channel c → [c·F, (c+1)·F))."""
    if step.effect != "flatten" or step.features_per_channel == 1:
        return channels
    features = step.features_per_channel
    return (np.asarray(channels)[:, None] * features + np.arange(features)[None, :]).ravel()


def _rebuild_steps(
    state: PathState, t: int, steps: Sequence[PathStep], start: int, block: Block, prefix: str
) -> tuple[gs.Tensor, np.ndarray]:
    """``steps`` (positions ``start..`` of the run) on one block; the new tensor and its channels."""
    x, channels = block.tensor, block.channels
    for offset, step in enumerate(steps):
        node = state.nodes[t][step.node]
        x = ops.rebuild(ops.BlockStep(state.builder, node, step, (x,), channels, prefix, start + offset))
        channels = _flattened_channels(channels, step)
    return x, channels


def _per_task_from(run: Sequence[PathStep]) -> int:
    """Index of the first step whose rebuild depends on the task's channels (len(run) if none)."""
    return next((i for i, step in enumerate(run) if step.channel_params), len(run))


def _rebuild_blockwise(
    state: PathState, at: tuple[int, str, str], run: Sequence[PathStep], start: int, blocks: list[Block], shared: int
) -> list[Block]:
    """Per-block steps (positions ``start..`` of their run) on each of a task's blocks; a common
    block is rebuilt once up to the first step with per-channel parameters."""
    if not run:
        return blocks
    t, task, tag = at
    after = []
    split = _per_task_from(run)
    for i, block in enumerate(blocks):
        part = "shared" if i == 0 and shared else "specific"
        owner = SHARED if block.common else task
        key = id(block.tensor)
        if key not in state.run_cache:
            state.run_cache[key] = (
                _rebuild_steps(state, t, run[:split], start, block, f"{owner}/{tag}/{part}")[0],
                split,
            )
        head, _ = state.run_cache[key]
        channels = block.channels
        for step in run[:split]:
            channels = _flattened_channels(channels, step)
        current = Block(head, block.units, block.common, channels)
        if split < len(run):
            tail, channels = _rebuild_steps(state, t, run[split:], start + split, current, f"{task}/{tag}/{part}")
            current = Block(tail, block.units, False, channels)
        after.append(current)
    return after


def _rebuild_whole(
    state: PathState, at: tuple[int, str, str], step: PathStep, position: int, blocks: list[Block], axis: int
) -> list[Block]:
    """A ``channel_norm`` step on all of a task's channels: Concat the blocks, the op, Split back
    (a task has at most two blocks here, ``[shared ; specific]``)."""
    t, task, tag = at
    builder, op = state.builder, step.op_type
    channels = np.concatenate([b.channels for b in blocks])
    x = blocks[0].tensor
    if len(blocks) > 1:
        x = builder.variable(f"{task}/{tag}/{op.lower()}_input")
        builder.node("Concat", f"{task}/{tag}/{op}_Concat", [b.tensor for b in blocks], [x], attrs={"axis": axis})
    node = state.nodes[t][step.node]
    y = ops.rebuild(ops.BlockStep(builder, node, step, (x,), channels, f"{task}/{tag}/all", position))
    if len(blocks) == 1:
        return [Block(y, blocks[0].units, False, channels)]
    outs = [builder.variable(f"{task}/{tag}/{part}/{op.lower()}") for part in ("shared", "specific")[: len(blocks)]]
    sizes = builder.constant(
        f"{task}/{tag}/{op.lower()}_{position}_split", np.array([b.units for b in blocks], dtype=np.int64)
    )
    builder.node("Split", f"{task}/{tag}/{op}_Split", [y, sizes], outs, attrs={"axis": axis})
    return [Block(out, b.units, False, b.channels) for out, b in zip(outs, blocks)]


def rebuild_run(
    state: PathState, at: tuple[int, str, str], run: Sequence[PathStep], blocks: list[Block], shared: int, axis: int
) -> list[Block]:
    """One run of path steps on task ``at = (t, task, tag)``'s blocks: per-block steps block by
    block (a common block's shared part once), ``channel_norm`` steps on all the task's channels."""
    start = 0
    for i, step in enumerate(run):
        if step.effect in ops.WHOLE_TASK_EFFECTS:
            blocks = _rebuild_blockwise(state, at, run[start:i], start, blocks, shared)
            blocks = _rebuild_whole(state, at, step, i, blocks, axis)
            start = i + 1
    return _rebuild_blockwise(state, at, run[start:], start, blocks, shared)


def tie_blocks(
    state: PathState,
    t: int,
    task: str,
    tag: str,
    step: PathStep,
    operands: tuple[list[Block], list[Block]],
    shared: int,
) -> list[Block]:
    """A tie (residual Add), block by block: both operands carry one channel group in one order.

    ``operands``: the blocks of the node's two activation inputs, in the order the rebuild gives
    them to the op (the node's own order for a non-commutative op)."""
    left, right = operands
    if [b.units for b in left] != [b.units for b in right]:
        raise InternalError(
            f"the operands of {step.op_type} {step.node} of task {task} have channel blocks "
            f"{[b.units for b in left]} and {[b.units for b in right]}"
        )
    out = []
    node = state.nodes[t][step.node]
    for i, (a, b) in enumerate(zip(left, right)):
        common = a.common and b.common
        part = "shared" if i == 0 and shared else "specific"
        key = (id(a.tensor), id(b.tensor))
        if common and key in state.tie_cache:
            out.append(Block(state.tie_cache[key], a.units, True, a.channels))
            continue
        owner = SHARED if common else task
        summed = ops.rebuild(
            ops.BlockStep(state.builder, node, step, (a.tensor, b.tensor), a.channels, f"{owner}/{tag}/{part}", 0)
        )
        if common:
            state.tie_cache[key] = summed
        out.append(Block(summed, a.units, common, a.channels))
    return out


def _walk_ties(
    state: PathState, t: int, task: str, tag: str, step: PathStep, name: str, current: list[Block], shared: int
) -> tuple[str, list[Block]] | None:
    """Combine ``current`` (task ``t``'s tensor ``name``) with the tie's other operand, when it
    exists and the tie is not built yet; the tie's output name and blocks, or None (stop here)."""
    node = state.nodes[t][step.node]
    out_name = node.outputs[0].name
    blocked = state.blocked[t]
    if out_name in blocked:
        return None  # combined already, from the other operand's side
    operands = [i.name for i in node.inputs]
    other = operands[1] if operands[0] == name else operands[0]
    if other not in blocked:
        return None  # the other operand is built later; its layer's path does the tie
    pair = (current, blocked[other])
    if step.op_type not in COMMUTATIVE and operands[0] != name:
        pair = (blocked[other], current)
    return out_name, tie_blocks(state, t, task, tag, step, pair, shared)


def build_path(
    state: PathState,
    at: tuple[int, str, str],
    steps: Sequence[PathStep],
    output: str,
    blocks: list[Block],
    shared: int,
    axis: int,
) -> None:
    """Task ``at = (t, task, tag)``'s path after a layer writing ``output`` as ``blocks`` (channel
    axis ``axis``); records every tensor's blocks."""
    t, task, tag = at
    name, current = output, blocks
    state.blocked[t][name] = current
    for run, tie in path_runs(steps):
        if run:
            current = rebuild_run(state, at, run, current, shared, axis)
            name = state.nodes[t][run[-1].node].outputs[0].name
            state.blocked[t][name] = current
        if tie is None:
            return
        done = _walk_ties(state, t, task, tag, tie, name, current, shared)
        if done is None:
            return
        name, current = done
        state.blocked[t][name] = current
