"""``cdmo node show|apply`` and ``cdmo teardown`` on simulated GPUs, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cdmo.cli import main

ROOT = Path(__file__).resolve().parents[2]

LAYOUT = """\
gpus:
  - index: 0
    instances:
      - {profile: 3g.40gb, start: 0}
      - {profile: 2g.20gb, start: 4}
      - {profile: 1g.10gb, start: 6}
  - index: 1
    instances:
      - {profile: 7g.80gb, start: 0}
"""


def cdmo(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def sim_args(state: Path, gpus: str | None = "h100-80gb,h100-80gb") -> list[str]:
    return (
        ["--sim-state", str(state)]
        + (["--sim-gpus", gpus] if gpus else [])
        + ["--pod-resources-socket", str(state.parent / "no-kubelet.sock")]
    )


def sim_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], gpus: str, mig: dict[int, tuple[bool, bool]]
) -> tuple[Path, dict[str, Any]]:
    """A simulated node's state file for ``gpus``, with MIG mode (current, pending) set per GPU
    index in ``mig``; returns its path and what it holds."""
    state = tmp_path / "node.json"
    cdmo(capsys, "node", "show", *sim_args(state, gpus))
    doc = json.loads(state.read_text())
    for index, (current, pending) in mig.items():
        doc["gpus"][index]["mig"] = {"current": current, "pending": pending}
    state.write_text(json.dumps(doc))
    return state, doc


def held_by_process(state: Path, gpu: int, start: int, pid: int) -> str:
    """Mark an instance busy the documented way: a pid in its compute instance's processes."""
    doc = json.loads(state.read_text())
    inst = next(i for i in doc["gpus"][gpu]["instances"] if i["start"] == start)
    inst["compute_instances"][0]["processes"] = [pid]
    state.write_text(json.dumps(doc, indent=2))
    return str(inst["compute_instances"][0]["uuid"])


