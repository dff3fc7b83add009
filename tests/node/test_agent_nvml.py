"""``cdmo agent --once --backend nvml`` from the shell: one whole agent pass on the real pynvml
and the C stand-in, against the HTTP Kubernetes API double, holders from a real pod-resources
gRPC server. Skipped, with the reason printed, when the API double is not in the tree.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from cdmo.api import GROUP, PLURAL, VERSION, build_miglayout
from cdmo.node_agent.nvml import NvmlBackend
from tests.node.conftest import layout
from tests.node.nvml_standin.gpus import PROCESS_KINDS, ProcessKind, StandinGpus, standin_env
from tests.node.podresources_server import Held, Kubelet

kube_api = pytest.importorskip(
    "tests.harness.kube_api", reason="the Kubernetes API double (tests/harness) is not here"
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def api() -> Iterator[Any]:
    with kube_api.KubeApiDouble() as double:
        yield double


@pytest.fixture
def agent_once(
    api: Any,
    standin: StandinGpus,
    nvml_standin_lib: Path,
    pod_resources_server: tuple[Kubelet, str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Callable[[], subprocess.CompletedProcess[str]]:
    """Runs one agent pass for a node named after the test, as a separate process."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: k, cluster: {{server: '{api.url}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    env = {**standin_env(nvml_standin_lib.parent, standin), "PYTHONPATH": str(ROOT)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    node_name = node_name_of(request)

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "cdmo.cli",
                "agent",
                "--once",
                "--node-name",
                node_name,
                "--kubeconfig",
                str(kubeconfig),
                "--backend",
                "nvml",
                "--pod-resources-socket",
                pod_resources_server[1],
                "--refresh-strategy",
                "none",
                "--log-format",
                "json",
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )

    return run


def node_name_of(request: pytest.FixtureRequest) -> str:
    """One MigLayout per test in the module's shared API double."""
    return "nvml-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[-40:].strip("-")


def objects(api: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(client.ApiClient(client.Configuration(host=api.url)))


def status_of(api: Any, name: str) -> dict[str, Any]:
    return objects(api).get_cluster_custom_object(GROUP, VERSION, PLURAL, name).get("status") or {}


def test_one_pass_applies_the_miglayout(
    api: Any,
    standin: StandinGpus,
    agent_once: Callable[[], subprocess.CompletedProcess[str]],
    request: pytest.FixtureRequest,
) -> None:
    name = node_name_of(request)
    objects(api).create_cluster_custom_object(
        GROUP,
        VERSION,
        PLURAL,
        build_miglayout(name, {0: layout("3g.40gb@0,3g.40gb@4"), 1: layout("7g.80gb@0")}),
    )
    done = agent_once()
    assert done.returncode == 0, done.stderr
    status = status_of(api, name)
    assert status["phase"] == "Ready" and status["observedGeneration"] == 1
    assert [[(i["profile"], i["start"]) for i in g["instances"]] for g in status["gpus"]] == [
        [("3g.40gb", 0), ("3g.40gb", 4)],
        [("7g.80gb", 0)],
    ]
    # The status names the MIG devices the library made, GI profile ids as NVML gives them.
    assert {i["uuid"] for g in status["gpus"] for i in g["instances"]} == {
        c[4] for c in standin.compute_instances()
    }
    assert sorted((g, p, s) for g, _, p, s in standin.instances()) == [(0, 9, 0), (0, 9, 4), (1, 0, 0)]


@pytest.mark.parametrize(
    ("resource", "device_id"),
    [
        ("nvidia.com/mig-1g.10gb", "{uuid}"),
        ("nvidia.com/mig-1g.10gb", "{uuid}::3"),
        ("nvidia.com/mig-1g.10gb.shared", "{uuid}::1"),
    ],
    ids=["plain-mig-uuid", "time-sliced-id", "shared-resource"],
)
def test_one_pass_keeps_a_held_instance(
    api: Any,
    standin: StandinGpus,
    pod_resources_server: tuple[Kubelet, str],
    agent_once: Callable[[], subprocess.CompletedProcess[str]],
    request: pytest.FixtureRequest,
    resource: str,
    device_id: str,
) -> None:
    backend = NvmlBackend()
    held = backend.create_instance(0, "1g.10gb", 6)
    backend.create_instance(0, "3g.40gb", 0)
    backend.close()
    assert held.uuid
    servicer, _ = pod_resources_server
    servicer.held = [Held("ml", "train-1", resource, (device_id.format(uuid=held.uuid),))]
    before = standin.records("gi") + standin.records("ci")
    name = node_name_of(request)
    objects(api).create_cluster_custom_object(
        GROUP, VERSION, PLURAL, build_miglayout(name, {0: layout("7g.80gb@0")})
    )

    agent_once()

    assert standin.records("gi") + standin.records("ci") == before
    status = status_of(api, name)
    assert status["phase"] != "Ready", status
    assert "ml/train-1" in str(status), status


@pytest.mark.parametrize("kind", PROCESS_KINDS)
def test_one_pass_keeps_an_instance_a_process_uses(
    api: Any,
    standin: StandinGpus,
    agent_once: Callable[[], subprocess.CompletedProcess[str]],
    request: pytest.FixtureRequest,
    kind: ProcessKind,
) -> None:
    """No pod holds it; a compute process, a graphics context or an MPS client alone keeps it."""
    backend = NvmlBackend()
    used = backend.create_instance(0, "1g.10gb", 6)
    backend.create_instance(0, "3g.40gb", 0)
    backend.close()
    assert used.uuid
    standin.add_process(used.uuid, 4242, kind)
    before = standin.records("gi") + standin.records("ci")
    name = node_name_of(request)
    objects(api).create_cluster_custom_object(
        GROUP, VERSION, PLURAL, build_miglayout(name, {0: layout("7g.80gb@0")})
    )

    agent_once()

    assert standin.records("gi") + standin.records("ci") == before
    status = status_of(api, name)
    assert status["phase"] == "Blocked", status
    assert "4242" in str(status), status


def test_mig_mode_and_layout_come_back_after_a_reboot(
    api: Any,
    standin: StandinGpus,
    agent_once: Callable[[], subprocess.CompletedProcess[str]],
    request: pytest.FixtureRequest,
) -> None:
    """Hopper loses MIG mode on a reboot; the next pass switches it on again and makes the layout."""
    name = node_name_of(request)
    objects(api).create_cluster_custom_object(
        GROUP, VERSION, PLURAL, build_miglayout(name, {0: layout("4g.40gb@0,3g.40gb@4")})
    )
    assert agent_once().returncode == 0
    made = {c[4] for c in standin.compute_instances()}
    standin.reboot()
    assert standin.records("gpu")[0][3:] == ["0", "0"] and standin.instances() == []

    done = agent_once()

    assert done.returncode == 0, done.stderr
    assert standin.records("gpu")[0][3:] == ["1", "1"]
    assert sorted((p, s) for g, _, p, s in standin.instances()) == [(5, 0), (9, 4)]
    assert not made & {c[4] for c in standin.compute_instances()}  # new MIG UUIDs
    status = status_of(api, name)
    assert status["phase"] == "Ready"
    mig = next(c for c in status["conditions"] if c["type"] == "MigModeEnabled")
    assert (mig["status"], mig["reason"]) == ("True", "MigModeRestored")
