"""The federated systems' registry and the shape of petkit.fed: which systems exist, what an unknown
name says, no dispatch on a system's name, imports that point down only."""

from __future__ import annotations

import ast
import dataclasses
import graphlib
from pathlib import Path

import pytest

from petkit.core.errors import ConfigError
from petkit.fed.job import FedJob
from petkit.fed.registry import all_systems, get_system

PETKIT = Path(__file__).resolve().parents[1] / "petkit"
FED = PETKIT / "fed"


def test_the_registry_holds_exactly_the_four_systems():
    assert [(s.name, s.title) for s in all_systems()] == [
        ("fedavg", "FedAvg"), ("fedprox", "FedProx"), ("pfedpg", "pFedPG"), ("sfprompt", "SFPrompt")]


def test_an_unknown_system_is_refused_with_the_known_names():
    for refuse in (lambda: get_system("fedsgd"), lambda: FedJob(system="fedsgd")):
        with pytest.raises(ConfigError, match="'fedsgd'") as info:
            refuse()
        assert all(name in str(info.value) for name in ("fedavg", "fedprox", "pfedpg", "sfprompt"))


def test_every_federated_setting_is_common_or_a_systems_own():
    owned = [name for s in all_systems() for name in s.settings]
    common = {"run", "system", "clients", "partition", "alpha", "rounds", "fraction", "local_steps", "batch_size",
              "lr", "faults"}
    fields = {f.name for f in dataclasses.fields(FedJob)}
    assert set(owned) | common == fields and not set(owned) & common


def test_old_names_still_work_with_a_warning():
    with pytest.warns(FutureWarning, match="partition"):
        assert FedJob(split="iid").partition == "iid"
    with pytest.warns(FutureWarning, match="fedavg"):
        assert FedJob.from_dict({"system": "fedpeft", "proximal_mu": 0.1}).system == "fedprox"
    assert FedJob().system == "fedavg" and FedJob(proximal_mu=0.1).system == "fedprox"
    with pytest.raises(ConfigError, match="fedprox"):
        FedJob(system="fedavg", proximal_mu=0.1)


def _modules(root: Path):
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(PETKIT.parent).with_suffix("").parts
        yield (".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)), path


def test_no_module_dispatches_on_the_systems_name():
    """`job.system == "pfedpg"` and the like: a system's behaviour belongs in its registry record."""
    def is_system(node):
        return (isinstance(node, ast.Attribute) and node.attr == "system") or (
            isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value == "system")

    found = []
    for name, path in [*_modules(FED), *_modules(PETKIT / "cli")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(is_system(n) for n in [node.left, *node.comparators]):
                found.append(f"{name}:{node.lineno}")
    assert not found, f"comparisons with a system's name: {found}"


def test_imports_inside_petkit_fed_have_no_cycle():
    """Every import, at module level or inside a function, from one petkit.fed module to another."""
    modules = dict(_modules(FED))
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level else ""
                base = ".".join(filter(None, [base, node.module]))
                # `from . import x` names a module when x is one; else the import is of base itself
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle in petkit.fed: {' -> '.join(exc.args[1])}")
    assert graph["petkit.fed.local"] and "petkit.fed.systems.fedavg" in graph["petkit.fed.systems"]  # the graph is real
