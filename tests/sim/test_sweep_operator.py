"""scripts/sweep_simulate.py --operator: the dynamic policy runs with the configuration asked for.

The configuration travels as an argument (run_policy -> make_policy -> DynamicPolicy), so a sweep
never patches cdmo in-process and a worker process would get it too.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from cdmo.config import OperatorConfig
from cdmo.sim.dynamic import DynamicPolicy
from cdmo.sim.policies import make_policy
from cdmo.sim.runner import run_policy
from cdmo.sim.scenario import load_scenario
from cdmo.sim.workload import generate_workload
from tests.harness.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]


def _sweep() -> ModuleType:
    return load_script("scripts/sweep_simulate.py")


def test_make_policy_gives_the_dynamic_policies_the_operator_configuration() -> None:
    scenario = load_scenario(ROOT / "examples" / "clearml-queues.yaml")
    config = OperatorConfig(prewarm=False, drain_max_fraction=0.0)
    for name in ("dynamic", "dynamic-sighup"):
        policy = make_policy(name, scenario, config)
        assert isinstance(policy, DynamicPolicy)
        assert policy.operator is config
    default = make_policy("dynamic", scenario)
    assert isinstance(default, DynamicPolicy)
    assert default.operator == OperatorConfig()


def test_run_policy_with_pre_warming_off_starts_no_pod_on_a_pre_warmed_instance() -> None:
    scenario = load_scenario(ROOT / "examples" / "clearml-queues.yaml")
    pods = generate_workload(scenario, seed=100, duration=2 * 3600.0)
    on = run_policy(scenario, pods, "dynamic", horizon=2 * 3600.0)
    off = run_policy(scenario, pods, "dynamic", horizon=2 * 3600.0, operator=OperatorConfig(prewarm=False))

    def waited(run: object) -> list[float]:
        return [s - p.arrival for p, s in zip(run.pods, run.start_times, strict=True) if s is not None]  # type: ignore[attr-defined]

    # Pre-warming lets most pods start at once; without it every pod waits for its instance.
    assert sum(w == 0 for w in waited(on)) > sum(w == 0 for w in waited(off))


def test_operator_pairs_read_as_the_operator_reads_its_environment() -> None:
    sweep = _sweep()
    config = sweep.operator_config(["prewarm=false", "drain_yield_after_seconds=60"])
    assert config == OperatorConfig(prewarm=False, drain_yield_after_seconds=60.0)


@pytest.mark.parametrize(
    ("pair", "says"),
    [
        ("nosuch=1", "give FIELD=VALUE with FIELD one of"),
        ("prewarm", "give FIELD=VALUE"),
        ("prewarm=maybe", "--operator 'prewarm=maybe': not a valid bool"),
        ("drain_max_fraction=lots", "--operator 'drain_max_fraction=lots': not a valid float"),
    ],
)
def test_a_bad_operator_pair_is_one_line_and_exit_2(
    pair: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _sweep()
    with pytest.raises(SystemExit) as exited:
        sweep.main([str(ROOT / "examples" / "clearml-queues.yaml"), "--operator", pair])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert says in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--seeds", "abc"], "argument --seeds: 'abc': give a range LO-HI"),
        (["--seeds", "9-2"], "argument --seeds: '9-2'"),
        (["--seeds", "0-5000"], "at most 1000 seeds"),
        (["--rate", "-1"], "argument --rate: '-1': give a multiplier above 0 and at most 10"),
        (["--rate", "1e9"], "argument --rate: '1e9'"),
        (["--rate", "nan"], "argument --rate: 'nan'"),
        (["--seeds", "1", "--policy", "ideal", "--policy", "nosuch"], "--policy: unknown policy 'nosuch'"),
    ],
)
def test_a_bad_seed_list_or_rate_is_one_line_and_exit_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before these were checked, a bad list ended in a traceback, and a huge rate or seed range in
    # a sweep that would not finish.
    with pytest.raises(SystemExit) as exited:
        _sweep().main([str(ROOT / "examples" / "clearml-queues.yaml"), *argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert says in err
    assert "Traceback" not in err


def test_a_missing_scenario_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        _sweep().main([str(tmp_path / "nosuch.yaml"), "--seeds", "1"])
    assert exited.value.code == 2
    assert "nosuch.yaml: no such file" in capsys.readouterr().err


def test_seed_lists_and_ranges_read_as_written() -> None:
    assert _sweep().seeds_arg("100-103") == [100, 101, 102, 103]
    assert _sweep().seeds_arg("5,1,9") == [5, 1, 9]
    assert _sweep().rate_arg("1.4") == 1.4
