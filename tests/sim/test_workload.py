"""Workloads: generated deterministically per seed, and read from trace files."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from cdmo.sim.scenario import InvalidScenario, parse_scenario
from cdmo.sim.workload import generate_workload, read_trace, write_trace_csv


def scenario(**workload: Any) -> Any:
    return parse_scenario(
        {
            "duration": "10h",
            "fleet": [{"model": "h100-80gb", "count": 2, "gpus": 8}],
            "workload": workload
            or {
                "streams": [
                    {
                        "name": "a",
                        "rate_per_hour": 120,
                        "mix": [
                            {"queue": "slice-1", "weight": 3, "duration": {"median": "20m", "sigma": 1.0}},
                            {"queue": "slice-7", "weight": 1, "duration": "1h", "priority": 5},
                        ],
                    },
                    {
                        "name": "b",
                        "start": "5h",
                        "rate_per_hour": 30,
                        "mix": [{"profile": "3g.40gb", "duration": "30m"}],
                    },
                ]
            },
        },
        base_dir=Path("/"),
    )


def test_same_seed_same_pods_other_seed_other_pods() -> None:
    sc = scenario()
    assert generate_workload(sc, seed=1) == generate_workload(sc, seed=1)
    assert generate_workload(sc, seed=1) != generate_workload(sc, seed=2)


def test_pods_are_in_arrival_order_with_unique_names() -> None:
    pods = generate_workload(scenario(), seed=4)
    assert [p.arrival for p in pods] == sorted(p.arrival for p in pods)
    assert [p.id for p in pods] == list(range(len(pods)))
    assert len({p.name for p in pods}) == len(pods)


def test_rates_mix_and_durations_follow_the_streams() -> None:
    pods = generate_workload(scenario(), seed=9)
    a = [p for p in pods if p.profile in ("1g.10gb", "7g.80gb")]
    b = [p for p in pods if p.profile == "3g.40gb"]
    # 120/h for 10 h and 30/h for 5 h: Poisson counts within 4 standard deviations.
    assert abs(len(a) - 1200) < 4 * 1200**0.5
    assert abs(len(b) - 150) < 4 * 150**0.5
    assert min(p.arrival for p in b) >= 5 * 3600
    small = [p for p in a if p.profile == "1g.10gb"]
    assert 0.70 < len(small) / len(a) < 0.80  # weights 3:1
    assert abs(statistics.median(p.duration for p in small) - 1200) < 150  # lognormal median 20m
    assert {p.duration for p in b} == {1800.0}  # a fixed duration
    assert {p.priority for p in a if p.profile == "7g.80gb"} == {5}


def test_adding_a_stream_keeps_the_others() -> None:
    one = scenario(
        streams=[{"name": "a", "rate_per_hour": 60, "mix": [{"queue": "slice-2", "duration": "5m"}]}]
    )
    two = scenario(
        streams=[
            {"name": "a", "rate_per_hour": 60, "mix": [{"queue": "slice-2", "duration": "5m"}]},
            {"name": "z", "rate_per_hour": 60, "mix": [{"queue": "slice-4", "duration": "5m"}]},
        ]
    )
    first = [(p.arrival, p.profile) for p in generate_workload(one, seed=3)]
    both = [(p.arrival, p.profile) for p in generate_workload(two, seed=3) if p.profile == "2g.20gb"]
    assert first == both


def test_duration_override_cuts_arrivals() -> None:
    pods = generate_workload(scenario(), seed=1, duration=3600)
    assert pods and max(p.arrival for p in pods) < 3600


def test_csv_trace_round_trip(tmp_path: Path) -> None:
    sc = scenario()
    pods = generate_workload(sc, seed=2, duration=7200)
    path = tmp_path / "trace.csv"
    write_trace_csv(pods, path)
    again = read_trace(path, sc.models)
    assert [(p.arrival, p.profile, p.duration, p.priority, p.count, p.name) for p in again] == [
        (p.arrival, p.profile, p.duration, p.priority, p.count, p.name) for p in pods
    ]


def test_jsonl_and_yaml_traces_with_queues(tmp_path: Path) -> None:
    sc = scenario()
    rows = [
        {"arrival": "1m", "queue": "slice-4", "duration": "10m", "priority": 2},
        {"arrival": 0, "profile": "nvidia.com/mig-1g.10gb", "duration": 30, "count": 2},
    ]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    yml = tmp_path / "t.yaml"
    yml.write_text(json.dumps({"pods": rows}))
    for path in (jsonl, yml):
        pods = read_trace(path, sc.models)
        assert [(p.arrival, p.profile, p.count, p.priority) for p in pods] == [
            (0.0, "1g.10gb", 2, 0),
            (60.0, "4g.40gb", 1, 2),
        ]


def test_trace_from_a_scenario_file(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("arrival,queue,duration\n10,slice-2,60\n5,slice-1,60\n")
    sc = parse_scenario(
        {
            "duration": "1h",
            "fleet": [{"model": "h100-80gb", "count": 1, "gpus": 1}],
            "workload": {"trace": "t.csv"},
        },
        base_dir=tmp_path,
    )
    pods = generate_workload(sc)
    assert [(p.arrival, p.profile) for p in pods] == [(5.0, "1g.10gb"), (10.0, "2g.20gb")]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("arrival,queue,duration\n1,slice-9,60\n", "line 2.queue"),
        ("arrival,queue,duration\nsoon,slice-1,60\n", "line 2.arrival"),
        ("arrival,queue\n1,slice-1\n", "line 2.duration"),
        ("arrival,queue,duration,colour\n1,slice-1,60,red\n", "line 2.colour"),
        ("arrival,queue,duration,count\n1,slice-1,60,0\n", "line 2.count"),
        ("arrival,profile,queue,duration\n1,1g.10gb,slice-1,60\n", "line 2"),
        ("queue,duration\nslice-1,60\n", "arrival"),
    ],
    ids=["queue", "arrival", "duration", "field", "count", "both", "header"],
)
def test_bad_trace_rows_are_named(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(InvalidScenario) as info:
        read_trace(path, scenario().models)
    assert str(path) in str(info.value) and where in str(info.value)


# --- CSV traces: a header and rows that say one thing each ------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        (
            "arrival,queue,duration,queue\n0,slice-1,10,slice-7\n",
            "line 1",
            "'queue' is named twice in the header (columns 2 and 4)",
        ),
        (
            "arrival,queue,duration, queue\n0,slice-1,10,slice-7\n",
            "line 1",
            "'queue' is named twice in the header (columns 2 and 4)",
        ),
        ("arrival,queue,duration\n0,slice-1,10\n0,slice-1,10,extra\n", "line 3", "4 cells"),
        ("arrival,queue,duration,priority\n0,slice-1,10\n", "line 2", "3 cells"),
        # Lines are the file's own: comments and blank lines count.
        ("# made by hand\narrival,queue,duration\n\n0,slice-1,10\n0,slice-1\n", "line 5", "2 cells"),
        ("arrival,queue,duration,\n0,slice-1,10,x\n", "line 2", "column 4"),
    ],
    ids=["header-twice", "header-twice-spaced", "more-cells", "fewer-cells", "file-lines", "unnamed-column"],
)
def test_ambiguous_csv_traces_are_refused_naming_the_line(
    tmp_path: Path, text: str, where: str, words: str
) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(InvalidScenario) as info:
        read_trace(path, scenario().models)
    message = str(info.value)
    assert message.startswith(f"{path}: {where}: ") and words in message


def test_an_unnamed_column_left_empty_is_ignored(tmp_path: Path) -> None:
    # Spreadsheets write trailing columns that once held something as empty cells under an empty name.
    path = tmp_path / "t.csv"
    path.write_text("arrival,queue,duration,\n0,slice-1,10,\n")
    assert [p.profile for p in read_trace(path, scenario().models)] == ["1g.10gb"]


@pytest.mark.parametrize(
    "text",
    [
        "arrival,queue,duration\r\n0,slice-1,10\r\n",
        "# exported\r\narrival,queue,duration\r\n0,slice-1,10\r\n",
    ],
    ids=["header-first", "comment-first"],
)
def test_a_csv_trace_with_a_utf8_bom_is_read(tmp_path: Path, text: str) -> None:
    # Excel's "CSV UTF-8" starts the file with a byte order mark.
    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert [(p.arrival, p.profile) for p in read_trace(path, scenario().models)] == [(0.0, "1g.10gb")]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("arrival,queue,duration,count\n0,slice-1,10,\u0663\n", "line 2.count"),
        ("arrival,queue,duration,priority\n0,slice-1,10,\u0663\n", "line 2.priority"),
        ("arrival,queue,duration,count\n0,slice-1,10,\u00b2\n", "line 2.count"),
        ("arrival,queue,duration\n\u0663,slice-1,10\n", "line 2.arrival"),
        ("arrival,queue,duration\n0,slice-1,\u0663\u0660m\n", "line 2.duration"),
    ],
    ids=["arabic-indic-count", "arabic-indic-priority", "superscript-count", "arrival", "duration"],
)
def test_only_ascii_digits_are_numbers_in_a_trace(tmp_path: Path, text: str, where: str) -> None:
    # int() and float() read other scripts' digits ("\u0663" is 3); a trace is written in 0-9.
    path = tmp_path / "t.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InvalidScenario) as info:
        read_trace(path, scenario().models)
    assert f"{path}: {where}: " in str(info.value)


def test_a_csv_header_naming_a_column_twice_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cdmo import exit_codes
    from cdmo.cli import main

    (tmp_path / "t.csv").write_text("arrival,queue,duration,queue\n0,slice-1,10,slice-7\n")
    path = tmp_path / "s.yaml"
    path.write_text(
        json.dumps(
            {
                "duration": "1h",
                "fleet": [{"model": "h100-80gb", "count": 1, "gpus": 1}],
                "policies": ["dynamic"],
                "workload": {"trace": "t.csv"},
            }
        )
    )
    code = main(["simulate", str(path), "-o", "json"])
    out, err = capsys.readouterr()
    assert code == exit_codes.USAGE and out == ""
    assert (
        len(err.strip().splitlines()) == 1 and "'queue' is named twice in the header (columns 2 and 4)" in err
    )
