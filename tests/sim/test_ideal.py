"""The ideal fleet of scripts/sweep_simulate.py: no placement rules and no reconfiguration time,
but the hardware's capacity.

Without placement rules a device may start anywhere; it still takes its compute slices, its
placement units, and counts against its profile's most instances per GPU. An earlier version
pooled placement units only, so an H100 (8 units, 7 compute slices) held eight 1g.10gb or four
2g.20gb: 8/7 of the hardware, which made the ideal fleet look far ahead of any real policy.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from cdmo.sim.metrics import summarize
from cdmo.sim.scenario import load_scenario, parse_scenario
from cdmo.sim.workload import PodSpec, generate_workload
from tests.harness.scripts import load_script


def _sweep() -> ModuleType:
    return load_script("scripts/sweep_simulate.py")


def _one_h100() -> object:
    return parse_scenario(
        {
            "duration": "1h",
            "fleet": [{"model": "h100-80gb", "count": 1, "gpus": 1}],
            "workload": {"rate_per_hour": 1, "mix": [{"queue": "slice-1", "duration": "1m"}]},
        },
        base_dir=Path("/"),
    )


def _starts(rows: list[tuple[str, float]]) -> list[float | None]:
    pods = [PodSpec(i, f"p{i}", 0.0, profile, 1, duration, 0) for i, (profile, duration) in enumerate(rows)]
    return _sweep().ideal_run(_one_h100(), pods, 3600.0).start_times  # type: ignore[no-any-return]


def test_an_h100_holds_seven_1g_not_eight() -> None:
    # Eight placement units but seven compute slices: the eighth waits for the first to end.
    assert _starts([("1g.10gb", 100.0 + i) for i in range(8)]) == [0.0] * 7 + [100.0]


def test_an_h100_holds_three_2g_not_four() -> None:
    assert _starts([("2g.20gb", 100.0)] * 4) == [0.0, 0.0, 0.0, 100.0]


def test_a_4g_and_a_3g_share_an_h100_and_a_7g_waits_for_both() -> None:
    # 4 + 3 compute slices, 4 + 4 units: the whole GPU, as MIG's 4g.40gb@0 + 3g.40gb@4.
    assert _starts([("4g.40gb", 100.0), ("3g.40gb", 200.0), ("7g.80gb", 50.0)]) == [0.0, 0.0, 200.0]


def test_a_profile_limited_to_one_per_gpu_stays_one() -> None:
    # 1g.10gb+me (media extensions): at most one per GPU, however much room is left.
    assert _starts([("1g.10gb+me", 100.0), ("1g.10gb+me", 100.0), ("1g.10gb", 100.0)]) == [0.0, 100.0, 0.0]


@pytest.mark.parametrize("scenario", ["clearml-queues.yaml", "mixed-fleet.yaml"])
def test_the_ideal_fleet_never_holds_more_than_the_fleets_compute_slices(scenario: str) -> None:
    base = load_scenario(Path(__file__).resolve().parents[2] / "examples" / scenario)
    loaded = _sweep().scaled(base, 3.0)  # far above capacity: every GPU full most of the time
    horizon = 3 * 3600.0
    pods = generate_workload(loaded, seed=5, duration=horizon)
    run = _sweep().ideal_run(loaded, pods, horizon)
    assert summarize(run)["utilization"] <= 1.0
    # Held slices at every pod start, from the starts and durations: never above the fleet's.
    events = sorted((t, i) for i, t in enumerate(run.start_times) if t is not None)
    slices = {
        p.profile: m.profile(p.profile).compute_slices
        for m in loaded.models
        for p in pods
        if m.has_profile(p.profile)
    }
    for t, _ in events[:: max(1, len(events) // 200)]:
        held = sum(
            slices[p.profile] * p.count
            for p, s in zip(pods, run.start_times, strict=True)
            if s is not None and s <= t < s + p.duration
        )
        assert held <= run.total_slices
