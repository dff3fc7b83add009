"""The scenario format: every example loads, and bad input names its YAML path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from cdmo.sim.scenario import (
    DEFAULT_POLICIES,
    InvalidScenario,
    load_scenario,
    parse_duration,
    parse_scenario,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SIM_EXAMPLES = ["clearml-queues.yaml", "mixed-fleet.yaml", "burst.yaml", "large.yaml"]


def minimal(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "duration": "1h",
        "fleet": [{"model": "h100-80gb", "count": 1, "gpus": 2}],
        "workload": {"rate_per_hour": 10, "mix": [{"queue": "slice-1", "duration": "10m"}]},
    }
    data.update(changes)
    return data


@pytest.mark.parametrize("name", SIM_EXAMPLES)
def test_examples_load(name: str) -> None:
    sc = load_scenario(EXAMPLES / name)
    assert sc.fleet and sc.policies and sc.duration > 0
    assert "dynamic" in sc.policies and "first-fit" in sc.policies


def test_large_example_is_500_nodes_of_8_gpus_for_a_day() -> None:
    sc = load_scenario(EXAMPLES / "large.yaml")
    assert (sc.node_count, sc.gpu_count, sc.duration) == (500, 4000, 86400.0)


def test_mixed_fleet_has_the_four_models() -> None:
    sc = load_scenario(EXAMPLES / "mixed-fleet.yaml")
    assert {m.key for m in sc.models} == {"a100-40gb", "a100-80gb", "h100-80gb", "h200-141gb"}


def test_defaults() -> None:
    sc = parse_scenario(minimal())
    assert sc.policies == DEFAULT_POLICIES
    assert (sc.time_model.gi_create_seconds, sc.time_model.gi_destroy_seconds) == (1.0, 1.0)
    assert (sc.time_model.sighup_refresh_seconds, sc.time_model.pod_restart_seconds) == (5.0, 30.0)
    assert (sc.dynamic.batch_idle_seconds, sc.dynamic.batch_max_seconds, sc.dynamic.refresh) == (
        5.0,
        30.0,
        "builtin",
    )
    assert sc.time_model.refresh_seconds("builtin") == 0.2
    assert (sc.first_fit.batch_idle_seconds, sc.first_fit.batch_max_seconds) == (10.0, 60.0)
    assert sc.first_fit.refresh == "pod-restart"
    assert sc.streams[0].mix[0].profile == "1g.10gb"  # slice-1 on an H100


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (90, 90.0),
        (1.5, 1.5),
        ("30s", 30.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("0.5h", 1800.0),
    ],
    ids=str,
)
def test_parse_duration(text: Any, seconds: float) -> None:
    assert parse_duration(text, "x") == seconds


@pytest.mark.parametrize("text", ["ten minutes", "-5", -5, 0, True, None, "5 weeks"], ids=repr)
def test_parse_duration_refuses(text: Any) -> None:
    with pytest.raises(InvalidScenario, match=r"^x: "):
        parse_duration(text, "x")


@pytest.mark.parametrize(
    ("data", "path", "words"),
    [
        ({"fleet": None}, "fleet", "expected a list"),
        ({"fleet": [{"model": "v100", "count": 1, "gpus": 8}]}, "fleet[0].model", "unknown GPU model 'v100'"),
        ({"fleet": [{"model": "h100-80gb", "count": 0, "gpus": 8}]}, "fleet[0].count", "must be >= 1"),
        ({"fleet": [{"model": "h100-80gb", "gpus": 8}]}, "fleet[0].count", "is required"),
        (
            {"fleet": [{"model": "h100-80gb", "count": 1, "gpus": 8, "colour": "red"}]},
            "fleet[0].colour",
            "unknown field",
        ),
        ({"duration": "soon"}, "duration", "not a duration"),
        ({"seed": -1}, "seed", "must be >= 0"),
        ({"policies": ["dynamic", "best-fit"]}, "policies[1]", "unknown policy 'best-fit'"),
        ({"policies": ["dynamic", "dynamic"]}, "policies[1]", "listed twice"),
        ({"policies": ["static:all-9g"]}, "policies[0]", "no named layout 'all-9g'"),
        ({"workload": {"rate_per_hour": 10}}, "workload", "exactly one of"),
        (
            {"workload": {"rate_per_hour": 10, "mix": [{"queue": "slice-5", "duration": "1m"}]}},
            "workload.mix[0].queue",
            "unknown queue 'slice-5'",
        ),
        (
            {"workload": {"rate_per_hour": 10, "mix": [{"profile": "1g.5gb", "duration": "1m"}]}},
            "workload.mix[0].profile",
            "no GPU model of the fleet has profile '1g.5gb'",
        ),
        (
            {"workload": {"rate_per_hour": 10, "mix": [{"queue": "slice-1"}]}},
            "workload.mix[0].duration",
            "is required",
        ),
        (
            {"workload": {"rate_per_hour": -1, "mix": [{"queue": "slice-1", "duration": "1m"}]}},
            "workload.rate_per_hour",
            "must be > 0",
        ),
        (
            {
                "workload": {
                    "streams": [
                        {
                            "rate_per_hour": 1,
                            "start": "2h",
                            "end": "1h",
                            "mix": [{"queue": "slice-1", "duration": 5}],
                        }
                    ]
                }
            },
            "workload.streams[0].end",
            "must be after start",
        ),
        ({"workload": {"trace": "nowhere.csv"}}, "workload.trace", "no such file"),
        ({"time_model": {"gi_create_seconds": "fast"}}, "time_model.gi_create_seconds", "not a duration"),
        ({"dynamic": {"refresh": "reboot"}}, "dynamic.refresh", "unknown refresh"),
        (
            {"first_fit": {"batch_idle_seconds": 60, "batch_max_seconds": 10}},
            "first_fit.batch_max_seconds",
            ">=",
        ),
        ({"scheduler": {"retry_seconds": 0}}, "scheduler.retry_seconds", "must be > 0"),
        ({"colour": "red"}, "colour", "unknown field"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_input_names_the_path(data: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(InvalidScenario) as info:
        parse_scenario(minimal(**data), base_dir=Path("/nonexistent"))
    assert info.value.path == path
    assert words in str(info.value)


def test_queue_in_a_mixed_fleet_needs_a_model() -> None:
    fleet = [{"model": "a100-40gb", "count": 1, "gpus": 1}, {"model": "h100-80gb", "count": 1, "gpus": 1}]
    with pytest.raises(InvalidScenario, match="needs a model") as info:
        parse_scenario(minimal(fleet=fleet))
    assert info.value.path == "workload.mix[0]"
    mix = [{"queue": "slice-1", "model": "a100-40gb", "duration": "1m"}]
    sc = parse_scenario(minimal(fleet=fleet, workload={"rate_per_hour": 1, "mix": mix}))
    assert sc.streams[0].mix[0].profile == "1g.5gb"


def test_static_layout_must_exist_for_every_model() -> None:
    # An A30 has no 7-slice profile, so mig-parted has no all-7g for it.
    fleet = [{"model": "a30-24gb", "count": 1, "gpus": 1}]
    workload = {"rate_per_hour": 1, "mix": [{"profile": "1g.6gb", "duration": "1m"}]}
    with pytest.raises(InvalidScenario, match="a30-24gb has no named layout 'all-7g'"):
        parse_scenario(minimal(fleet=fleet, workload=workload, policies=["static:all-7g"]))


def test_load_scenario_prefixes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("duration: 1h\nfleet: []\nworkload: {rate_per_hour: 1, mix: []}\n")
    with pytest.raises(InvalidScenario) as info:
        load_scenario(path)
    assert str(info.value).startswith(f"{path}: fleet: needs at least 1 item")


@pytest.mark.parametrize("text", ["", "fleet: [unclosed\n", "- a list\n"], ids=["empty", "broken", "list"])
def test_load_scenario_refuses_non_scenarios(tmp_path: Path, text: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(InvalidScenario, match=str(path)):
        load_scenario(path)


def test_a_scenario_that_is_not_a_file_says_what_it_is(tmp_path: Path) -> None:
    """/dev/zero was 'no such scenario file', which it is not."""
    with pytest.raises(InvalidScenario, match="cannot read /dev/zero: it is a character device, not a file"):
        load_scenario("/dev/zero")
    with pytest.raises(InvalidScenario, match="it is a directory"):
        load_scenario(tmp_path)
    with pytest.raises(InvalidScenario, match=r"cannot read .*nope\.yaml: no such file"):
        load_scenario(tmp_path / "nope.yaml")


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "yaml"])
def test_a_trace_that_is_a_device_or_a_pipe_is_refused_with_the_scenario(tmp_path: Path, suffix: str) -> None:
    """A trace on /dev/zero was 'no such file'; one on a pipe would have been read twice (counted,
    then replayed) or waited for a writer. Refused by kind, before any of it is read."""
    device = tmp_path / f"zero.{suffix}"
    device.symlink_to("/dev/zero")
    pipe = tmp_path / f"pipe.{suffix}"
    os.mkfifo(pipe)
    for trace, kind in ((device, "a character device"), (pipe, "a named pipe (FIFO)")):
        with pytest.raises(InvalidScenario) as info:
            parse_scenario(minimal(workload={"trace": trace.name}), base_dir=tmp_path)
        assert info.value.path == "workload.trace"
        assert f"cannot read {trace}: it is {kind}, not a file" in str(info.value)


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_a_trace_line_past_a_mib_is_refused_when_counted(tmp_path: Path, suffix: str) -> None:
    """Rows are read a line at a time: a file without line breaks was one line read whole."""
    trace = tmp_path / f"long.{suffix}"
    trace.write_bytes(b"arrival,duration,queue\n" + b"9" * ((1 << 20) + 1) + b"\n")
    with pytest.raises(InvalidScenario) as info:
        parse_scenario(minimal(workload={"trace": trace.name}), base_dir=tmp_path)
    assert info.value.path == "workload.trace"
    assert f"{trace}: line 2 is longer than 1 MiB, the most cdmo reads in one line of a trace" in str(
        info.value
    )
