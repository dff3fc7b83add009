"""The operator's demand history (pre-warming) and drain memory: pure, fed the pods and the clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cdmo.config import OperatorConfig
from cdmo.operator.warmth import DemandHistory
from cdmo.planner import Drain, Plan, PlanSummary

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def pod(key: str, resource: str, count: int = 1, created: datetime = T0) -> dict[str, object]:
    return {"key": key, "requests": {resource: count}, "created": created.isoformat()}


def test_each_pod_counts_once_and_old_demand_ages_out() -> None:
    history = DemandHistory(OperatorConfig(prewarm_window_seconds=600, prewarm_horizon_seconds=60))
    a = pod("default/a", "nvidia.com/mig-1g.10gb")
    history.observe([a], T0)
    history.observe([a, pod("default/b", "nvidia.com/mig-7g.80gb")], T0 + timedelta(seconds=30))
    options = history.options([], 8, T0 + timedelta(seconds=60))
    assert options.prewarm == {"1g.10gb": 1, "7g.80gb": 1}
    history.observe([], T0 + timedelta(seconds=1000))
    assert history.options([], 8, T0 + timedelta(seconds=1000)).prewarm == {}


def test_prewarm_off_and_drain_settings_come_from_the_config() -> None:
    cfg = OperatorConfig(prewarm=False, drain_max_fraction=0.25, drain_after_seconds=120)
    history = DemandHistory(cfg)
    history.observe([pod("default/a", "nvidia.com/mig-1g.10gb")], T0)
    waiting = [pod("default/a", "nvidia.com/mig-1g.10gb", created=T0 - timedelta(seconds=90))]
    options = history.options(waiting, 8, T0)
    assert options.prewarm == {}
    assert options.drain_max_gpus == 2 and options.drain_after_seconds == 120
    assert options.waited == {"default/a": 90.0}


def test_drained_gpus_are_passed_to_the_next_plan() -> None:
    history = DemandHistory(OperatorConfig())
    summary = PlanSummary((), 0, 0, 0, 0, 0)
    history.remember(Plan((), (), (), summary, draining=(Drain("gpu-1", 3, "default/big"),)), T0)
    assert history.options([], 8, T0).draining == (("gpu-1", 3),)


def test_idle_defrag_keeps_its_interval_and_hourly_budget() -> None:
    history = DemandHistory(OperatorConfig(defrag_ops_per_hour=10, defrag_interval_seconds=300))
    assert history.defrag_budget(T0) == 10
    options = history.idle_options(8, T0)
    assert options.defrag_ops == 10
    history.remember(Plan((), (), (), PlanSummary((), 4, 4, 0, 0, 0)), T0, idle=True)
    assert history.defrag_budget(T0 + timedelta(seconds=60)) == 0  # within the interval
    assert history.defrag_budget(T0 + timedelta(seconds=400)) == 2  # 8 of 10 spent this hour
    assert history.defrag_budget(T0 + timedelta(seconds=3700)) == 10
    assert DemandHistory(OperatorConfig(defrag_ops_per_hour=0)).defrag_budget(T0) == 0


def test_idle_defrag_makes_room_for_the_profiles_asked_for_lately() -> None:
    history = DemandHistory(OperatorConfig())
    history.observe(
        [pod("default/a", "nvidia.com/mig-7g.80gb"), pod("default/b", "nvidia.com/mig-1g.10gb")], T0
    )
    assert history.idle_options(8, T0).defrag_profiles == ("1g.10gb", "7g.80gb")
    history.observe([], T0 + timedelta(seconds=2000))  # out of the window: nothing in demand
    assert history.idle_options(8, T0 + timedelta(seconds=2000)).defrag_profiles == ()
