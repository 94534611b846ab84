"""fused_se.bench and fused_se.perf share fused_se.workloads and import each other in one direction
only: bench hands --traffic, --host and --kernel-report to perf, and perf never imports bench."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

import fused_se

ROOT = pathlib.Path(fused_se.__file__).parent
PACKAGES = ("bench", "perf")


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
    """The fused_se modules a file imports, at the top or inside a function, as absolute names
    (a `from X import y` counts as X.y where X.y is a module of the tree, else X)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fused_se"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if not base.startswith("fused_se"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if _exists(sub) else base)
    return found


def _exists(module: str) -> bool:
    rel = pathlib.Path(*module.split(".")[1:])
    return (ROOT / rel).with_suffix(".py").exists() or (ROOT / rel / "__init__.py").exists()


def _graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).glob("*.py")] + [ROOT / "workloads.py"]
    return {_module_name(p): _imports(p) for p in files}


def test_perf_never_imports_bench():
    for module, imported in _graph().items():
        if module.startswith("fused_se.perf"):
            assert not {m for m in imported if m.startswith("fused_se.bench")}, module


def test_workloads_imports_neither_package():
    imported = _graph()["fused_se.workloads"]
    assert not {m for m in imported if m.startswith(("fused_se.bench", "fused_se.perf"))}


def test_the_import_graph_of_bench_and_perf_has_no_cycle():
    graph = _graph()
    # a package's __init__ runs before any of its modules: an edge into another package's module
    # is an edge into that package's __init__ too
    for module in list(graph):
        for imported in list(graph[module]):
            parent = imported.rpartition(".")[0]
            if parent in graph and not module.startswith(parent):
                graph[module].add(parent)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph or nxt == node:
                continue
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*trail, node, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


@pytest.mark.parametrize("order", [("bench", "perf"), ("perf", "bench")], ids=["bench-first", "perf-first"])
def test_fresh_imports_in_either_order(order):
    modules = {
        "bench": ["fused_se.bench", "fused_se.bench.cli", "fused_se.bench.e2e"],
        "perf": ["fused_se.perf.cli", "fused_se.perf.traffic", "fused_se.perf.host", "fused_se.perf.kernel_report"],
    }
    code = "; ".join(f"import {m}" for pkg in order for m in modules[pkg])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
