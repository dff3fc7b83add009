"""The simulated scheduler, device plugin, kubelet and the safety guard, without cdmo in the loop."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdmo.mig.layouts import Instance
from cdmo.node_agent.podresources.client import PodResourcesClient
from tests.harness.cluster import SimCluster, mig_pod
from tests.harness.kube_api import KubeApiDouble, Store


@pytest.fixture
def cluster(kube_api: KubeApiDouble) -> Iterator[SimCluster]:
    with tempfile.TemporaryDirectory(prefix="cdmo-sim-") as tmp:
        sim = SimCluster(kube_api, Path(tmp), device_plugin="nvidia").start()
        try:
            yield sim
        finally:
            sim.stop()


def _phase(store: Store, name: str) -> str | None:
    pod = store.get(store.type_of("pods"), "default", name)
    return (pod.get("status") or {}).get("phase") if pod else None


def test_pod_runs_where_an_advertised_device_is_free(cluster: SimCluster, kube_api: KubeApiDouble) -> None:
    cluster.add_node("n1", layout={0: [Instance("1g.10gb", 0)]})
    node = kube_api.wait_for(
        lambda s: (
            (n := s.get(s.type_of("nodes"), None, "n1"))
            and "nvidia.com/mig-1g.10gb" in n["status"]["allocatable"]
            and n
        ),
        30,
    )
    assert node["status"]["allocatable"]["nvidia.com/mig-1g.10gb"] == "1"
    kube_api.create(mig_pod("a", {"1g.10gb": 1}), keep_status=False)
    kube_api.wait_for(lambda s: _phase(s, "a") == "Running", 30)
    (uuid,) = [u for _, u in cluster.allocations("n1")[("default", "a")]]
    # the kubelet's pod-resources API tells the agent who holds what
    rows = PodResourcesClient(str(cluster.nodes["n1"].socket)).list()
    assert [(r.pod_key, r.resource_name, r.device_ids) for r in rows] == [
        ("default/a", "nvidia.com/mig-1g.10gb", (uuid,))
    ]


def test_pod_without_room_is_marked_unschedulable(cluster: SimCluster, kube_api: KubeApiDouble) -> None:
    cluster.add_node("n1")
    kube_api.create(mig_pod("b", {"3g.40gb": 1}), keep_status=False)

    def unschedulable(store: Store) -> bool:
        pod = store.get(store.type_of("pods"), "default", "b")
        conds = (pod or {}).get("status", {}).get("conditions") or []
        return any(c["type"] == "PodScheduled" and c["reason"] == "Unschedulable" for c in conds)

    kube_api.wait_for(unschedulable, 30)
    assert not kube_api.get("pods", "b", "default")["spec"].get("nodeName")  # type: ignore[index]


def test_device_plugin_readvertises_only_when_restarted(cluster: SimCluster, kube_api: KubeApiDouble) -> None:
    cluster.add_node("n1")

    def plugin_running(store: Store) -> bool:
        pods = store.list(store.type_of("pods"), "gpu-operator")
        return len(pods) == 1 and pods[0]["status"].get("phase") == "Running"

    kube_api.wait_for(plugin_running, 30)
    cluster.nodes["n1"].backend.create_instance(0, "2g.20gb", 0)
    assert "nvidia.com/mig-2g.20gb" not in kube_api.get("nodes", "n1")["status"]["allocatable"]  # type: ignore[index]
    (plugin,) = kube_api.list("pods", "gpu-operator")
    kube_api.delete("pods", plugin["metadata"]["name"], "gpu-operator")
    kube_api.wait_for(
        lambda s: (
            s.get(s.type_of("nodes"), None, "n1")["status"]["allocatable"].get("nvidia.com/mig-2g.20gb")
            == "1"
        ),
        30,
    )


def test_guard_catches_a_destroyed_device_in_use(cluster: SimCluster, kube_api: KubeApiDouble) -> None:
    cluster.add_node("n1", layout={0: [Instance("7g.80gb", 0)]})
    kube_api.create(mig_pod("c", {"7g.80gb": 1}), keep_status=False)
    kube_api.wait_for(lambda s: _phase(s, "c") == "Running", 30)
    (inst,) = cluster.nodes["n1"].backend.list_instances(0)
    cluster.nodes["n1"].guarded.destroy_instance(0, inst.gi_id)
    assert cluster.violations and "default/c" in cluster.violations[0]
    assert cluster.check_running_pods_keep_devices() == [f"default/c on n1 lost {inst.uuid}"]