def test_apply_and_show_from_the_shell(tmp_path: Path) -> None:
    (tmp_path / "layout.yaml").write_text(LAYOUT)
    state = tmp_path / "node.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    applied = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdmo.cli",
            "node",
            "apply",
            str(tmp_path / "layout.yaml"),
            "--output",
            "json",
            *sim_args(state),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert applied.returncode == 0, applied.stderr
    doc = json.loads(applied.stdout)
    assert doc["applied"] and len(doc["created"]) == 4 and doc["destroyed"] == [] and doc["refused"] == []
    shown = subprocess.run(
        [sys.executable, "-m", "cdmo.cli", "node", "show", "--output", "json", "--sim-state", str(state)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    gpus = json.loads(shown.stdout)["gpus"]
    assert [[(i["profile"], i["start"], i["size"]) for i in g["instances"]] for g in gpus] == [
        [("3g.40gb", 0, 4), ("2g.20gb", 4, 2), ("1g.10gb", 6, 1)],
        [("7g.80gb", 0, 8)],
    ]
    assert {i["uuid"] for g in gpus for i in g["instances"]} == {c["uuid"] for c in doc["created"]}


def test_apply_keeps_used_instances_and_refuses_to_destroy_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = tmp_path / "layout.yaml"
    layout.write_text(
        "gpus: [{index: 0, instances: [{profile: 1g.10gb, start: 0}, {profile: 1g.10gb, start: 1}]}]\n"
    )
    state = tmp_path / "node.json"
    assert cdmo(capsys, "node", "apply", str(layout), *sim_args(state))[0] == 0
    uuid = held_by_process(state, 0, 1, 4242)

    # Repack around the busy 1g.10gb@1: allowed, it stays.
    layout.write_text(
        "spec:\n  gpus: [{index: 0, instances: [{profile: 1g.10gb, start: 1}, {profile: 3g.40gb, start: 4}]}]\n"
    )
    code, out, err = cdmo(capsys, "node", "apply", str(layout), "-o", "json", *sim_args(state, None))
    assert code == 0, err
    doc = json.loads(out)
    assert [(d["profile"], d["start"]) for d in doc["destroyed"]] == [("1g.10gb", 0)]

    # A layout that would destroy it: refused, and nothing at all changes.
    before = state.read_text()
    layout.write_text("gpus: [{index: 0, instances: [{profile: 7g.80gb, start: 0}]}]\n")
    code, out, err = cdmo(capsys, "node", "apply", str(layout), *sim_args(state, None))
    assert code == 1
    assert f"1g.10gb@1 ({uuid}) is held by process 4242" in err and "nothing was changed" in err
    assert "refused, nothing changed" in out
    assert json.loads(state.read_text())["gpus"] == json.loads(before)["gpus"]


def test_apply_dry_run_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "layout.yaml").write_text(LAYOUT)
    state = tmp_path / "node.json"
    code, out, _ = cdmo(capsys, "node", "apply", str(tmp_path / "layout.yaml"), "--dry-run", *sim_args(state))
    assert code == 0 and "planned:" in out and "create 7g.80gb@0 on GPU 1" in out
    # A dry run leaves no new simulated node behind (issue 14), nor a lock file beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layout.yaml"]
    assert cdmo(capsys, "node", "apply", str(tmp_path / "layout.yaml"), *sim_args(state))[0] == 0
    before = state.read_text()
    code, out, _ = cdmo(capsys, "node", "apply", str(tmp_path / "layout.yaml"), "--dry-run", *sim_args(state))
    assert code == 0 and state.read_text() == before


def test_refused_apply_leaves_no_new_state_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Two 7g.80gb on one H100 cannot be: refused before anything is made.
    (tmp_path / "bad.yaml").write_text(
        "gpus: [{index: 0, instances: [{profile: 7g.80gb, start: 0}, {profile: 7g.80gb, start: 0}]}]\n"
    )
    state = tmp_path / "node.json"
    code, _, err = cdmo(capsys, "node", "apply", str(tmp_path / "bad.yaml"), *sim_args(state))
    assert code != 0 and err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_apply_again_has_nothing_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "layout.yaml").write_text(LAYOUT)
    state = tmp_path / "node.json"
    assert cdmo(capsys, "node", "apply", str(tmp_path / "layout.yaml"), *sim_args(state))[0] == 0
    code, out, _ = cdmo(capsys, "node", "apply", str(tmp_path / "layout.yaml"), *sim_args(state, None))
    assert code == 0 and "nothing to do" in out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "gpus: [{index: 0, instances: [{profile: 3g.40gb, start: 0}, {profile: 4g.40gb, start: 0}]}]",
            "overlaps",
        ),
        ("gpus: [{index: 4, instances: []}]", "this node has GPUs 0, 1"),
    ],
    ids=["invalid-layout", "unknown-gpu"],
)
def test_apply_refuses_bad_layouts_for_the_gpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    (tmp_path / "layout.yaml").write_text(text)
    code, out, err = cdmo(
        capsys, "node", "apply", str(tmp_path / "layout.yaml"), "-o", "json", *sim_args(tmp_path / "s.json")
    )
    assert code == 1 and message in err
    assert json.loads(out)["refused"][0]["state"] == "Refused"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nodes: []", "is not a MigLayout spec"),
        ("gpus: [{index: 0, instances: [{profile: big, start: 0}]}]", "is not a MIG profile name"),
        ("gpus: [", "not valid YAML"),
        (
            "gpus:\n- index: 0\n  instances: []\n  instances: [{profile: 1g.10gb, start: 0}]\n",
            "found duplicate key 'instances' at line 4, column 3",
        ),
        ("gpus: [{index: " + "9" * 5000 + ", instances: []}]", "holds a number of more than 4300 digits"),
    ],
    ids=["not-a-spec", "bad-profile", "bad-yaml", "key-twice", "huge-number"],
)
def test_apply_bad_files_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    (tmp_path / "layout.yaml").write_text(text)
    code, _, err = cdmo(
        capsys, "node", "apply", str(tmp_path / "layout.yaml"), *sim_args(tmp_path / "s.json")
    )
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_apply_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cdmo(capsys, "node", "apply", str(tmp_path / "none.yaml"), *sim_args(tmp_path / "s.json"))
    assert code == 2 and "cannot read" in err


