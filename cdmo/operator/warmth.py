"""What the operator keeps between plans for pre-warming and draining, and the options it builds.

Pure: the loop feeds it the pending pods it sees and the clock; it returns
:class:`cdmo.planner.PlanOptions` (cdmo.config.OperatorConfig holds the settings).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from cdmo.config import OperatorConfig
from cdmo.errors import InvalidInput
from cdmo.mig.resources import profile_from_resource
from cdmo.operator.demand import parse_time
from cdmo.planner import Plan, PlanOptions
from cdmo.planner.options import drain_limit, kept_draining, prewarm_targets


class DemandHistory:
    """Pods seen asking for MIG devices (each once, when first seen) over the pre-warming window,
    and the GPUs the last plan drained."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        #: (seconds since the epoch, profile, devices), oldest first
        self.arrivals: deque[tuple[float, str, int]] = deque()
        self._seen: set[str] = set()
        self.draining: tuple[tuple[str, int], ...] = ()
        #: (seconds since the epoch, GPU-instance operations) of idle plans in the last hour
        self._defrag_ops: deque[tuple[float, int]] = deque()
        self._defrag_last: float | None = None

    def observe(self, pending: Iterable[Mapping[str, Any]], now: datetime) -> None:
        """Record pods not seen before; forget pods no longer pending (memory stays flat)."""
        t = now.timestamp()
        keys = set()
        for pod in pending:
            key = pod["key"]
            keys.add(key)
            if key in self._seen:
                continue
            self._seen.add(key)
            for resource, count in sorted((pod.get("requests") or {}).items()):
                try:
                    self.arrivals.append((t, profile_from_resource(resource), int(count)))
                except (InvalidInput, ValueError):
                    continue
        self._seen &= keys
        while self.arrivals and self.arrivals[0][0] < t - self.config.prewarm_window_seconds:
            self.arrivals.popleft()

    def options(self, plannable: Iterable[Mapping[str, Any]], gpus: int, now: datetime) -> PlanOptions:
        """The next plan's options: pre-warming targets, drain limits, how long each pod waited."""
        cfg = self.config
        prewarm = (
            prewarm_targets(
                self.arrivals,
                now.timestamp(),
                window_seconds=cfg.prewarm_window_seconds,
                horizon_seconds=cfg.prewarm_horizon_seconds,
                max_per_profile=cfg.prewarm_max_per_profile,
            )
            if cfg.prewarm
            else {}
        )
        waited = {}
        for pod in plannable:
            created = parse_time(pod.get("created"))
            if created is not None:
                waited[pod["key"]] = max(0.0, (now - created).total_seconds())
        return PlanOptions(
            prewarm=prewarm,
            drain_max_gpus=drain_limit(cfg.drain_max_fraction, gpus),
            draining=self.draining,
            waited=waited,
            drain_after_seconds=cfg.drain_after_seconds,
            drain_max_used_share=cfg.drain_max_used_share,
        )

    def remember(self, plan: Plan, now: datetime, *, idle: bool = False) -> None:
        """Keep what the next plan needs: the drained GPUs, and an idle plan's operations."""
        self.draining = kept_draining(
            self.draining, [n.name for n in plan.nodes], [(d.node, d.gpu) for d in plan.draining]
        )
        if idle:
            self._defrag_ops.append((now.timestamp(), plan.summary.created + plan.summary.destroyed))

    def defrag_budget(self, now: datetime) -> int:
        """GPU-instance operations an idle plan may spend now (0: not yet, or nothing left)."""
        cfg = self.config
        t = now.timestamp()
        if cfg.defrag_ops_per_hour <= 0:
            return 0
        if self._defrag_last is not None and t - self._defrag_last < cfg.defrag_interval_seconds:
            return 0
        while self._defrag_ops and self._defrag_ops[0][0] <= t - 3600:
            self._defrag_ops.popleft()
        return max(0, cfg.defrag_ops_per_hour - sum(n for _, n in self._defrag_ops))

    def idle_options(self, gpus: int, now: datetime) -> PlanOptions:
        """Options of a plan while no pod waits: idle defragmentation within the hour's budget."""
        budget = self.defrag_budget(now)
        self._defrag_last = now.timestamp()
        # Room is made for the profiles pods asked for lately (the planner tries the largest first).
        asked = tuple(sorted({profile for _, profile, _ in self.arrivals}))
        return replace(self.options([], gpus, now), defrag_ops=budget, defrag_profiles=asked)


def count_gpus(snapshot: Mapping[str, Any]) -> int:
    return sum(len(n.get("gpus") or []) for n in snapshot.get("nodes") or [])
