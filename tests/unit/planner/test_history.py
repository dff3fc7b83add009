"""The demand history the operator and the simulator share (cdmo.planner.history)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cdmo.config import OperatorConfig
from cdmo.planner import Drain, Plan, PlanSummary
from cdmo.planner.history import DemandHistory
from cdmo.planner.options import prewarm_targets

CFG = OperatorConfig(prewarm_window_seconds=600, prewarm_horizon_seconds=60, prewarm_max_per_profile=2)


def test_each_pod_counts_once_at_its_own_time() -> None:
    history = DemandHistory(CFG)
    history.observe("default/a", [("1g.10gb", 1)], 100.0)
    history.observe("default/a", [("1g.10gb", 1)], 100.0, now=200.0)  # seen again: not counted
    # Seen late (it was bound before the caller looked): counted at its creation, kept in order.
    history.observe("default/b", [("2g.20gb", 1)], 50.0, now=200.0)
    assert list(history.arrivals) == [(50.0, "2g.20gb", 1), (100.0, "1g.10gb", 1)]
    assert history.targets(200.0) == {"1g.10gb": 1, "2g.20gb": 1}
    # Created before the window: not demand any more.
    history.observe("default/old", [("7g.80gb", 1)], 0.0, now=700.0)
    assert "7g.80gb" not in history.targets(700.0)
    assert history.targets(700.0) == {"1g.10gb": 1}  # 2g's ask at 50 s left the window at 650 s


def test_targets_follow_the_rate_and_stop_at_the_cap() -> None:
    history = DemandHistory(CFG)
    for i in range(40):  # 40 asks in 400 s: 6 expected per minute, capped at 2
        history.observe(f"default/p{i}", [("1g.10gb", 1)], float(i * 10))
    assert history.targets(400.0) == {"1g.10gb": 2}
    assert DemandHistory(OperatorConfig(prewarm=False)).targets(400.0) == {}


def test_prewarm_short_compares_free_instances_with_the_targets() -> None:
    history = DemandHistory(CFG)
    history.observe("default/a", [("1g.10gb", 1)], 0.0)
    assert history.prewarm_short({}, 10.0)
    assert not history.prewarm_short({"1g.10gb": 1}, 10.0)
    assert not history.prewarm_short({}, 1000.0)  # the ask left the window


def test_options_carry_the_operator_settings_and_the_drained_gpus() -> None:
    cfg = OperatorConfig(drain_max_fraction=0.25, drain_after_seconds=120, drain_yield_after_seconds=240)
    history = DemandHistory(cfg)
    history.remember(
        Plan((), (), (), PlanSummary((), 0, 0, 0, 0, 0), draining=(Drain("gpu-1", 3, "default/big"),)), 0.0
    )
    options = history.options({"default/a": 90.0}, 8, 0.0)
    assert options.drain_max_gpus == 2 and options.drain_max_model_share == 0.25
    assert options.drain_after_seconds == 120 and options.drain_yield_after_seconds == 240
    assert options.draining == (("gpu-1", 3),) and options.waited == {"default/a": 90.0}


def test_forgotten_pods_count_again_when_seen_again() -> None:
    history = DemandHistory(CFG)
    history.observe("default/a", [("1g.10gb", 1)], 0.0)
    history.forget([])
    history.observe("default/a", [("1g.10gb", 1)], 10.0)
    assert len(history.arrivals) == 2
    history.forget_pod("default/a")
    history.observe("default/a", [("1g.10gb", 1)], 20.0)
    assert len(history.arrivals) == 3


def test_refill_looks_only_at_the_profiles_that_just_asked() -> None:
    history = DemandHistory(CFG)
    history.observe("default/a", [("1g.10gb", 1)], 0.0)
    history.observe("default/b", [("7g.80gb", 1)], 0.0)
    free = {"1g.10gb": 1}  # no 7g free: no free space may hold one
    assert history.prewarm_short(free, 10.0)
    assert not history.prewarm_short(free, 10.0, ["1g.10gb"])
    assert history.prewarm_short(free, 10.0, ["7g.80gb"])
    assert not history.prewarm_short(free, 10.0, ["2g.20gb"])  # not in demand at all
    # observe says whether the pod was counted now (a refill is for new asks only).
    assert not history.observe("default/a", [("1g.10gb", 1)], 20.0)
    assert history.observe("default/c", [("1g.10gb", 1)], 20.0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 2000, allow_nan=False),  # when the pod asked
            st.floats(0, 300, allow_nan=False),  # how late the caller saw it
            st.sampled_from(["1g.10gb", "2g.20gb", "7g.80gb"]),
            st.integers(1, 3),
        ),
        max_size=60,
    )
)
def test_kept_counts_give_the_targets_a_walk_of_the_window_gives(
    asks: list[tuple[float, float, str, int]],
) -> None:
    # The history keeps devices per profile as asks enter and leave the window; the targets must
    # be those of prewarm_targets over the whole window, whatever order the pods are seen in.
    cfg = OperatorConfig(prewarm_window_seconds=300, prewarm_horizon_seconds=60, prewarm_max_per_profile=5)
    history = DemandHistory(cfg)
    now = 0.0
    for i, (at, late, profile, count) in enumerate(asks):
        now = max(now, at + late)
        history.observe(f"default/p{i}", [(profile, count)], at, now=now)
        expected = prewarm_targets(
            list(history.arrivals),
            now,
            window_seconds=cfg.prewarm_window_seconds,
            horizon_seconds=cfg.prewarm_horizon_seconds,
            max_per_profile=cfg.prewarm_max_per_profile,
        )
        assert history.targets(now) == expected