def test_apply_with_mig_off_says_how_to_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state, _ = sim_node(tmp_path, capsys, "h100-80gb", {0: (False, False)})
    (tmp_path / "layout.yaml").write_text("gpus: [{index: 0, instances: [{profile: 7g.80gb, start: 0}]}]\n")
    code, out, err = cdmo(capsys, "node", "apply", str(tmp_path / "layout.yaml"), *sim_args(state, None))
    assert code == 1 and "nvidia-smi -i 0 -mig 1" in err
    code, out, err = cdmo(capsys, "node", "show", *sim_args(state, None))
    assert code == 0 and "MIG off" in out
    code, out, err = cdmo(
        capsys, "node", "apply", str(tmp_path / "layout.yaml"), "--enable-mig", *sim_args(state, None)
    )
    assert code == 0, err


def test_a_dry_run_with_enable_mig_switches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run says it would switch MIG on and what it would make then; MIG mode stays off."""
    state, doc = sim_node(tmp_path, capsys, "h100-80gb,a100-40gb", {0: (False, False), 1: (False, False)})
    (tmp_path / "layout.yaml").write_text("gpus: [{index: 0, instances: [{profile: 7g.80gb, start: 0}]}]\n")
    argv = (
        "node",
        "apply",
        str(tmp_path / "layout.yaml"),
        "--enable-mig",
        "--dry-run",
        *sim_args(state, None),
    )
    code, out, err = cdmo(capsys, *argv)
    assert code == 0, err
    assert out.splitlines() == ["planned:", "  switch MIG on on GPU 0", "  create 7g.80gb@0 on GPU 0"]
    code, out, err = cdmo(capsys, *argv, "-o", "json")
    assert code == 0 and json.loads(out)["migSwitchedOn"] == [0], err
    assert json.loads(state.read_text()) == doc

    # Ampere would wait for a reset: the dry run says so, and still changes nothing.
    (tmp_path / "layout.yaml").write_text("gpus: [{index: 1, instances: [{profile: 7g.40gb, start: 0}]}]\n")
    code, out, err = cdmo(capsys, *argv)
    assert code == 1 and "refused, nothing changed:" in out
    assert "once MIG is switched on: " in err and "pending a GPU reset" in err
    assert json.loads(state.read_text()) == doc


def test_enable_mig_switches_nothing_while_another_gpu_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Once, GPU 1 got MIG on although GPU 0's layout was refused: "changes nothing" was false."""
    state, doc = sim_node(tmp_path, capsys, "h100-80gb,h100-80gb", {1: (False, False)})
    (tmp_path / "layout.yaml").write_text(
        "gpus: [{index: 0, instances: [{profile: 3g.40gb, start: 1}]}, "
        "{index: 1, instances: [{profile: 3g.40gb, start: 0}]}]\n"
    )
    for extra in ((), ("--dry-run",)):
        argv = ("node", "apply", str(tmp_path / "layout.yaml"), "--enable-mig", *extra, "-o", "json")
        code, out, err = cdmo(capsys, *argv, *sim_args(state, None))
        assert code == 1 and "nothing was changed" in err
        assert json.loads(out)["migSwitchedOn"] == [] and json.loads(state.read_text()) == doc


def test_a_misspelled_layout_field_is_refused_not_read_as_an_empty_gpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "node.json"
    (tmp_path / "layout.yaml").write_text(LAYOUT)
    cdmo(capsys, "node", "apply", str(tmp_path / "layout.yaml"), *sim_args(state))
    before = json.loads(state.read_text())
    (tmp_path / "typo.yaml").write_text("gpus: [{index: 0, instance: [{profile: 3g.40gb, start: 0}]}]\n")
    code, _, err = cdmo(capsys, "node", "apply", str(tmp_path / "typo.yaml"), *sim_args(state, None))
    assert code == 2 and "unknown field 'instance'; the fields are index, instances" in err
    assert json.loads(state.read_text()) == before
    (tmp_path / "bad.yaml").write_bytes(b"\xff\xfe")
    code, _, err = cdmo(capsys, "node", "apply", str(tmp_path / "bad.yaml"), *sim_args(state, None))
    assert code == 2 and "not a UTF-8 text file" in err


