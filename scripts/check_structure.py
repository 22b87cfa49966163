"""The package's shape, checked in `make lint`: no module over 500 lines, no function over 60, no import cycle
between the package's modules (module-level imports)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "behavior_spark"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 500, 60


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.Module, package: str) -> set[str]:
    """The package's modules this module imports at its top level (not inside functions)."""
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith(package)}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(package):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, if there is any (depth-first search)."""
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt] if nxt in path else [*path, nxt]
            if nxt in graph and nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def problems() -> list[str]:
    found, graph = [], {}
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        tree = ast.parse(text)
        name = module_name(path)
        if (lines := len(text.splitlines())) > MAX_MODULE_LINES:
            found.append(f"{name}: {lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{name}.{node.name}: {length} lines (at most {MAX_FUNCTION_LINES})")
        graph[name] = imports(tree, PACKAGE.name)
    # a package's __init__ importing its own submodules is how a package shows its parts, not a cycle
    modules = set(graph)
    graph = {m: {i for i in targets if i in modules and not m.startswith(i + ".")} for m, targets in graph.items()}
    if loop := cycle(graph):
        found.append("import cycle: " + " -> ".join(loop))
    return found


if __name__ == "__main__":
    if found := problems():
        sys.exit("\n".join(found))
