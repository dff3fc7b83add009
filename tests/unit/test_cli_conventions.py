"""What every ``cdmo`` verb shares (issue 14): ``-o table|json|yaml``, camelCase keys, ``--debug``
anywhere, exit 130 on Ctrl-C, a quiet exit on a closed pipe, tables that never cut a cell,
scenario sizes within a stated limit."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from cdmo import exit_codes
from cdmo.cli import build_parser, main, split_debug
from cdmo.output import build_table, camel_key, camel_keys, print_table

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SNAPSHOT = ROOT / "tests" / "data" / "snapshots" / "contract-example.yaml"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def all_keys(data: Any) -> set[str]:
    if isinstance(data, dict):
        keys = {k for k in data if isinstance(k, str)}
        for v in data.values():
            keys |= all_keys(v)
        return keys
    if isinstance(data, list):
        return set().union(*(all_keys(v) for v in data)) if data else set()
    return set()


@pytest.mark.parametrize(
    ("key", "camel"),
    [
        ("never_started", "neverStarted"),
        ("planner_cpu_seconds", "plannerCpuSeconds"),
        ("gi_id", "giId"),
        ("p50", "p50"),
        ("giId", "giId"),
        ("static:all-1g", "static:all-1g"),  # a policy name used as a key is data, kept
        ("1g.10gb", "1g.10gb"),
        ("gpu-node-1", "gpu-node-1"),
        ("_private", "_private"),
    ],
    ids=lambda v: str(v),
)
def test_camel_key(key: str, camel: str) -> None:
    assert camel_key(key) == camel


def test_camel_keys_converts_nested_dicts_and_lists() -> None:
    assert camel_keys({"a_b": [{"c_d": 1}], "static:x_y": {"e_f": (2,)}}) == {
        "aB": [{"cD": 1}],
        "static:x_y": {"eF": [2]},
    }


def test_emit_keeps_data_keys_of_a_manifest_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    from cdmo.output import emit

    manifest = {"metadata": {"labels": {"gpu_fraction": "0.5"}}}
    emit(manifest, "json", camel=False)
    assert json.loads(capsys.readouterr().out) == manifest
    emit(manifest, "yaml")
    assert yaml.safe_load(capsys.readouterr().out) == {"metadata": {"labels": {"gpuFraction": "0.5"}}}


def _subparsers(parser: Any) -> dict[str, Any]:
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            return dict(action.choices)
    return {}


def _result_verbs() -> dict[str, Any]:
    """verb path -> parser, for the verbs that print a result (agent, operator and webhook are
    servers that print logs)."""
    verbs: dict[str, Any] = {}
    for verb, p in _subparsers(build_parser()).items():
        nested = _subparsers(p)
        if nested:
            verbs.update({f"{verb} {n}": q for n, q in nested.items()})
        else:
            verbs[verb] = p
    return {v: p for v, p in verbs.items() if v not in ("agent", "operator", "webhook")}


def test_every_result_verb_takes_output_table_json_yaml() -> None:
    verbs = _result_verbs()
    assert {"profiles", "plan", "simulate", "teardown", "node show", "node apply"} <= set(verbs)
    for verb, parser in verbs.items():
        [output] = [a for a in parser._actions if "--output" in a.option_strings]
        assert "-o" in output.option_strings, verb
        assert tuple(output.choices) == ("table", "json", "yaml"), verb


def _without_timing(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _without_timing(v) for k, v in data.items() if k != "timing"}
    return data


@pytest.mark.parametrize(
    "argv",
    [
        ("profiles", "h100-80gb"),
        ("profiles",),
        ("profiles", "h100-80gb", "--check", "3g.40gb@0,3g.40gb@4"),
        ("plan", str(SNAPSHOT)),
        ("simulate", str(EXAMPLES / "burst.yaml"), "--duration", "20m", "--policy", "dynamic"),
    ],
    ids=["profiles-model", "profiles", "profiles-check", "plan", "simulate"],
)
def test_yaml_equals_json_and_keys_are_camel_case(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    code, as_json, _ = run_cli(capsys, *argv, "-o", "json")
    assert code == 0
    code, as_yaml, _ = run_cli(capsys, *argv, "-o", "yaml")
    assert code == 0
    doc = json.loads(as_json)
    # Same document either way; measured CPU times (simulate's timing) differ from run to run.
    assert _without_timing(yaml.safe_load(as_yaml)) == _without_timing(doc)
    snake = sorted(k for k in all_keys(doc) if "_" in k and k == k.lower())
    assert snake == [], f"snake_case keys in {' '.join(argv)}: {snake}"


def test_node_show_keys_are_camel_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sim = ["--sim-state", str(tmp_path / "n.json"), "--sim-gpus", "h100-80gb"]
    layout = tmp_path / "l.yaml"
    layout.write_text("gpus: [{index: 0, instances: [{profile: 3g.40gb, start: 0}]}]\n")
    sock = ["--pod-resources-socket", str(tmp_path / "none.sock")]
    code, out, err = run_cli(capsys, "node", "apply", str(layout), "-o", "yaml", *sim, *sock)
    assert code == 0, err
    assert yaml.safe_load(out)["created"][0]["giId"] is not None
    code, out, _ = run_cli(capsys, "node", "show", "-o", "json", *sim, *sock)
    assert code == 0
    assert not [k for k in all_keys(json.loads(out)) if "_" in k]


@pytest.mark.parametrize(
    ("argv", "rest", "debug"),
    [
        (["profiles", "--debug"], ["profiles"], True),
        (["--debug", "profiles"], ["profiles"], True),
        (["node", "show", "--debug", "-o", "json"], ["node", "show", "-o", "json"], True),
        (["plan", "-", "--", "--debug"], ["plan", "-", "--", "--debug"], False),
        (["profiles"], ["profiles"], False),
    ],
    ids=["after-verb", "before-verb", "nested-verb", "after-double-dash", "none"],
)
def test_split_debug(argv: list[str], rest: list[str], debug: bool) -> None:
    assert split_debug(argv) == (rest, debug)


def test_debug_after_the_verb_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "profiles", "no-such-gpu", "--debug")
    assert code == exit_codes.USAGE
    assert "Traceback" in err and "cdmo: error:" in err
    code, _, err = run_cli(capsys, "profiles", "no-such-gpu")
    assert code == exit_codes.USAGE and "Traceback" not in err


def test_teardown_help_says_it_refuses_while_an_instance_is_in_use() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "cdmo.cli", "--help"], capture_output=True, text=True, env=ENV, check=True
    ).stdout
    line = " ".join(help_text.split("teardown", 2)[-1].split()[:30])
    assert "refuses" in line and "in use" in line
    assert "free MIG instances" not in help_text


def test_tables_never_cut_a_uuid_on_a_narrow_terminal() -> None:
    uuid = "MIG-4f6a1c0e-8a9b-5c3d-9e2f-0123456789ab"
    pod = "research-team-long-namespace/train-llama-finetune-job-0123456789-abcde"
    out = Console(file=io.StringIO(), width=80, soft_wrap=False, highlight=False)
    print_table(
        build_table("MIG instances", ("GPU", "PROFILE", "MIG UUID", "HELD BY"), [(0, "1g.10gb", uuid, pod)]),
        out,
    )
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert uuid in text and pod in text and "…" not in text


def test_sigint_exits_130_without_a_traceback() -> None:
    # large.yaml runs for about a minute: long enough to be interrupted in the middle of it.
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdmo.cli", "simulate", str(EXAMPLES / "large.yaml"), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    time.sleep(3)
    assert proc.poll() is None, "the simulation ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == exit_codes.INTERRUPTED == 130
    assert "Traceback" not in err and out == ""


def test_a_closed_pipe_exits_quietly() -> None:
    # `cdmo profiles h100-80gb -o json | head -c 1`: the reader goes away before cdmo writes.
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdmo.cli", "profiles", "h100-80gb", "-o", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=30) == exit_codes.BROKEN_PIPE
    assert err == b""


@pytest.mark.parametrize(
    ("fleet", "workload", "says"),
    [
        ("{model: h100-80gb, count: 100000000, gpus: 8}", "rate_per_hour: 10", "100,000,000 nodes"),
        ("{model: h100-80gb, count: 10, gpus: 8}", "rate_per_hour: 1000000000", "about 1e+09 pods"),
        ("{model: h100-80gb, count: 10000, gpus: 80}", "rate_per_hour: 10", "800,000 GPUs"),
    ],
    ids=["1e8-nodes", "rate-1e9-per-hour", "too-many-gpus"],
)
def test_absurd_scenario_sizes_get_one_message_and_exit_2(
    tmp_path: Path, fleet: str, workload: str, says: str
) -> None:
    scenario = tmp_path / "huge.yaml"
    scenario.write_text(
        f"duration: 1h\nfleet: [{fleet}]\n"
        f"workload: {{{workload}, mix: [{{profile: 1g.10gb, duration: {{median: 30m, sigma: 1.0}}}}]}}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "cdmo.cli", "simulate", str(scenario)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    assert proc.returncode == exit_codes.USAGE
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "limit" in lines[0] and says in lines[0], proc.stderr


def test_duration_flag_is_checked_against_the_limit(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "simulate", str(EXAMPLES / "burst.yaml"), "--duration", "400d")
    assert code == exit_codes.USAGE and err.startswith("cdmo: error: --duration:") and "31 days" in err
