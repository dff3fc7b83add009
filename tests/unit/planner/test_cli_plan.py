"""``cdmo plan`` through the real entry point, as a user (or an outside checker) runs it."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdmo.cli import main
from cdmo.commands.plan import LIST_EVERY_GPU_UP_TO
from cdmo.output import camel_keys
from cdmo.planner import parse_snapshot, plan, plan_to_dict
from tests.harness.bench import build_snapshot

from .conftest import SNAPSHOTS
from .oracle import check_plan


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_follows_the_contract(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "plan", str(SNAPSHOTS / "contract-example.yaml"), "--output", "json")
    assert code == 0
    data = json.loads(out)
    assert set(data) >= {"nodes", "assignments", "unsatisfied"}
    assert check_plan(yaml.safe_load((SNAPSHOTS / "contract-example.yaml").read_text()), data) == []
    assert data["assignments"][0]["devices"] == [
        {"gpu": 0, "profile": "1g.10gb", "start": 0, "new": False},
        {"gpu": 0, "profile": "1g.10gb", "start": 1, "new": True},
    ]


def test_yaml_output_equals_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(SNAPSHOTS / "reasons.yaml")
    _, as_json, _ = run_cli(capsys, "plan", path, "-o", "json")
    code, as_yaml, _ = run_cli(capsys, "plan", path, "-o", "yaml")
    assert code == 0
    assert yaml.safe_load(as_yaml) == json.loads(as_json)


def test_table_shows_layouts_owners_and_reasons(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "plan", str(SNAPSHOTS / "handout.yaml"))
    assert code == 0
    for needle in (
        "BEFORE",
        "AFTER",
        "1g.10gb@0 (used)",
        "1g.10gb@1 (free) to research/notebook",
        "+3g.40gb@4 for research/pair",
        "3 of 3 pending pods served; 2 instances created",
    ):
        assert needle in out
    code, out, _ = run_cli(capsys, "plan", str(SNAPSHOTS / "reasons.yaml"))
    assert code == 0  # waiting pods are an outcome, not an error
    assert "Unsatisfied pods" in out and "NodeCordoned" in out and "node gpu-3 is cordoned" in out


def test_json_input_and_stdin(tmp_path: Path) -> None:
    data = yaml.safe_load((SNAPSHOTS / "priority.yaml").read_text())
    path = tmp_path / "snap.json"
    path.write_text(json.dumps(data))
    from_file = subprocess.run(
        [sys.executable, "-m", "cdmo.cli", "plan", str(path), "-o", "json"], capture_output=True, text=True
    )
    from_stdin = subprocess.run(
        [sys.executable, "-m", "cdmo.cli", "plan", "-", "-o", "json"],
        input=json.dumps(data),
        capture_output=True,
        text=True,
    )
    assert from_file.returncode == from_stdin.returncode == 0
    assert json.loads(from_file.stdout) == json.loads(from_stdin.stdout)
    assert [a["pod"] for a in json.loads(from_file.stdout)["assignments"]] == ["prod/urgent"]


BAD = [
    ("missing field", "nodes:\n  - labels: {}\n", "nodes[0].name: missing field"),
    (
        "bad start",
        "nodes:\n  - name: n\n    labels: {cdmo.clear.ml/gpu-partitioning: mig}\n    gpus:\n"
        "      - {index: 0, model: h100-80gb, instances: [{profile: 3g.40gb, start: 2, used: true}]}\n",
        "nodes[0].gpus[0].instances[0].start: 3g.40gb cannot start at 2 on h100-80gb; legal starts are 0, 4",
    ),
    (
        "missing model",
        "nodes:\n  - name: n\n    labels: {cdmo.clear.ml/gpu-partitioning: mig}\n    gpus:\n      - {index: 0}\n",
        "nodes[0].gpus[0].model: missing field",
    ),
    (
        "profile that is not a profile",
        "nodes: []\npending:\n  - name: p\n    requests: {nvidia.com/mig-3g: 1}\n",
        "pending[0].requests[\"nvidia.com/mig-3g\"]: '3g' is not a MIG profile",
    ),
    (
        "instance profile that is not a profile",
        "nodes:\n  - name: n\n    gpus:\n      - {index: 0, model: a30-24gb, instances: [{profile: half, start: 0, used: false}]}\n",
        "nodes[0].gpus[0].instances[0].profile: 'half' is not a MIG profile name",
    ),
    ("not yaml", "nodes: [\n", "is not valid YAML or JSON"),
    ("empty", "", "is empty"),
    ("a list", "- a\n", "must hold an object with nodes and pending"),
]


@pytest.mark.parametrize(("text", "needle"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_malformed_snapshot_exits_2_with_the_path_and_no_traceback(
    tmp_path: Path, text: str, needle: str
) -> None:
    path = tmp_path / "snap.yaml"
    path.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "cdmo.cli", "plan", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


UNKNOWN_MODEL = (
    "nodes:\n  - name: n\n    labels: {cdmo.clear.ml/gpu-partitioning: mig}\n    gpus:\n"
    "      - {index: 0, model: h100-81gb, instances: [{profile: 1g.10gb, start: 0, used: false}]}\n"
    "      - {index: 1, model: h100-80gb, instances: []}\n"
    "pending:\n  - name: p\n    requests: {nvidia.com/mig-7g.80gb: 1}\n"
)


def test_unknown_model_with_strict_exits_2_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "snap.yaml"
    path.write_text(UNKNOWN_MODEL)
    proc = subprocess.run(
        [sys.executable, "-m", "cdmo.cli", "plan", "--strict", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert "nodes[0].gpus[0].model: unknown GPU model 'h100-81gb'; known models are" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_model_is_left_as_it_is_with_a_warning(tmp_path: Path) -> None:
    # Contract rule 3: a GPU whose model is unknown is left exactly as it is.
    path = tmp_path / "snap.yaml"
    path.write_text(UNKNOWN_MODEL)
    proc = subprocess.run(
        [sys.executable, "-m", "cdmo.cli", "plan", "-o", "json", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 0
    assert "warning: nodes[0].gpus[0].model: unknown GPU model 'h100-81gb'" in proc.stderr
    result = json.loads(proc.stdout)
    gpus = {g["index"]: g["instances"] for g in result["nodes"][0]["gpus"]}
    assert gpus[0] == [{"profile": "1g.10gb", "start": 0}]
    assert gpus[1] == [{"profile": "7g.80gb", "start": 0}]
    assert [a["pod"] for a in result["assignments"]] == ["default/p"]


def test_missing_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "plan", str(tmp_path / "nope.yaml"))
    assert code == 2 and "no such file" in err


def test_stdin_and_pipes_are_read_up_to_the_snapshot_limit(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`head -c 2100M /dev/zero | cdmo plan -` was read whole and ended in a MemoryError (exit 3);
    here with the limit made small, so that no test allocates gigabytes."""
    import io

    from cdmo.commands import plan as plan_command

    text = (SNAPSHOTS / "handout.yaml").read_bytes()
    small = dataclasses.replace(plan_command.SNAPSHOT, limit=len(text))
    monkeypatch.setattr(plan_command, "SNAPSHOT", small)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text + b"#")))
    code, out, err = run_cli(capsys, "plan", "-")
    assert code == 2 and out == ""
    assert f"stdin is larger than {len(text)} bytes, the most cdmo reads as a snapshot" in err
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text)))
    assert run_cli(capsys, "plan", "-")[0] == 0
    # `cdmo plan <(kubectl ...)` names a pipe: read as stdin is, with the same bound
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(text), daemon=True)
    writer.start()
    code, out, err = run_cli(capsys, "plan", str(fifo))
    writer.join(5)
    assert code == 0 and "3 of 3 pending pods served" in out, err


