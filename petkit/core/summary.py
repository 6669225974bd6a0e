"""`AdaptedModel.summary()`: a table of adapters and a compact tree of the modules they modify."""

from __future__ import annotations

import io
import re
from collections import defaultdict

from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from petkit.core.roles import roles_of
from petkit.core.unwrapped import base_parameters


def compress_paths(paths: list[str]) -> list[str]:
    """encoder.layer.{0..5}.attention.self.{query,value}: one line per repeated block pattern."""
    by_shape: dict[str, set[int]] = defaultdict(set)
    for p in paths:
        m = re.search(r"\.(\d+)\.", p)
        if m:
            by_shape[p[: m.start()] + ".{#}." + p[m.end():]].add(int(m.group(1)))
        else:
            by_shape[p].add(-1)
    lines = []
    for shape, idx in by_shape.items():
        if "{#}" not in shape:
            lines.append(shape)
            continue
        ids = sorted(idx)
        span = f"{ids[0]}..{ids[-1]}" if ids == list(range(ids[0], ids[-1] + 1)) and len(ids) > 1 else ",".join(map(str, ids))
        lines.append(shape.replace("{#}", "{" + span + "}"))
    grouped: dict[str, list[str]] = defaultdict(list)
    for line in lines:
        head, _, leaf = line.rpartition(".")
        grouped[head].append(leaf)
    return [f"{h}.{{{','.join(ls)}}}" if len(ls) > 1 else (f"{h}.{ls[0]}" if h else ls[0]) for h, ls in grouped.items()]


def render_summary(am, print_it: bool = True) -> str:
    base_total = sum(p.numel() for p in base_parameters(am.base).values())
    table = Table(title=f"{type(am.base).__name__}: {base_total:,} base parameters")
    for col in ("adapter", "method", "kind", "params", "% of base", "head params", "active", "merged"):
        table.add_column(col, justify="right" if "param" in col or "%" in col else "left")
    table.caption = roles_of(am.base).describe()
    tree = Tree("modified modules")
    for name in am.adapters:
        method = am.method_of(name)
        own = am.num_parameters(name, include_head=False)
        head = am.num_parameters(name) - own if not am.is_selection(name) else 0
        table.add_row(name, method.name, method.kind, f"{own:,}", f"{100 * own / max(base_total, 1):.3f}",
                      f"{head:,}", "yes" if name in am.active else "", "yes" if name in am.state.merged else "")
        branch = tree.add(f"{name} ({method.name})")
        if name in am.model_deltas:
            branch.add(f"the whole model: {am.model_deltas[name].describe()}")
        paths = am.state.modules.get(name) or [n.rsplit(".", 1)[0] for n in am.state.selected.get(name, [])]
        for line in compress_paths(list(dict.fromkeys(paths))):
            branch.add(line)
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(table)
    console.print(tree)
    text = console.export_text()
    if print_it:
        Console().print(table)
        Console().print(tree)
    return text
