"""``cdmo node apply --backend nvml`` from the shell: the real pynvml on the C stand-in for
libnvidia-ml.so.1, holders reported by a real pod-resources gRPC server on a unix socket.

A layout that drops a held instance is refused and destroys nothing, whatever form the node
presents the holder in: a plain MIG UUID, ``MIG-<uuid>::N`` (the NVIDIA device plugin's
time-slicing and MPS ids), a renamed ``...shared`` resource, a pod on the second compute
instance of a split GPU instance, a process (compute, graphics or MPS). With no holder the same apply does what the
layout says.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynvml
import pytest

from cdmo.node_agent.nvml import NvmlBackend
from tests.node.nvml_standin.gpus import PROCESS_KINDS, STATE_ENV, ProcessKind, StandinGpus, standin_env
from tests.node.podresources_server import Held, Kubelet

ROOT = Path(__file__).resolve().parents[2]

#: GPU 0 before: three instances; GPU 1: a whole-GPU instance.
BEFORE = [(0, "3g.40gb", 0), (0, "2g.20gb", 4), (0, "1g.10gb", 6), (1, "7g.80gb", 0)]

#: GPU 0 after: one 7g.80gb, which means destroying all three; GPU 1 unchanged.
AFTER = """\
gpus:
  - index: 0
    instances: [{profile: 7g.80gb, start: 0}]
  - index: 1
    instances: [{profile: 7g.80gb, start: 0}]
"""


@pytest.fixture
def cdmo_on_standin(
    standin: StandinGpus, nvml_standin_lib: Path
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Two H100s holding BEFORE; returns a runner of ``cdmo`` commands on them."""
    backend = NvmlBackend()
    for gpu, profile, start in BEFORE:
        backend.create_instance(gpu, profile, start)
    backend.close()
    env = {**standin_env(nvml_standin_lib.parent, standin), "PYTHONPATH": str(ROOT)}

    def cdmo(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cdmo.cli", *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd=standin.path.parent,
            timeout=120,
        )

    return cdmo


def uuid_at(gpu: int, start: int) -> str:
    backend = NvmlBackend()
    try:
        inst = next(i for i in backend.list_instances(gpu) if i.start == start)
    finally:
        backend.close()
    assert inst.uuid
    return inst.uuid


def instances(standin: StandinGpus) -> list[list[str]]:
    """The GPU and compute instance records: what a destroy or create would change."""
    return standin.records("gi") + standin.records("ci")


def apply(cdmo: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path, socket_path: str) -> Any:
    layout = tmp_path / "layout.yaml"
    layout.write_text(AFTER)
    return cdmo(
        "node", "apply", str(layout), "--backend", "nvml", "--pod-resources-socket", socket_path, "-o", "json"
    )


def split_second_ci(standin: StandinGpus) -> str:
    """GPU 0's 2g.20gb@4 made again as two 1-slice compute instances, by hand as another tool
    would; the second one's MIG UUID."""
    backend = NvmlBackend()
    gi = next(i for i in backend.list_instances(0) if i.start == 4)
    backend.destroy_instance(0, gi.gi_id)
    backend.close()
    made = standin.create_gpu_instance(0, 14, 4, 2)  # 2g.20gb, split by hand as another tool would
    standin.create_compute_instance(0, made.gi_id, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE)
    second = standin.create_compute_instance(0, made.gi_id, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE)
    return second.uuid


#: How the node presents a pod's device: (resource, device id) from (profile, MIG UUID).
HOLDER_FORMS: dict[str, Callable[[str, str], tuple[str, str]]] = {
    "plain-mig-uuid": lambda profile, uuid: (f"nvidia.com/mig-{profile}", uuid),
    "time-sliced-id": lambda profile, uuid: (f"nvidia.com/mig-{profile}", f"{uuid}::3"),
    "shared-resource": lambda profile, uuid: (f"nvidia.com/mig-{profile}.shared", f"{uuid}::1"),
    "second-ci-of-split-gi": lambda profile, uuid: (f"nvidia.com/mig-{profile}", uuid),
}
#: deviceIDStrategy: index under migStrategy single: no UUID, no profile; it holds every instance.
INDEX_FORM: dict[str, Callable[[str, str], tuple[str, str]]] = {
    "mig-index-id-single-strategy": lambda profile, uuid: ("nvidia.com/gpu", "0:2"),
}


@pytest.mark.parametrize("form", [*HOLDER_FORMS, *INDEX_FORM])
def test_apply_refuses_to_drop_a_held_instance_and_destroys_nothing(
    form: str,
    cdmo_on_standin: Callable[..., subprocess.CompletedProcess[str]],
    standin: StandinGpus,
    pod_resources_server: tuple[Kubelet, str],
    tmp_path: Path,
) -> None:
    servicer, socket_path = pod_resources_server
    if form == "second-ci-of-split-gi":
        profile, uuid = "2g.20gb", split_second_ci(standin)
    else:
        profile, uuid = "1g.10gb", uuid_at(0, 6)
    resource, device_id = {**HOLDER_FORMS, **INDEX_FORM}[form](profile, uuid)
    servicer.held = [Held("ml", "train-1", resource, (device_id,))]
    before = instances(standin)

    done = apply(cdmo_on_standin, tmp_path, socket_path)

    assert done.returncode == 1, done.stdout + done.stderr
    assert "ml/train-1" in done.stderr and "nothing was changed" in done.stderr
    doc = json.loads(done.stdout)
    assert doc["applied"] is False and [r["gpu"] for r in doc["refused"]] == [0]
    assert instances(standin) == before
    assert uuid in {c[5] for c in standin.records("ci")}


