"""petkit's imports point down (DESIGN.md, Layout): the CLI sits on top, and nothing imports in a cycle.

The graph is built from the source, not from a running interpreter, so an import hidden inside a
function counts as much as one at the top of a module. Every `import x`, `from x import y` and
relative import, at any depth of any module under `petkit/`, is an edge from the importing module
to the petkit module it names: `from petkit.a import b` goes to `petkit.a.b` when that is a module,
else to `petkit.a`.

Packages. Python runs every parent package's `__init__` before a submodule, so strictly every
`import petkit.core.model` also imports `petkit/__init__.py`, which imports (nearly) everything: with
those edges every module would sit in one cycle and the graph would say nothing. A package's
`__init__` is a facade that re-exports what lies below it, so we count an edge to a package only
where a module names the package itself (`import petkit`, `from petkit import adapt`,
`from petkit.train import evaluate`); such an edge then stands for everything the `__init__` imports.
`test_package_inits_import_only_their_own_package` keeps the facades honest: an `__init__` that
imported from outside its package could close a cycle these rules do not see. A package `__init__`
that imports its modules by computed name (`importlib.import_module`, as `petkit/methods/__init__.py`
does to find every method file) is counted as importing every module of the package;
`importlib.import_module("petkit.x")` with a written-out name counts as `import petkit.x`.

The method registry. `core/registry.py` is filled by the method modules: each one calls
`register(...)` when it is imported and so imports the registry. The registry therefore must not
import the methods (it used to import `petkit.methods` lazily on first lookup: a cycle). Instead
whoever imports `petkit.methods` fills it, and `petkit/__init__.py` does so; since Python runs
`petkit/__init__.py` before any `petkit.*` module, every built-in method is registered before any
code outside petkit's own import can look one up (`test_registry_is_full_after_any_import`).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import petkit

ROOT = Path(petkit.__file__).parent
CLI = ("petkit.cli", "petkit.__main__")


def module_names() -> dict[str, Path]:
    """Dotted name -> file for every module under petkit/ (a package is named by its __init__)."""
    names = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _resolve(module: str, level: int, name: str | None, is_package: bool) -> str:
    """The absolute name `from <level dots><name> import ...` refers to inside `module`."""
    if level == 0:
        return name or ""
    base = module.split(".")
    base = base[: len(base) - level + (1 if is_package else 0)]
    return ".".join(base + ([name] if name else []))


def _target(name: str, modules: dict) -> str | None:
    """The petkit module an import of `name` runs: the longest prefix that is a module."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in modules:
            return ".".join(parts[:i])
    return None


def _import_module_calls(tree: ast.Module) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"]


def import_graph() -> dict[str, set[str]]:
    """petkit module -> the petkit modules it imports (anywhere in its body)."""
    modules = module_names()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(module, node.level, node.module, is_package)
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    names.append(sub if sub in modules else source)
        for call in _import_module_calls(tree):
            first = call.args[0] if call.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names.append(first.value)  # importlib.import_module("petkit.x"): as `import petkit.x`
            elif is_package:  # a computed name: count every module of the package
                names += [m for m in modules if m.startswith(module + ".")]
        for name in names:
            target = _target(name, modules)
            if target is not None and target != module:
                graph[module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A short import cycle as [a, b, ..., a], or None: depth-first search finds a cycle, then
    breadth-first search the shortest way back to each of its modules; the shortest is reported."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return min((_shortest_cycle(graph, m) for m in path[path.index(nxt):]), key=len)
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def _shortest_cycle(graph: dict[str, set[str]], node: str) -> list[str]:
    came_from: dict[str, str] = {}
    queue = [node]
    for current in queue:
        for nxt in sorted(graph[current]):
            if nxt == node:
                cycle = [current]
                while cycle[-1] != node:
                    cycle.append(came_from[cycle[-1]])
                return [node, *reversed(cycle[:-1]), node] if len(cycle) > 1 else [node, current, node]
            if nxt not in came_from:
                came_from[nxt] = current
                queue.append(nxt)
    raise AssertionError(f"{node} is on no cycle")


def _in(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_nothing_below_the_cli_imports_it():
    graph = import_graph()
    bad = sorted(f"{m} -> {t}" for m, targets in graph.items() if not _in(m, CLI)
                 for t in targets if _in(t, ("petkit.cli",)))
    assert not bad, "the CLI sits on top and nothing imports it; found:\n" + "\n".join(bad)


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, ("import cycle (fix it where it starts: move the shared piece down): "
                           + " -> ".join(cycle or []))


def test_package_inits_import_only_their_own_package():
    graph, modules = import_graph(), module_names()
    bad = sorted(f"{p} -> {t}" for p, path in modules.items() if path.name == "__init__.py"
                 for t in graph[p] if not t.startswith(p + "."))
    assert not bad, "a package __init__ re-exports its own modules only; found:\n" + "\n".join(bad)


def test_registry_is_full_after_any_import():
    # A fresh interpreter that imports the registry module alone still finds every built-in method.
    code = ("import sys; from petkit.core.registry import all_methods, get_method; "
            "get_method('lora'); print(len(all_methods()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == len(petkit.all_methods()) > 20


def test_the_walk_sees_every_kind_of_import():
    graph = import_graph()
    assert "petkit.core.registry" in graph["petkit.methods.lora"]              # from x import y (absolute)
    assert "petkit.train.evaluate" in graph["petkit.train"]                    # from .x import y (relative)
    assert {"petkit.methods.lora", "petkit.methods.ia3"} <= graph["petkit.methods"]  # computed imports
    assert "petkit.cli.main" in graph["petkit.__main__"]
