"""The result tables of README.md and docs/simulate.md hold the figures of live runs.

Figures are compared with ``cdmo simulate --output json`` and with the committed sweep JSON
(docs/results/), never with a drawn table: a planner change means running
scripts/regenerate_results.py, not pasting by hand. CPU seconds are timing and not compared.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cdmo.cli import main
from cdmo.sim.report import format_seconds
from tests.harness.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
COMMAND = "cdmo simulate examples/clearml-queues.yaml"


def _script() -> ModuleType:
    return load_script("scripts/regenerate_results.py")


def documented_rows(text: str, command: str) -> dict[str, list[str]]:
    """Policy -> cells of the table printed after the last ``$ command`` in ``text``."""
    lines = text.splitlines()
    start = max(i for i, line in enumerate(lines) if line == f"$ {command}") + 1
    end = lines.index("```", start)
    rows = {}
    for line in lines[start:end]:
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            rows[cells[0]] = cells[1:]
    return rows


def expected_cells(summary: dict[str, Any]) -> list[str]:
    """The table's cells for one policy, from its JSON (``-o json``, camelCase keys as every
    verb's; the last cell, planner CPU, is timing)."""
    pend = summary["pendingSeconds"]
    return [
        f"{summary['pods']['started']}/{summary['pods']['submitted']}",
        str(summary["pods"]["neverStarted"]),
        *(format_seconds(pend[k]) for k in ("p50", "p95", "p99", "max")),
        f"{100 * summary['utilization']:.1f}%",
        str(summary["reconfigurations"]),
        f"+{summary['gpuInstances']['created']}/-{summary['gpuInstances']['destroyed']}",
        str(summary["disruptedPods"]),
    ]


@pytest.fixture(scope="module")
def clearml_json() -> dict[str, Any]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["simulate", str(ROOT / "examples" / "clearml-queues.yaml"), "--output", "json"]) == 0
    return json.loads(out.getvalue())


@pytest.mark.parametrize("doc", ["README.md", "docs/simulate.md"])
def test_documented_figures_are_those_of_simulate_json(clearml_json: dict[str, Any], doc: str) -> None:
    rows = documented_rows((ROOT / doc).read_text(), COMMAND)
    assert list(rows) == list(clearml_json), f"{doc}: run scripts/regenerate_results.py"
    for policy, summary in clearml_json.items():
        assert rows[policy][:-1] == expected_cells(summary), (
            f"{doc}: {policy} shows old figures; run scripts/regenerate_results.py"
        )
    # The line above the table says the offered load, the same in every policy's summary.
    lines = (ROOT / doc).read_text().splitlines()
    said = lines[max(i for i, line in enumerate(lines) if line == f"$ {COMMAND}") + 1]
    offered = {s["offeredLoad"] for s in clearml_json.values()}
    assert len(offered) == 1
    assert f"offered load {100 * offered.pop():.1f}% of the fleet's compute slices" in said, (
        f"{doc}: run scripts/regenerate_results.py"
    )


def test_sweep_tables_hold_the_committed_sweep_figures() -> None:
    text = (ROOT / "docs" / "simulate.md").read_text()
    names = re.findall(r"<!-- sweep:([\w.-]+) -->", text)
    assert names, "docs/simulate.md has no sweep table"
    for name in names:
        data = json.loads((ROOT / "docs" / "results" / f"{name}.json").read_text())
        section = text.split(f"<!-- sweep:{name} -->", 1)[1].split(f"<!-- /sweep:{name} -->", 1)[0]
        rows = [r.strip("|").split("|") for r in section.strip().splitlines()[2:]]
        figures = {(r[0].strip(), r[3].strip()): r for r in rows}
        for entry in data["rates"]:
            for policy, fig in entry["policies"].items():
                row = figures[(f"{entry['factor']:g}x", policy)]
                assert float(row[2].strip().rstrip("%")) == pytest.approx(
                    100 * entry["offered_load"], abs=0.051
                )
                assert float(row[4].strip().rstrip("%")) == pytest.approx(100 * fig["utilization"], abs=0.051)
                assert float(row[6]) == pytest.approx(fig["p95_ratio_geomean"], abs=0.0051)
                assert float(row[7]) == pytest.approx(fig["mean_ratio_geomean"], abs=0.0051)
    # The script draws exactly these tables from the same JSON.
    assert _script().replace_sweep_tables(text) == text
