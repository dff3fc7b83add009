"""scripts/running_by_profile.py: pods of each profile running over time, per policy."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from cdmo.sim.engine import Simulation
from cdmo.sim.policies import StaticPolicy
from cdmo.sim.scenario import parse_scenario
from cdmo.sim.workload import PodSpec
from tests.harness.scripts import load_script

TINY = """\
name: tiny
seed: 2
duration: 2h
fleet:
  - {name: h100, model: h100-80gb, count: 1, gpus: 2}
workload:
  rate_per_hour: 20
  mix:
    - {queue: slice-1, weight: 3, duration: {median: 10m, sigma: 0.5, max: 1h}}
    - {queue: slice-7, weight: 1, duration: {median: 20m, sigma: 0.5, max: 1h}}
"""


def _script() -> ModuleType:
    return load_script("scripts/running_by_profile.py")


def test_a_pod_counts_from_its_start_until_its_end_and_one_never_started_not_at_all() -> None:
    scenario = parse_scenario(
        {
            "duration": "1h",
            "fleet": [{"model": "h100-80gb", "count": 1, "gpus": 1}],
            "workload": {"rate_per_hour": 1, "mix": [{"queue": "slice-7", "duration": "1m"}]},
        },
        base_dir=Path("/"),
    )
    pods = [
        PodSpec(0, "a", 0, "7g.80gb", 1, 100, 0),
        PodSpec(1, "b", 10, "7g.80gb", 1, 100, 0),  # waits for a; starts at 101 (1 s retry)
        PodSpec(2, "c", 20, "1g.10gb", 1, 100, 0),  # all-7g offers no 1g: never starts
    ]
    run = Simulation(scenario, pods, StaticPolicy("all-7g")).run()
    assert run.start_times == [0.0, 101.0, None]
    got = _script().running(run, [0, 50, 100, 150, 201, 250])
    assert got == {"1g.10gb": [0, 0, 0, 0, 0, 0], "7g.80gb": [1, 1, 0, 1, 0, 0]}


def test_it_prints_the_range_per_profile_for_each_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    assert _script().main([str(path), "--from", "30m", "--step", "10m", "--policy", "first-fit"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "tiny x1, seed 2: pods running from 30m to the end, every 10m (least-most)"
    assert lines[1].split()[0] == "first-fit"
    assert "1g.10gb " in lines[1] and "7g.80gb " in lines[1]
    assert len(lines) == 2


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--from", "3h"], "--from 3h is not before the end of the run"),
        (["--from", "soon"], "is not a duration"),
        (["--step", "0s"], "--step"),
        (["--step", "0.0001"], "samples; at most 100000"),
        (["--seed", "-1"], "--seed -1 must be >= 0"),
        (["--rate", "0"], "--rate"),
        (["--policy", "ideal"], "--policy: unknown policy 'ideal'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    with pytest.raises(SystemExit) as exc:
        _script().main([str(path), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert says in err[-1]
    assert "Traceback" not in "\n".join(err)
