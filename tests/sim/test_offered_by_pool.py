"""scripts/offered_by_pool.py: offered load per pool of GPU models that the workload's profiles join."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from cdmo.mig.catalog import get_model
from cdmo.sim.scenario import load_scenario
from cdmo.sim.workload import generate_workload, offered_slice_seconds
from tests.harness.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    return load_script("scripts/offered_by_pool.py")


def _keys(pools: list[tuple[object, ...]]) -> list[list[str]]:
    return [[m.key for m in pool] for pool in pools]  # type: ignore[attr-defined]


def test_models_that_offer_a_wanted_profile_are_one_pool() -> None:
    a40, a80, h100, h200 = (get_model(k) for k in ("a100-40gb", "a100-80gb", "h100-80gb", "h200-141gb"))
    models = (a40, a80, h100, h200)
    # 3g.40gb is on A100-80GB and H100 only; 7g.141gb on H200 only; nothing joins the A100-40GB.
    assert _keys(_script().pools(models, {"3g.40gb", "7g.141gb"})) == [
        ["a100-40gb"],
        ["a100-80gb", "h100-80gb"],
        ["h200-141gb"],
    ]
    # 1g.10gb is on the A100-40GB too (two memory slices there): it joins the three.
    assert _keys(_script().pools(models, {"3g.40gb", "1g.10gb"})) == [
        ["a100-40gb", "a100-80gb", "h100-80gb"],
        ["h200-141gb"],
    ]


def test_the_pools_loads_weighted_by_capacity_are_the_fleets() -> None:
    scenario = _script().scaled(load_scenario(ROOT / "examples" / "mixed-fleet.yaml"), 1.6)
    pods = generate_workload(scenario, seed=100, duration=scenario.duration)
    loads = _script().pool_loads(scenario, pods)
    assert sorted(loads) == ["a100-40gb+a100-80gb+h100-80gb", "h200-141gb"]
    slices = {g.model.key: g.count * g.gpus * g.model.compute_slices_total for g in scenario.fleet}
    capacity = {name: sum(slices[k] for k in name.split("+")) for name in loads}
    whole = offered_slice_seconds(pods, scenario.models, scenario.duration) / (
        sum(slices.values()) * scenario.duration
    )
    # Every pod counted in exactly one pool: the capacity-weighted mean is the fleet's figure.
    weighted = sum(loads[n] * capacity[n] for n in loads) / sum(capacity.values())
    assert weighted == pytest.approx(whole, rel=1e-9)
    assert loads["h200-141gb"] > 1.0 > loads["a100-40gb+a100-80gb+h100-80gb"]


def test_it_prints_each_pool_over_the_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(ROOT / "examples" / "mixed-fleet.yaml"), "--rate", "1.6", "--seeds", "100,101"]
    assert _script().main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "mixed-fleet x1.6, seeds 100-101: offered load per pool, mean (least-most)"
    assert [line.split()[0] for line in lines[1:]] == ["a100-40gb+a100-80gb+h100-80gb", "h200-141gb"]


@pytest.mark.parametrize(
    ("args", "says"),
    [(["--rate", "0"], "--rate"), (["--seeds", "abc"], "--seeds"), (["--seeds", "9-2"], "--seeds")],
)
def test_bad_input_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        _script().main([str(ROOT / "examples" / "clearml-queues.yaml"), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert says in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_a_missing_scenario_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        _script().main([str(tmp_path / "nope.yaml")])
    assert exc.value.code == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_a_list_of_seeds_is_named_as_given(capsys: pytest.CaptureFixture[str]) -> None:
    # Not "100-105": only seeds 100 and 105 ran.
    assert _script().main([str(ROOT / "examples" / "clearml-queues.yaml"), "--seeds", "100,105"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("clearml-queues x1, seeds 100,105: ")
