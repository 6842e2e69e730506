"""The import arrows of ``edgesmith/``: no cycle between files, and every import points down the layers.

The layers are ARCHITECTURE.md's, top to bottom. Every import counts, also one inside a function (a lazy
import is still an arrow); only ``if TYPE_CHECKING:`` blocks are left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "edgesmith"

# Top to bottom; an entry names a top-level module or package of edgesmith. One line is one layer:
# files of one layer may import each other (without a cycle).
LAYERS = [
    ["cli"],
    ["pipeline", "examples"],
    ["api"],
    ["dolphin"],
    ["optimize"],
    ["export"],
    ["profiles"],
    ["runtimes"],
    ["models", "data", "eval", "training", "kernels"],
    ["devices"],
    ["bundle", "parity", "specs", "options", "registry", "errors", "arrays", "units", "quiet", "__init__"],
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = ["edgesmith", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The module file a dotted name lives in (``edgesmith.a.b.C`` -> ``edgesmith.a.b``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _skip_type_checking(tree: ast.AST) -> list[ast.AST]:
    nodes, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        nodes.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return nodes


def _imports(module: str) -> dict[str, int]:
    """The edgesmith module files ``module`` imports, each with the line of its first import."""
    found: dict[str, int] = {}
    for node in _skip_type_checking(ast.parse(MODULES[module].read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{module}: relative import on line {node.lineno}; edgesmith imports absolutely")
        for name in names:
            if name.split(".")[0] != "edgesmith":
                continue
            target = _owner(name)
            if target and target != module:
                found.setdefault(target, node.lineno)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def _layer(module: str) -> int:
    parts = module.split(".")
    return RANK[parts[1] if len(parts) > 1 else "__init__"]


def test_every_module_has_a_layer():
    assert not [m for m in MODULES if (m.split(".") + ["__init__"])[1] not in RANK]


def test_no_import_cycle_between_files():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(MODULES):
        if module not in index:
            visit(module)
    described = [" <-> ".join(c) + "\n    " + "\n    ".join(
        f"{a} -> {b} (line {GRAPH[a][b]})" for a in c for b in c if b in GRAPH[a]) for c in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(described)


def test_imports_point_down_the_layers():
    upward = [f"{a} (layer {LAYERS[_layer(a)]}) imports {b} (layer {LAYERS[_layer(b)]}) on line {line}"
              for a, targets in sorted(GRAPH.items()) for b, line in targets.items() if _layer(b) < _layer(a)]
    assert not upward, "imports pointing up:\n" + "\n".join(upward)


@pytest.mark.parametrize("heavy", ["torch", "transformers", "coremltools", "mlx", "hls4ml", "onnx"])
def test_runtimes_never_import_the_build_stack(heavy):
    """``runtimes/`` ships to a device: no torch (except the torch runtime itself), no exporters."""
    offenders = []
    for module, path in MODULES.items():
        if not module.startswith("edgesmith.runtimes") or module == "edgesmith.runtimes.torch":
            continue
        for node in _skip_type_checking(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            if any(n == heavy or n.startswith(heavy + ".") for n in names):
                if not (heavy == "mlx" and module == "edgesmith.runtimes.mlx") and not (
                        heavy == "coremltools" and module.startswith("edgesmith.runtimes.coreml")):
                    offenders.append(f"{module} line {node.lineno}")
    assert not offenders, f"{heavy} imported by the device-side runtimes: {offenders}"


def test_no_file_over_the_line_limit():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (split by job, not by count): {long}"
