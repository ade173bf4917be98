"""The runtime core stands apart from the surfaces and the tooling, and no module imports in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "mlx_spec"


def imports_of(path: Path) -> set[str]:
    """mlx_spec modules a file imports (at module level or inside functions), as dotted names."""
    package = ".".join(("mlx_spec", *path.relative_to(ROOT).with_suffix("").parts))
    if path.name == "__init__.py":
        package = package.rsplit(".", 1)[0] + ".__init__"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: -node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("mlx_spec"):
                for alias in node.names:
                    sub = f"{name}.{alias.name}"
                    module = ROOT.parent / sub.replace(".", "/")
                    out.add(sub if module.with_suffix(".py").exists() or module.is_dir() else name)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("mlx_spec")}
    return {m.removesuffix(".__init__") for m in out}


def modules() -> dict[str, set[str]]:
    graph = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(("mlx_spec", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
        graph[name] = imports_of(path)
    return graph


def test_core_imports_only_the_core():
    for name, deps in modules().items():
        if name.startswith("mlx_spec.core"):
            outside = {d for d in deps if not d.startswith("mlx_spec.core")}
            assert not outside, f"{name} imports {outside}"


def test_no_import_cycles():
    graph = modules()
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for dep in graph.get(node, ()):
            if dep not in graph or dep == node:
                continue
            assert state.get(dep) != 1, "import cycle: " + " -> ".join(path + [dep])
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert len(graph) > 20  # the walk saw the package


def test_the_old_bench_peers_cycle_is_gone():
    graph = modules()
    assert "mlx_spec.tools.bench" not in graph["mlx_spec.tools.peers"]
