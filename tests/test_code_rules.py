"""The code rules of issue 12, checked over ``onnx_zip/`` with :mod:`ast` (no import of the package).

- no function or method longer than 80 lines;
- no import cycle between modules (every ``import``/``from`` statement counts, including the ones
  inside functions and under ``TYPE_CHECKING``), nor between the subpackages;
- no module imports a private name (``_x``) of another module or package, neither by
  ``from onnx_zip.a import _b`` nor as ``a._b`` on an imported module.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "onnx_zip"
MAX_FUNCTION_LINES = 80


@dataclass
class Module:
    """One source file of the package: its dotted name, path and parsed tree."""

    name: str
    path: Path
    tree: ast.Module
    is_package: bool
    imports: set[str] = field(default_factory=set)  # dotted names of the package's modules it imports


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _load_modules() -> dict[str, Module]:
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        name, is_package = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        modules[name] = Module(name, path, tree, is_package)
    return modules


MODULES = _load_modules()


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    """The absolute dotted name a ``from`` statement imports from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.name.split(".")
    if not module.is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imported_names(module: Module) -> list[tuple[str, int]]:
    """Every dotted name the module imports (``from a import b`` gives ``a.b``), with its line.

    ``from package import submodule`` imports the submodule (the package is then being initialised
    already or is initialised on the way), so it is an edge to the submodule only."""
    names = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            source = _absolute(module, node)
            names += [(source if alias.name == "*" else f"{source}.{alias.name}", node.lineno) for alias in node.names]
    return names


def _target_module(dotted: str) -> str | None:
    """The package module a dotted import name lands in (the longest prefix that is a module)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return None


def _import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module in MODULES.values():
        targets = {_target_module(name) for name, _ in _imported_names(module)}
        graph[module.name] = {t for t in targets if t is not None and t != module.name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def _is_private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _private_owner(dotted: str) -> str | None:
    """For a dotted name with a private part, the module or package that owns it (the prefix before)."""
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if _is_private(part):
            return ".".join(parts[:i])
    return None


def _module_aliases(module: Module) -> dict[str, str]:
    """Local names bound to package modules by import statements: local name -> dotted module name."""
    aliases = {}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    root = alias.name.split(".")[0]
                    aliases[root] = root
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            source = _absolute(module, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
    return aliases


def _dotted(node: ast.expr) -> list[str] | None:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else base + [node.attr]
    return None


def _private_uses(module: Module) -> list[tuple[str, int]]:
    """Dotted names of private objects of the package that the module imports or reads off a module."""
    uses = [(name, line) for name, line in _imported_names(module) if name.startswith("onnx_zip.")]
    aliases = _module_aliases(module)
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Attribute):
            chain = _dotted(node)
            if chain and chain[0] in aliases:
                uses.append((".".join([aliases[chain[0]], *chain[1:]]), node.lineno))
    found = []
    for dotted, line in uses:
        owner = _private_owner(dotted)
        inside = owner is not None and (module.name == owner or module.name.startswith(owner + "."))
        if owner is not None and dotted.startswith("onnx_zip.") and not inside:
            found.append((dotted, line))
    return sorted(set(found), key=lambda item: item[1])


def _where(module: Module, line: int) -> str:
    return f"{module.path.relative_to(PACKAGE_DIR.parent)}:{line}"


def test_the_checker_sees_the_package():
    assert len(MODULES) > 50
    assert "onnx_zip.pipeline.stages" in MODULES and MODULES["onnx_zip.pipeline"].is_package


def test_no_function_longer_than_80_lines():
    too_long = []
    for module in MODULES.values():
        for node in ast.walk(module.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{_where(module, node.lineno)} {node.name} ({lines} lines)")
    assert not too_long, "functions over 80 lines:\n" + "\n".join(too_long)


def test_no_import_cycle_between_modules():
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_import_cycle_between_subpackages():
    """``onnx_zip.zipper``, ``onnx_zip.pipeline``, ``onnx_zip.finetune``, ... (and the top-level modules)
    depend on each other one way only."""
    def unit(name: str) -> str:
        return ".".join(name.split(".")[:2])

    graph: dict[str, set[str]] = {}
    for source, targets in _import_graph().items():
        graph.setdefault(unit(source), set()).update(unit(t) for t in targets if unit(t) != unit(source))
    cycles = _cycles(graph)
    assert not cycles, "import cycles between subpackages:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_module_imports_a_private_name_of_another():
    found = []
    for module in MODULES.values():
        found += [f"{_where(module, line)} {name}" for name, line in _private_uses(module)]
    assert not found, "private names used outside their module or package:\n" + "\n".join(found)


def test_the_checker_finds_what_it_looks_for():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _private_owner("onnx_zip.mtz._checks.check") == "onnx_zip.mtz"
    assert _private_owner("onnx_zip.zipper.plan._helper") == "onnx_zip.zipper.plan"
    assert _private_owner("onnx_zip.__version__") is None
    fake = Module("onnx_zip.zipper.fake", PACKAGE_DIR / "zipper" / "fake.py", ast.parse(
        "from onnx_zip.zipper import plan\n"
        "from onnx_zip.zipper.plan import _helper\n"
        "from . import rewrite\n"
        "def f():\n"
        "    return plan._other, rewrite.build_zipped_model\n"
    ), False)
    assert [name for name, _ in _private_uses(fake)] == [
        "onnx_zip.zipper.plan._helper", "onnx_zip.zipper.plan._other",
    ]
