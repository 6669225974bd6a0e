"""The generated parts of the documentation: the README's method table (from the method registry) and
the CLI reference page (from the `petkit` argument parser). Never edit those by hand:

    .venv/bin/python -m petkit.cli.docgen           # rewrite README.md's method table and docs/cli.md
    .venv/bin/python -m petkit.cli.docgen --check   # exit 1 if either is out of date

tests/test_docs.py fails when they drift from the code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from petkit.cli.methods_table import COLUMNS, method_rows

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CLI_PAGE = ROOT / "docs" / "cli.md"
REGENERATE = ".venv/bin/python -m petkit.cli.docgen"


def _cell(text: str) -> str:
    """Text safe inside one markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def method_table() -> str:
    """The README's method table: method_rows() as markdown."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name, *cells in method_rows():
        lines.append(f"| `{name}` | " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def _subcommands(parser: argparse.ArgumentParser):
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    for name, subparser in sub.choices.items():
        yield name, helps.get(name) or "", subparser


def _value(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.choices:
        return " \\| ".join(f"`{c}`" for c in action.choices)
    if action.metavar:
        return f"`{action.metavar}`"
    if action.type is int:
        return "integer"
    if action.type is float:
        return "number"
    return "text"


def _argument_row(action: argparse.Action) -> str:
    name = ", ".join(f"`{o}`" for o in action.option_strings) if action.option_strings else f"`{action.dest}`"
    notes = []
    if not action.option_strings:
        notes.append("positional" + (", optional" if action.nargs == "?" else ""))
    elif action.required:
        notes.append("required")
    if isinstance(action, argparse._AppendAction):
        notes.append("repeatable")
    if action.default not in (None, False, [], argparse.SUPPRESS):
        notes.append(f"default `{action.default}`")
    return f"| {name} | {_value(action)} | {'; '.join(notes)} | {_cell(action.help or '')} |"


def cli_reference() -> str:
    """docs/cli.md: every `petkit` subcommand with its arguments, read from the parser itself."""
    from petkit.cli.main import build_parser
    parser = build_parser()
    out = ["# CLI reference", "",
           f"<!-- Generated from petkit/cli/main.py by `{REGENERATE}`; do not edit by hand. -->", "",
           f"`petkit`: {_cell(parser.description or '')} Every subcommand with its arguments, as "
           "`petkit <command> --help` prints them:", ""]
    commands = list(_subcommands(parser))
    out += [f"- [`petkit {name}`](#petkit-{name}): {_cell(help_)}" for name, help_, _ in commands]
    for name, help_, subparser in commands:
        out += ["", f"## `petkit {name}`", "", _cell(help_[:1].upper() + help_[1:]) + "."]
        if subparser.description:
            raw = isinstance(subparser.formatter_class, type) and issubclass(
                subparser.formatter_class, argparse.RawDescriptionHelpFormatter)
            out += ["", "```text", subparser.description.strip(), "```"] if raw else ["", subparser.description.strip()]
        rows = [_argument_row(a) for a in subparser._actions if not isinstance(a, argparse._HelpAction)]
        if rows:
            out += ["", "| argument | value | notes | what |", "|---|---|---|---|", *rows]
        else:
            out += ["", "No arguments."]
    return "\n".join(out) + "\n"


def _replace_block(text: str, name: str, content: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise ValueError(f"README.md has no {start} ... {end} block")
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    return f"{head}{start}\n{content}\n{end}{tail}"


def updated_readme() -> str:
    return _replace_block(README.read_text(encoding="utf-8"), "methods", method_table())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    wanted = {README: updated_readme(), CLI_PAGE: cli_reference()}
    stale = [p for p, text in wanted.items() if not p.is_file() or p.read_text(encoding="utf-8") != text]
    if "--check" in argv:
        for p in stale:
            print(f"{p.relative_to(ROOT)} is out of date: run {REGENERATE}", file=sys.stderr)
        return 1 if stale else 0
    for p in stale:
        p.write_text(wanted[p], encoding="utf-8")
        print(f"rewrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
