"""Fractional asks in simulator scenarios and traces: fraction, gpu_memory and metagpu by the webhook's rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cdmo.sim.scenario import InvalidScenario, load_scenario, parse_scenario
from cdmo.sim.workload import read_trace

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def scenario(mix: list[dict[str, Any]], fleet: list[dict[str, Any]] | None = None) -> Any:
    return parse_scenario(
        {
            "duration": "1h",
            "fleet": fleet or [{"model": "h100-80gb", "count": 1, "gpus": 2}],
            "workload": {"rate_per_hour": 10, "mix": mix},
        }
    )


@pytest.mark.parametrize(
    ("item", "profile", "label"),
    [
        ({"fraction": 0.25}, "2g.20gb", "fraction-0.25"),
        ({"fraction": "0.125"}, "1g.10gb", "fraction-0.125"),
        ({"fraction": 1}, "7g.80gb", "fraction-1"),
        ({"gpu_memory": 12000}, "1g.20gb", "gpu_memory-12000"),
        ({"metagpu": 25}, "2g.20gb", "metagpu-25"),
        ({"metagpu": 50, "model": "a100-40gb"}, "4g.20gb", "metagpu-50"),
    ],
    ids=lambda v: str(v),
)
def test_mix_items_take_fractional_asks(item: dict[str, Any], profile: str, label: str) -> None:
    sc = scenario(
        [{**item, "duration": "10m"}],
        fleet=[{"model": "h100-80gb", "count": 1, "gpus": 2}, {"model": "a100-40gb", "count": 1, "gpus": 2}]
        if "model" in item
        else None,
    )
    (mix,) = sc.streams[0].mix
    assert (mix.profile, mix.label) == (profile, label)


@pytest.mark.parametrize(
    ("item", "fleet", "path", "words"),
    [
        ({"fraction": 0.25, "queue": "slice-1"}, None, "workload.mix[0]", "give exactly one of"),
        ({"fraction": 1.5}, None, "mix[0].fraction", "more than one GPU"),
        ({"metagpu": 150}, None, "mix[0].metagpu", "more than one GPU"),
        ({"fraction": "a quarter"}, None, "mix[0].fraction", "is not a number"),
        ({"gpu_memory": 12000.5}, None, "mix[0].gpu_memory", "not a whole number"),
        ({"gpu_memory": 100000}, None, "mix[0].gpu_memory", "ask at most 81152 MiB"),
        (
            {"fraction": 0.25},
            [{"model": "h100-80gb", "count": 1, "gpus": 1}, {"model": "a100-40gb", "count": 1, "gpus": 1}],
            "mix[0]",
            "needs a model",
        ),
    ],
    ids=[
        "two-asks",
        "fraction-above-1",
        "metagpu-above-100",
        "not-a-number",
        "memory-decimal",
        "memory-too-big",
        "mixed-fleet",
    ],
)
def test_bad_fractional_asks_name_their_path(item: dict[str, Any], fleet: Any, path: str, words: str) -> None:
    with pytest.raises(InvalidScenario) as err:
        scenario([{**item, "duration": "10m"}], fleet)
    assert path in str(err.value) and words in str(err.value)


def test_traces_take_fractional_asks(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text(
        "arrival,queue,fraction,gpu_memory,metagpu,duration\n"
        "0,,0.5,,,10m\n"
        "5,,,30000,,10m\n"
        "9,,,,25,10m\n"
        "12,slice-1,,,,10m\n"
    )
    sc = scenario([{"queue": "slice-1", "duration": "10m"}])
    pods = read_trace(path, sc.models)
    assert [p.profile for p in pods] == ["4g.40gb", "3g.40gb", "2g.20gb", "1g.10gb"]


def test_cfgi_queues_example_replays_the_cfgi_queue_set() -> None:
    sc = load_scenario(EXAMPLES / "cfgi-queues.yaml")
    got = {m.label: m.profile for m in sc.streams[0].mix}
    assert got == {
        "fraction-0.125": "1g.10gb",
        "fraction-0.25": "2g.20gb",
        "fraction-0.375": "3g.40gb",
        "fraction-0.5": "4g.40gb",
        "fraction-0.625": "7g.80gb",
        "fraction-0.75": "7g.80gb",
        "fraction-0.875": "7g.80gb",
        "fraction-1.0": "7g.80gb",
    }
