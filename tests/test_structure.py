"""The package's rooms, read from the source with ``ast``: no import cycles, and models that know no file format.

Every ``import xpsr_jax...`` and ``from ... import`` counts, at module level and inside functions alike: an import
moved into a function hides a cycle from Python but not from this test. Nothing is imported or compiled here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "xpsr_jax"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def _module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package (``pkg/__init__.py`` is ``pkg``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that ``module`` imports anywhere in its source.

    ``from a.b import c`` names module ``a.b.c`` when that is a module of the package, else ``a.b`` itself. A
    parent package imported only implicitly (``a`` for ``a.b``) is no edge: an ``__init__`` that loads its
    submodules lazily is not part of a cycle.
    """
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # A relative import counts from the module's package (a package's __init__ is its own package).
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
    out.discard(module)
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package modules it imports (only modules that exist as files)."""
    files = _module_files(root)
    known = set(files)
    return {m: {t for t in _imports_of(m, p, known) if t in known} for m, p in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None. Depth-first search with the current path on a stack."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        stack, on_path = [(start, iter(sorted(graph[start])))], [start]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                on_path.pop()
                done.add(node)
            elif child in on_path:
                return on_path[on_path.index(child):] + [child]
            elif child not in done:
                stack.append((child, iter(sorted(graph[child]))))
                on_path.append(child)
    return None


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_graph_sees_function_level_and_relative_imports(graph):
    # The graph must see what it is meant to see, or the two tests below pass vacuously.
    assert len(graph) > 50
    assert "xpsr_jax.models.xpsr" in graph["xpsr_jax.train.models"] | graph["xpsr_jax.weights.xpsr_convert"]
    assert "xpsr_jax.eval.evaluate" in graph["xpsr_jax.eval.report"]  # `from .evaluate import ...`
    assert "xpsr_jax.demo_stages" in graph["xpsr_jax.demo"]  # imported inside a function


def test_find_cycle_names_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert all_cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}) == [["a", "b", "a"], ["c", "d", "c"]]


def all_cycles(graph: dict[str, set[str]], limit: int = 20) -> list[list[str]]:
    """Cycles found one at a time, dropping each one's closing edge before looking again (names each at least once
    for up to ``limit`` of them)."""
    graph = {m: set(t) for m, t in graph.items()}
    cycles = []
    while len(cycles) < limit and (cycle := find_cycle(graph)) is not None:
        cycles.append(cycle)
        graph[cycle[-2]].discard(cycle[-1])
    return cycles


def test_no_import_cycles(graph):
    cycles = all_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_models_import_only_nn_and_models(graph):
    allowed = ("xpsr_jax.nn", "xpsr_jax.models")
    offenders = {
        f"{m} imports {t}"
        for m, targets in graph.items() if m.startswith("xpsr_jax.models")
        for t in targets if not any(t == a or t.startswith(a + ".") for a in allowed)
    }
    assert not offenders, "models/ reaches outside nn/ and models/: " + "; ".join(sorted(offenders))


def test_nn_imports_only_nn(graph):
    offenders = {f"{m} imports {t}" for m, targets in graph.items() if m.startswith("xpsr_jax.nn")
                 for t in targets if not t.startswith("xpsr_jax.nn")}
    assert not offenders, "nn/ reaches outside nn/: " + "; ".join(sorted(offenders))
