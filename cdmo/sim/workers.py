"""A scenario's policies in worker processes, one policy per task, results identical to a serial run.

Each policy replays the same workload on its own fresh fleet and shares nothing with the others,
so policies run side by side with no change to any figure but the measured times.

Spawn-safe on every platform: the pool uses the ``spawn`` start method (no state inherited by
``fork``, the same on Linux as on macOS and Windows), the task function is module-level, and its
arguments are plain data: the scenario, the pods as tuples (pickling 200,000 slotted dataclasses
costs seconds; tuples of numbers and strings cost milliseconds) and the policy's name. A worker
sends its run back without the pods; the parent puts its own back in.

Ctrl-C: in a terminal it reaches the whole process group. Workers ignore SIGINT (they are started
with it ignored, which a new Python keeps, and the initializer ignores it again), so only the
parent answers: it terminates the pool and lets KeyboardInterrupt go on to the CLI (exit 130), and
no worker prints a traceback.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import operator
import os
import queue
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from cdmo.sim.engine import RunResult, Simulation, replay_order
from cdmo.sim.policies import make_policy
from cdmo.sim.scenario import Scenario
from cdmo.sim.workload import PodSpec

#: progress(policy, fraction of simulated time done)
Progress = Callable[[str, float], None]
#: PodSpec's fields, in order, as the tuples sent to workers carry them.
_POD_FIELDS = tuple(f.name for f in dataclasses.fields(PodSpec))
#: How often the parent looks at the workers' progress and results (seconds).
_POLL_SECONDS = 0.1

#: The worker's side of the progress queue (set by the pool's initializer; None: no progress).
_progress_queue: Any = None


def default_jobs() -> int:
    """The CPUs this process may run on (what ``--jobs`` defaults to)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def pods_to_rows(pods: Sequence[PodSpec]) -> list[tuple[Any, ...]]:
    """``pods`` as tuples of their fields (cheap to pickle); :func:`pods_from_rows` reverses it."""
    fields = operator.attrgetter(*_POD_FIELDS)
    return [fields(p) for p in pods]


def pods_from_rows(rows: Sequence[tuple[Any, ...]]) -> list[PodSpec]:
    return [PodSpec(*row) for row in rows]


def _init_worker(progress_queue: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    global _progress_queue
    _progress_queue = progress_queue


def _run_one(scenario: Scenario, rows: list[tuple[Any, ...]], name: str, horizon: float) -> RunResult:
    """One policy in a worker; the run comes back without its pods (the parent has them)."""
    q = _progress_queue
    progress = (lambda frac: q.put((name, frac))) if q is not None else None
    policy = make_policy(name, scenario)
    result = Simulation(scenario, pods_from_rows(rows), policy, horizon=horizon, progress=progress).run()
    return dataclasses.replace(result, pods=())


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while workers start, so they start with it ignored (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _cost_rank(name: str) -> int:
    """Costliest first, so that one worker does not start the longest policy last."""
    if name.startswith("dynamic"):
        return 0  # the real planner and node agent
    if name == "first-fit":
        return 1
    return 2


class PolicyWorkers:
    """A pool of worker processes for a scenario's policies; use it as a context manager.

    The workers start (and import cdmo) as soon as the pool is made, so the caller can generate
    the workload meanwhile. Leaving the ``with`` block by an exception (Ctrl-C included)
    terminates the workers at once; leaving it normally waits for them to exit.
    """

    def __init__(self, jobs: int, *, with_progress: bool = False) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._queue = ctx.Queue() if with_progress else None
        with _sigint_ignored():
            self._pool = ctx.Pool(max(1, jobs), initializer=_init_worker, initargs=(self._queue,))

    def __enter__(self) -> PolicyWorkers:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self._pool.terminate()  # Ctrl-C or a failed policy: stop the others now
        else:
            self._pool.close()
        self._pool.join()

    def run(
        self,
        scenario: Scenario,
        pods: Sequence[PodSpec],
        names: Sequence[str],
        *,
        horizon: float,
        progress: Progress | None = None,
    ) -> dict[str, RunResult]:
        """Every policy in ``names`` over ``pods``, by name (see :func:`run_policies`)."""
        rows = pods_to_rows(pods)
        order = sorted(names, key=_cost_rank)  # stable: the scenario's order within a rank
        tasks = {name: self._pool.apply_async(_run_one, (scenario, rows, name, horizon)) for name in order}
        queue_ = self._queue if progress is not None else None
        done: dict[str, RunResult] = {}
        while len(done) < len(tasks):
            waiting = next(n for n in order if n not in done)
            tasks[waiting].wait(_POLL_SECONDS)
            _forward_progress(queue_, progress)
            for name in order:
                if name not in done and tasks[name].ready():
                    done[name] = tasks[name].get()  # a worker's exception is raised here
        _forward_progress(queue_, progress)
        replayed = tuple(replay_order(pods, horizon))
        return {name: dataclasses.replace(done[name], pods=replayed) for name in names}


def run_policies(
    scenario: Scenario,
    pods: Sequence[PodSpec],
    names: Sequence[str],
    *,
    horizon: float,
    jobs: int,
    progress: Progress | None = None,
) -> dict[str, RunResult]:
    """Every policy in ``names`` over ``pods``, ``jobs`` at a time in worker processes, by name.

    Each run is what :func:`cdmo.sim.runner.run_policy` would give in this process (its ``pods``
    are the replayed pods, as there); only wall and CPU times differ. The dynamic policies go
    to the workers first, then first-fit, then the static layouts.
    """
    with PolicyWorkers(min(jobs, len(names)), with_progress=progress is not None) as workers:
        return workers.run(scenario, pods, names, horizon=horizon, progress=progress)


def _forward_progress(progress_queue: Any, progress: Progress | None) -> None:
    if progress_queue is None or progress is None:
        return
    while True:
        try:
            name, fraction = progress_queue.get_nowait()
        except queue.Empty:
            return
        progress(name, fraction)
