"""Rewrite the result tables of README.md and docs/ from live runs, so nobody pastes figures by hand.

    .venv/bin/python scripts/regenerate_results.py            # rewrite in place
    .venv/bin/python scripts/regenerate_results.py --check    # exit 1 if a document is out of date

Two kinds of tables:

- **Console blocks**: the lines after ``$ cdmo simulate examples/clearml-queues.yaml`` in
  README.md and docs/simulate.md are replaced with what that command prints now (the PLANNER CPU
  column is timing and differs between runs; ``--check`` ignores it).
- **Sweep tables**: between ``<!-- sweep:NAME -->`` and ``<!-- /sweep:NAME -->`` in
  docs/simulate.md, a markdown table drawn from docs/results/NAME.json, the committed output of
  ``scripts/sweep_simulate.py ... --json docs/results/NAME.json`` (long runs: re-run the sweep
  when the planner changes, then this script).

tests/sim/test_results_docs.py checks the figures in these tables against ``--output json`` and
the committed JSON, not against the drawn text.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
#: (document, command whose output is shown after ``$ command``)
CONSOLE_BLOCKS = (
    ("README.md", "cdmo simulate examples/clearml-queues.yaml"),
    ("docs/simulate.md", "cdmo simulate examples/clearml-queues.yaml"),
)
SWEEP_DOC = "docs/simulate.md"
_CPU = re.compile(r"\d+\.\d\ds")


def console_output(command: str) -> list[str]:
    """What ``command`` (a cdmo verb line) prints, run with this checkout's interpreter."""
    argv = [sys.executable, "-m", "cdmo.cli", *command.split()[1:]]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True)
    return [line.rstrip() for line in done.stdout.splitlines()]


def replace_console_block(text: str, command: str, lines: list[str]) -> str:
    """``text`` with the lines after the last ``$ command`` (up to the closing fence) replaced."""
    rows = text.split("\n")
    start = max(i for i, line in enumerate(rows) if line == f"$ {command}") + 1
    end = rows.index("```", start)
    return "\n".join([*rows[:start], *lines, *rows[end:]])


def _seconds(value: float) -> str:
    from cdmo.sim.report import format_seconds

    return format_seconds(value)


def sweep_table(data: dict[str, Any]) -> list[str]:
    """A markdown table of one sweep: a row per rate and policy."""
    base = data["policies"][0]
    header = [
        "| rate | pods/hour | offered load | policy | slice util | p95 (median over seeds) | p95 / "
        f"{base} (geomean) | mean wait / {base} | seeds p95 <= {base} | mean wait per profile |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    rows = []
    seeds = len(data["seeds"])
    for entry in data["rates"]:
        for name in data["policies"]:
            fig = entry["policies"][name]
            waits = ", ".join(f"{p} {_seconds(w)}" for p, w in fig["by_profile_mean_wait"].items())
            rows.append(
                f"| {entry['factor']:g}x | {entry['rate_per_hour']:.0f} | {100 * entry['offered_load']:.1f}% | "
                f"{name} | {100 * fig['utilization']:.1f}% | "
                f"{_seconds(fig['p95_median'])} | {fig['p95_ratio_geomean']:.2f} | {fig['mean_ratio_geomean']:.2f} | "
                f"{fig['seeds_lower_or_equal']}/{seeds} | {waits} |"
            )
    return header + rows


def replace_sweep_tables(text: str) -> str:
    """Every ``<!-- sweep:NAME -->`` section of ``text`` redrawn from docs/results/NAME.json."""

    def redraw(match: re.Match[str]) -> str:
        name = match.group(1)
        data = json.loads((RESULTS / f"{name}.json").read_text())
        body = "\n".join(sweep_table(data))
        return f"<!-- sweep:{name} -->\n{body}\n<!-- /sweep:{name} -->"

    return re.sub(r"<!-- sweep:([\w.-]+) -->\n.*?<!-- /sweep:\1 -->", redraw, text, flags=re.S)


def regenerate(check: bool) -> list[str]:
    """Rewrite (or, with ``check``, only compare) every table; returns the documents out of date."""
    stale = []
    outputs: dict[str, list[str]] = {}
    docs: dict[str, str] = {}
    for doc, command in CONSOLE_BLOCKS:
        if command not in outputs:
            outputs[command] = console_output(command)
        text = docs.get(doc, (ROOT / doc).read_text())
        docs[doc] = replace_console_block(text, command, outputs[command])
    docs[SWEEP_DOC] = replace_sweep_tables(docs.get(SWEEP_DOC, (ROOT / SWEEP_DOC).read_text()))
    for doc, new in docs.items():
        old = (ROOT / doc).read_text()
        if _CPU.sub("CPU", old) != _CPU.sub("CPU", new):
            stale.append(doc)
        if not check and old != new:
            (ROOT / doc).write_text(new)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a table is out of date"
    )
    args = parser.parse_args(argv)
    stale = regenerate(args.check)
    for doc in stale:
        print(f"{doc}: {'out of date' if args.check else 'rewritten'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
