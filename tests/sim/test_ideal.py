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


def _reference_starts(scenario: object, pods: list[PodSpec], horizon: float) -> list[float | None]:
    """The ideal fleet as its docstring says, written plainly: every waiting pod tried at every end."""
    import heapq

    fleet = [
        (g.model, [[g.model.placement_axis_size, g.model.compute_slices_total, {}] for _ in range(g.gpus)])
        for g in scenario.fleet
        for _ in range(g.count)
    ]  # type: ignore[attr-defined]
    start: list[float | None] = [None] * len(pods)
    held: dict[int, list[tuple[int, int, object]]] = {}  # pod -> (node, GPU, profile) per device
    ends: list[tuple[float, int]] = []

    def place(i: int, now: float) -> bool:
        pod = pods[i]
        for n, (model, gpus) in enumerate(fleet):
            if not model.has_profile(pod.profile):
                continue
            prof = model.profile(pod.profile)
            trial = [[u, s, dict(c)] for u, s, c in gpus]
            took = []
            for _ in range(pod.count):
                for k, gpu in enumerate(trial):
                    if (
                        gpu[0] >= prof.placement_size
                        and gpu[1] >= prof.compute_slices
                        and gpu[2].get(prof.name, 0) < prof.max_count
                    ):
                        gpu[0] -= prof.placement_size
                        gpu[1] -= prof.compute_slices
                        gpu[2][prof.name] = gpu[2].get(prof.name, 0) + 1
                        took.append(k)
                        break
            if len(took) == pod.count:
                gpus[:] = trial
                held[i] = [(n, k, prof) for k in took]
                start[i] = now
                heapq.heappush(ends, (now + pod.duration, i))
                return True
        return False

    waiting: list[int] = []
    order = sorted(range(len(pods)), key=lambda i: pods[i].arrival)
    nxt = 0
    while True:
        t_arr = pods[order[nxt]].arrival if nxt < len(order) else float("inf")
        t_end = ends[0][0] if ends else float("inf")
        now = min(t_arr, t_end)
        if now >= horizon:
            return start
        if t_arr <= t_end:
            nxt += 1
            if not place(order[nxt - 1], now):
                waiting.append(order[nxt - 1])
            continue
        _, i = heapq.heappop(ends)
        for n, k, prof in held.pop(i):
            gpu = fleet[n][1][k]
            gpu[0] += prof.placement_size
            gpu[1] += prof.compute_slices
            gpu[2][prof.name] -= 1
        waiting.sort(key=lambda i: (-pods[i].priority, pods[i].arrival, i))
        waiting = [i for i in waiting if not place(i, now)]


MULTI = """\
name: multi
duration: 2h
fleet:
  - {name: h100, model: h100-80gb, count: 3, gpus: 2}
workload:
  rate_per_hour: 80
  mix:
    - {profile: 3g.40gb, count: 1, weight: 2, duration: {median: 20m, sigma: 0.5, max: 1h}}
    - {profile: 3g.40gb, count: 3, weight: 1, duration: {median: 20m, sigma: 0.5, max: 1h}}
    - {profile: 1g.10gb, count: 2, weight: 2, duration: {median: 10m, sigma: 0.5, max: 1h}}
"""


@pytest.mark.parametrize(
    ("scenario", "rate"), [("clearml-queues.yaml", 3.0), ("mixed-fleet.yaml", 1.6), ("multi", 1.0)]
)
def test_the_fast_ideal_run_starts_every_pod_when_the_plain_one_does(
    tmp_path: Path, scenario: str, rate: float
) -> None:
    # ideal_run skips kinds of pods (profile and count) that already failed in a pass, and nodes
    # without enough free slices; a plain version of the same rules must start every pod at the
    # same time. "multi" has pods of one profile with different counts.
    if scenario == "multi":
        path = tmp_path / "multi.yaml"
        path.write_text(MULTI)
        base = load_scenario(path)
    else:
        base = load_scenario(Path(__file__).resolve().parents[2] / "examples" / scenario)
    loaded = _sweep().scaled(base, rate)
    horizon = 2 * 3600.0
    pods = list(generate_workload(loaded, seed=7, duration=horizon))
    got = _sweep().ideal_run(loaded, pods, horizon).start_times
    assert sum(t is None for t in got) > 0 or scenario == "mixed-fleet.yaml"  # pods left waiting
    assert got == _reference_starts(loaded, pods, horizon)
