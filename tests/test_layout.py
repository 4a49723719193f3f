"""The package's import graph, read from the source (every import, also those inside functions): no cycles,
imports only downwards (layers and data <- models and lm <- hub <- train and interpret <- the CLI), and a family
file never imports another family file (what two families share lives in layers/ or a models/_*.py helper)."""
from __future__ import annotations

import ast
from pathlib import Path

import dcls_zoo

PACKAGE_ROOT = Path(dcls_zoo.__file__).resolve().parent

# first-level part of the package -> its level; a module may import only its own level's parts or lower ones
LEVELS = {
    "layers": 0, "data": 0, "cli_errors": 0,
    "models": 1, "lm": 1,
    "hub": 2,
    "train": 3, "interpret": 3,
    "cli": 4, "timm_script": 4,
}


def module_files() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE_ROOT.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    modules = module_files()

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                    target = f"{base}.{node.module}" if node.module else base
                else:
                    target = node.module or ""
                if not target.startswith("dcls_zoo"):
                    continue
                for alias in node.names:
                    # `from pkg import sub` imports the submodule `pkg.sub` when there is one
                    sub = f"{target}.{alias.name}"
                    found = sub if sub in modules else known(target)
                    if found and found != name:
                        graph[name].add(found)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("dcls_zoo"):
                        target = known(alias.name)
                        if target and target != name:
                            graph[name].add(target)
    return graph


def level_of(module: str) -> int | None:
    parts = module.split(".")
    return LEVELS.get(parts[1]) if len(parts) > 1 else None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read():
    graph = import_graph()
    # a few edges that must be there, so that a broken reader cannot pass the checks below
    assert "dcls_zoo.layers.dcls" in graph["dcls_zoo.models.dcls_convnext"] or any(
        t.startswith("dcls_zoo.layers") for t in graph["dcls_zoo.models.dcls_convnext"])
    assert any(t.startswith("dcls_zoo.models") for t in graph["dcls_zoo.hub.save"])
    assert all(level_of(m) is not None for m in graph if m != "dcls_zoo"), \
        sorted(m for m in graph if m != "dcls_zoo" and level_of(m) is None)


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_a_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_go_downwards_only():
    upward = [f"{m} -> {t}" for m, targets in import_graph().items() for t in targets
              if level_of(m) is not None and level_of(t) is not None and level_of(t) > level_of(m)]
    assert upward == []


def test_family_files_do_not_import_each_other():
    def is_family(module: str) -> bool:
        return module.startswith("dcls_zoo.models.") and not module.rpartition(".")[2].startswith("_")

    crossing = [f"{m} -> {t}" for m, targets in import_graph().items() if is_family(m)
                for t in targets if is_family(t)]
    assert crossing == []
