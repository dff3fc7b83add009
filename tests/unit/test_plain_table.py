"""Big tables are drawn without rich (cdmo.output.format_plain_table) and must look as rich's do."""

from __future__ import annotations

import io
from collections.abc import Sequence

import pytest
from rich.console import Console

from cdmo.output import RICH_TABLE_ROWS, build_table, format_plain_table, print_rows, print_table

COLUMNS = ("NODE", "GPU", "MODEL", "BEFORE", "AFTER", "CHANGES")
CASES: dict[str, list[tuple[str, ...]]] = {
    "layouts": [
        (
            "gpu-1",
            "0",
            "h100-80gb",
            "3g.40gb@0 (used), 3g.40gb@4 (used)",
            "3g.40gb@0, 3g.40gb@4",
            "unchanged",
        ),
        ("gpu-10", "1", "h100-80gb", "-", "7g.80gb@0", "+7g.80gb@0 for research/job-1"),
    ],
    "wide characters": [("ノード-1", "0", "h100-80gb", "-", "-", "🙂 ok"), ("n", "1", "é", "", "", "")],
    "cell wider than its header": [("a-very-long-node-name-indeed", "12", "x", "y", "z", "w")],
    "multi-line cell": [("gpu-1", "0", "m", "line one\nline two, longer", "-", "x")],
    "no rows": [],
}


def _rich(title: str, columns: Sequence[str], rows: list[tuple[str, ...]]) -> list[str]:
    buf = io.StringIO()
    print_table(build_table(title, columns, rows), Console(file=buf, width=160, soft_wrap=False))
    return [line.rstrip() for line in buf.getvalue().splitlines()]


@pytest.mark.parametrize("rows", list(CASES.values()), ids=list(CASES))
def test_plain_table_looks_as_rich_draws_it(rows: list[tuple[str, ...]]) -> None:
    plain = [line.rstrip() for line in format_plain_table("Layouts", COLUMNS, rows).splitlines()]
    assert plain == _rich("Layouts", COLUMNS, rows)


def test_plain_table_prints_brackets_as_they_are() -> None:
    # rich would read [bold] as markup and drop it; the plain table keeps every character.
    text = format_plain_table(None, ("A",), [("x[bold]y[/bold]",)])
    assert "x[bold]y[/bold]" in text


def test_print_rows_uses_rich_up_to_the_limit_and_plain_above(capsys: pytest.CaptureFixture[str]) -> None:
    few = [("a[b]c",)] * RICH_TABLE_ROWS
    print_rows("T", ("A",), few)
    assert "a[b]c" not in capsys.readouterr().out  # rich took [b] for markup: rich drew it
    print_rows("T", ("A",), [*few, ("a[b]c",)])
    out = capsys.readouterr().out
    assert out.count("a[b]c") == RICH_TABLE_ROWS + 1  # drawn plainly, every cell as it is
