"""Blockers: the constructs of a model that stop zipping at some point, each with what to do.

Discovery (:mod:`onnx_zip.graph.discover`) and partial zipping (:mod:`onnx_zip.graph.partial`)
collect every blocker of every model instead of stopping at the first; ``align``, ``inspect`` and
``zip`` (before calibration) list them all, one line each, in a stable order that does not depend
on the order the models were given in (sorted by model label, then by the node's position in its
graph).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from onnx_zip.errors import ModelError


@dataclass(frozen=True)
class Blocker:
    """One construct the zipper cannot rebuild.

    Attributes:
        model: The model's label.
        node: The node's name.
        op: Its op type.
        why: What the zipper cannot do with it.
        fix: What the user can do.
        position: The node's index in its (topologically sorted) graph; orders the list.
        layer: The hidden layer whose path it stops ("" when it is not on a layer's path).
        tensor: The last tensor of that path the zipper supports (where a cut can be made).
    """

    model: str
    node: str
    op: str
    why: str
    fix: str
    position: int = 0
    layer: str = ""
    tensor: str = ""

    def line(self) -> str:
        """``<model>: node '<node>' (<op>): <why> -> <fix>``."""
        return f"{self.model}: node {self.node!r} ({self.op}): {self.why} -> {self.fix}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def error(self) -> ModelError:
        """This blocker as the error the strict discovery raises."""
        return ModelError(f"{self.model}: node {self.node!r} ({self.op}): {self.why}", hint=self.fix)


_TASK_LABEL = re.compile(r"^model \S+ \((.*)\)$")


def _model_key(label: str) -> str:
    """The file in a pipeline label ``model <task> (<file>)`` (task names follow the model order,
    files do not); any other label as it is."""
    match = _TASK_LABEL.match(label)
    return match.group(1) if match else label


def sorted_blockers(blockers: Iterable[Blocker]) -> list[Blocker]:
    """One blocker per node (the first given: a path's own reason before the generic one), ordered
    by model label, graph position and node name (independent of the order of the models)."""
    unique: dict[tuple[str, str], Blocker] = {}
    for b in blockers:
        unique.setdefault((b.model, b.node), b)
    return sorted(unique.values(), key=lambda b: (_model_key(b.model), b.position, b.node, b.why))


def format_blockers(blockers: Sequence[Blocker]) -> str:
    """One line per blocker, indented, for messages and the CLI."""
    return "\n".join(f"  - {b.line()}" for b in sorted_blockers(blockers))


def nothing_zippable(blockers: Sequence[Blocker], models: Sequence[str]) -> ModelError:
    """The error when no layer of ``models`` can be zipped: every blocker, one per line."""
    listed = format_blockers(blockers) or "  - (no blocker recorded)"
    return ModelError(
        f"nothing to zip in {', '.join(models)}: no hidden layer is reachable through supported ops; "
        f"{len(sorted_blockers(blockers))} blocker(s):\n{listed}\n",
        hint="zip models whose first layers are followed by supported ops (see each blocker's fix)",
    )
