"""Where the layers of aligned models read their channels from: residual channel groups and
sources, by aligned position (plain chains: each layer reads the one before it)."""

from __future__ import annotations

from collections.abc import Sequence

from onnx_zip.errors import InputError
from onnx_zip.graph.layers import Layer, LayerChain


def channel_group_positions(
    chains: Sequence[LayerChain], aligned: Sequence[Sequence[Layer]]
) -> dict[int, tuple[int, ...]]:
    """Aligned position → the positions of its channel group (itself for a layer outside any group).

    Raises:
        InputError: the models' residual structure differs (groups or sources at other positions).
    """
    tasks = len(chains)
    position_of = [{group[t].node: p for p, group in enumerate(aligned)} for t in range(tasks)]
    result: dict[int, tuple[int, ...]] = {}
    for position, group in enumerate(aligned):
        per_task = []
        first_sources = tuple(sorted(position_of[0][s] for s in group[0].sources if s in position_of[0]))
        for t, layer in enumerate(group):
            members = chains[t].group_of(layer.node)
            per_task.append(tuple(sorted(position_of[t][m] for m in members if m in position_of[t])))
            sources = tuple(sorted(position_of[t][s] for s in layer.sources if s in position_of[t]))
            if sources != first_sources:
                raise InputError(
                    f"layer {layer.node} of task {t} reads other layers ({', '.join(layer.sources) or 'the input'}) "
                    f"than {group[0].node} of task 0 ({', '.join(group[0].sources) or 'the input'})",
                    hint="zip models of one architecture (see `onnx-zip align`)",
                )
        if any(members != per_task[0] for members in per_task[1:]):
            raise InputError(
                f"the residual Adds tie different layers in the models at {', '.join(layer.node for layer in group)}",
                hint="zip models of one architecture (see `onnx-zip align`)",
            )
        result[position] = per_task[0]
    return result


def source_position(group: Sequence[Layer], aligned: Sequence[Sequence[Layer]]) -> int | None:
    """The first aligned position whose channels a position reads (None: the graph input)."""
    nodes = set(group[0].sources)
    for position, other in enumerate(aligned):
        if other[0].node in nodes:
            return position
    return None