def test_show_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "layout.yaml").write_text(LAYOUT)
    state = tmp_path / "node.json"
    cdmo(capsys, "node", "apply", str(tmp_path / "layout.yaml"), *sim_args(state))
    held_by_process(state, 0, 4, 99)
    code, out, _ = cdmo(capsys, "node", "show", *sim_args(state, None))
    assert code == 0
    assert "PLACEMENT" in out and "4:2" in out and "process 99" in out and "free" in out
    code, out, _ = cdmo(capsys, "node", "show", "-o", "yaml", *sim_args(state, None))
    assert "profile: 2g.20gb" in out


def test_show_table_says_when_mig_waits_to_be_switched_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, _ = sim_node(tmp_path, capsys, "a100-40gb", {0: (True, False)})
    code, out, _ = cdmo(capsys, "node", "show", *sim_args(state, None))
    assert code == 0 and "pending disable" in out


def test_apply_creates_nothing_on_a_gpu_whose_mig_waits_to_be_switched_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reset that finishes switching MIG off removes every instance, with any pod on it: it
    once created them all the same."""
    state, doc = sim_node(tmp_path, capsys, "a100-40gb", {0: (True, False)})
    (tmp_path / "layout.yaml").write_text("gpus: [{index: 0, instances: [{profile: 3g.20gb, start: 4}]}]\n")
    code, _, err = cdmo(capsys, "node", "apply", str(tmp_path / "layout.yaml"), *sim_args(state, None))
    assert code == 1 and "switched off pending a GPU reset" in err and "nvidia-smi -i 0 -r" in err, err
    assert json.loads(state.read_text()) == doc


def test_show_retries_a_transient_nvml_error_as_the_agent_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It once failed at once with "NVML error UNKNOWN, will retry", and did not retry."""
    state = tmp_path / "node.json"
    cdmo(capsys, "node", "show", *sim_args(state, "h100-80gb"))
    doc = json.loads(state.read_text())
    doc["faults"] = [{"call": "nvmlDeviceGetGpuInstances", "rc": 999, "count": 1}]
    state.write_text(json.dumps(doc))
    code, out, err = cdmo(capsys, "node", "show", "-o", "json", *sim_args(state, None))
    assert code == 0 and json.loads(out)["gpus"][0]["model"] == "h100-80gb", err


def test_show_needs_gpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cdmo(capsys, "node", "show", "--backend", "simulated")
    assert code == 2 and "--sim-gpus" in err


def test_teardown_refuses_then_clears(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "layout.yaml").write_text(LAYOUT)
    state = tmp_path / "node.json"
    cdmo(capsys, "node", "apply", str(tmp_path / "layout.yaml"), *sim_args(state))
    uuid = held_by_process(state, 1, 0, 7)
    code, out, err = cdmo(capsys, "teardown", "--disable-mig", "-o", "json", *sim_args(state, None))
    assert code == 1 and f"7g.80gb@0 ({uuid}) is held by process 7" in err
    doc: dict[str, Any] = json.loads(out)
    assert doc["refused"] and doc["destroyed"] == []
    doc = json.loads(state.read_text())
    doc["gpus"][1]["instances"][0]["compute_instances"][0]["processes"] = []
    state.write_text(json.dumps(doc))
    code, out, err = cdmo(capsys, "teardown", "--disable-mig", *sim_args(state, None))
    assert code == 0, err
    assert out.count("destroyed ") == 4 and "GPU 1: MIG mode is off" in out
    code, out, _ = cdmo(capsys, "teardown", *sim_args(state, None))
    assert code == 0 and "nothing to do" in out


