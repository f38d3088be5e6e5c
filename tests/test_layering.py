"""Imports in src/paradec point down the layers, never up, and no modules import each other in a
circle. The layers are the README's layout section, bottom first; a module may import its own
package and any package of a lower layer, never one of the same layer or above.

Every import counts, including those inside functions (a lazy import still couples the code)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "paradec"

LAYERS: list[set[str]] = [
    {"errors"},  # the core, flat modules: ordered by what they use
    {"outpath", "interrupt", "version", "sampling", "stats", "tree", "cache", "prefix", "suites"},
    {"params", "verify"},
    {"options"},
    {"models"},
    {"structured"},
    {"distill"},
    {"dllm"},
    {"convert", "heads"},
    {"proposers"},
    {"decode"},
    {"engine"},
    {"server"},
    {"bench"},
    {"demo"},
    {"cli"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def module_name(path: Path) -> str:
    parts = ("paradec",) + path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The paradec modules ``path`` imports (absolute names; a ``from pkg import name`` counts
    as importing ``pkg.name`` when that is a module, else ``pkg``)."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "paradec")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "paradec":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if is_module(sub) else target)
    return out


def is_module(name: str) -> bool:
    p = SRC.joinpath(*name.split(".")[1:])
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "paradec"


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(SRC.rglob("*.py"))}


def test_every_package_has_a_layer():
    tops = {top(m) for m in graph()} - {"paradec"}
    assert tops <= set(RANK), f"packages without a layer (add them to LAYERS and the README): {sorted(tops - set(RANK))}"


def upward(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, targets in g.items():
        a = top(mod)
        if a == "paradec":  # the package's __init__: the public API, on top of everything
            continue
        for t in targets:
            b = top(t)
            if b == "paradec":
                bad.append(f"{mod} imports the package root ({t}): import the module that defines the name")
            elif b != a and RANK[b] >= RANK[a]:
                bad.append(f"{mod} -> {t} ({a} is layer {RANK[a]}, {b} is layer {RANK[b]})")
    return sorted(bad)


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), where importing a module
    also runs its packages' ``__init__`` (so importing a sibling's package counts)."""
    edges = {m: set() for m in g}
    for m, ts in g.items():
        for t in ts:
            parts = t.split(".")
            for i in range(2, len(parts) + 1):
                dep = ".".join(parts[:i])
                if dep in edges and dep != m and not m.startswith(dep + "."):
                    edges[m].add(dep)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_upward_import():
    bad = upward(graph())
    assert not bad, "imports that point up the layers:\n" + "\n".join(bad)


def test_no_import_circle():
    found = cycles(graph())
    assert not found, "modules that import each other in a circle:\n" + "\n".join(" <-> ".join(c) for c in found)


# The checks themselves can fail: each catches a planted violation.
@pytest.mark.parametrize(
    "planted, check",
    [
        ({"paradec.models.loader": {"paradec.engine"}}, upward),
        ({"paradec.heads.model": {"paradec.convert.train"}}, upward),  # same layer
        ({"paradec.server.app": {"paradec.cli"}}, upward),
    ],
)
def test_upward_check_catches_a_planted_import(planted, check):
    g = graph()
    for mod, ts in planted.items():
        g[mod] = g[mod] | ts
    assert check(g)


def test_circle_check_catches_a_planted_circle():
    g = graph()
    g["paradec.tree"] = g["paradec.tree"] | {"paradec.verify"}  # verify imports tree
    assert any({"paradec.tree", "paradec.verify"} <= set(c) for c in cycles(g))