@pytest.mark.parametrize("form", list(HOLDER_FORMS))
def test_apply_without_a_holder_destroys_and_creates_what_the_layout_says(
    form: str,
    cdmo_on_standin: Callable[..., subprocess.CompletedProcess[str]],
    standin: StandinGpus,
    pod_resources_server: tuple[Kubelet, str],
    tmp_path: Path,
) -> None:
    servicer, socket_path = pod_resources_server
    if form == "second-ci-of-split-gi":
        split_second_ci(standin)
    # Somebody else's pod on GPU 1's instance, which the layout keeps: no reason to refuse.
    kept = uuid_at(1, 0)
    resource, device_id = HOLDER_FORMS[form]("7g.80gb", kept)
    servicer.held = [Held("ml", "other", resource, (device_id,))]

    done = apply(cdmo_on_standin, tmp_path, socket_path)

    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert doc["applied"] is True and doc["refused"] == []
    assert sorted((d["gpu"], d["profile"], d["start"]) for d in doc["destroyed"]) == [
        (0, "1g.10gb", 6),
        (0, "2g.20gb", 4),
        (0, "3g.40gb", 0),
    ]
    assert [(c["gpu"], c["profile"], c["start"]) for c in doc["created"]] == [(0, "7g.80gb", 0)]
    # The GPUs hold the layout: GI profile id 0 (7g.80gb) at 0 on both, GPU 1's untouched.
    assert sorted((g, p, s) for g, _, p, s in standin.instances()) == [(0, 0, 0), (1, 0, 0)]
    assert kept in {c[5] for c in standin.records("ci")}
    assert doc["created"][0]["uuid"] in {c[5] for c in standin.records("ci")}


@pytest.mark.parametrize("kind", PROCESS_KINDS)
def test_apply_refuses_where_a_process_runs(
    cdmo_on_standin: Callable[..., subprocess.CompletedProcess[str]],
    standin: StandinGpus,
    pod_resources_server: tuple[Kubelet, str],
    tmp_path: Path,
    kind: ProcessKind,
) -> None:
    """A compute process, a graphics context or an MPS client: each alone keeps its instance."""
    _, socket_path = pod_resources_server
    uuid = uuid_at(0, 4)
    standin.add_process(uuid, 4242, kind)
    before = instances(standin)
    done = apply(cdmo_on_standin, tmp_path, socket_path)
    assert done.returncode == 1 and "process 4242" in done.stderr
    assert instances(standin) == before


def test_show_through_the_standin(
    cdmo_on_standin: Callable[..., subprocess.CompletedProcess[str]],
    pod_resources_server: tuple[Kubelet, str],
) -> None:
    servicer, socket_path = pod_resources_server
    uuid = uuid_at(0, 6)
    servicer.held = [Held("ml", "train-1", "nvidia.com/mig-1g.10gb", (uuid,))]
    done = cdmo_on_standin(
        "node", "show", "--backend", "nvml", "--pod-resources-socket", socket_path, "-o", "json"
    )
    assert done.returncode == 0, done.stderr
    gpus = json.loads(done.stdout)["gpus"]
    assert [g["product"] for g in gpus] == ["NVIDIA H100 80GB HBM3"] * 2
    assert [[(i["profile"], i["start"]) for i in g["instances"]] for g in gpus] == [
        [("3g.40gb", 0), ("2g.20gb", 4), ("1g.10gb", 6)],
        [("7g.80gb", 0)],
    ]
    held = {i["uuid"]: i["holders"] for g in gpus for i in g["instances"]}
    assert held[uuid] == ["pod ml/train-1"]


