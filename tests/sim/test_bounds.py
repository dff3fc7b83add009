"""Input the simulator refuses with one line and exit 2 rather than a crash, a hang or a run
without end: infinite or absurd numbers, models outside the fleet, binary files, traces past the
pod limit, a policy given twice. Every case here crashed (exit 3), hung or ran for minutes before."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from cdmo import exit_codes
from cdmo.cli import main
from cdmo.sim import scenario as scenario_module
from cdmo.sim.scenario import (
    MAX_POD_DEVICES,
    MAX_SIGMA,
    MIN_INTERVAL_SECONDS,
    InvalidScenario,
    load_scenario,
    parse_duration,
    parse_scenario,
)
from cdmo.sim.workers import PolicyWorkers
from cdmo.sim.workload import generate_workload, read_trace

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
FLEET = [{"name": "h", "model": "h100-80gb", "count": 1, "gpus": 8}]


def scenario_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "duration": "1h",
        "fleet": FLEET,
        "policies": ["dynamic"],
        "workload": {"rate_per_hour": 10, "mix": [{"queue": "slice-1", "duration": "10m"}]},
    }
    data.update(changes)
    return data


def mix(**item: Any) -> dict[str, Any]:
    return {"rate_per_hour": 10, "mix": [{"duration": "10m", **item}]}


def refused(data: dict[str, Any], base_dir: Path = Path("/nonexistent")) -> InvalidScenario:
    with pytest.raises(InvalidScenario) as info:
        parse_scenario(data, base_dir=base_dir)
    return info.value


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- numbers: finite, and within sane bounds ----------------------------------------------------


@pytest.mark.parametrize(
    ("workload", "path", "words"),
    [
        (
            mix(fraction=0.25, duration={"median": math.inf}),
            "workload.mix[0].duration.median",
            "must be finite",
        ),
        (mix(queue="slice-1", duration=math.inf), "workload.mix[0].duration", "must be finite"),
        (
            mix(queue="slice-1", duration={"median": "10m", "max": math.inf}),
            "workload.mix[0].duration.max",
            "must be finite",
        ),
        (
            mix(queue="slice-1", duration={"median": "10m", "sigma": math.inf}),
            "workload.mix[0].duration.sigma",
            "must be finite",
        ),
        (
            mix(queue="slice-1", duration={"median": "10m", "sigma": 1000}),
            "workload.mix[0].duration.sigma",
            f"must be at most {MAX_SIGMA:g}",
        ),
        (mix(queue="slice-1", duration=1e308), "workload.mix[0].duration", "more than the limit"),
        (mix(queue="slice-1", weight=math.inf), "workload.mix[0].weight", "must be finite"),
        (mix(queue="slice-1", count=10**400), "workload.mix[0].count", "more than the limit of 10,000"),
        (mix(queue="slice-1", count=MAX_POD_DEVICES + 1), "workload.mix[0].count", "devices per pod"),
        (
            {"rate_per_hour": 10**400, "mix": [{"queue": "slice-1", "duration": 60}]},
            "workload.rate_per_hour",
            "too large",
        ),
        (
            {
                "rate_per_hour": 10,
                "mix": [{"queue": "slice-1", "weight": 1e308, "duration": 60}] * 2,
            },
            "workload.mix",
            "weights add up",
        ),
        (
            {
                "streams": [
                    {"rate_per_hour": 1, "start": math.inf, "mix": [{"queue": "slice-1", "duration": 60}]}
                ]
            },
            "workload.streams[0].start",
            "must be finite",
        ),
    ],
    ids=[
        "median-inf",
        "fixed-inf",
        "max-inf",
        "sigma-inf",
        "sigma-huge",
        "duration-huge",
        "weight-inf",
        "count-digits",
        "count-huge",
        "rate-digits",
        "weights-total",
        "start-inf",
    ],
)
def test_absurd_workload_numbers_are_refused(workload: dict[str, Any], path: str, words: str) -> None:
    exc = refused(scenario_data(workload=workload))
    assert exc.path == path
    assert words in str(exc)


@pytest.mark.parametrize(
    ("changes", "path", "words"),
    [
        ({"scheduler": {"retry_seconds": math.inf}}, "scheduler.retry_seconds", "must be finite"),
        ({"scheduler": {"retry_seconds": 0.000001}}, "scheduler.retry_seconds", "at least 0.01 s"),
        ({"first_fit": {"requeue_seconds": 0.000001}}, "first_fit.requeue_seconds", "at least 0.01 s"),
        (
            {"first_fit": {"batch_idle_seconds": 0.000001, "batch_max_seconds": 0.000001}},
            "first_fit.batch_idle_seconds",
            "at least 0.01 s",
        ),
        ({"first_fit": {"batch_max_seconds": math.inf}}, "first_fit.batch_max_seconds", "must be finite"),
        (
            {"dynamic": {"batch_idle_seconds": 0.000001, "batch_max_seconds": 0.000001}},
            "dynamic.batch_idle_seconds",
            "at least 0.01 s",
        ),
        ({"dynamic": {"batch_idle_seconds": math.inf}}, "dynamic.batch_idle_seconds", "must be finite"),
        ({"time_model": {"gi_create_seconds": math.inf}}, "time_model.gi_create_seconds", "must be finite"),
        ({"fleet": [{"model": "h100-80gb", "count": 1, "gpus": 100_000}]}, "fleet[0].gpus", "limit of 64"),
        ({"fleet": [{"model": "h100-80gb", "count": 1, "gpus": 65}]}, "fleet[0].gpus", "limit of 64"),
    ],
    ids=[
        "retry-inf",
        "retry-tiny",
        "requeue-tiny",
        "ff-batch-tiny",
        "ff-batch-inf",
        "dyn-batch-tiny",
        "dyn-batch-inf",
        "time-model-inf",
        "gpus-huge",
        "gpus-65",
    ],
)
def test_absurd_settings_are_refused(changes: dict[str, Any], path: str, words: str) -> None:
    exc = refused(scenario_data(**changes))
    assert exc.path == path
    assert words in str(exc)


def test_the_smallest_interval_and_64_gpus_are_accepted() -> None:
    tiny = MIN_INTERVAL_SECONDS
    sc = parse_scenario(
        scenario_data(
            fleet=[{"model": "h100-80gb", "count": 1, "gpus": 64}],
            scheduler={"retry_seconds": tiny},
            first_fit={"batch_idle_seconds": tiny, "batch_max_seconds": tiny, "requeue_seconds": tiny},
            dynamic={"batch_idle_seconds": tiny, "batch_max_seconds": tiny},
            time_model={"gi_create_seconds": 0},
        )
    )
    assert sc.gpu_count == 64 and sc.retry_seconds == tiny and sc.first_fit.requeue_seconds == tiny


@pytest.mark.parametrize("value", [math.inf, "9" * 400, 1e300], ids=["inf", "400-digits", "1e300"])
def test_parse_duration_refuses_infinite_and_absurd(value: Any) -> None:
    with pytest.raises(InvalidScenario, match=r"^x: .*(must be finite|more than the limit)"):
        parse_duration(value, "x")


# --- a model outside the fleet ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "item",
    [
        {"fraction": 0.25, "model": "a100-40gb"},
        {"queue": "slice-1", "model": "a100-40gb"},
        {"gpu_memory": 2000, "model": "b200-180gb"},
        {"metagpu": 25, "model": "a100-40gb"},
    ],
    ids=["fraction", "queue", "gpu_memory", "metagpu"],
)
def test_a_model_outside_the_fleet_is_named(item: dict[str, Any]) -> None:
    exc = refused(scenario_data(workload=mix(**item)))
    assert exc.path == "workload.mix[0].model"
    assert f"{item['model']} is not in the fleet" in str(exc)
    assert "h100-80gb" in str(exc)  # the hint lists the fleet's models


def test_gpu_memory_that_is_not_a_number_says_to_write_mib() -> None:
    exc = refused(scenario_data(workload=mix(gpu_memory="20Gi")))
    assert exc.path == "workload.mix[0].gpu_memory"
    assert "whole MiB, e.g. 20480" in str(exc) and "0.25" not in str(exc)


# --- files that are not text ------------------------------------------------------------------------


def test_a_binary_scenario_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_bytes(bytes(range(128, 256)) * 3)
    with pytest.raises(InvalidScenario, match="not a UTF-8 text file"):
        load_scenario(path)


def test_a_scenario_with_a_number_of_thousands_of_digits_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("duration: 1h\nseed: " + "1" * 5000 + "\n")
    with pytest.raises(InvalidScenario, match="is not valid YAML"):
        load_scenario(path)


# --- traces -------------------------------------------------------------------------------------------


def trace_scenario(tmp_path: Path, name: str, content: str | bytes) -> dict[str, Any]:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return scenario_data(workload={"trace": name})


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        (
            "t.jsonl",
            '{"arrival": 0, "duration": Infinity, "queue": "slice-1"}\n',
            "line 1.duration: inf must be finite",
        ),
        (
            "t.jsonl",
            '{"arrival": Infinity, "duration": 60, "queue": "slice-1"}\n',
            "line 1.arrival: inf must be finite",
        ),
        (
            "t.jsonl",
            '{"arrival": 0, "duration": 60, "queue": "slice-1", "model": "a100-40gb"}\n',
            "line 1.model: a100-40gb is not in the fleet",
        ),
        (
            "t.csv",
            "arrival,fraction,model,duration\n0,0.25,a100-40gb,60\n",
            "line 2.model: a100-40gb is not in the fleet",
        ),
        (
            "t.csv",
            "arrival,queue,duration,count\n0,slice-1,60," + "9" * 400 + "\n",
            "line 2.count: is more than the limit",
        ),
        (
            "t.jsonl",
            '{"arrival": 0, "duration": 60, "queue": "slice-1", "count": ' + "9" * 5000 + "}\n",
            "line 1",
        ),
        ("t.csv", 'arrival,queue,duration\n0,slice-1,"' + "x" * 200_000 + '"\n', "not valid CSV"),
        ("t.csv", bytes(range(128, 256)) * 3, "not a UTF-8 text file"),
        ("t.jsonl", b'{"arrival": 0}\n' + bytes(range(128, 256)), "not a UTF-8 text file"),
        ("t.yaml", b"- " + bytes(range(128, 256)), "not a UTF-8 text file"),
        (
            "t.jsonl",
            '{"arrival": 0, "duration": 60, "queue": "slice-1", "duration": 6000}\n',
            "line 1: not valid JSON (the key 'duration' is given twice",
        ),
        (
            "t.yaml",
            "- {arrival: 0, duration: 60, queue: slice-1, queue: slice-7}\n",
            "found duplicate key 'queue'",
        ),
    ],
    ids=[
        "duration-inf",
        "arrival-inf",
        "jsonl-model",
        "csv-model",
        "count-huge",
        "count-digits",
        "csv-field",
        "binary-csv",
        "binary-jsonl",
        "binary-yaml",
        "jsonl-key-twice",
        "yaml-key-twice",
    ],
)
def test_bad_traces_are_one_clear_error(tmp_path: Path, name: str, content: str | bytes, words: str) -> None:
    # Refused when the scenario is loaded (rows are counted then) or when the pods are read.
    with pytest.raises(InvalidScenario) as info:
        generate_workload(parse_scenario(trace_scenario(tmp_path, name, content), base_dir=tmp_path))
    assert name in str(info.value) and words in str(info.value)


def _rows(n: int) -> str:
    return "arrival,queue,duration\n" + "".join(f"{i},slice-1,60\n" for i in range(n))


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "yaml"])
def test_a_trace_past_the_pod_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    models = parse_scenario(scenario_data()).models  # before the limit falls below its 10 pods
    monkeypatch.setattr(scenario_module, "MAX_PODS", 3)
    path = tmp_path / f"t.{suffix}"
    path.write_text(_trace_text(suffix, 4))
    with pytest.raises(InvalidScenario, match="more than 3 pods, the limit of one run"):
        read_trace(path, models)
    if suffix != "yaml":  # CSV and JSONL are counted when the scenario is loaded
        with pytest.raises(InvalidScenario, match="more than 3 pods") as info:
            parse_scenario(scenario_data(workload={"trace": path.name}), base_dir=tmp_path)
        assert info.value.path == "workload.trace"
    path.write_text(_trace_text(suffix, 3))  # at the limit: read
    assert len(read_trace(path, models)) == 3


def _trace_text(suffix: str, n: int) -> str:
    rows = [{"arrival": i, "queue": "slice-1", "duration": 60} for i in range(n)]
    if suffix == "csv":
        return _rows(n)
    if suffix == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows)
    return json.dumps(rows)


def test_a_huge_trace_is_refused_before_its_rows_are_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rows past the limit are not parsed: the bad row 6 is never reached.
    models = parse_scenario(scenario_data()).models
    monkeypatch.setattr(scenario_module, "MAX_PODS", 3)
    path = tmp_path / "t.csv"
    path.write_text(_rows(4) + "soon,slice-9,never\n")
    with pytest.raises(InvalidScenario, match="more than 3 pods"):
        read_trace(path, models)


def test_a_trace_past_the_pod_limit_exits_2_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(scenario_module, "MAX_PODS", 3)
    (tmp_path / "t.csv").write_text(_rows(4))
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps(scenario_data(workload={"trace": "t.csv"})))
    code, out, err = run_cli(capsys, "simulate", str(path), "-o", "json")
    assert code == exit_codes.USAGE and out == ""
    assert err.strip().splitlines() == [
        f"cdmo: error: {path}: workload.trace: {tmp_path / 't.csv'}: more than 3 pods, the limit of one run; "
        "split the trace, or keep the rows before the end of the run; see the limits in docs/simulate.md"
    ]


# --- the command line: one line, exit 2 ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (
            "workload: {rate_per_hour: 10, mix: [{fraction: 0.25, duration: {median: .inf}}]}\n",
            "workload.mix[0].duration.median: inf must be finite",
        ),
        (
            "workload: {rate_per_hour: 10, mix: [{fraction: 0.25, duration: {median: 10m, sigma: .inf}}]}\n",
            "workload.mix[0].duration.sigma: must be finite",
        ),
        (
            "workload: {rate_per_hour: 10, mix: [{fraction: 0.25, model: a100-40gb, duration: 10m}]}\n",
            "workload.mix[0].model: a100-40gb is not in the fleet",
        ),
        (
            "workload: {rate_per_hour: 10, mix: [{queue: slice-1, duration: {median: 10m, sigma: 1000}}]}\n",
            "workload.mix[0].duration.sigma: must be at most 10",
        ),
        (
            "workload: {rate_per_hour: 10, mix: [{queue: slice-1, weight: .inf, duration: 10m}, {queue: slice-2, duration: 10m}]}\n",
            "workload.mix[0].weight: must be finite",
        ),
        (
            "workload: {rate_per_hour: 10, mix: [{queue: slice-1, duration: 10m}]}\nfirst_fit: {requeue_seconds: 0.000001}\n",
            "first_fit.requeue_seconds: 1e-06 must be at least 0.01 s",
        ),
    ],
    ids=["median-inf", "sigma-inf", "model", "sigma-huge", "weight-inf", "requeue"],
)
def test_cli_refuses_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str, words: str
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "duration: 1h\nfleet: [{name: h, model: h100-80gb, count: 1, gpus: 8}]\npolicies: [dynamic]\n"
        + content
    )
    code, out, err = run_cli(capsys, "simulate", str(path), "-o", "json", "--jobs", "1")
    assert code == exit_codes.USAGE and out == ""
    assert len(err.strip().splitlines()) == 1 and words in err, err


def test_cli_refuses_a_binary_scenario(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_bytes(b"\xff" + bytes(range(128, 256)))
    code, out, err = run_cli(capsys, "simulate", str(path))
    assert code == exit_codes.USAGE and out == ""
    assert err.strip().splitlines() == [
        f"cdmo: error: {path} is not a UTF-8 text file (byte 0 is not text); give a scenario file in YAML"
    ]


# --- a policy given twice -------------------------------------------------------------------------------


def test_a_policy_given_twice_on_the_command_line_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "simulate",
        str(EXAMPLES / "burst.yaml"),
        "--policy",
        "static:all-1g",
        "--policy",
        "static:all-1g",
    ]
    code, out, err = run_cli(capsys, *argv, "--jobs", "1")
    assert code == exit_codes.USAGE and out == ""
    assert err.strip().splitlines() == [
        "cdmo: error: --policy[1]: policy static:all-1g is listed twice; give each policy once"
    ]


def test_a_policy_given_twice_with_workers_exits_2_instead_of_hanging() -> None:
    # With several jobs the runs were collected by policy name, so the second first-fit never
    # came and the command waited for ever; a timeout here turns a hang into a failure.
    cmd = [
        sys.executable,
        "-c",
        "import sys; from cdmo.cli import main; sys.exit(main(sys.argv[1:]))",
        "simulate",
        str(EXAMPLES / "cfgi-queues.yaml"),
        "-o",
        "json",
        "--duration",
        "10m",
        "--policy",
        "first-fit",
        "--policy",
        "first-fit",
        "--jobs",
        "2",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == exit_codes.USAGE, done.stderr
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "cdmo: error: --policy[1]: policy first-fit is listed twice; give each policy once"
    ]


def test_policy_workers_refuse_a_name_given_twice() -> None:
    sc = load_scenario(EXAMPLES / "burst.yaml")
    outcome: list[BaseException | None] = []

    def go() -> None:
        try:
            with PolicyWorkers(2) as workers:
                workers.run(sc, (), ["static:all-1g", "static:all-1g"], horizon=60.0)
            outcome.append(None)
        except BaseException as exc:  # the test looks at what came out
            outcome.append(exc)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert outcome, "PolicyWorkers.run hung on a policy given twice"
    assert isinstance(outcome[0], ValueError) and "distinct" in str(outcome[0])
