"""A scenario's policies in worker processes, one policy per task, results identical to a serial run.

Each policy replays the same workload on its own fresh fleet and shares nothing with the others,
so policies run side by side with no change to any figure but the measured times.

Spawn-safe on every platform: the workers use the ``spawn`` start method (no state inherited by
``fork``, the same on Linux as on macOS and Windows), the worker function is module-level, and its
arguments are plain data: the scenario, the pods as tuples (pickling 200,000 slotted dataclasses
costs seconds; tuples of numbers and strings cost milliseconds) and the policy's name. A worker
sends its run back without the pods; the parent puts its own back in. Progress travels on the
same pipe as the run, ahead of it, so the parent sees every fraction of a policy, in order, before
its run (a separate ``multiprocessing.Queue`` flushes from a thread of its own and could deliver
the last fractions after the run, or not before the parent stopped reading).

Ctrl-C: in a terminal it reaches the whole process group. Workers ignore SIGINT (they are started
with it ignored, which a new Python keeps, and ignore it again first thing), so only the
parent answers: it terminates the pool and lets KeyboardInterrupt go on to the CLI (exit 130), and
no worker prints a traceback.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import operator
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from cdmo.errors import CdmoError
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


def _run_one(
    scenario: Scenario,
    rows: list[tuple[Any, ...]],
    name: str,
    horizon: float,
    conn: Connection | None,
) -> RunResult:
    """One policy in a worker; the run comes back without its pods (the parent has them).

    With ``conn``, each fraction of simulated time done goes to the parent on it as it happens.
    """
    progress = (lambda frac: conn.send(("progress", frac))) if conn is not None else None
    policy = make_policy(name, scenario)
    result = Simulation(scenario, pods_from_rows(rows), policy, horizon=horizon, progress=progress).run()
    return dataclasses.replace(result, pods=())


def _worker_main(conn: Connection, with_progress: bool) -> None:
    """A worker: run the policies the parent sends, one at a time, until it sends None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return  # the parent went away
        if task is None:
            return
        scenario, rows, name, horizon = task
        try:
            run = _run_one(scenario, rows, name, horizon, conn if with_progress else None)
            conn.send(("ok", run))
        except Exception as exc:  # sent to the parent, which raises it as its own
            try:
                conn.send(("error", exc))
            except Exception:  # an exception that does not pickle: its text does
                conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))


class WorkerDied(CdmoError):
    """A worker process ended without sending back the run of its policy (killed, out of memory)."""


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


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _died(w: _Worker) -> WorkerDied:
    w.process.join(timeout=5)  # its exit code, once the kernel has it
    return WorkerDied(
        f"the worker process running policy {w.policy} ended with exit code {w.process.exitcode} "
        "before it finished (killed? out of memory?); try again with --jobs 1 to run the "
        "policies in one process"
    )


class _Worker:
    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.policy: str | None = None


class PolicyWorkers:
    """Worker processes for a scenario's policies; use it as a context manager.

    The workers start (and import cdmo) as soon as this is made, so the caller can generate the
    workload meanwhile. A worker that dies while it runs a policy (killed, out of memory) raises
    :class:`WorkerDied` instead of leaving the parent waiting; ``multiprocessing.Pool`` would
    wait forever for that task. Leaving the ``with`` block by an exception (Ctrl-C included)
    terminates the workers at once; leaving it normally asks them to exit and waits.
    """

    def __init__(self, jobs: int, *, with_progress: bool = False) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._with_progress = with_progress
        self._workers: list[_Worker] = []
        with _sigint_ignored():
            for _ in range(max(1, jobs)):
                parent_end, child_end = ctx.Pipe()
                process = ctx.Process(target=_worker_main, args=(child_end, with_progress), daemon=True)
                process.start()
                child_end.close()
                self._workers.append(_Worker(process, parent_end))

    def __enter__(self) -> PolicyWorkers:
        # SIGTERM (``kill``, ``timeout``) would end this process at once and leave the workers
        # running on; as an exception it goes through __exit__, which stops them first.
        self._previous_sigterm = None
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
        for w in self._workers:
            if exc_type is not None:
                w.process.terminate()  # Ctrl-C or a failed policy: stop the others now
            else:
                try:
                    w.conn.send(None)
                except OSError:
                    w.process.terminate()
        for w in self._workers:
            w.process.join()
            w.conn.close()

    def run(
        self,
        scenario: Scenario,
        pods: Sequence[PodSpec],
        names: Sequence[str],
        *,
        horizon: float,
        progress: Progress | None = None,
    ) -> dict[str, RunResult]:
        """Every policy in ``names`` over ``pods``, by name, each run what
        :func:`cdmo.sim.runner.run_policy` would give in this process (its ``pods`` are the
        replayed pods, as there; only wall and CPU times differ). The dynamic policies go to the
        workers first, then first-fit, then the static layouts."""
        if len(set(names)) != len(names):
            # Runs come back keyed by policy name: a name given twice would leave this loop
            # waiting for a run that can never arrive (the CLI refuses it before, with exit 2).
            raise ValueError(f"policies must be distinct, got {list(names)}")
        rows = pods_to_rows(pods)
        todo = sorted(names, key=_cost_rank)  # stable: the scenario's order within a rank
        if progress is not None and not self._with_progress:
            raise ValueError("progress needs PolicyWorkers(..., with_progress=True)")
        done: dict[str, RunResult] = {}
        while len(done) < len(names):
            for w in self._workers:
                if w.policy is None and todo:
                    w.policy = todo.pop(0)
                    try:
                        w.conn.send((scenario, rows, w.policy, horizon))
                    except OSError:
                        raise _died(w) from None
            busy = [w for w in self._workers if w.policy is not None]
            wait([x for w in busy for x in (w.conn, w.process.sentinel)], timeout=_POLL_SECONDS)
            for w in busy:
                if not w.conn.poll():
                    if not w.process.is_alive():
                        raise _died(w)
                    continue
                while w.policy is not None and w.conn.poll():
                    try:
                        status, payload = w.conn.recv()
                    except (EOFError, OSError):
                        raise _died(w) from None
                    if status == "progress":
                        if progress is not None:
                            progress(w.policy, payload)
                        continue
                    if status == "error":
                        raise payload
                    done[w.policy] = payload
                    w.policy = None
        replayed = tuple(replay_order(pods, horizon))
        return {name: dataclasses.replace(done[name], pods=replayed) for name in names}
