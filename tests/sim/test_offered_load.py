"""Offered load: the work the pods bring (compute slices x duration) over the fleet's capacity.

Above 100% the fleet falls behind whatever the policy, and no policy's utilization exceeds it
(docs/simulate.md, "What the result says"). ``cdmo simulate`` says it, and the load sweeps record
it per rate beside each policy's utilization.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdmo.cli import main
from cdmo.mig.catalog import get_model, model_keys
from cdmo.sim.metrics import summarize
from cdmo.sim.runner import run_policy
from cdmo.sim.scenario import load_scenario
from cdmo.sim.workload import PodSpec, generate_workload, offered_slice_seconds
from tests.harness.scripts import load_script

SCENARIO = """\
name: small
seed: 3
duration: 2h
fleet:
  - {name: h100, model: h100-80gb, count: 1, gpus: 2}
workload:
  streams:
    - name: queues
      rate_per_hour: RATE
      mix:
        - {queue: slice-1, weight: 3, duration: {median: 10m, sigma: 0.5, max: 1h}}
        - {queue: slice-4, weight: 1, duration: {median: 20m, sigma: 0.5, max: 1h}}
        - {queue: slice-7, weight: 1, duration: {median: 20m, sigma: 0.5, max: 1h}, priority: 10}
policies: [dynamic, first-fit]
"""


def test_each_pod_arriving_before_the_horizon_brings_its_compute_slices_x_count_x_duration() -> None:
    a30, h100 = get_model("a30-24gb"), get_model("h100-80gb")
    pods = [
        PodSpec(0, "a", 0.0, "1g.6gb", 2, 100.0, 0),  # A30 only: 2 x 1 slice x 100 s
        PodSpec(1, "b", 950.0, "3g.40gb", 1, 100.0, 0),  # H100: 3 slices x 100 s, past the end too
        PodSpec(2, "c", 1000.0, "7g.80gb", 1, 100.0, 0),  # arrives at the horizon: not offered
    ]
    assert offered_slice_seconds(pods, (a30, h100), 1000.0) == 2 * 100 + 3 * 100
    with pytest.raises(ValueError, match=r"no model of the fleet offers 1g\.6gb"):
        offered_slice_seconds(pods[:1], (h100,), 1000.0)


@pytest.mark.parametrize("rate", [6, 40])
def test_no_policy_holds_more_than_is_offered_and_the_ideal_fleet_at_low_load_holds_all_of_it(
    tmp_path: Path, rate: int
) -> None:
    path = tmp_path / "small.yaml"
    path.write_text(SCENARIO.replace("RATE", str(rate)))
    scenario = load_scenario(path)
    # Arrivals in the first hour of the two, each at most an hour long: every pod that starts on
    # arrival ends within the run, so the ideal fleet can hold all the work offered.
    pods = generate_workload(scenario, seed=3, duration=scenario.duration / 2)
    sweep = load_script("scripts/sweep_simulate.py")
    ideal = summarize(sweep.ideal_run(scenario, pods, scenario.duration))
    offered = ideal["offered_load"]
    assert offered > 0
    for name in ("dynamic", "first-fit"):
        summary = summarize(run_policy(scenario, pods, name, horizon=scenario.duration))
        assert summary["offered_load"] == offered  # one workload, whatever the policy
        assert summary["utilization"] <= offered
    if rate == 6:  # 6 pods an hour on 2 GPUs: the ideal fleet starts every pod on arrival
        assert ideal["utilization"] == pytest.approx(offered, abs=1e-4)
    else:  # 40 an hour for an hour brings more than 2 GPUs hold in two: even the ideal falls behind
        assert offered > 0.5
        assert ideal["utilization"] < offered - 0.05


def test_the_sweep_prints_and_records_the_offered_load_per_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "small.yaml"
    path.write_text(SCENARIO.replace("RATE", "6"))
    out = tmp_path / "sweep.json"
    argv = [
        str(path),
        "--seeds",
        "3,4",
        "--rate",
        "1",
        "--rate",
        "2",
        "--policy",
        "first-fit",
        "--json",
        str(out),
    ]
    assert load_script("scripts/sweep_simulate.py").main(argv) == 0
    data = json.loads(out.read_text())
    printed = capsys.readouterr().out
    for entry in data["rates"]:
        runs = [run["first-fit"]["offered_load"] for run in entry["runs"].values()]
        assert entry["offered_load"] == pytest.approx(sum(runs) / len(runs), abs=1e-4)
        assert f"offered load {entry['offered_load']:.1%} of the fleet's slices" in printed
    low, high = (e["offered_load"] for e in data["rates"])
    assert high > 1.5 * low  # twice the rate, about twice the load (other draws of the same seeds)


@pytest.mark.parametrize(("rate", "overloaded"), [(6, False), (40, True)])
def test_simulate_says_the_offered_load_and_when_it_is_more_than_the_fleet_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rate: int, overloaded: bool
) -> None:
    path = tmp_path / "small.yaml"
    path.write_text(SCENARIO.replace("RATE", str(rate)))
    assert main(["simulate", str(path), "--policy", "first-fit", "--output", "json"]) == 0
    offered = json.loads(capsys.readouterr().out)["first-fit"]["offeredLoad"]
    assert main(["simulate", str(path), "--policy", "first-fit"]) == 0
    said = capsys.readouterr().out.splitlines()[0]
    assert f"offered load {100 * offered:.1f}% of the fleet's compute slices" in said
    assert (
        "more than it can do in the run: whatever the policy, pods wait or run past the end" in said
    ) is overloaded
    assert (offered > 1) is overloaded


def test_a_profile_has_the_same_compute_slices_on_every_model_that_offers_it() -> None:
    # offered_slice_seconds takes a profile's slices from the first model that offers it.
    seen: dict[str, set[int]] = {}
    for key in model_keys():
        for profile in get_model(key).profiles:
            seen.setdefault(profile.name, set()).add(profile.compute_slices)
    assert len(seen) > 10
    assert {name: counts for name, counts in seen.items() if len(counts) > 1} == {}
