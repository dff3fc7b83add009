"""The operator's side of the demand history: pods and clock in Kubernetes' shapes.

The history itself (what is counted, the pre-warming targets, the drain and defragmentation
memory) is :class:`cdmo.planner.history.DemandHistory`, the same one the simulator runs; this
module only turns the pod dicts of the operator's indexes and its ``datetime`` clock into it.
Pure: the loop feeds it the pods it sees and the clock; it returns
:class:`cdmo.planner.PlanOptions` (cdmo.config.OperatorConfig holds the settings).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from cdmo.config import OperatorConfig
from cdmo.errors import InvalidInput
from cdmo.mig.resources import profile_from_resource
from cdmo.operator.demand import parse_time
from cdmo.planner import Plan, PlanOptions
from cdmo.planner.history import DemandHistory as _History


def _asks(pod: Mapping[str, Any]) -> list[tuple[str, int]]:
    asks = []
    for resource, count in sorted((pod.get("requests") or {}).items()):
        try:
            asks.append((profile_from_resource(resource), int(count)))
        except (InvalidInput, ValueError, TypeError):
            continue
    return asks


class DemandHistory:
    """Pods seen asking for MIG devices (each once, when first seen) over the pre-warming window,
    and the GPUs the last plan drained (see :mod:`cdmo.planner.history`)."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.history = _History(config)

    def observe(
        self, pending: Iterable[Mapping[str, Any]], now: datetime, bound: Iterable[Mapping[str, Any]] = ()
    ) -> set[str]:
        """Record pods not seen before, pending or bound, each at its creation time (``now`` when
        unknown); forget pods that are gone (memory stays flat).

        Bound pods count too: a pod that took a pre-warmed instance at once is never pending when
        the loop looks, yet it is demand (the simulator counts every pod the same way). Returns
        the profiles of the pods counted now.
        """
        t = now.timestamp()
        keys = []
        asked: set[str] = set()
        for pod in (*pending, *bound):
            keys.append(pod["key"])
            created = parse_time(pod.get("created"))
            at = min(t, created.timestamp()) if created is not None else t
            asks = _asks(pod)
            if self.history.observe(pod["key"], asks, at, t):
                asked.update(p for p, _ in asks)
        self.history.forget(keys)
        self.history.targets(t)  # ages out what left the window
        return asked

    def prewarm_short(
        self, free: Mapping[str, int], now: datetime, profiles: Iterable[str] | None = None
    ) -> bool:
        """Whether a profile in demand (of ``profiles``) has fewer free instances than its target."""
        return self.history.prewarm_short(free, now.timestamp(), profiles)

    def options(self, plannable: Iterable[Mapping[str, Any]], gpus: int, now: datetime) -> PlanOptions:
        """The next plan's options: pre-warming targets, drain limits, how long each pod waited."""
        waited = {}
        for pod in plannable:
            created = parse_time(pod.get("created"))
            if created is not None:
                waited[pod["key"]] = max(0.0, (now - created).total_seconds())
        return self.history.options(waited, gpus, now.timestamp())

    def remember(self, plan: Plan, now: datetime, *, idle: bool = False) -> None:
        """Keep what the next plan needs: the drained GPUs, and an idle plan's operations."""
        self.history.remember(plan, now.timestamp(), idle=idle)

    def defrag_budget(self, now: datetime) -> int:
        """GPU-instance operations an idle plan may spend now (0: not yet, or nothing left)."""
        return self.history.defrag_budget(now.timestamp())

    def idle_options(self, gpus: int, now: datetime) -> PlanOptions:
        """Options of a plan while no pod waits: idle defragmentation within the hour's budget."""
        return self.history.idle_options(gpus, now.timestamp())


def count_gpus(snapshot: Mapping[str, Any]) -> int:
    return sum(len(n.get("gpus") or []) for n in snapshot.get("nodes") or [])


def free_instances(snapshot: Mapping[str, Any]) -> dict[str, int]:
    """Free (not used) instances per profile in a planner-io snapshot dict."""
    free: dict[str, int] = {}
    for node in snapshot.get("nodes") or []:
        for gpu in node.get("gpus") or []:
            for inst in gpu.get("instances") or []:
                if not inst.get("used"):
                    free[inst["profile"]] = free.get(inst["profile"], 0) + 1
    return free
