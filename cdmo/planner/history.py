"""What a caller keeps between plans for pre-warming, draining and idle defragmentation.

One implementation for the operator (cdmo.operator.warmth feeds it the pods its indexes show)
and the simulator (cdmo.sim.dynamic feeds it the simulated pods), so that the simulator runs the
operator's behaviour with the operator's defaults (cdmo.config.OperatorConfig):

- **Demand history.** Each pod counts once, when the caller first sees it ask for MIG devices
  (:meth:`DemandHistory.observe`), into a sliding window of ``prewarm_window_seconds``; the
  pre-warming targets come from it (:func:`cdmo.planner.options.prewarm_targets`).
- **Refill.** When the free instances of a profile in demand fall below its target
  (:meth:`DemandHistory.prewarm_short`), the caller plans although no pod waits.
- **Draining.** The GPUs the last plan drained go into the next plan's options.
- **Idle defragmentation.** The GPU-instance operations of idle plans in the last hour, and when
  the last idle look was, bound the next one.

Times are seconds on the caller's clock (floats); pure: no clock, no Kubernetes.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import replace

from cdmo.config import OperatorConfig
from cdmo.planner.models import Plan
from cdmo.planner.options import PlanOptions, drain_limit, kept_draining, targets_from_counts

#: Idle defragmentation's budget is per hour.
_HOUR = 3600.0


class DemandHistory:
    """Pods seen asking for MIG devices over the pre-warming window, and what the last plans did."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        #: (seconds, profile, devices) of pods first seen within the window, oldest first
        self.arrivals: deque[tuple[float, str, int]] = deque()
        self._seen: set[str] = set()
        self.draining: tuple[tuple[str, int], ...] = ()
        #: (seconds, GPU-instance operations) of idle plans in the last hour
        self._defrag_ops: deque[tuple[float, int]] = deque()
        self._defrag_last: float | None = None
        self._targets: dict[str, int] | None = None
        #: devices per profile in ``arrivals``, kept as they enter and leave the window, so that a
        #: target costs O(profiles) and not a walk of the window on every arrival
        self._counts: dict[str, int] = {}

    def observe(self, key: str, asks: Iterable[tuple[str, int]], at: float, now: float | None = None) -> bool:
        """Count pod ``key``'s asks (profile, devices) as made at ``at`` unless it was counted before.

        ``at`` is when the pod asked (its creation); ``now`` (default ``at``) is the caller's clock.
        A pod seen late (bound before the caller looked, or seen after a restart) still counts
        at its own time, and not at all when that is already out of the window. True if counted.
        """
        if key in self._seen:
            return False
        self._seen.add(key)
        now = at if now is None else now
        if at < now - self.config.prewarm_window_seconds:
            return False
        for profile, count in asks:
            if count > 0:
                if not self.arrivals or self.arrivals[-1][0] <= at:
                    self.arrivals.append((at, profile, count))
                else:
                    # Rare: a pod first seen after a newer one; keep the window sorted by time.
                    items = list(self.arrivals)
                    bisect.insort(items, (at, profile, count))
                    self.arrivals = deque(items)
                self._counts[profile] = self._counts.get(profile, 0) + count
                self._targets = None
        self._expire(now)
        return True

    def forget(self, keep: Iterable[str]) -> None:
        """Forget the pods not in ``keep`` (no longer asking), so memory stays flat."""
        self._seen &= set(keep)

    def forget_pod(self, key: str) -> None:
        """Forget one pod (it started or ended): memory stays flat."""
        self._seen.discard(key)

    def _expire(self, now: float) -> None:
        since = now - self.config.prewarm_window_seconds
        while self.arrivals and self.arrivals[0][0] < since:
            _, profile, count = self.arrivals.popleft()
            left = self._counts[profile] - count
            if left:
                self._counts[profile] = left
            else:
                del self._counts[profile]
            self._targets = None

    def targets(self, now: float) -> dict[str, int]:
        """Free instances to keep ready per profile now (empty when pre-warming is off)."""
        cfg = self.config
        if not cfg.prewarm:
            return {}
        self._expire(now)
        if self._targets is None:
            # the same as prewarm_targets(self.arrivals, now, ...) once expired
            self._targets = targets_from_counts(
                self._counts,
                window_seconds=cfg.prewarm_window_seconds,
                horizon_seconds=cfg.prewarm_horizon_seconds,
                max_per_profile=cfg.prewarm_max_per_profile,
            )
        return dict(self._targets)

    def prewarm_short(
        self, free: Mapping[str, int], now: float, profiles: Iterable[str] | None = None
    ) -> bool:
        """Whether some profile in demand has fewer free instances (``free``) than its target.

        ``profiles``: look only at these (the profiles of pods that just asked: a pod that took a
        ready instance of its profile is what calls for a refill; a profile that stays short
        because no free space can hold it must not make every pass plan).
        """
        targets = self.targets(now)
        names = targets if profiles is None else [p for p in profiles if p in targets]
        return any(free.get(p, 0) < targets[p] for p in names)

    def options(self, waited: Mapping[str, float], gpus: int, now: float) -> PlanOptions:
        """The next plan's options: pre-warming targets, drain limits, how long each pod waited."""
        cfg = self.config
        return PlanOptions(
            prewarm=self.targets(now),
            drain_max_gpus=drain_limit(cfg.drain_max_fraction, gpus),
            draining=self.draining,
            waited=dict(waited),
            drain_after_seconds=cfg.drain_after_seconds,
            drain_max_used_share=cfg.drain_max_used_share,
            drain_max_model_share=cfg.drain_max_fraction,
            drain_yield_after_seconds=cfg.drain_yield_after_seconds,
            reclaim_max_used_share=cfg.reclaim_max_used_share,
        )

    def remember(self, plan: Plan, now: float, *, idle: bool = False) -> None:
        """Keep what the next plan needs: the drained GPUs, and an idle plan's operations."""
        self.draining = kept_draining(
            self.draining, [n.name for n in plan.nodes], [(d.node, d.gpu) for d in plan.draining]
        )
        if idle:
            self._defrag_ops.append((now, plan.summary.created + plan.summary.destroyed))

    def defrag_budget(self, now: float) -> int:
        """GPU-instance operations an idle plan may spend now (0: not yet, or nothing left)."""
        cfg = self.config
        if cfg.defrag_ops_per_hour <= 0:
            return 0
        if self._defrag_last is not None and now - self._defrag_last < cfg.defrag_interval_seconds:
            return 0
        while self._defrag_ops and self._defrag_ops[0][0] <= now - _HOUR:
            self._defrag_ops.popleft()
        return max(0, cfg.defrag_ops_per_hour - sum(n for _, n in self._defrag_ops))

    def idle_options(self, gpus: int, now: float) -> PlanOptions:
        """Options of a plan while no pod waits: idle defragmentation within the hour's budget."""
        budget = self.defrag_budget(now)
        self._defrag_last = now
        # Room is made for the profiles pods asked for lately (the planner tries the largest first).
        self._expire(now)
        asked = tuple(sorted(self._counts))
        return replace(self.options({}, gpus, now), defrag_ops=budget, defrag_profiles=asked)
