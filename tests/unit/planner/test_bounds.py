"""Counts no node can hold (cdmo.planner.bounds): answered before the search, the rest untouched."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import yaml

from cdmo.planner import parse_snapshot, plan, plan_to_dict
from cdmo.planner.bounds import TOO_MANY_DEVICES, node_capacity, screen_counts

from .conftest import SNAPSHOTS, gpu, node
from .oracle import check_plan

HUGE = SNAPSHOTS / "huge-counts.yaml"
BIG_PODS = ("ml/trillion", "ml/beyond-64-bits")


def _without_big_pods(data: dict) -> dict:
    return {**data, "pending": [p for p in data["pending"] if f"ml/{p['name']}" not in BIG_PODS]}


def test_cli_answers_huge_counts_with_a_reason_and_serves_the_rest_as_without_them() -> None:
    # A timeout only so that a regression hangs no CI run; the speed itself is in docs/benchmarks.md.
    proc = subprocess.run(
        [sys.executable, "-m", "cdmo.cli", "plan", str(HUGE), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    data = yaml.safe_load(HUGE.read_text())
    assert check_plan(data, got) == []
    refused = {u["pod"]: u for u in got["unsatisfied"] if u["code"] == TOO_MANY_DEVICES}
    assert sorted(refused) == sorted(BIG_PODS)
    assert "at most 14 (node gpu-1)" in refused["ml/trillion"]["reason"]
    assert "than Kubernetes can count" in refused["ml/beyond-64-bits"]["reason"]
    without = plan_to_dict(plan(parse_snapshot(_without_big_pods(data))))
    assert got["nodes"] == without["nodes"]
    assert got["assignments"] == without["assignments"]
    assert [u for u in got["unsatisfied"] if u["pod"] not in BIG_PODS] == without["unsatisfied"]
    # the other pods are really served (the snapshot is not a trivial one)
    assert {a["pod"] for a in got["assignments"]} == {"ml/train", "ml/notebook", "ml/eval"}


def test_a_count_the_largest_node_can_hold_goes_to_the_search() -> None:
    snap = parse_snapshot(yaml.safe_load(HUGE.read_text()))
    kept, refused = screen_counts(snap)
    assert {u.pod for u in refused} == set(BIG_PODS)
    assert "ml/fourteen" in {p.key for p in kept.pending}  # 14 = 2 x 7 on gpu-1: not refused early
    assert plan(snap).unsatisfied_pod("ml/fourteen").code == "NoRoom"


def test_refused_pods_count_in_the_summary_by_priority() -> None:
    result = plan(parse_snapshot(yaml.safe_load(HUGE.read_text())))
    assert dict((p, (s, t)) for p, s, t in result.summary.served_by_priority) == {
        10: (0, 1),
        5: (1, 1),
        0: (2, 4),
    }


@pytest.mark.parametrize(
    ("gpus", "capacity"),
    [
        ([gpu(0, "h100-80gb")], 7),
        ([gpu(0, "h100-80gb"), gpu(1, "a100-40gb")], 14),
        ([gpu(0, "a30-24gb")], 4),
        ([gpu(0, "tesla-t4")], 0),
        ([], 0),
    ],
    ids=["h100", "h100+a100", "a30", "unknown model", "no GPU"],
)
def test_node_capacity_is_the_smallest_profile_filled(gpus: list, capacity: int) -> None:
    snap = parse_snapshot({"nodes": [node("n", *gpus)], "pending": []}, allow_unknown_models=True)
    assert node_capacity(snap.nodes[0]) == capacity


def test_unlabelled_nodes_do_not_raise_the_bound() -> None:
    data = {
        "nodes": [node("small", gpu(0, "a30-24gb")), node("big", gpu(0), gpu(1), labelled=False)],
        "pending": [{"name": "p", "requests": {"nvidia.com/mig-1g.6gb": 5}}],
    }
    result = plan(parse_snapshot(data))
    assert result.unsatisfied_pod("default/p").code == TOO_MANY_DEVICES
    assert "at most 4 (node small)" in result.unsatisfied_pod("default/p").reason


def test_without_labelled_nodes_the_usual_reason_stays() -> None:
    data = {"nodes": [], "pending": [{"name": "p", "requests": {"nvidia.com/mig-1g.10gb": 10**12}}]}
    assert plan(parse_snapshot(data)).unsatisfied_pod("default/p").code == "NoLabelledNode"


def test_a_count_built_in_code_past_64_bits_is_refused_too() -> None:
    snap = parse_snapshot({"nodes": [node("n", gpu(0))], "pending": [{"name": "p", "requests": {}}]})
    pod = replace(snap.pending[0], requests={"nvidia.com/mig-1g.10gb": 10**5000})
    result = plan(replace(snap, pending=(pod,)))
    assert result.unsatisfied_pod("default/p").code == TOO_MANY_DEVICES


@pytest.mark.parametrize(
    ("value", "count"),
    [("2", 2), ("1k", 1000), ("9" * 80, 2**63), (10**12, 10**12)],
    ids=["string", "kilo", "80 digits", "int"],
)
def test_snapshot_counts_are_quantities(value: object, count: int) -> None:
    snap = parse_snapshot(
        {"nodes": [], "pending": [{"name": "p", "requests": {"nvidia.com/mig-1g.10gb": value}}]}
    )
    assert snap.pending[0].requests == {"nvidia.com/mig-1g.10gb": count}


@pytest.mark.parametrize("value", ["1.5", "-1", "two", 1.5, -3, "²", "1²", "٣"])
def test_snapshot_counts_that_are_not_counts_name_the_field(value: object) -> None:
    from cdmo.errors import InvalidSnapshot

    with pytest.raises(InvalidSnapshot, match=r'pending\[0\]\.requests\["nvidia.com/mig-1g.10gb"\]'):
        parse_snapshot(
            {"nodes": [], "pending": [{"name": "p", "requests": {"nvidia.com/mig-1g.10gb": value}}]}
        )


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_a_number_too_long_to_read_is_one_clear_line(tmp_path, suffix: str) -> None:
    digits = "9" * 5000
    text = (
        f'{{"nodes": [], "pending": [{{"name": "x", "requests": {{"nvidia.com/mig-1g.10gb": {digits}}}}}]}}'
    )
    path = tmp_path / f"snap.{suffix}"
    path.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "cdmo.cli", "plan", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "more than 4300 digits" in proc.stderr


def _cdmo_plan(path: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "cdmo.cli", "plan", path], input=stdin, capture_output=True, timeout=120
    )


def test_json_nested_too_deeply_is_one_clear_line(tmp_path) -> None:
    path = tmp_path / "deep.json"
    path.write_text('{"nodes": ' + "[" * 100_000 + "]" * 100_000 + "}")
    proc = _cdmo_plan(str(path))
    assert proc.returncode == 2 and b"nested too deeply" in proc.stderr and b"Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "snap.json",
            '{"nodes": [], "pending": [], "nodes": [{"name": "n"}]}',
            b"the key 'nodes' is given twice",
        ),
        (
            "snap.yaml",
            "nodes: []\npending: []\nnodes: [{name: n}]\n",
            b"found duplicate key 'nodes' at line 3, column 1",
        ),
    ],
    ids=["json", "yaml"],
)
def test_a_key_given_twice_is_one_clear_line(tmp_path, name: str, text: str, message: bytes) -> None:
    """json.loads and safe_load keep the last value: half of such a snapshot was silently dropped."""
    path = tmp_path / name
    path.write_text(text)
    proc = _cdmo_plan(str(path))
    assert proc.returncode == 2 and message in proc.stderr and b"Traceback" not in proc.stderr, proc.stderr


def test_stdin_that_is_not_utf8_says_so() -> None:
    proc = _cdmo_plan("-", stdin=b"nodes: [\xff]\n")
    assert proc.returncode == 2
    assert b"stdin is not UTF-8 text" in proc.stderr and b"4300 digits" not in proc.stderr


@pytest.mark.parametrize(
    ("gpus", "instances", "message"),
    [
        (1, 10_000, "10000 instances on one GPU; h100-80gb holds at most 7"),
        (1_000, 0, "1000 GPUs on one node; a node holds at most 64 here"),
    ],
    ids=["instances-per-gpu", "gpus-per-node"],
)
def test_absurd_lists_on_one_node_are_refused_before_they_are_read(
    gpus: int, instances: int, message: str
) -> None:
    """Unbounded, 10,000 duplicate instances took minutes and gigabytes (every pair was named),
    and a million GPUs on one node 23 s; both are refused from their length alone."""
    from cdmo.errors import InvalidSnapshot

    inst = [{"profile": "1g.10gb", "start": 0, "used": False}] * instances
    raw = [{"index": i, "model": "h100-80gb", "instances": inst} for i in range(gpus)]
    data = {"nodes": [{"name": "n", "labels": {"cdmo.clear.ml/gpu-partitioning": "mig"}, "gpus": raw}]}
    with pytest.raises(InvalidSnapshot, match=message):
        parse_snapshot({**data, "pending": []})
    unknown = [{"index": 0, "model": "h100-81gb", "instances": inst}] if instances else raw
    with pytest.raises(
        InvalidSnapshot, match="at most"
    ):  # a model the catalog lacks, as the operator reads it
        parse_snapshot({"nodes": [{"name": "n", "gpus": unknown}], "pending": []}, allow_unknown_models=True)


def test_a_simulate_scenario_given_to_plan_says_which_command_reads_it() -> None:
    from tests.harness.scripts import ROOT

    proc = _cdmo_plan(str(ROOT / "examples" / "clearml-queues.yaml"))
    assert proc.returncode == 2 and b"is a `cdmo simulate` scenario, not a snapshot" in proc.stderr
    assert b"cdmo simulate" in proc.stderr.split(b";")[-1]