def test_bad_json_file_names_line_and_column(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "snap.json"
    path.write_text('{"nodes": [}\n')
    code, _, err = run_cli(capsys, "plan", str(path))
    assert code == 2 and "is not valid JSON" in err and "line 1 column 12" in err


# -- output of big and small plans (issue 13: `cdmo plan` under 1 s on 1000 nodes) ----------------


def _expected_doc(data: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = camel_keys(plan_to_dict(plan(parse_snapshot(data))))
    return doc


@pytest.mark.parametrize("name", sorted(p.name for p in SNAPSHOTS.glob("*.yaml")))
def test_json_and_yaml_are_the_plan_dict_in_camel_case(capsys: pytest.CaptureFixture[str], name: str) -> None:
    # cdmo plan camel-cases only the summary (the one part with snake_case keys) instead of
    # copying the whole plan: the output must be what camel-casing all of it gives.
    expected = _expected_doc(yaml.safe_load((SNAPSHOTS / name).read_text()))
    code, out, _ = run_cli(capsys, "plan", str(SNAPSHOTS / name), "-o", "json")
    assert code == 0 and json.loads(out) == expected
    code, out, _ = run_cli(capsys, "plan", str(SNAPSHOTS / name), "-o", "yaml")
    # written item by item, the same text as one whole-document safe_dump
    assert code == 0 and out == yaml.safe_dump(expected, sort_keys=False, default_flow_style=False)


@pytest.fixture(scope="module")
def big_cluster(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    data = build_snapshot(16)  # 128 GPUs: more than the table lists in full
    path = tmp_path_factory.mktemp("big") / "snapshot.yaml"
    path.write_text(yaml.dump(data, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False))
    return path, data


def test_big_plan_yaml_is_the_text_of_one_whole_dump(
    capsys: pytest.CaptureFixture[str], big_cluster: tuple[Path, dict[str, Any]]
) -> None:
    path, data = big_cluster
    code, out, _ = run_cli(capsys, "plan", str(path), "-o", "yaml")
    assert code == 0
    assert out == yaml.safe_dump(_expected_doc(data), sort_keys=False, default_flow_style=False)


def _gpus_worth_listing(data: dict[str, Any], doc: dict[str, Any]) -> set[tuple[str, int]]:
    """Independently of render.py: GPUs whose layout changes or that hand a free instance out."""
    before = {
        (n["name"], g["index"]): sorted((i["profile"], i["start"]) for i in g.get("instances") or [])
        for n in data["nodes"]
        for g in n.get("gpus") or []
    }
    out = {
        (n["name"], g["index"])
        for n in doc["nodes"]
        for g in n["gpus"]
        if sorted((i["profile"], i["start"]) for i in g["instances"]) != before[(n["name"], g["index"])]
    }
    out |= {(a["node"], d["gpu"]) for a in doc["assignments"] for d in a["devices"] if not d["new"]}
    return out


def test_big_plan_table_lists_the_gpus_that_change_and_says_how_many_stay(
    capsys: pytest.CaptureFixture[str], big_cluster: tuple[Path, dict[str, Any]]
) -> None:
    path, data = big_cluster
    total = sum(len(n["gpus"]) for n in data["nodes"])
    assert total > LIST_EVERY_GPU_UP_TO
    code, out, _ = run_cli(capsys, "plan", str(path))
    assert code == 0
    listed = {
        (cells[1], int(cells[2]))
        for line in out.splitlines()
        if line.startswith("│ gpu-")
        for cells in [[c.strip() for c in line.split("│")]]
    }
    expected = _gpus_worth_listing(data, _expected_doc(data))
    assert listed == expected
    assert 0 < len(listed) < total
    hidden = total - len(listed)
    assert f"{hidden} other GPUs stay as they are with no free instance handed out" in out
    assert "-o json or -o yaml lists every GPU" in out
    assert "unchanged" not in out  # every row listed changes something
    # the box is whole: every line of the layout table is as wide as its top border
    lines = out.splitlines()
    top = lines.index(next(line for line in lines if line.startswith("┏")))
    bottom = lines.index(next(line for line in lines if line.startswith("└")))
    assert {len(line) for line in lines[top : bottom + 1]} == {len(lines[top])}


def test_small_plan_table_still_lists_every_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "plan", str(SNAPSHOTS / "reasons.yaml"))
    assert code == 0
    assert "unchanged" in out and "stay as they are" not in out


def _modules_after(*argv: str) -> set[str]:
    """The modules a fresh interpreter has imported after ``cdmo ARGV`` (stdout discarded)."""
    script = (
        "import contextlib, io, sys\n"
        "from cdmo.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({list(argv)!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(proc.stdout.split())


def test_cdmo_help_imports_no_verb_module() -> None:
    assert not {m for m in _modules_after("--help") if m.startswith("cdmo.commands.")}


def test_cdmo_plan_json_imports_neither_rich_nor_other_verbs() -> None:
    modules = _modules_after("plan", str(SNAPSHOTS / "reasons.yaml"), "-o", "json")
    assert "cdmo.commands.plan" in modules and "cdmo.planner" in modules
    assert not {m for m in modules if m.split(".")[0] in ("rich", "kopf", "kubernetes", "grpc", "structlog")}
    assert not {m for m in modules if m.startswith("cdmo.commands.") and m != "cdmo.commands.plan"}


def test_cdmo_plan_called_in_process_leaves_the_collector_as_it_was(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # cdmo plan freezes the snapshot and the plan for the collector while it runs; main() called
    # by a caller that lives on (this test) must find nothing frozen afterwards.
    import gc

    assert gc.get_freeze_count() == 0
    code, _, _ = run_cli(capsys, "plan", str(SNAPSHOTS / "handout.yaml"), "-o", "json")
    assert code == 0 and gc.get_freeze_count() == 0
