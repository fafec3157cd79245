"""The package's import structure, read from its source: no module imports another that imports it
back (directly or around a longer loop), at module level or inside a function, so no import is
placed in a function to dodge a cycle; and every public module's ``__all__`` names only what the
module itself defines (a name lives in one module, and is imported from there)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def modules(root: Path = ROOT) -> dict:
    """``{dotted name: path}`` of every module of the package."""
    out = {}
    for path in (root / "emfl").rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imported(name: str, path: Path, mods: dict) -> set:
    """The package modules that module ``name`` imports anywhere in its source: ``from a.b import
    c`` counts as ``a.b.c`` when that is a module, else as ``a.b``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}" if base else pkg
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base)
    return {m for m in found if m in mods and m != name}


def cycles(graph: dict) -> list:
    """The strongly connected components with more than one module (Tarjan), or a self-loop."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_by_hand():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_the_import_reader_finds_a_cycle_placed_inside_a_function(tmp_path):
    pkg = tmp_path / "emfl"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from emfl.b import g\n")
    (pkg / "b.py").write_text("def g():\n    from emfl import a\n    return a\n")
    mods = modules(tmp_path)
    graph = {m: imported(m, p, mods) for m, p in mods.items()}
    assert graph["emfl.a"] == {"emfl.b"} and graph["emfl.b"] == {"emfl.a"}
    assert cycles(graph) == [["emfl.a", "emfl.b"]]


def test_no_import_cycles():
    mods = modules()
    graph = {m: imported(m, p, mods) for m, p in mods.items()}
    assert len(graph) > 40 and graph["emfl.nn.engine"]  # the reader sees the package
    assert cycles(graph) == []


def _own_names(tree: ast.Module) -> set:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def _all_of(tree: ast.Module):
    """The names ``__all__`` is given, and every name added to it with ``+=``."""
    names = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            names = list(ast.literal_eval(node.value))
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) and node.target.id == "__all__":
            names = (names or []) + list(ast.literal_eval(node.value))
    return names


@pytest.mark.parametrize("name", sorted(m for m, p in modules().items()
                                        if p.name != "__init__.py" and not p.name.startswith("_")))
def test_all_lists_the_modules_own_names(name):
    tree = ast.parse(modules()[name].read_text())
    names = _all_of(tree)
    assert names is not None, f"{name} has no __all__"
    assert [n for n in names if n not in _own_names(tree)] == [], f"{name}.__all__ lists names defined elsewhere"


def test_the_round_loop_the_runner_the_wire_and_flower_name_no_algorithm():
    """What a new algorithm needs is its module and a registry line: the round loop, the runner,
    the wire and the Flower apps know algorithms only through the protocol (their names appear
    nowhere there), and the wire and Flower know messages only as ``Message``."""
    import re

    from emfl.nn.algorithms import ALGORITHMS

    names = {n for n in ALGORITHMS} | {a.title.lower() for a in ALGORITHMS.values()}
    assert {"fedavg", "fedsparse", "feddrop", "scaffold"} <= names
    files = [ROOT / "emfl/nn/engine.py", ROOT / "emfl/nn/runner.py", ROOT / "emfl/nn/wire.py",
             *sorted((ROOT / "emfl/flower").glob("*.py"))]
    words = {f: {m for m in re.findall(r"[A-Za-z]+", f.read_text())} for f in files}
    found = {str(f.relative_to(ROOT)): sorted({m.lower() for m in w} & names) for f, w in words.items()}
    assert {f: n for f, n in found.items() if n} == {}
    from emfl.nn import messages

    kinds = {c.__name__ for c in messages.Message.kinds.values()}
    assert {"Dense", "GroupSparse", "Masked", "Bundle"} <= kinds
    wire_side = [f for f in files if "wire" in f.name or "flower" in str(f)]
    found = {str(f.relative_to(ROOT)): sorted(words[f] & kinds) for f in wire_side}
    assert {f: n for f, n in found.items() if n} == {}
