"""The package's imports point one way, read from its source (module level and inside functions):

    basics (errors, files, seeds, devices) < models, dataset < kernels, export < engine
        < training, benchmark < eval < demo < cli

A layer imports only the layers below it and itself (models and dataset, kernels and export
know nothing of each other), no modules import each other in a circle, and an import of the package's own modules is
deferred into a function only where its line (or the comment line above it) names the heavy or
optional package it keeps from loading: `# heavy: torch` or `# optional: ray`."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "t2i_engine"
BASICS = {"errors", "files", "seeds", "devices"}
RANK = {
    "basics": 0,
    "models": 1,
    "dataset": 1,
    "kernels": 2,
    "export": 2,
    "engine": 3,
    "training": 4,
    "benchmark": 4,
    "eval": 5,
    "demo": 6,
    "cli": 7,
}
DEFERRAL_REASONS = ("# heavy:", "# optional:")


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in BASICS:
        return "basics"
    return parts[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(module: str) -> bool:
    base = PACKAGE.parent.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _targets(node: ast.ImportFrom | ast.Import, here: str, is_package: bool) -> list[str]:
    """The package modules an import statement loads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "t2i_engine"]
    if node.level:
        base = here.split(".") if is_package else here.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    if module.split(".")[0] != "t2i_engine":
        return []
    # `from . import manifest` loads the submodule; `from .x import name` loads x
    subs = [f"{module}.{a.name}" for a in node.names if _exists(f"{module}.{a.name}")]
    return subs or [module]


def read_imports() -> tuple[dict[str, set[str]], list[str]]:
    """(module -> the package modules it imports anywhere, deferred imports without a reason)."""
    graph: dict[str, set[str]] = {}
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _module_name(path)
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        tree = ast.parse(source)
        graph[here] = set()
        deferred = {
            id(n)
            for f in ast.walk(tree)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f)
        }
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets = _targets(node, here, path.name == "__init__.py")
            graph[here].update(targets)
            if targets and id(node) in deferred and not _has_reason(lines, node.lineno - 1):
                unexplained.append(
                    f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {lines[node.lineno - 1].strip()}"
                )
    return graph, unexplained


def _has_reason(lines: list[str], index: int) -> bool:
    """The import's own line, or the comment line(s) above its block of imports, give a reason."""
    if any(r in lines[index] for r in DEFERRAL_REASONS):
        return True
    i = index - 1
    while i >= 0 and lines[i].strip().startswith(("from ", "import ")):
        i -= 1
    return i >= 0 and lines[i].strip().startswith("#") and any(r in lines[i] for r in DEFERRAL_REASONS)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, targets in sorted(graph.items()):
        mine = layer(module)
        for target in sorted(targets):
            theirs = layer(target)
            if theirs != mine and RANK[theirs] >= RANK[mine]:
                out.append(f"{module} ({mine}) imports {target} ({theirs})")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_import_points_down_the_layers():
    graph, _ = read_imports()
    assert set(map(layer, graph)) == set(RANK), "a package folder the layer map does not know"
    assert layer_violations(graph) == []


def test_no_modules_import_each_other_in_a_circle():
    graph, _ = read_imports()
    assert cycles(graph) == []


def test_the_package_defers_its_own_imports_only_for_heavy_or_optional_packages():
    _, unexplained = read_imports()
    assert unexplained == [], "\n".join(unexplained)


def test_the_checks_catch_a_planted_upward_import_and_a_circle():
    graph, _ = read_imports()
    planted = {k: set(v) for k, v in graph.items()}
    planted["t2i_engine.models.registry"].add("t2i_engine.engine.run")  # models reaching up into engine
    assert layer_violations(planted) == ["t2i_engine.models.registry (models) imports t2i_engine.engine.run (engine)"]
    assert any("t2i_engine.models.registry" in c and "t2i_engine.engine.run" in c for c in cycles(planted))
    sideways = {"t2i_engine.kernels.routing": {"t2i_engine.export.build"}}  # one layer, two packages
    assert layer_violations(sideways) == [
        "t2i_engine.kernels.routing (kernels) imports t2i_engine.export.build (export)"
    ]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_cli_loads_without_torch():
    """`--help` and bad flags answer at once: the CLI module and what it imports at the top
    (recipes, registry, errors) load no torch, diffusers or transformers."""
    import subprocess
    import sys

    check = "import sys, t2i_engine.cli; print(sorted({'torch', 'diffusers', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
