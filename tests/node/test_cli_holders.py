"""``cdmo node apply`` from the shell with holders reported by a real pod-resources gRPC server
(issue 10, items 2 and 5): a layout that drops a held instance is refused and destroys nothing,
for every form a real node presents a holder in; ``--enable-mig`` refuses while a pod or a
process holds the whole GPU."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdmo.cli import main
from tests.node.podresources_server import Claimed, Held, Kubelet, serve_pod_resources

DROP_ALL = "gpus: [{index: 0, instances: [{profile: 7g.80gb, start: 0}]}]\n"


@pytest.fixture
def kubelet() -> Iterator[tuple[Kubelet, str]]:
    with serve_pod_resources() as served:
        yield served


def cdmo(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def node_state(tmp_path: Path, capsys: pytest.CaptureFixture[str], socket: str) -> tuple[Path, list[str]]:
    """A simulated H100 holding 1g.10gb@0 and a 2g.20gb@2 split into two CIs (another tool's)."""
    state = tmp_path / "node.json"
    layout = tmp_path / "first.yaml"
    layout.write_text(
        "gpus: [{index: 0, instances: [{profile: 1g.10gb, start: 0}, {profile: 2g.20gb, start: 2}]}]\n"
    )
    args = ["--sim-state", str(state), "--sim-gpus", "h100-80gb", "--pod-resources-socket", socket]
    assert cdmo(capsys, "node", "apply", str(layout), *args)[0] == 0
    doc = json.loads(state.read_text())
    split = next(i for i in doc["gpus"][0]["instances"] if i["profile"] == "2g.20gb")
    split["compute_instances"] = [
        {"ci_id": 0, "profile_id": 0, "uuid": "MIG-split-ci-0", "processes": []},
        {"ci_id": 1, "profile_id": 0, "uuid": "MIG-split-ci-1", "processes": []},
    ]
    state.write_text(json.dumps(doc))
    one = next(i for i in doc["gpus"][0]["instances"] if i["profile"] == "1g.10gb")
    return state, [one["compute_instances"][0]["uuid"], "MIG-split-ci-0", "MIG-split-ci-1"]


@pytest.mark.parametrize(
    ("resource", "device"),
    [
        ("nvidia.com/mig-1g.10gb", "{one}"),
        ("nvidia.com/mig-1g.10gb", "{one}::3"),
        ("nvidia.com/mig-1g.10gb.shared", "{one}::0"),
        ("nvidia.com/mig-1g.10gb", "MIG-split-ci-1"),
        ("nvidia.com/mig-1g.10gb", "0:1"),  # deviceIDStrategy: index
        ("nvidia.com/gpu", "0:1"),  # index ids with migStrategy: single
        ("example.com/my-gpu-slice", "0:0::2"),  # a renamed, shared resource with index ids
    ],
    ids=[
        "plain-uuid",
        "replica-id",
        "shared-resource",
        "second-ci-of-split-gi",
        "index-id",
        "index-id-single-strategy",
        "index-id-renamed",
    ],
)
def test_apply_refuses_to_drop_a_held_instance_and_destroys_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kubelet: tuple[Kubelet, str],
    resource: str,
    device: str,
) -> None:
    servicer, socket = kubelet
    state, uuids = node_state(tmp_path, capsys, socket)
    servicer.held = [Held("ml", "holder", resource, (device.format(one=uuids[0]),))]
    before = json.loads(state.read_text())["gpus"]
    (tmp_path / "drop.yaml").write_text(DROP_ALL)
    args = ["--sim-state", str(state), "--pod-resources-socket", socket]
    code, out, err = cdmo(capsys, "node", "apply", str(tmp_path / "drop.yaml"), *args)
    assert code == 1, out
    assert "nothing was changed" in err and "pod ml/holder" in err
    assert json.loads(state.read_text())["gpus"] == before


@pytest.mark.parametrize("named", [True, False], ids=["cdi-name-with-uuid", "no-uuid"])
def test_apply_refuses_to_drop_an_instance_held_through_a_dra_claim(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kubelet: tuple[Kubelet, str], named: bool
) -> None:
    # Kubernetes' DRA: pod-resources lists the claim's device by driver, device and CDI names.
    servicer, socket = kubelet
    state, _ = node_state(tmp_path, capsys, socket)
    doc = json.loads(state.read_text())
    one = next(i for i in doc["gpus"][0]["instances"] if i["profile"] == "1g.10gb")
    uuid = "MIG-0c857411-df95-5b34-b8c0-394ff5bc1c26"
    one["compute_instances"][0]["uuid"] = uuid
    state.write_text(json.dumps(doc))
    cdi = (f"k8s.gpu.nvidia.com/device={uuid}",) if named else ("k8s.gpu.nvidia.com/claim=0f3a-gpu-0-mig-0",)
    servicer.claimed = [Claimed("ml", "dra-pod", "gpu.nvidia.com", "gpu-0-mig-0", cdi)]
    before = json.loads(state.read_text())["gpus"]
    (tmp_path / "drop.yaml").write_text(DROP_ALL)
    args = ["--sim-state", str(state), "--pod-resources-socket", socket]
    code, out, err = cdmo(capsys, "node", "apply", str(tmp_path / "drop.yaml"), *args)
    assert code == 1, out
    assert "nothing was changed" in err and "pod ml/dra-pod" in err
    assert json.loads(state.read_text())["gpus"] == before


