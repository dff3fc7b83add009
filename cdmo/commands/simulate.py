"""``cdmo simulate SCENARIO [--policy P ...] [--seed N] [--duration D] [--jobs N] [--output table|json|yaml] [--plot FILE.png]``.

Runs a scenario (docs/simulate.md) on simulated GPUs: the same workload for every policy, one
table (or one JSON document with a key per policy) on stdout, a progress bar on stderr for long
runs in a terminal. Policies run side by side in up to ``--jobs`` worker processes (default: the
CPUs this process may use); the figures are the same as one at a time.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cdmo import exit_codes
from cdmo.errors import InvalidInput
from cdmo.output import add_output_argument

if TYPE_CHECKING:
    from cdmo.sim.runner import Report
    from cdmo.sim.scenario import Scenario

#: A run with at least this many pod-policy pairs shows a progress bar (in a terminal).
PROGRESS_THRESHOLD = 20_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "scenario", metavar="SCENARIO", help="scenario YAML file, e.g. examples/clearml-queues.yaml"
    )
    parser.add_argument(
        "--policy",
        action="append",
        metavar="P",
        help="policy to run instead of the scenario's list (repeat): dynamic, first-fit, static:all-1g, ...",
    )
    parser.add_argument("--seed", type=int, metavar="N", help="workload seed (default: the scenario's)")
    parser.add_argument(
        "--duration", metavar="D", help="simulated time instead of the scenario's: seconds or 30m, 4h, 1d"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="policies run at once in worker processes (default: the number of CPUs; 1: in this "
        "process); never more than the policies; the results do not depend on it",
    )
    add_output_argument(parser)
    parser.add_argument(
        "--plot", metavar="FILE.png", help="write pending-time CDFs and utilization over time"
    )
    parser.add_argument("--no-progress", action="store_true", help="never show the progress bar")


def run(args: argparse.Namespace) -> int:
    from cdmo.output import console, emit, print_table
    from cdmo.sim.report import build_document, build_table, describe, write_plot
    from cdmo.sim.scenario import check_policies, check_scale, load_scenario, parse_duration
    from cdmo.sim.workers import default_jobs

    if args.seed is not None and args.seed < 0:
        raise InvalidInput(f"--seed {args.seed} must be >= 0")
    if args.jobs is not None and args.jobs < 1:
        raise InvalidInput(f"--jobs {args.jobs} must be 1 or more (1 runs the policies one after another)")
    jobs = default_jobs() if args.jobs is None else args.jobs
    duration = parse_duration(args.duration, "--duration") if args.duration is not None else None
    plot = Path(args.plot) if args.plot else None
    if plot is not None:
        if plot.suffix.lower() != ".png":
            raise InvalidInput(f"--plot {plot} must name a .png file")
        if not plot.parent.is_dir():
            raise InvalidInput(f"--plot {plot}: no such directory {plot.parent}")
    scenario = load_scenario(args.scenario)
    if duration is not None:
        check_scale(scenario, duration, "--duration")
    # Checked before the progress bar generates the workload to size itself.
    policies = (
        list(check_policies(args.policy, scenario.models, "--policy"))
        if args.policy
        else list(scenario.policies)
    )

    report = _run_with_progress(scenario, policies, args.seed, duration, jobs, show=not args.no_progress)
    if args.output != "table":
        emit(build_document(report), args.output)
    else:
        out = console()
        out.print(describe(report), soft_wrap=True)
        print_table(build_table(report), out)
    if plot is not None:
        write_plot(report, plot)
        print(f"wrote {plot}", file=sys.stderr)
    return exit_codes.SUCCESS


def _run_with_progress(
    scenario: Scenario,
    policies: Sequence[str],
    seed: int | None,
    duration: float | None,
    jobs: int,
    *,
    show: bool,
) -> Report:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from cdmo.sim.runner import simulate
    from cdmo.sim.workload import generate_workload

    err = Console(stderr=True)
    if not (show and err.is_terminal):
        return simulate(scenario, policies=policies, seed=seed, duration=duration, jobs=jobs)
    # Estimate the work from the workload size; generating it again is cheap next to simulating it.
    pods = len(generate_workload(scenario, seed=seed, duration=duration))
    if pods * len(policies) < PROGRESS_THRESHOLD:
        return simulate(scenario, policies=policies, seed=seed, duration=duration, jobs=jobs)
    with Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}% of simulated time"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        tasks = {name: progress.add_task(name, total=1.0) for name in policies}

        def update(name: str, fraction: float) -> None:
            progress.update(tasks[name], completed=fraction)

        return simulate(scenario, policies=policies, seed=seed, duration=duration, progress=update, jobs=jobs)
