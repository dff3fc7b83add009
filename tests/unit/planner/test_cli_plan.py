"""``cdmo plan`` through the real entry point, as a user (or an outside checker) runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cdmo.cli import main

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


def test_bad_json_file_names_line_and_column(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "snap.json"
    path.write_text('{"nodes": [}\n')
    code, _, err = run_cli(capsys, "plan", str(path))
    assert code == 2 and "is not valid JSON" in err and "line 1 column 12" in err