def test_teardown_on_ampere_says_reset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "node.json"
    (tmp_path / "layout.yaml").write_text("gpus: [{index: 0, instances: [{profile: 7g.40gb, start: 0}]}]\n")
    cdmo(capsys, "node", "apply", str(tmp_path / "layout.yaml"), *sim_args(state, "a100-40gb"))
    code, out, _ = cdmo(capsys, "teardown", "--disable-mig", *sim_args(state, None))
    assert code == 0 and "nvidia-smi -i 0 -r" in out


# --- the simulated state file: read-only commands, malformed files, sizes ---------------------

MINIMAL = '{"gpus": [{"model": "h100-80gb", "instances": [{"profile": "3g.40gb", "start": 4, "compute_instances": [{"uuid": "MIG-a"}]}]}]}\n'


def test_show_and_a_dry_run_leave_the_state_file_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """They once saved it after loading: defaults filled in, a read-only file replaced."""
    state = tmp_path / "s.json"
    state.write_text(MINIMAL)
    (tmp_path / "layout.yaml").write_text("gpus: [{index: 0, instances: []}]\n")
    mtime = state.stat().st_mtime_ns
    assert cdmo(capsys, "node", "show", *sim_args(state, None))[0] == 0
    code, out, _ = cdmo(
        capsys, "node", "apply", str(tmp_path / "layout.yaml"), "--dry-run", *sim_args(state, None)
    )
    assert code == 0 and "destroy 3g.40gb@4" in out
    assert state.read_text() == MINIMAL and state.stat().st_mtime_ns == mtime


