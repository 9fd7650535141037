"""Alignment: which layer of each model is zipped with which.

Layers of two or more :class:`~onnx_zip.graph.layers.LayerChain` are paired in order: the
k-th hidden layer of every model together, then the k-th head of every model. A position
aligns when all its layers have the same ``kind`` (conv/dense) and the same kernel shape,
and, for a first conv layer, the same input channels (a narrower first dense layer gets fictive
zero weights for the missing features). Neuron counts may differ (MTZ zips N_A with N_B neurons).
Heads are never zipped and may differ in kind.

An explicit ``mapping`` of node names overrides the positional pairing: a dict
``{"a_node": "b_node"}`` for two models, a list of lists (one node per model, in model
order) for any number, or the document ``onnx-zip align --json`` writes (its ``layers``' ``nodes``).
It must cover every hidden layer of every model, keep each model's
layer order, and may leave out the heads (then paired by position). The same checks apply.

When the models do not align, the :class:`ModelError` carries a side-by-side table of the
layers with a ``<-`` marker on each row that differs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from onnx_zip.errors import ModelError
from onnx_zip.graph.layers import Layer, LayerChain

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlignedLayer:
    """One position of the alignment: the layer of each model zipped together.

    Attributes:
        index: Position, 0 from the input; hidden positions first, heads last.
        nodes: Node name of the layer in each model (model order).
        kind: ``conv`` or ``dense`` (equal in all models).
        op_types: ONNX op type in each model.
        neurons: N_out in each model.
        inputs: N_in in each model.
        kernel_shape: (KH, KW) for conv, () for dense (equal in all models).
        is_head: True for task heads (never zipped).
    """

    index: int
    nodes: tuple[str, ...]
    kind: str
    op_types: tuple[str, ...]
    neurons: tuple[int, ...]
    inputs: tuple[int, ...]
    kernel_shape: tuple[int, ...]
    is_head: bool


@dataclass(frozen=True)
class Alignment:
    """The layer pairing of several models.

    Attributes:
        models: Model labels, in the order of the chains.
        layers: Aligned positions, hidden first, heads last.
    """

    models: tuple[str, ...]
    layers: tuple[AlignedLayer, ...]

    @property
    def hidden(self) -> tuple[AlignedLayer, ...]:
        return tuple(a for a in self.layers if not a.is_head)

    @property
    def heads(self) -> tuple[AlignedLayer, ...]:
        return tuple(a for a in self.layers if a.is_head)

    def to_dict(self) -> dict[str, Any]:
        return {"models": list(self.models), "layers": [asdict(a) for a in self.layers]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Alignment:
        layers = tuple(
            AlignedLayer(
                index=int(a["index"]),
                nodes=tuple(a["nodes"]),
                kind=str(a["kind"]),
                op_types=tuple(a["op_types"]),
                neurons=tuple(int(n) for n in a["neurons"]),
                inputs=tuple(int(n) for n in a["inputs"]),
                kernel_shape=tuple(int(k) for k in a["kernel_shape"]),
                is_head=bool(a["is_head"]),
            )
            for a in data["layers"]
        )
        return cls(tuple(data["models"]), layers)


def describe(layer: Layer | None) -> str:
    """``node kind N_out<-N_in [KHxKW] [head]`` for tables; ``-`` for a missing layer."""
    if layer is None:
        return "-"
    kernel = f" k{'x'.join(map(str, layer.kernel_shape))}" if layer.kernel_shape else ""
    head = " head" if layer.is_head else ""
    return f"{layer.node} {layer.kind} {layer.neurons}<-{layer.inputs}{kernel}{head}"


def _problem(row: Sequence[Layer | None], position: int) -> str | None:
    if any(layer is None for layer in row):
        return "missing layer"
    first = row[0]
    assert first is not None
    if all(layer is not None and layer.is_head for layer in row):
        return None  # heads are never zipped: each keeps its own kind and kernel
    for layer in row[1:]:
        assert layer is not None
        if layer.is_head != first.is_head:
            return "head vs hidden"
        if layer.kind != first.kind:
            return "kind differs"
        if layer.kernel_shape != first.kernel_shape:
            return "kernel differs"
    if position == 0 and first.kind != "dense" and len({layer.inputs for layer in row if layer is not None}) > 1:
        return "input size differs"  # a dense first layer may be narrower: fictive zero weights
    return _flatten_problem(row)


def _flatten_problem(row: Sequence[Layer | None]) -> str | None:
    """A dense layer reading flattened conv features of different counts (different input sizes)."""
    layers = [layer for layer in row if layer is not None]
    if layers[0].kind != "dense" or all(layer.source_features <= 1 for layer in layers):
        return None
    if len({layer.source_features for layer in layers}) == 1:
        return None  # other channel counts are zipped as usual (N_A with N_B neurons)
    counts = " vs ".join(
        f"{layer.inputs} ({layer.inputs // max(layer.source_features, 1)} channels x {layer.source_features} positions)"
        for layer in layers
    )
    return f"flattened features differ: {counts}"


FLATTEN_HINT = (
    "the models' inputs have different sizes, so conv -> flatten -> dense reads different feature counts; "
    "options: zip only the layers before the Flatten (`--until <last conv>`: the dense layer and what follows "
    "stay task-specific), or resize one model's input to the other's size and retrain it"
)


def diff_table(chains: Sequence[LayerChain], rows: Sequence[Sequence[Layer | None]]) -> str:
    """A side-by-side text table of aligned rows with ``<-`` and the reason where they differ."""
    header = ["#"] + [chain.model for chain in chains] + [""]
    body = []
    for position, row in enumerate(rows):
        problem = _problem(row, position)
        body.append([str(position)] + [describe(layer) for layer in row] + ([f"<- {problem}"] if problem else [""]))
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header] + body]
    return "\n".join(lines)


def _positional_rows(chains: Sequence[LayerChain]) -> list[list[Layer | None]]:
    rows: list[list[Layer | None]] = []
    for group in ("hidden", "heads"):
        lists = [getattr(chain, group) for chain in chains]
        for i in range(max(len(x) for x in lists)):
            rows.append([x[i] if i < len(x) else None for x in lists])
    return rows


def alignment_entries(document: Mapping[str, Any]) -> list[tuple[str, ...]] | None:
    """The node names per position of an ``align --json`` document (:meth:`Alignment.to_dict`),
    or None when ``document`` is not one (e.g. a ``{a_node: b_node}`` mapping)."""
    layers = document.get("layers")
    if not isinstance(layers, list) or not all(
        isinstance(a, Mapping) and isinstance(a.get("nodes"), list) for a in layers
    ):
        return None
    return [tuple(str(n) for n in a["nodes"]) for a in layers]


def _normalise_mapping(mapping: Mapping[str, Any] | Sequence[Sequence[str]], count: int) -> list[tuple[str, ...]]:
    entries: list[tuple[str, ...]]
    if isinstance(mapping, Mapping) and (from_align := alignment_entries(mapping)) is not None:
        entries = from_align
    elif isinstance(mapping, Mapping):
        if count != 2:
            raise ModelError(
                f"a {{a_node: b_node}} mapping pairs two models, got {count}",
                hint="give a list of lists, one node name per model",
            )
        entries = [(str(a), str(b)) for a, b in mapping.items()]
    else:
        entries = [tuple(str(n) for n in entry) for entry in mapping]
    for entry in entries:
        if len(entry) != count:
            raise ModelError(f"mapping entry {list(entry)} names {len(entry)} nodes for {count} models")
    return entries


def _mapped_rows(
    chains: Sequence[LayerChain], mapping: Mapping[str, Any] | Sequence[Sequence[str]]
) -> list[list[Layer | None]]:
    entries = _normalise_mapping(mapping, len(chains))
    rows: list[list[Layer | None]] = []
    for entry in entries:
        row: list[Layer | None] = []
        for chain, node in zip(chains, entry):
            try:
                row.append(chain.by_node(node))
            except KeyError:
                known = ", ".join(layer.node for layer in chain.layers)
                raise ModelError(
                    f"mapping: {chain.model} has no zippable layer named {node!r}", hint=f"its layers are: {known}"
                ) from None
        rows.append(row)
    for m, chain in enumerate(chains):
        used = [layer.node for row in rows if (layer := row[m]) is not None]
        duplicates = sorted({n for n in used if used.count(n) > 1})
        if duplicates:
            raise ModelError(f"mapping: {chain.model} layer(s) {', '.join(duplicates)} mapped more than once")
        missing = [layer.node for layer in chain.hidden if layer.node not in used]
        if missing:
            raise ModelError(
                f"mapping: hidden layer(s) {', '.join(missing)} of {chain.model} are not mapped",
                hint="map every hidden layer of every model (heads may be left out)",
            )
        indices = [layer.index for row in rows if (layer := row[m]) is not None]
        if indices != sorted(indices):
            raise ModelError(f"mapping: the layers of {chain.model} are not in model order ({', '.join(used)})")
    mapped_heads = {row[0].node for row in rows if row[0] is not None and row[0].is_head}
    if not mapped_heads:
        heads = [chain.heads for chain in chains]
        for i in range(max(len(h) for h in heads)):
            rows.append([h[i] if i < len(h) else None for h in heads])
    return rows


def match_depths(chains: Sequence[LayerChain]) -> list[LayerChain]:
    """Models of different depths (mtz-method §7): zip the first ``m`` hidden layers of every model,
    ``m`` the fewest; in a deeper model the next layer becomes its head, so it and the layers after it
    stay task-specific. Chains of one depth are returned as they are.

    Raises:
        ModelError: a deeper model with several heads, or whose layers after the cut read the zipped
            layers other than through the new head (a skip connection across the cut).
    """
    counts = [len(chain.hidden) for chain in chains]
    fewest = min(counts)
    if len(set(counts)) == 1:
        return list(chains)
    result = []
    for chain, count in zip(chains, counts):
        if count == fewest:
            result.append(chain)
            continue
        if len(chain.heads) != 1:
            raise ModelError(
                f"{chain.model} has {count} hidden layers (others {fewest}) and {len(chain.heads)} heads; "
                "models of different depths are zipped when the deeper one has one head",
                hint="pass an explicit mapping of node names (--map FILE.json)",
            )
        cut = chain.hidden[fewest]
        zipped = {layer.node for layer in chain.hidden[:fewest]}
        for layer in chain.layers[fewest + 1 :]:
            crossing = sorted(set(layer.sources) & zipped)
            if crossing:
                raise ModelError(
                    f"{chain.model}: layer {layer.node!r} after the {fewest} zipped layers reads "
                    f"{', '.join(crossing)} directly (a skip connection across the cut at {cut.node!r})",
                    hint="zip models of one depth, or whose extra layers follow one another",
                )
        for group in chain.channel_groups:
            if set(group) & zipped and set(group) - zipped:
                raise ModelError(
                    f"{chain.model}: a residual Add ties zipped layers to layers after the cut at {cut.node!r} "
                    f"({', '.join(group)})",
                    hint="zip models of one depth",
                )
        logger.info(
            "%s: %d hidden layers (others %d): zipping the first %d; %s and the layers after it stay task-specific",
            chain.model,
            count,
            fewest,
            fewest,
            cut.node,
        )
        result.append(chain.truncated(fewest))
    return result


def align_chains(
    chains: Sequence[LayerChain],
    *,
    mapping: Mapping[str, Any] | Sequence[Sequence[str]] | None = None,
) -> Alignment:
    """Pair the layers of two or more models.

    Args:
        chains: One :class:`LayerChain` per model (from ``discover_layers``).
        mapping: Optional explicit pairing by node names (see the module docstring).

    Returns:
        The :class:`Alignment`.

    Raises:
        ModelError: fewer than two chains, a bad mapping, or layers that do not align
            (the message holds the side-by-side diff).
    """
    if len(chains) < 2:
        raise ModelError(f"alignment needs at least two models, got {len(chains)}")
    rows = _mapped_rows(chains, mapping) if mapping is not None else _positional_rows(chains)
    problems = [(i, p) for i, row in enumerate(rows) if (p := _problem(row, i)) is not None]
    if problems:
        names = ", ".join(chain.model for chain in chains)
        first = "; ".join(f"position {i}: {p}" for i, p in problems[:3])
        flatten = any(p.startswith("flattened features differ") for _, p in problems)
        raise ModelError(
            f"the layers of {names} do not align ({first}):\n{diff_table(chains, rows)}\n",
            hint=FLATTEN_HINT
            if flatten
            else "zip models of one architecture, or pass an explicit mapping of node names (--map FILE.json)",
        )
    aligned = []
    for index, row in enumerate(rows):
        layers = [layer for layer in row if layer is not None]
        aligned.append(
            AlignedLayer(
                index=index,
                nodes=tuple(layer.node for layer in layers),
                kind=layers[0].kind,
                op_types=tuple(layer.op_type for layer in layers),
                neurons=tuple(layer.neurons for layer in layers),
                inputs=tuple(layer.inputs for layer in layers),
                kernel_shape=layers[0].kernel_shape,
                is_head=layers[0].is_head,
            )
        )
    return Alignment(tuple(chain.model for chain in chains), tuple(aligned))
