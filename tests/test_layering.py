"""The package's layering: dependencies point down through five floors, with no import cycles, also not through
imports inside functions. Every module of the package has a floor; a new one must be given one here."""
from __future__ import annotations

import ast
from pathlib import Path

import stackbench

PACKAGE = Path(stackbench.__file__).resolve().parent

# Top to bottom. A module may import modules of its own floor or of a lower one, never of a higher one. A name
# stands for the module and everything under it; the longest name that matches decides.
FLOORS = {
    "commands": ("cli", "__main__", "commands", "api"),
    "jobs": ("demo", "leaderboard", "hub.upload", "report", "rates"),
    "engines": ("evaluate", "train", "training", "generate", "theory"),
    "parts": ("methods", "isolation", "models", "sources", "datafolder", "figures", "theory_figures", "present",
              "cards", "axes", "standings", "hub", "hub.fetch"),
    "ground": ("", "wall", "metrics", "records", "refs", "errors", "constants", "versions", "progress", "resources",
               "cpu"),
}
RANK = {floor: i for i, floor in enumerate(reversed(FLOORS))}  # ground 0 ... commands 4
# Ground modules that import nothing of the package at all.
STANDALONE = ("metrics", "wall", "constants", "cpu")


def module_names() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if "_data" in parts:
            continue
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def floor_of(name: str) -> str | None:
    best = None
    for floor, prefixes in FLOORS.items():
        for p in prefixes:
            if (name == p or name.startswith(p + ".") or p == "") and (best is None or len(p) > len(best[1])):
                best = (floor, p)
    return best[0] if best else None


def imports_of(name: str, path: Path, modules, with_unresolved: bool = False):
    """The package modules `name` imports anywhere in its file, as names relative to the package ('' is the
    package itself). Importing a.b from outside package a also runs a's __init__: that edge counts too."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if name else []
    base_pkg = here if is_pkg else here[:-1]
    found, unresolved = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name == "stackbench" or a.name.startswith("stackbench.")]
            targets = [t.split(".", 1)[1] if "." in t else "" for t in targets]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                up = base_pkg[:len(base_pkg) - node.level + 1]
                mod = ".".join(up + ([node.module] if node.module else []))
            elif node.module and (node.module == "stackbench" or node.module.startswith("stackbench.")):
                mod = node.module.split(".", 1)[1] if "." in node.module else ""
            else:
                continue
            subs = [f"{mod}.{a.name}".lstrip(".") for a in node.names]
            targets = [s for s in subs if s in modules] + ([mod] if any(s not in modules for s in subs) else [])
        else:
            continue
        for t in targets:
            if t not in modules:
                unresolved.add(t)
            while t not in modules and "." in t:
                t = t.rsplit(".", 1)[0]
            t = t if t in modules else ""
            parts = t.split(".") if t else []
            for i in range(1, len(parts)):  # parent packages run first; from inside a package they already ran
                parent = ".".join(parts[:i])
                if not (name == parent or name.startswith(parent + ".")):
                    found.add(parent)
            found.add(t)
    found.discard(name)
    return (found, unresolved) if with_unresolved else found


def graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
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

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_floor():
    assert [m for m in module_names() if floor_of(m) is None] == []


def test_dependencies_point_down():
    upward = [f"{m} ({floor_of(m)}) imports {t} ({floor_of(t)})" for m, targets in graph().items()
              for t in sorted(targets) if RANK[floor_of(t)] > RANK[floor_of(m)]]
    assert upward == []


def test_every_import_of_the_package_names_a_module():
    # `from .models import x` in a sub-package names a module that is not there: an ImportError at run time
    modules = module_names()
    missing = {m: sorted(imports_of(m, p, modules, with_unresolved=True)[1]) for m, p in modules.items()}
    assert {m: v for m, v in missing.items() if v} == {}


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_standalone_modules_import_nothing_of_the_package():
    g = graph()
    assert {m: sorted(g[m]) for m in STANDALONE if g[m]} == {}


def test_the_checks_catch_what_they_are_for():
    # A cycle through a function-level import, an upward import and a package __init__ are all seen.
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    modules = module_names()
    assert "evaluate" in imports_of("demo", modules["demo"], modules)
    assert floor_of("leaderboard") == "jobs" and floor_of("methods.factory") == "parts" and floor_of("") == "ground"
    assert "hub" in imports_of("models.loading", modules["models.loading"], modules)
