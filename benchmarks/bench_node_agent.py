"""Time of one node agent reconcile pass on simulated GPUs (the path the simulator drives).

    .venv/bin/python benchmarks/bench_node_agent.py            # the table for docs/benchmarks.md
    .venv/bin/python benchmarks/bench_node_agent.py --gpus 8 --passes 500

Measures ``reconcile_node`` on an in-memory ``SimulatedBackend`` of H100 80GB GPUs with no
retry waits and structlog at warning level: a full repack of every GPU (7 x 1g.10gb <->
3g.40gb + 2g.20gb + 1g.10gb, alternating, so every pass destroys and creates), and a no-op
pass (the layout is already there: read, compare, nothing to do). One process, one core; the
mean over ``--passes`` passes, best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import logging
import platform
import time

import structlog

from cdmo.mig.layouts import parse_layout
from cdmo.node_agent.backend import NO_WAIT_RETRY
from cdmo.node_agent.reconcile import reconcile_node
from cdmo.node_agent.simulated import SimulatedBackend

SEVEN = "1g.10gb@0,1g.10gb@1,1g.10gb@2,1g.10gb@3,1g.10gb@4,1g.10gb@5,1g.10gb@6"
MIXED = "3g.40gb@0,2g.20gb@4,1g.10gb@6"


def measure(gpus: int, passes: int, repack: bool) -> float:
    backend = SimulatedBackend.from_models(["h100-80gb"] * gpus, seed="bench")
    a = {g: parse_layout(SEVEN) for g in range(gpus)}
    b = {g: parse_layout(MIXED) for g in range(gpus)}
    reconcile_node(backend, b, retry=NO_WAIT_RETRY)
    started = time.perf_counter()
    for i in range(passes):
        desired = (a if i % 2 == 0 else b) if repack else b
        result = reconcile_node(backend, desired, retry=NO_WAIT_RETRY)
        assert result.settled
    return (time.perf_counter() - started) / passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--passes", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(
        f"python {platform.python_version()} on {platform.machine()}, {args.passes} passes, best of {args.repeat}"
    )
    print("| GPUs per node | full repack pass | no-op pass |")
    print("| --- | --- | --- |")
    for gpus in args.gpus:
        repack = min(measure(gpus, args.passes, True) for _ in range(args.repeat))
        noop = min(measure(gpus, args.passes, False) for _ in range(args.repeat))
        print(f"| {gpus} | {repack * 1000:.2f} ms | {noop * 1000:.2f} ms |")


if __name__ == "__main__":
    main()
