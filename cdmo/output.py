"""Printing results: tables for people (rich), JSON and YAML for machines. Results go to stdout.

The conventions every verb shares live here, so that a new verb gets them by calling
:func:`add_output_argument` and :func:`emit`:

- ``-o/--output table|json|yaml`` on every verb, ``table`` by default;
- JSON and YAML keys in camelCase, as Kubernetes writes them (``neverStarted``, ``giId``),
  whatever the Python side calls them: :func:`camel_keys` converts snake_case keys only, so
  data used as keys (policy names such as ``static:all-1g``, profile names, node names) is kept;
- tables that never cut a cell: a table wider than the terminal is printed at its full width
  (the terminal wraps the line) rather than squeezed into ellipses, so MIG UUIDs and pod names
  stay whole and can be copied.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

import yaml

if TYPE_CHECKING:  # rich is imported when a table is drawn: JSON output does not pay for it
    from rich.console import Console
    from rich.table import Table

OUTPUT_FORMATS = ("table", "json", "yaml")

#: Widest a table may be laid out; a guard against a pathological cell, far above any UUID row.
_MAX_TABLE_WIDTH = 4000

_SNAKE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)+$")


def add_output_argument(parser: argparse.ArgumentParser) -> None:
    """``-o/--output table|json|yaml`` (table by default), the same on every verb."""
    parser.add_argument(
        "--output",
        "-o",
        choices=OUTPUT_FORMATS,
        default="table",
        help="table for people (default); json or yaml for machines, keys in camelCase",
    )


def camel_key(key: str) -> str:
    """``never_started`` -> ``neverStarted``; any key that is not snake_case is kept as it is."""
    if not _SNAKE.match(key):
        return key
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def camel_keys(data: Any) -> Any:
    """A copy of ``data`` with every dict key in camelCase (see :func:`camel_key`)."""
    if isinstance(data, dict):
        return {camel_key(k) if isinstance(k, str) else k: camel_keys(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [camel_keys(v) for v in data]
    return data


def console() -> Console:
    """A console on stdout; wide enough that tables do not wrap when piped."""
    from rich.console import Console

    width = None if sys.stdout.isatty() else max(shutil.get_terminal_size((160, 24)).columns, 160)
    return Console(width=width, soft_wrap=False, highlight=False)


def print_json(data: Any, *, camel: bool = True) -> None:
    """``camel=False`` for documents whose keys are data, such as Kubernetes manifests."""
    sys.stdout.write(json.dumps(camel_keys(data) if camel else data, indent=2, sort_keys=False) + "\n")


def print_yaml(data: Any, *, camel: bool = True) -> None:
    doc = camel_keys(data) if camel else data
    sys.stdout.write(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))


def emit(data: Any, output: str, *, camel: bool = True) -> None:
    """Print a machine-readable document: ``output`` is ``json`` or ``yaml``.

    ``camel=False`` prints the keys as they are: for a manifest, whose label keys such as
    ``gpu_fraction`` are data and must not be renamed.
    """
    if output == "yaml":
        print_yaml(data, camel=camel)
    else:
        print_json(data, camel=camel)


def print_json_items(data: Any, *, camel: bool = True) -> None:
    """``data`` as JSON on stdout, one top-level list item per line (``cdmo plan --output json``).

    The document is never held in memory as one string: a 10,000-pod plan is written an item at
    a time, each item compact by the C encoder (the indenting encoder is pure Python and took as
    long as planning). ``json.loads`` of the output equals ``data`` with its keys in camelCase
    (``camel=False``: as they are), the key style of every verb.
    """
    write_json(camel_keys(data) if camel else data, sys.stdout)


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


#: libyaml's emitter where PyYAML has it: the same text as the pure-Python one, twice as fast.
_YAML_DUMPER: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def print_yaml_items(data: Any, *, camel: bool = True) -> None:
    """``data`` as YAML on stdout, the same text as :func:`print_yaml`, a list item at a time.

    PyYAML builds a node for every value before it writes anything; for a 10,000-pod plan that
    is half a million objects the cyclic collector scans again and again (5 s). Dumped item by
    item, each item's nodes are freed as soon as it is written (0.9 s). Objects shared between
    items are written out in full in each, where a whole-document dump would use an alias.
    """
    write_yaml(camel_keys(data) if camel else data, sys.stdout)


def write_yaml(data: Any, out: TextIO) -> None:
    """See :func:`print_yaml_items`: a dict of lists is written one list item at a time."""

    def dump(value: Any) -> str:
        return yaml.dump(value, Dumper=_YAML_DUMPER, sort_keys=False, default_flow_style=False)

    if not isinstance(data, dict) or not data:
        out.write(dump(data))
        return
    for key, value in data.items():
        head = dump({key: []})
        if isinstance(value, list) and value and head.endswith(": []\n") and head.count("\n") == 1:
            # "key:" opens the block sequence; a block sequence in a mapping is not indented, so
            # each item's own dump fits under it as it is.
            out.write(head[: -len(" []\n")] + "\n")
            for item in value:
                out.write(dump([item]))
        else:
            out.write(dump({key: value}))


def build_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_lines=False)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    return table


def print_table(table: Table, out: Console | None = None) -> None:
    """Print ``table`` whole: never narrower than its widest row, so no cell is cut."""
    out = out or console()
    needed = out.measure(table, options=out.options.update_width(_MAX_TABLE_WIDTH)).maximum
    out.width = max(out.width, min(needed, _MAX_TABLE_WIDTH))
    out.print(table, crop=False)


#: Up to this many rows a table is drawn by rich (:func:`print_table`); above, by
#: :func:`format_plain_table`, which draws the same box in a fraction of the time (rich measures
#: and renders each cell as styled text: 8,000 rows took about 5 s, the plain drawing 0.05 s).
RICH_TABLE_ROWS = 100

# rich's default box (HEAVY_HEAD): heavy lines around the header, light ones around the rows.
_TOP, _HEAD, _HEAD_RULE, _ROW, _BOTTOM = ("┏━┳┓", "┃ ┃┃", "┡━╇┩", "│ ││", "└─┴┘")


def _cell_width(text: str) -> int:
    if text.isascii():
        return len(text)
    from rich.cells import cell_len  # wide characters (CJK, emoji) take two terminal cells

    return cell_len(text)


def format_plain_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """The table as rich draws it on a pipe (box, padding, title above), as one string.

    Every cell is whole: columns are as wide as their widest cell, nothing is wrapped or cut,
    and the text is printed as it is (rich would read ``[...]`` in a cell as markup).
    """
    body = [["" if v is None else str(v) for v in row] for row in rows]
    out = [title] if title else []
    if all(c.isascii() for c in columns) and all(
        cell.isascii() and "\n" not in cell for row in body for cell in row
    ):
        # The common case, one format call per row: a character is a terminal cell.
        widths = [max([len(c), *(len(row[i]) for row in body)]) for i, c in enumerate(columns)]
        fmt = "│ " + " │ ".join(f"{{:<{w}}}" for w in widths) + " │"
        head = "┃ " + " ┃ ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " ┃"
        out += [_rule(_TOP, widths), head, _rule(_HEAD_RULE, widths)]
        out += [fmt.format(*row) for row in body]
        out.append(_rule(_BOTTOM, widths))
        return "\n".join(out) + "\n"
    widths = [_cell_width(c) for c in columns]
    split: list[list[list[str]]] = []
    for row in body:
        cells = [cell.split("\n") for cell in row]
        split.append(cells)
        for i, lines in enumerate(cells):
            widths[i] = max(widths[i], *(_cell_width(line) for line in lines))

    def line(box: str, cells: Sequence[str]) -> str:
        sep = f" {box[2]} "
        return (
            f"{box[0]} "
            + sep.join(c + " " * (w - _cell_width(c)) for c, w in zip(cells, widths, strict=True))
            + f" {box[3]}"
        )

    out += [_rule(_TOP, widths), line(_HEAD, columns), _rule(_HEAD_RULE, widths)]
    for cells in split:
        height = max((len(lines) for lines in cells), default=1)
        for k in range(height):
            out.append(line(_ROW, [lines[k] if k < len(lines) else "" for lines in cells]))
    out.append(_rule(_BOTTOM, widths))
    return "\n".join(out) + "\n"


def _rule(box: str, widths: Sequence[int]) -> str:
    return box[0] + box[2].join(box[1] * (w + 2) for w in widths) + box[3]


def print_rows(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A table on stdout: drawn by rich up to :data:`RICH_TABLE_ROWS` rows, plainly above."""
    if len(rows) <= RICH_TABLE_ROWS:
        print_table(build_table(title, columns, rows))
    else:
        sys.stdout.write(format_plain_table(title, columns, rows))
