"""The source tree's shape: no import circle among the project's modules, no module in ``iom/``
over ~500 lines, and the old ``iom.service`` paths forwarding to their new homes for one release."""

from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("arcface", "iom")
MAX_LINES = 520                     # "about 500": a module one reader can hold


def project_modules() -> dict[str, Path]:
    """``{dotted name: file}`` of every module of the project's packages."""
    out = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports, at the top or inside a function (a lazy import
    closes a circle as surely as a top-level one, only later)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:         # a name inside a module → the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def test_the_circle_finder_finds_a_circle_and_only_circles():
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_circles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
    assert sorted(import_circles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}})) == [["a", "b"], ["c", "d"]]


def test_no_import_circle_anywhere():
    modules = project_modules()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert "iom.store.base" in graph["iom.store.sqlite"]                 # the graph sees real imports
    assert import_circles(graph) == []


def test_no_module_in_iom_over_about_500_lines():
    long = {str(p.relative_to(REPO)): n for p in (REPO / "iom").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_a_base_never_imports_its_implementations():
    modules = project_modules()
    assert not {m for m in imports_of("iom.store.base", modules["iom.store.base"], modules)
                if m.startswith(("iom.store.sqlite", "iom.store.postgres", "iom.store.factory"))}


@pytest.mark.parametrize("old", sorted(importlib.import_module("iom._moved").MOVED))
def test_old_paths_forward_with_a_deprecation_warning(old):
    from iom._moved import MOVED

    new = importlib.import_module(MOVED[old])
    public = next(n for n in sorted(vars(new)) if not n.startswith("_") and getattr(new, n) is not None
                  and getattr(getattr(new, n), "__module__", None) == new.__name__)
    shim = importlib.import_module(old)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert getattr(shim, public) is getattr(new, public)
    assert [w.category for w in caught] == [DeprecationWarning] and MOVED[old] in str(caught[0].message)
    with pytest.raises(AttributeError):
        getattr(shim, "no_such_name_anywhere")
