"""Printing results: tables for people (rich), JSON and YAML for machines. Results go to stdout."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

import yaml

if TYPE_CHECKING:  # rich is imported when a table is drawn: JSON output does not pay for it
    from rich.console import Console
    from rich.table import Table

OUTPUT_FORMATS = ("table", "json", "yaml")


def console() -> Console:
    """A console on stdout; wide enough that tables do not wrap when piped."""
    from rich.console import Console

    width = None if sys.stdout.isatty() else max(shutil.get_terminal_size((160, 24)).columns, 160)
    return Console(width=width, soft_wrap=False, highlight=False)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def print_json_items(data: Any) -> None:
    """``data`` as JSON on stdout, one top-level list item per line (``cdmo plan --output json``).

    The document is never held in memory as one string: a 10,000-pod plan is written an item at
    a time, each item compact by the C encoder (the indenting encoder is pure Python and took as
    long as planning). ``json.loads`` of the output equals ``data``.
    """
    write_json(data, sys.stdout)


def write_json(data: Any, out: TextIO) -> None:
    """See :func:`print_json`: a dict of lists is written one list item per line."""
    if not isinstance(data, dict):
        out.write(json.dumps(data) + "\n")
        return
    out.write("{")
    for n, (key, value) in enumerate(data.items()):
        out.write(("," if n else "") + "\n  " + json.dumps(key) + ": ")
        if isinstance(value, list) and value:
            out.write("[")
            for i, item in enumerate(value):
                out.write(("," if i else "") + "\n    " + json.dumps(item))
            out.write("\n  ]")
        else:
            out.write(json.dumps(value))
    out.write("\n}\n")


def print_yaml(data: Any) -> None:
    sys.stdout.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def build_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_lines=False)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    return table