def test_a_node_without_the_driver_says_what_to_do(
    nvml_standin_lib: Path, standin: StandinGpus, tmp_path: Path
) -> None:
    env = {**standin_env(nvml_standin_lib.parent, standin), "PYTHONPATH": str(ROOT)}
    del env[STATE_ENV]  # the stand-in then answers DRIVER_NOT_LOADED, as NVML on a node without the driver
    done = subprocess.run(
        [sys.executable, "-m", "cdmo.cli", "node", "show", "--backend", "nvml"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "--backend simulated" in done.stderr


# --- MIG mode and repairs, through the stand-in ----------------------------------------------

ONE_7G = "gpus: [{index: 0, instances: [{profile: 7g.80gb, start: 0}]}]\n"


@pytest.mark.parametrize("holder", ["process", "pod"])
def test_enable_mig_refused_while_the_whole_gpu_is_held(
    holder: str,
    cdmo_on_standin: Callable[..., subprocess.CompletedProcess[str]],
    standin: StandinGpus,
    pod_resources_server: tuple[Kubelet, str],
    tmp_path: Path,
) -> None:
    servicer, socket_path = pod_resources_server
    standin.reboot()  # Hopper: back with MIG off and no instances
    gpu_uuid = standin.records("gpu")[0][2]
    if holder == "process":
        standin.add_process(gpu_uuid, 4242)
    else:
        servicer.held = [Held("ml", "train", "nvidia.com/gpu", (gpu_uuid,))]
    (tmp_path / "layout.yaml").write_text(ONE_7G)
    argv = ("node", "apply", str(tmp_path / "layout.yaml"), "--enable-mig", "--backend", "nvml")
    done = cdmo_on_standin(*argv, "--pod-resources-socket", socket_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert ("process 4242" if holder == "process" else "pod ml/train") in done.stderr
    assert standin.records("gpu")[0][3:] == ["0", "0"] and standin.instances() == []

    standin.remove_process(gpu_uuid, 4242)
    servicer.held = []
    done = cdmo_on_standin(*argv, "--pod-resources-socket", socket_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert standin.records("gpu")[0][3:] == ["1", "1"]
    assert [(g, p, s) for g, _, p, s in standin.instances()] == [(0, 0, 0)]


def test_a_dry_run_with_enable_mig_leaves_mig_mode_off(
    cdmo_on_standin: Callable[..., subprocess.CompletedProcess[str]],
    standin: StandinGpus,
    tmp_path: Path,
) -> None:
    """Before, --dry-run --enable-mig called nvmlDeviceSetMigMode: a dry run changed the GPU."""
    standin.reboot()  # Hopper: back with MIG off and no instances
    (tmp_path / "layout.yaml").write_text(ONE_7G)
    argv = ("node", "apply", str(tmp_path / "layout.yaml"), "--enable-mig", "--dry-run", "--backend", "nvml")
    done = cdmo_on_standin(*argv, "-o", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert doc["migSwitchedOn"] == [0] and doc["applied"] is False
    assert doc["steps"] == [{"action": "create", "gpu": 0, "profile": "7g.80gb", "start": 0}]
    assert standin.records("gpu")[0][3:] == ["0", "0"] and standin.instances() == []


def test_a_gpu_instance_left_without_its_compute_instance_is_repaired_in_place(
    cdmo_on_standin: Callable[..., subprocess.CompletedProcess[str]],
    standin: StandinGpus,
    pod_resources_server: tuple[Kubelet, str],
    tmp_path: Path,
) -> None:
    """An agent died between the GI and the CI create: the GI stays, its CI is made."""
    _, socket_path = pod_resources_server
    standin.reboot()
    standin.set_mig_mode(0, True, True)
    orphan = standin.create_gpu_instance(0, 0, 0, 8)  # 7g.80gb, no compute instance
    (tmp_path / "layout.yaml").write_text(ONE_7G)
    done = cdmo_on_standin(
        "node",
        "apply",
        str(tmp_path / "layout.yaml"),
        "--backend",
        "nvml",
        "--pod-resources-socket",
        socket_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert standin.instances() == [(0, orphan.gi_id, 0, 0)]
    [(gpu, gi_id, _, ci_profile, uuid)] = standin.compute_instances()
    assert (gpu, gi_id, ci_profile) == (0, orphan.gi_id, 4)  # 7_SLICE: the whole GI
    shown = cdmo_on_standin(
        "node", "show", "--backend", "nvml", "--pod-resources-socket", socket_path, "-o", "json"
    )
    [inst] = json.loads(shown.stdout)["gpus"][0]["instances"]
    assert inst["uuid"] == uuid


def test_a_refused_gpu_instance_destroy_leaves_no_gpu_instance_without_compute_instance(
    cdmo_on_standin: Callable[..., subprocess.CompletedProcess[str]],
    standin: StandinGpus,
    pod_resources_server: tuple[Kubelet, str],
    tmp_path: Path,
) -> None:
    """dcgm-exporter holds a GI once: its CI went, NVML refused the GI destroy. The agent gives
    the GI a full CI again (its device must not vanish), and the next apply goes on."""
    _, socket_path = pod_resources_server
    standin.inject_fault("nvmlGpuInstanceDestroy", pynvml.NVML_ERROR_IN_USE)
    first = apply(cdmo_on_standin, tmp_path, socket_path)
    assert first.returncode == 1 and "IN_USE" in first.stderr, first.stdout + first.stderr
    with_ci = {(g, i) for g, i, *_ in standin.compute_instances()}
    assert all((g, i) in with_ci for g, i, _, _ in standin.instances())
    again = apply(cdmo_on_standin, tmp_path, socket_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert sorted((g, p, s) for g, _, p, s in standin.instances()) == [(0, 0, 0), (1, 0, 0)]
    assert len(standin.compute_instances()) == 2
