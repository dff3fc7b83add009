"""The node agent's randomized fault campaign over many seeds (issue 10, item 9).

    .venv/bin/python benchmarks/fault_campaign.py                     # 300 seeds, print the figures
    .venv/bin/python benchmarks/fault_campaign.py --seeds 1000 --write-docs

The CI runs a few seeds (tests/node/test_fault_campaign.py); this runs many and, with
``--write-docs``, replaces the "Fault campaign" section of docs/benchmarks.md with the figures
(runs, steps, agent passes, holders and faults by kind, invariant violations by kind). Exits 1
when a violation was found, after printing the first ones.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

from docs_section import write_section  # benchmarks/ is on sys.path when run

from cdmo.sim.fault_campaign import Figures, run_campaign

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Fault campaign"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def render(figures: Figures, first_seed: int, steps: int, seconds: float) -> str:
    def table(title: str, counts: dict[str, int]) -> list[str]:
        rows = [f"| {k} | {v} |" for k, v in sorted(counts.items())] or ["| (none) | 0 |"]
        return [f"| {title} | count |", "| --- | --- |", *rows, ""]

    lines = [
        SECTION,
        "",
        "The node agent (`Agent.sync_once`) on simulated GPUs, against in-memory stand-ins for its",
        "MigLayout API, pod-resources and device plugin (`cdmo/sim/fault_campaign.py`): random GPUs",
        "and layouts, holders in every form, faults injected between passes, invariants checked",
        "after every step and after a quiet phase at the end of each run. The CI runs seeds 0..23",
        "(`tests/node/test_fault_campaign.py`), and a broken agent (protections off) to show the",
        "checker catches one.",
        "",
        f"    .venv/bin/python benchmarks/fault_campaign.py --seeds {figures.runs} --first-seed {first_seed} "
        f"--steps {steps} --write-docs",
        "",
        f"Commit {_commit()}, Python {platform.python_version()}: **{figures.runs} runs** (seeds "
        f"{first_seed}..{first_seed + figures.runs - 1}), {figures.steps} steps, {figures.passes} agent passes, "
        f"{seconds:.0f} s; {figures.half_made} GPU instances without a compute instance at the start of "
        "the quiet phases (one made there per run where a GPU had room, as a death between GI and CI "
        "leaves it, plus any the faults left), kept wanted and so to be repaired; "
        f"**invariant violations: {sum(figures.violations.values())}**.",
        "",
        *table("holder form", dict(figures.holders)),
        *table("fault", dict(figures.faults)),
        *table("Event posted by the agent", dict(figures.events)),
        *table("invariant violated", dict(figures.violations)),
    ]
    if figures.examples:
        lines += ["First violations:", ""] + [f"- {e}" for e in figures.examples] + [""]
    return "\n".join(lines).rstrip("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=300, help="how many runs (one seed each)")
    parser.add_argument("--first-seed", type=int, default=1000, help="the first seed (CI uses 0..23)")
    parser.add_argument("--steps", type=int, default=25, help="steps per run")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    if not 1 <= args.seeds <= 100_000 or not 1 <= args.steps <= 1000:
        parser.error("--seeds must be 1..100000 and --steps 1..1000")
    started = time.perf_counter()
    figures = run_campaign(range(args.first_seed, args.first_seed + args.seeds), steps=args.steps)
    section = render(figures, args.first_seed, args.steps, time.perf_counter() - started)
    print(section)
    if args.write_docs:
        write_section(SECTION, section, ROOT / "docs" / "benchmarks.md")
    return 1 if figures.violations else 0


if __name__ == "__main__":
    sys.exit(main())