def test_gpu_uuids_left_out_of_the_file_follow_its_seed_not_how_its_path_is_spelled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "s.json").write_text(MINIMAL)
    monkeypatch.chdir(tmp_path)
    uuids = []
    for spelled in ("s.json", "./s.json", str(tmp_path / "s.json")):
        code, out, _ = cdmo(capsys, "node", "show", "-o", "json", *sim_args(Path(spelled), None))
        uuids.append(json.loads(out)["gpus"][0]["uuid"])
    assert code == 0 and len(set(uuids)) == 1


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        ({"mig": "off"}, "gpus[0].mig must be an object"),
        (
            {"processes": ["abc"]},
            'gpus[0].processes[0]: must be a process id from 0 to 4294967295, not "abc"',
        ),
        ({"processes": 5}, "gpus[0].processes: must be a list, not 5"),
        (
            {"instances": [{"profile": "3g.40gb", "start": 4, "gi_id": "x"}]},
            'gpus[0].instances[0].gi_id: must be a whole number from 0 to 4294967295, not "x"',
        ),
        (
            {
                "instances": [
                    {
                        "profile": "3g.40gb",
                        "start": 4,
                        "compute_instances": [{"ci_id": 0, "uuid": "MIG-a"}, {"ci_id": 0, "uuid": "MIG-b"}],
                    }
                ]
            },
            "ci_id 0 is used twice",
        ),
    ],
    ids=["mig", "process-text", "processes-number", "gi-id", "ci-id-twice"],
)
def test_a_malformed_state_file_is_one_line_and_exit_2(
    edit: dict[str, object], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "s.json"
    state.write_text(json.dumps({"gpus": [{"model": "h100-80gb", **edit}]}))
    code, _, err = cdmo(capsys, "node", "show", *sim_args(state, None))
    assert code == 2 and words in err and "unexpected error" not in err, err


#: The state file of docs/node-agent.md: one H100 holding 3g.40gb@0 with its compute instance.
DOCUMENTED_STATE: dict[str, Any] = {
    "version": 1,
    "seed": "sim-node",
    "next_uuid": 4,
    "gpus": [
        {
            "index": 0,
            "model": "h100-80gb",
            "uuid": "GPU-210630e1-86e2-5bf6-8280-dc72d959573d",
            "mig": {"current": True, "pending": True},
            "processes": [],
            "instances": [
                {
                    "gi_id": 1,
                    "profile": "3g.40gb",
                    "start": 0,
                    "compute_instances": [
                        {"ci_id": 0, "profile_id": 2, "uuid": "MIG-c", "processes": [4242]}
                    ],
                }
            ],
        }
    ],
    "faults": [{"call": "nvmlDeviceCreateGpuInstanceWithPlacement", "rc": 10, "count": 1}],
    "crash_before_next_compute_instance": False,
    "xid_serial": 1,
    "xid_events": [{"seq": 1, "gpu": 0, "xid": 48, "gi_id": 1, "ci_id": 0}],
}
_CI = ("gpus", 0, "instances", 0, "compute_instances", 0)
CI_PATH = "gpus[0].instances[0].compute_instances[0]"
INF = float("inf")


@pytest.mark.parametrize(
    ("where", "value", "words"),
    [
        (
            ("next_uuid",),
            INF,
            "next_uuid: must be a whole number from 0 to 9223372036854775807, not Infinity",
        ),
        (
            ("xid_serial",),
            INF,
            "xid_serial: must be a whole number from 0 to 9223372036854775807, not Infinity",
        ),
        (("gpus", 0, "instances", 0, "gi_id"), INF, "gpus[0].instances[0].gi_id: must be a whole number"),
        ((*_CI, "ci_id"), INF, f"{CI_PATH}.ci_id: must be a whole number"),
        (
            (*_CI, "profile_id"),
            -1,
            f"{CI_PATH}.profile_id: must be a whole number from 0 to 4294967295, not -1",
        ),
        (
            (*_CI, "profile_id"),
            4,
            f"{CI_PATH}.profile_id 4 is not a compute instance profile of 3g.40gb",
        ),
        ((*_CI, "processes", 0), 1.5, f"{CI_PATH}.processes[0]: must be a process id"),
        (("xid_events", 0, "gi_id"), INF, "xid_events[0].gi_id: must be a whole number"),
        (("faults", 0, "count"), INF, "faults[0].count: must be a whole number from -1 to"),
        (("faults", 0, "call"), "nvmlNope", "faults[0].call: 'nvmlNope' is not an NVML call"),
        (("gpus", 0, "mig", "current"), "yes", 'gpus[0].mig.current: must be true or false, not "yes"'),
        (
            ("crash_before_next_compute_instance",),
            1,
            "crash_before_next_compute_instance: must be true or false",
        ),
    ],
    ids=[
        "next-uuid-inf",
        "xid-serial-inf",
        "gi-id-inf",
        "ci-id-inf",
        "profile-id-negative",
        "profile-id-too-big",
        "pid-float",
        "xid-gi-inf",
        "fault-count-inf",
        "fault-call",
        "mig-text",
        "crash-number",
    ],
)
@pytest.mark.parametrize("verb", ["show", "apply"])
def test_a_state_file_field_out_of_kind_or_range_names_the_file_and_the_field(
    where: tuple[str | int, ...],
    value: object,
    words: str,
    verb: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Infinity once overflowed int() and profile_id -1 was a KeyError at the first call: exit 3."""
    doc = json.loads(json.dumps(DOCUMENTED_STATE))
    target: Any = doc
    for step in where[:-1]:
        target = target[step]
    target[where[-1]] = value
    state = tmp_path / "s.json"
    state.write_text(json.dumps(doc))  # json writes float("inf") as Infinity, as the audit's file had it
    (tmp_path / "layout.yaml").write_text("gpus: [{index: 0, instances: [{profile: 3g.40gb, start: 0}]}]\n")
    argv = ["show"] if verb == "show" else ["apply", str(tmp_path / "layout.yaml"), "--dry-run"]
    code, _, err = cdmo(capsys, "node", *argv, *sim_args(state, None))
    assert code == 2 and f"{state}: {words}" in err and len(err.strip().splitlines()) == 1, err
    assert json.loads(state.read_text()) == doc  # nothing written


def test_the_documented_state_file_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "s.json"
    state.write_text(json.dumps(DOCUMENTED_STATE))
    code, out, err = cdmo(capsys, "node", "show", "-o", "json", *sim_args(state, None))
    assert code == 0, err
    assert json.loads(out)["gpus"][0]["instances"][0]["holders"] == ["process 4242"]


def test_a_state_file_nested_too_deeply_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """json.loads nests by recursion: 100,000 brackets once ended in a RecursionError (exit 3)."""
    state = tmp_path / "deep.json"
    state.write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = cdmo(capsys, "node", "show", *sim_args(state, None))
    assert code == 2 and f"{state} is nested too deeply to be a simulated state" in err, err
    state.write_text('{"gpus": [], "gpus": []}')
    code, _, err = cdmo(capsys, "node", "show", *sim_args(state, None))
    assert code == 2 and "the key 'gpus' is given twice" in err, err


@pytest.mark.parametrize(
    "argv",
    [["node", "show"], ["node", "apply", "LAYOUT"], ["node", "apply", "LAYOUT", "--dry-run"], ["teardown"]],
    ids=["show", "apply", "apply-dry-run", "teardown"],
)
def test_backend_nvml_with_sim_flags_is_refused_before_anything_runs(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """They were ignored without a word: apply planned against the real GPUs and exited 0."""
    (tmp_path / "layout.yaml").write_text("gpus: [{index: 0, instances: [{profile: 3g.20gb, start: 0}]}]\n")
    argv = [str(tmp_path / "layout.yaml") if a == "LAYOUT" else a for a in argv]
    state = tmp_path / "conf.json"
    code, out, err = cdmo(capsys, *argv, "--backend", "nvml", *sim_args(state, "a100-40gb"))
    assert code == 2 and out == "", err
    assert (
        "--backend nvml does not take --sim-state or --sim-gpus" in err and len(err.strip().splitlines()) == 1
    )
    assert not state.exists()
    code, _, err = cdmo(capsys, *argv, "--backend", "nvml", "--sim-gpus", "a100-40gb")
    assert code == 2 and "--backend nvml does not take --sim-gpus" in err


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_a_pod_resources_path_that_is_no_socket_says_what_it_should_be(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both once said only 'failed: StatusCode.UNAVAILABLE'."""
    path = tmp_path / "kubelet.sock"
    if kind == "file":
        path.write_text("not a socket")
    else:
        path.mkdir()
    code, _, err = cdmo(
        capsys, "node", "show", "--sim-gpus", "h100-80gb", "--pod-resources-socket", str(path)
    )
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert (
        f"{path} is a {'regular file' if kind == 'file' else 'directory'}, not the kubelet's pod-resources socket"
        in err
    )
    assert "/var/lib/kubelet/pod-resources/kubelet.sock" in err


def test_a_state_path_that_is_a_folder_or_not_utf8_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "adir").mkdir()
    code, _, err = cdmo(capsys, "node", "show", *sim_args(tmp_path / "adir", None))
    assert code == 2 and "cannot read" in err
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe")
    code, _, err = cdmo(capsys, "node", "show", *sim_args(tmp_path / "bin.json", None))
    assert code == 2 and "not a UTF-8 text file" in err


def test_sim_gpus_beyond_a_node_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cdmo(capsys, "node", "show", *sim_args(tmp_path / "s.json", ",".join(["h100-80gb"] * 65)))
    assert code == 2 and "65 GPUs; a node holds at most 64" in err and not (tmp_path / "s.json").exists()


def test_a_dry_run_that_fails_on_pod_resources_leaves_no_new_state_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "layout.yaml").write_text(LAYOUT)
    dead = tmp_path / "dead.sock"
    dead.mkdir()  # a path that exists but is no socket: pod-resources cannot be read
    argv = [
        "node",
        "apply",
        str(tmp_path / "layout.yaml"),
        "--dry-run",
        "--sim-state",
        str(tmp_path / "n.json"),
    ]
    code, _, _ = cdmo(capsys, *argv, "--sim-gpus", "h100-80gb", "--pod-resources-socket", str(dead))
    assert code != 0 and not (tmp_path / "n.json").exists()
