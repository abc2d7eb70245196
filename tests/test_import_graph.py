"""The import graph: no cycles inside studies/ or search/, and data flows one way
(spaces -> evaluators -> search -> studies). Every import that runs counts, module-level or
inside a function: two modules that import each other lazily are still one tangle. Imports
under ``if TYPE_CHECKING:`` (annotations only, never executed) do not count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"compsearch": "compsearch", "spaces": "compsearch.spaces", "evaluators": "compsearch.evaluators",
           "search": "compsearch.search", "studies": "compsearch.studies"}
#: package -> packages it must never import (the layering of the README's layout table)
FORBIDDEN = {
    "compsearch.spaces": ("compsearch.evaluators", "compsearch.search", "compsearch.studies"),
    "compsearch.evaluators": ("compsearch.search", "compsearch.studies"),
    "compsearch.search": ("compsearch.studies",),
}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if folder == "compsearch" and parts and parts[0] in ("spaces", "evaluators", "search", "studies"):
                continue
            out[".".join([package, *parts])] = path
    return out


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """Modules of ``known`` that ``path`` imports anywhere (the longest known prefix of each name)."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # drop the bodies of `if TYPE_CHECKING:` blocks
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    found = set()
    for name in names:
        parts = name.split(".")
        for k in range(len(parts), 0, -1):
            candidate = ".".join(parts[:k])
            if candidate in known and candidate != module:
                found.add(candidate)
                break
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(p, m, set(modules)) for m, p in modules.items()}


def _cycle(graph: dict[str, set[str]], within: str) -> list[str] | None:
    nodes = {m for m in graph if m.startswith(within)}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m] & nodes):
            if n.startswith(f"{m}.") or m.startswith(f"{n}.") and n == m.rpartition(".")[0]:
                continue  # a package and its own submodules
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(nodes):
        if m not in state and (found := visit(m)):
            return found
    return None


@pytest.mark.parametrize("package", ["compsearch.studies", "compsearch.search"])
def test_no_import_cycles(package: str) -> None:
    cycle = _cycle(_graph(), package)
    assert cycle is None, " -> ".join(cycle or [])


def test_data_flows_one_way() -> None:
    bad = [(m, n) for m, deps in _graph().items() for n in deps
           for pkg, banned in FORBIDDEN.items() if m.startswith(pkg) and n.startswith(banned)]
    assert bad == []


def test_the_graph_sees_lazy_imports() -> None:
    # runner imports the hosts (module level) and validate (inside run_study): both edges are found
    graph = _graph()
    assert {"compsearch.studies.hosts", "compsearch.studies.validate"} <= graph["compsearch.studies.runner"]
    assert "compsearch.studies.run" in graph["compsearch.studies.hosts.workers"]  # imported inside _worker_main
    assert "compsearch.studies.run" not in graph["compsearch.studies.progress"]  # only under TYPE_CHECKING
