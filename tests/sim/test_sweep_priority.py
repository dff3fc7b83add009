"""scripts/sweep_simulate.py --equal-priority: the same pods, every one at priority 0.

The counterfactual that separates who is served first (strict priority) from how much is served
(placement) in a sweep's p95 ratios (docs/simulate.md, "What strict priority costs the p95").
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from cdmo.sim.scenario import load_scenario
from cdmo.sim.workload import generate_workload
from tests.harness.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]

TINY = """\
name: tiny
description: one H100 node, an hour of small pods and a high-priority 7g stream
seed: 1
duration: 1h
fleet:
  - {name: h100, model: h100-80gb, count: 1, gpus: 2}
workload:
  streams:
    - name: queues
      rate_per_hour: 12
      mix:
        - {queue: slice-1, weight: 3, duration: {median: 10m, sigma: 0.5, max: 1h}}
        - {queue: slice-7, weight: 1, duration: {median: 20m, sigma: 0.5, max: 1h}, priority: 10}
policies: [dynamic, first-fit]
"""


def _sweep() -> ModuleType:
    return load_script("scripts/sweep_simulate.py")


def test_equal_priority_keeps_every_pod_but_its_priority() -> None:
    scenario = load_scenario(ROOT / "examples" / "clearml-queues.yaml")
    flat = _sweep().equal_priority(scenario)
    before = generate_workload(scenario, seed=100, duration=2 * 3600.0)
    after = generate_workload(flat, seed=100, duration=2 * 3600.0)
    assert any(p.priority for p in before)  # the shipped scenario has a priority-10 queue
    assert [p.priority for p in after] == [0] * len(after)
    assert [(p.arrival, p.duration, p.profile, p.count) for p in after] == [
        (p.arrival, p.duration, p.profile, p.count) for p in before
    ]


def test_the_sweep_says_and_records_that_priorities_were_equal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(TINY)
    out = tmp_path / "sweep.json"
    argv = [str(scenario), "--seeds", "1", "--policy", "first-fit", "--policy", "dynamic", "--json", str(out)]
    assert _sweep().main([*argv, "--equal-priority"]) == 0
    assert "every pod at priority 0" in capsys.readouterr().out
    assert json.loads(out.read_text())["equal_priority"] is True
    assert _sweep().main(argv) == 0
    assert "priority 0" not in capsys.readouterr().out
    assert json.loads(out.read_text())["equal_priority"] is False
