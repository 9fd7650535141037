"""A YAML loader for recipes that a hostile file cannot exhaust.

On top of PyYAML's ``SafeLoader`` (which already refuses ``!!python/...`` tags), it refuses

* nesting deeper than :data:`MAX_DEPTH` levels (checked while composing, so a file with
  thousands of ``[`` never reaches Python's recursion limit),
* documents whose aliases expand to more than :data:`MAX_EXPANDED_NODES` nodes (the
  "billion laughs" alias bomb: a few lines that expand to billions of entries),
* texts longer than :data:`MAX_TEXT_CHARS`.

Anchors and aliases within those limits (shared settings, ``<<:`` merge keys) work as usual.
"""

from __future__ import annotations

from typing import Any

import yaml

from onnx_zip.errors import InputError

MAX_DEPTH = 50
MAX_EXPANDED_NODES = 100_000
MAX_TEXT_CHARS = 1_000_000


class _Refused(Exception):
    """Raised inside the loader; turned into an InputError naming the recipe."""

    def __init__(self, message: str, mark: yaml.Mark | None) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark


class _GuardedLoader(yaml.SafeLoader):
    """``SafeLoader`` that counts nesting depth while composing the node tree."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:  # type: ignore[override]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1


def expanded_shape(node: yaml.Node, limit: int = MAX_EXPANDED_NODES) -> tuple[int, int]:
    """``(nodes, depth)`` of ``node`` once every alias is expanded (counts stop past ``limit``).

    Shared (aliased) nodes are measured once, memoised by identity, so the walk is linear in
    the document's size however far the aliases expand. A node that contains itself (``&a [*a]``)
    expands without end: ``(limit + 1, limit + 1)``.
    """
    measured: dict[int, tuple[int, int]] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    while stack:
        current, children_done = stack.pop()
        key = id(current)
        if key in measured:
            continue
        children = _children(current)
        if children_done or not children:
            size = 1 + sum(measured[id(c)][0] for c in children)
            depth = 1 + max((measured[id(c)][1] for c in children), default=0)
            measured[key] = (min(size, limit + 1), min(depth, limit + 1))
            open_nodes.discard(key)
            continue
        if key in open_nodes or any(id(c) in open_nodes for c in children):
            return limit + 1, limit + 1
        open_nodes.add(key)
        stack.append((current, True))
        stack.extend((c, False) for c in children if id(c) not in measured)
    return measured[id(node)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _where(mark: yaml.Mark | None) -> str:
    return "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"


def load_yaml(text: str, label: str) -> Any:
    """Parse one YAML document (JSON is YAML too) safely.

    Args:
        text: The document.
        label: How to name the file in messages (for example ``recipe path/to/r.yaml``).

    Raises:
        InputError: not valid YAML, a python tag, too long, too deep, or aliases that expand
            too far; the message names ``label`` and, where known, the line and column.
    """
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(f"{label}: {len(text):,} characters, over the {MAX_TEXT_CHARS:,} a recipe may hold")
    loader = _GuardedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size, depth = expanded_shape(node)
        if size > MAX_EXPANDED_NODES:
            raise _Refused(f"its aliases expand to more than {MAX_EXPANDED_NODES:,} entries (an alias bomb?)", node.start_mark)
        if depth > MAX_DEPTH:
            raise _Refused(f"its aliases nest more than {MAX_DEPTH} levels deep", node.start_mark)
        return loader.construct_document(node)
    except _Refused as exc:
        raise InputError(f"{label}: {exc.message}{_where(exc.mark)}", hint="write the recipe out plainly") from None
    except yaml.constructor.ConstructorError as exc:
        if "constructor for the tag" in str(exc.problem):
            raise InputError(f"{label}: {exc.problem}{_where(exc.problem_mark)}",
                             hint="recipes hold plain data: no YAML tags such as !!python/...") from None
        raise InputError(f"{label}: not valid YAML{_where(exc.problem_mark)} ({exc.problem})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise InputError(f"{label}: not valid YAML{_where(mark)} ({problem})") from None
    except RecursionError:
        raise InputError(f"{label}: nested too deeply", hint="write the recipe out plainly") from None
    finally:
        loader.dispose()
