"""Policies in worker processes (``cdmo simulate --jobs N``): the same results as one at a time, and
Ctrl-C still exits 130 cleanly with no worker left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cdmo import exit_codes
from cdmo.cli import main
from cdmo.sim.metrics import without_timing
from cdmo.sim.runner import simulate
from cdmo.sim.scenario import load_scenario
from cdmo.sim.workers import default_jobs, pods_from_rows, pods_to_rows
from cdmo.sim.workload import generate_workload

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _figures(run: Any) -> dict[str, Any]:
    """Everything a run decided: who started when, what it cost in instances (not how long it took)."""
    return {
        "start_times": run.start_times,
        "pods": tuple(run.pods),
        "counters": (run.disrupted, run.reconfigurations, run.gi_created, run.gi_destroyed),
        "util": (run.util_total, run.util_series),
        "stats": {k: v for k, v in run.policy_stats.items() if not k.endswith("_cpu_seconds")},
    }


def test_workers_give_the_same_runs_as_one_process() -> None:
    sc = load_scenario(EXAMPLES / "mixed-fleet.yaml")
    policies = ["static:all-balanced", "first-fit", "dynamic"]  # handed out costliest first
    serial = simulate(sc, policies=policies, duration=3 * 3600, jobs=1)
    parallel = simulate(sc, policies=policies, duration=3 * 3600, jobs=2)
    assert list(parallel.runs) == policies
    for name in policies:
        assert _figures(parallel.runs[name]) == _figures(serial.runs[name]), name
        assert without_timing(parallel.summaries[name]) == without_timing(serial.summaries[name]), name
    # A run that did nothing would make this comparison empty: these did a day's work.
    assert serial.runs["dynamic"].reconfigurations > 0 and serial.runs["first-fit"].reconfigurations > 0


def test_progress_reaches_the_parent_from_every_worker() -> None:
    seen: dict[str, list[float]] = {}
    sc = load_scenario(EXAMPLES / "clearml-queues.yaml")
    simulate(
        sc,
        policies=["first-fit", "static:all-1g"],
        duration=3600,
        jobs=2,
        progress=lambda name, frac: seen.setdefault(name, []).append(frac),
    )
    assert set(seen) == {"first-fit", "static:all-1g"}
    assert all(fracs[-1] == 1.0 and fracs == sorted(fracs) for fracs in seen.values()), seen


def test_pods_travel_as_tuples_and_come_back_equal() -> None:
    pods = generate_workload(load_scenario(EXAMPLES / "burst.yaml"))
    assert pods and pods_from_rows(pods_to_rows(pods)) == list(pods)
    assert all(type(row) is tuple for row in pods_to_rows(pods))


def test_json_is_the_same_with_one_job_or_several(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["simulate", str(EXAMPLES / "clearml-queues.yaml"), "-o", "json", "--duration", "2h"]
    docs = []
    for jobs in ("1", "3"):
        assert main([*args, "--jobs", jobs]) == 0
        out, _ = capsys.readouterr()
        docs.append({k: without_timing(v) for k, v in json.loads(out).items()})
    assert docs[0] == docs[1]
    assert list(docs[0]) == list(load_scenario(EXAMPLES / "clearml-queues.yaml").policies)


@pytest.mark.parametrize("jobs", ["0", "-2"])
def test_jobs_below_one_is_refused_in_one_line(capsys: pytest.CaptureFixture[str], jobs: str) -> None:
    code = main(["simulate", str(EXAMPLES / "burst.yaml"), "--jobs", jobs])
    _, err = capsys.readouterr()
    assert code == exit_codes.USAGE
    assert err.strip().splitlines() == [
        f"cdmo: error: --jobs {jobs} must be 1 or more (1 runs the policies one after another)"
    ]


def test_jobs_that_is_not_a_number_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["simulate", str(EXAMPLES / "burst.yaml"), "--jobs", "many"])
    assert exc.value.code == exit_codes.USAGE
    assert "--jobs: invalid int value: 'many'" in capsys.readouterr().err


def test_default_jobs_is_the_cpus_this_process_may_use() -> None:
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_jobs() == expected


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


@contextmanager
def _simulating_with_two_workers() -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    """``cdmo simulate large.yaml --jobs 2`` in its own process group, once both workers run."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cdmo.cli",
            "simulate",
            str(EXAMPLES / "large.yaml"),
            "--no-progress",
            "--jobs",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        start_new_session=True,
    )
    try:
        workers: list[int] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(workers) < 2 and proc.poll() is None:
            time.sleep(0.2)
            # The workers, not multiprocessing's resource tracker.
            workers = [c for c in _children(proc.pid) if "resource_tracker" not in _cmdline(c)]
        assert len(workers) == 2, f"expected two workers, saw {workers}"
        time.sleep(1.0)  # let the workers get into the simulation
        assert proc.poll() is None, "the simulation ended before it could be interrupted"
        yield proc, workers
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _still_running(pids: list[int]) -> list[int]:
    return [p for p in pids if Path(f"/proc/{p}").exists()]


needs_proc = pytest.mark.skipif(
    not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to find the workers"
)


@needs_proc
def test_ctrl_c_in_a_terminal_stops_parent_and_workers_with_130() -> None:
    with _simulating_with_two_workers() as (proc, workers):
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == exit_codes.INTERRUPTED == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and out == ""
    assert err.strip() == "cdmo: interrupted"
    assert _still_running(workers) == []


@needs_proc
def test_sigterm_to_the_command_stops_its_workers_too() -> None:
    # What `timeout` and `kill` send: the workers must not run on without their parent.
    with _simulating_with_two_workers() as (proc, workers):
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err and out == ""
    assert _still_running(workers) == []


@needs_proc
def test_a_worker_that_dies_ends_the_run_with_one_line_instead_of_a_hang() -> None:
    with _simulating_with_two_workers() as (proc, workers):
        os.kill(workers[0], signal.SIGKILL)  # as the kernel's OOM killer would
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == exit_codes.ERROR
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "ended with exit code -9" in lines[0] and "--jobs 1" in lines[0], err
    assert out == ""
    assert _still_running(workers) == []
