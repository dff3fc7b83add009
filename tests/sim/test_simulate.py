"""``cdmo simulate`` end to end, and what the issue says the examples must show.

The must-show assertions run the example scenarios exactly as shipped (the README's table comes
from clearml-queues.yaml), and assert on results, never on timing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cdmo.cli import main
from cdmo.sim.metrics import without_timing
from cdmo.sim.runner import Report, simulate
from cdmo.sim.scenario import load_scenario

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def clearml() -> Report:
    return simulate(load_scenario(EXAMPLES / "clearml-queues.yaml"))


@pytest.fixture(scope="module")
def mixed() -> Report:
    return simulate(load_scenario(EXAMPLES / "mixed-fleet.yaml"))


@pytest.fixture(scope="module")
def burst() -> Report:
    return simulate(load_scenario(EXAMPLES / "burst.yaml"))


@pytest.mark.parametrize("name", ["clearml", "mixed"])
def test_dynamic_starts_more_pods_than_every_static_layout(name: str, request: pytest.FixtureRequest) -> None:
    report: Report = request.getfixturevalue(name)
    started = {p: s["pods"]["started"] for p, s in report.summaries.items()}
    statics = [p for p in started if p.startswith("static:")]
    assert {"static:all-1g", "static:all-balanced", "static:all-3g", "static:all-7g"} <= set(statics)
    for p in statics:
        assert started["dynamic"] > started[p], f"dynamic started {started['dynamic']}, {p} {started[p]}"


@pytest.mark.parametrize("name", ["clearml", "mixed"])
def test_dynamic_has_lower_p95_pending_than_first_fit(name: str, request: pytest.FixtureRequest) -> None:
    report: Report = request.getfixturevalue(name)
    dyn = report.summaries["dynamic"]["pending_seconds"]["p95"]
    ff = report.summaries["first-fit"]["pending_seconds"]["p95"]
    assert dyn < ff


def test_builtin_plugin_cuts_p95_pending_by_a_third_against_sighup(clearml: Report) -> None:
    """Issue 11 on clearml-queues as shipped. Pre-warming (issue 13, on by default) starts most
    pods on an instance made ahead under either refresh, so p95 is 0 s for both; the refresh
    shows in the tail (p99) and, with pre-warming off, in p95 (the next test)."""
    p95 = {p: s["pending_seconds"]["p95"] for p, s in clearml.summaries.items()}
    p99 = {p: s["pending_seconds"]["p99"] for p, s in clearml.summaries.items()}
    assert p95["dynamic"] <= 0.7 * p95["dynamic-sighup"], p95
    assert p95["dynamic"] < p95["first-fit"], p95
    assert p99["dynamic"] < p99["dynamic-sighup"], p99


def test_builtin_plugin_cuts_p95_pending_by_a_third_without_prewarming() -> None:
    """The refresh alone: the same pods, pre-warming off, built-in plugin against SIGHUP."""
    import dataclasses

    from cdmo.config import OperatorConfig
    from cdmo.sim.dynamic import DynamicPolicy
    from cdmo.sim.engine import Simulation
    from cdmo.sim.metrics import pending_times, percentile
    from cdmo.sim.workload import generate_workload

    sc = load_scenario(EXAMPLES / "clearml-queues.yaml")
    pods = generate_workload(sc)
    cold = OperatorConfig(prewarm=False)
    p95 = {}
    for refresh in ("builtin", "sighup"):
        policy = DynamicPolicy(dataclasses.replace(sc.dynamic, refresh=refresh), sc.time_model, cold)
        run = Simulation(sc, pods, policy, horizon=sc.duration).run()
        p95[refresh] = percentile(pending_times(run), 95)
    assert p95["builtin"] <= 0.7 * p95["sighup"], p95


@pytest.mark.parametrize("name", ["clearml", "mixed", "burst"])
def test_no_policy_disrupts_a_pod(name: str, request: pytest.FixtureRequest) -> None:
    report: Report = request.getfixturevalue(name)
    assert report.summaries["dynamic"]["reconfigurations"] > 0  # it did change layouts under running pods
    assert {p: s["disrupted_pods"] for p, s in report.summaries.items()} == {p: 0 for p in report.summaries}
    details = report.summaries["dynamic"]["details"]
    assert details["agent_blocked_gpus"] == 0 and details["agent_errors"] == 0


def test_every_policy_saw_the_same_pods(clearml: Report) -> None:
    assert len({s["pods"]["submitted"] for s in clearml.summaries.values()}) == 1
    assert {tuple(r.pods) == tuple(clearml.pods) for r in clearml.runs.values()} == {True}


def test_json_has_a_key_per_policy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(
        capsys, "simulate", str(EXAMPLES / "clearml-queues.yaml"), "--output", "json", "--duration", "2h"
    )
    assert code == 0
    doc = json.loads(out)
    assert list(doc) == list(load_scenario(EXAMPLES / "clearml-queues.yaml").policies)
    for name, result in doc.items():
        assert result["policy"] == name
        # camelCase keys, as every verb's JSON (issue 14); the Python summaries stay snake_case.
        assert set(result["pods"]) == {"submitted", "started", "neverStarted"}
        assert set(result["pendingSeconds"]) >= {"p50", "p95", "p99", "max"}
        assert 0.0 <= result["utilization"] <= 1.0
        assert set(result["gpuInstances"]) == {"created", "destroyed"}
        assert result["disruptedPods"] == 0
        assert result["durationSeconds"] == 7200 and result["scenario"] == "clearml-queues"
    assert "plannerCpuSeconds" in doc["dynamic"]["timing"]


def test_same_seed_gives_the_same_result_other_seed_another(capsys: pytest.CaptureFixture[str]) -> None:
    args = ("simulate", str(EXAMPLES / "mixed-fleet.yaml"), "-o", "json", "--duration", "3h")
    runs = []
    for seed in ("4", "4", "5"):
        code, out, _ = cli(capsys, *args, "--seed", seed)
        assert code == 0
        runs.append({k: without_timing(v) for k, v in json.loads(out).items()})
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert runs[0]["dynamic"]["seed"] == 4


def test_table_plot_and_policy_choice(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    png = tmp_path / "out.png"
    code, out, err = cli(
        capsys,
        "simulate",
        str(EXAMPLES / "burst.yaml"),
        "--policy",
        "dynamic",
        "--policy",
        "static:all-1g",
        "--duration",
        "90m",
        "--plot",
        str(png),
        "--no-progress",
    )
    assert code == 0
    assert "dynamic" in out and "static:all-1g" in out and "first-fit" not in out
    assert "PENDING" in out and "UTIL" in out and "p95" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in err


@pytest.mark.parametrize(
    ("content", "argv", "words"),
    [
        (
            "duration: 1h\nfleet: [{model: h200-141gb, count: 1, gpus: 8}]\nworkload: {rate_per_hour: 1, mix: [{queue: slice-9, duration: 1m}]}\n",
            (),
            "workload.mix[0].queue: unknown queue 'slice-9'",
        ),
        (
            "duration: 1h\nfleet: [{model: v100, count: 1, gpus: 8}]\nworkload: {rate_per_hour: 1, mix: [{queue: slice-1, duration: 1m}]}\n",
            (),
            "fleet[0].model: unknown GPU model 'v100'",
        ),
        (
            "duration: 1h\nfleet: [{model: h100-80gb, count: 1, gpus: 8}]\nworkload: {rate_per_hour: 1, mix: [{queue: slice-1, duration: 1m}]}\n",
            ("--policy", "best-fit"),
            "unknown policy 'best-fit'",
        ),
        (
            "duration: 1h\nfleet: [{model: h100-80gb, count: 1, gpus: 8}]\nworkload: {rate_per_hour: 1, mix: [{queue: slice-1, duration: 1m}]}\n",
            ("--duration", "soon"),
            "--duration: 'soon' is not a duration",
        ),
        (
            "duration: 1h\nfleet: [{model: h100-80gb, count: 1, gpus: 8}]\nworkload: {rate_per_hour: 1, mix: [{queue: slice-1, duration: 1m}]}\n",
            ("--plot", "/nonexistent/dir/x.png"),
            "no such directory",
        ),
    ],
    ids=["queue", "model", "policy", "duration", "plot"],
)
def test_bad_input_exits_2_with_the_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str, argv: tuple[str, ...], words: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    code, out, err = cli(capsys, "simulate", str(path), *argv)
    assert code == 2
    assert words in err
    assert "Traceback" not in err and out == ""
    assert len(err.strip().splitlines()) == 1


def test_missing_scenario_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "simulate", "no/such/scenario.yaml")
    assert code == 2 and "cannot read no/such/scenario.yaml: no such file" in err


def test_plans_are_counted(clearml: Report) -> None:
    s: dict[str, Any] = clearml.summaries
    assert s["dynamic"]["plans"] > 0 and s["first-fit"]["plans"] > 0
    assert s["static:all-balanced"]["plans"] == 0 and s["static:all-balanced"]["reconfigurations"] == 0
