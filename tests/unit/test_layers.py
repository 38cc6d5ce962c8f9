"""The package's layers, read from the source: no import cycles, and no import from a lower layer to a higher one
(imports inside functions count too — a lazy import does not make a cycle go away). The layers are the README's
("Code layout"); a new top-level module or package must be placed in one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "shelfwise"

# lowest first; a module belongs to the layer of its longest matching prefix
LAYERS: list[tuple[str, ...]] = [
    ("domain", "settings"),
    ("items", "request", "stores", "synthetic", "console", "observability"),
    ("importers", "retrieval", "content"),
    ("ranking", "rerank", "rules", "privacy", "cache", "security", "experiments"),
    ("stages",),
    ("pipeline", "assemble"),
    ("training",),
    ("service", "evaluation", "worker", "monitor", "release", "campaigns"),
    ("api", "cli", "rules.cli", "security.cli", "experiments.cli", "monitor.cli", "release_cli", "campaigns.cli"),
]


def modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = ("shelfwise",) + p.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the shelfwise modules it imports (``from pkg import sub`` imports both pkg and pkg.sub)."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                # importing a.b.c runs a and a.b first
                parts = t.split(".")
                for i in range(2, len(parts) + 1):
                    prefix = ".".join(parts[:i])
                    if prefix in mods and prefix != name and not name.startswith(prefix + "."):
                        edges[name].add(prefix)
    return edges


def layer_of(module: str) -> int:
    rel = module.removeprefix("shelfwise.")
    best, layer = -1, None
    for i, names in enumerate(LAYERS):
        for n in names:
            if (rel == n or rel.startswith(n + ".")) and len(n) > best:
                best, layer = len(n), i
    if layer is None:
        raise AssertionError(f"{module} is in no layer: place it in LAYERS and the README's Code layout")
    return layer


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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


def test_no_import_cycles():
    assert cycles(imports(modules())) == []


def test_no_import_from_a_lower_layer_to_a_higher_one():
    mods = modules()
    wrong = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
             for a, targets in imports(mods).items() if a != "shelfwise" for b in sorted(targets)
             if b != "shelfwise" and layer_of(b) > layer_of(a)]
    assert wrong == []


def test_the_checks_can_fail():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of("shelfwise.rules.cli") > layer_of("shelfwise.rules.compile") > layer_of("shelfwise.request")
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("shelfwise.nowhere")