def test_apply_with_no_holder_destroys_and_creates_what_the_layout_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kubelet: tuple[Kubelet, str]
) -> None:
    servicer, socket = kubelet
    state, _ = node_state(tmp_path, capsys, socket)
    servicer.held = [Held("ml", "elsewhere", "nvidia.com/mig-1g.10gb", ("MIG-on-another-node",))]
    (tmp_path / "drop.yaml").write_text(DROP_ALL)
    args = ["--sim-state", str(state), "--pod-resources-socket", socket, "-o", "json"]
    code, out, err = cdmo(capsys, "node", "apply", str(tmp_path / "drop.yaml"), *args)
    assert code == 0, err
    doc = json.loads(out)
    assert sorted((d["profile"], d["start"]) for d in doc["destroyed"]) == [("1g.10gb", 0), ("2g.20gb", 2)]
    assert [(c["profile"], c["start"]) for c in doc["created"]] == [("7g.80gb", 0)]


def mig_off(tmp_path: Path, capsys: pytest.CaptureFixture[str], socket: str, processes: list[int]) -> Path:
    state = tmp_path / "node.json"
    cdmo(
        capsys,
        "node",
        "show",
        "--sim-state",
        str(state),
        "--sim-gpus",
        "h100-80gb",
        "--pod-resources-socket",
        socket,
    )
    doc = json.loads(state.read_text())
    doc["gpus"][0]["mig"] = {"current": False, "pending": False}
    doc["gpus"][0]["processes"] = processes
    state.write_text(json.dumps(doc))
    (tmp_path / "layout.yaml").write_text(DROP_ALL)
    return state


def test_enable_mig_refuses_while_a_pod_holds_the_whole_gpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kubelet: tuple[Kubelet, str]
) -> None:
    servicer, socket = kubelet
    state = mig_off(tmp_path, capsys, socket, [])
    gpu_uuid = json.loads(state.read_text())["gpus"][0]["uuid"]
    servicer.held = [Held("ml", "whole-gpu", "nvidia.com/gpu", (gpu_uuid,))]
    args = ["--sim-state", str(state), "--pod-resources-socket", socket, "--enable-mig"]
    code, out, err = cdmo(capsys, "node", "apply", str(tmp_path / "layout.yaml"), *args)
    assert code == 1, out
    assert "pod ml/whole-gpu" in err and "MIG mode stays off on GPU 0" in err
    assert json.loads(state.read_text())["gpus"][0]["mig"] == {"current": False, "pending": False}

    servicer.held = []  # the pod is gone: now it may
    code, _out, err = cdmo(capsys, "node", "apply", str(tmp_path / "layout.yaml"), *args)
    assert code == 0, err
    assert json.loads(state.read_text())["gpus"][0]["mig"] == {"current": True, "pending": True}


def test_enable_mig_refuses_while_a_process_runs_on_the_gpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kubelet: tuple[Kubelet, str]
) -> None:
    _, socket = kubelet
    state = mig_off(tmp_path, capsys, socket, [31337])
    args = ["--sim-state", str(state), "--pod-resources-socket", socket, "--enable-mig"]
    code, _out, err = cdmo(capsys, "node", "apply", str(tmp_path / "layout.yaml"), *args)
    assert code == 1 and "process 31337" in err
    assert json.loads(state.read_text())["gpus"][0]["mig"]["current"] is False


def test_show_lists_every_ci_of_a_split_gi_and_who_holds_a_gpu_with_mig_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kubelet: tuple[Kubelet, str]
) -> None:
    servicer, socket = kubelet
    state, _ = node_state(tmp_path, capsys, socket)
    servicer.held = [Held("ml", "second", "nvidia.com/mig-1g.10gb", ("MIG-split-ci-1::2",))]
    args = ["--sim-state", str(state), "--pod-resources-socket", socket]
    code, out, err = cdmo(capsys, "node", "show", *args, "-o", "json")
    assert code == 0, err
    split = next(i for i in json.loads(out)["gpus"][0]["instances"] if i["profile"] == "2g.20gb")
    assert split["uuids"] == ["MIG-split-ci-0", "MIG-split-ci-1"]
    assert split["holders"] == ["pod ml/second"] and split["allocated"] is True
    code, out, err = cdmo(capsys, "node", "show", *args)
    assert code == 0 and "MIG-split-ci-1" in out and "ml/second" in out

    off = mig_off(tmp_path, capsys, socket, [4242])
    code, out, err = cdmo(capsys, "node", "show", "--sim-state", str(off), "--pod-resources-socket", socket)
    assert code == 0 and "MIG off" in out and "process 4242" in out
