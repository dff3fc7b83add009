"""End to end on the agent's real device plugin: pods bound while their node is changing.

The kubelet is the harness's SimKubelet (real device-plugin protocol over unix sockets); the
scheduler sees the node's allocatable as the kubelet gets it from the agent's ListAndWatch.
"""

from __future__ import annotations

import threading
from typing import Any

from cdmo.mig.layouts import Instance
from cdmo.mig.resources import resource_from_profile
from tests.harness.e2e import Harness
from tests.harness.kube_api import Store
from tests.integration.test_operator_e2e import _wait_ready

NODE = "gpu-node-1"
R1 = resource_from_profile("1g.10gb")


def _settled(keys: list[str]):  # type: ignore[no-untyped-def]
    """Every pod is Running, Failed, or known unschedulable (the scheduler and kubelet acted)."""

    def check(store: Store) -> bool:
        pods = store.type_of("pods", "")
        for key in keys:
            ns, name = key.split("/", 1)
            pod = store.get(pods, ns, name) or {}
            status = pod.get("status") or {}
            if status.get("phase") in ("Running", "Failed"):
                continue
            if any(
                c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable"
                for c in status.get("conditions") or []
            ) and not (pod.get("spec") or {}).get("nodeName"):
                continue
            return False
        return True

    return check


def test_pods_bound_while_the_node_changes_never_get_a_withdrawn_device(harness: Harness) -> None:
    harness.add_node(NODE, layout={0: [Instance("1g.10gb", s) for s in range(7)]})
    harness.start_operator()
    _wait_ready(harness, NODE)
    node = harness.cluster.nodes[NODE]
    assert node.kubelet is not None
    assert node.kubelet.wait_for(lambda k: k.capacity().get(R1) == 7, 10)
    before = {u for u in node.kubelet.devices(R1)}

    # Hold the agent inside its first destroy: the doomed devices are withdrawn by then. Meanwhile
    # pods asking for 1g.10gb arrive, are scheduled against the node's allocatable and admitted
    # by the kubelet, as if they were bound a moment before the destroy.
    guarded = node.guarded
    real_destroy = guarded.destroy_instance
    late: list[str] = []
    during: dict[str, Any] = {}
    once = threading.Lock()

    def slow_destroy(gpu: int, gi_id: int) -> None:
        if once.acquire(blocking=False):
            during["listed"] = set(node.kubelet.devices(R1))  # type: ignore[union-attr]
            late.extend(harness.submit(f"late-{i}", {"1g.10gb": 1}) for i in range(6))
            harness.api.wait_for(_settled(late), 20, "late pods not scheduled or admitted")
            during["bindings"] = [k for k, n in harness.cluster.bindings if k in late and n == NODE]
        real_destroy(gpu, gi_id)

    guarded.destroy_instance = slow_destroy  # type: ignore[method-assign]
    harness.submit("big", {"3g.40gb": 1})
    harness.api.wait_for(lambda _: "bindings" in during, 60, "the agent never destroyed an instance")
    harness.api.wait_for(_settled(late), 30, "late pods not settled")
    _wait_ready(harness, NODE)  # the pass that was held finished, and any later one

    kept = set(during["listed"])
    doomed = before - kept
    assert len(doomed) >= 3 and kept < before  # the 3g needed at least three 1g instances gone
    assert during["bindings"], "no pod was bound to the node while it changed"
    admitted = {u for pod, ids in node.kubelet.admissions if pod in late for u in ids}
    assert admitted, "no late pod was admitted"
    assert admitted <= kept and not admitted & doomed, (admitted, doomed)
    # the pods that got in hold instances that still exist (the planner may then prefer them to
    # the 3g pod: that is its choice, not the plugin's)
    assert harness.cluster.check_running_pods_keep_devices() == []
    assert harness.cluster.violations == []


def test_a_device_a_critical_xid_broke_is_made_again_and_serves_the_pod(harness: Harness) -> None:
    """The agent's plugin withholds a MIG device after a critical XID (the kubelet's capacity
    drops); the agent destroys the free instance and makes it again in place, with a new UUID
    the plugin offers, and a pod runs there. Before, the withheld instance stayed as it was and
    the operator counted it free: a pod asking for it waited for ever."""
    r7 = resource_from_profile("7g.80gb")
    harness.add_node(NODE, layout={0: [Instance("7g.80gb", 0)]})
    harness.start_operator()
    _wait_ready(harness, NODE)
    node = harness.cluster.nodes[NODE]
    assert node.kubelet is not None
    assert node.kubelet.wait_for(lambda k: k.capacity().get(r7) == 1, 10)
    [broken] = node.backend.list_instances(0)
    node.backend.node.inject_xid(0, 48, broken.gi_id, broken.ci_id)  # a double-bit ECC error

    def made_again(k: Any) -> bool:
        devices = k.devices(r7)
        return broken.uuid not in devices and list(devices.values()) == ["Healthy"]

    assert node.kubelet.wait_for(made_again, 30), node.kubelet.devices(r7)
    key = harness.submit("train", {"7g.80gb": 1})
    harness.wait_running([key], timeout=60)
    [ids] = [i for p, i in node.kubelet.admissions if p == key]
    [made] = node.backend.list_instances(0)
    assert ids == (made.uuid,) and made.uuid != broken.uuid
    assert (made.profile, made.start) == ("7g.80gb", 0)


def test_a_gpu_a_critical_xid_broke_is_left_out_of_plans(harness: Harness) -> None:
    """A whole-GPU XID: the plugin withholds every device of the GPU, new ones too, until the
    agent restarts. The agent reports the GPU ``healthy: false``; the operator plans on the
    other GPU, and never onto the broken one."""
    r7 = resource_from_profile("7g.80gb")
    harness.add_node(NODE, ("h100-80gb", "h100-80gb"), layout={0: [Instance("7g.80gb", 0)]})
    harness.start_operator()
    _wait_ready(harness, NODE)
    node = harness.cluster.nodes[NODE]
    assert node.kubelet is not None
    assert node.kubelet.wait_for(lambda k: k.capacity().get(r7) == 1, 10)
    before = [i.uuid for i in node.backend.list_instances(0)]
    node.backend.node.inject_xid(0, 79)  # the GPU fell off the bus: no GI or CI named

    def reported(store: Store) -> bool:
        ml = store.get(store.type_of("miglayouts"), None, NODE) or {}
        gpus = {g["index"]: g for g in (ml.get("status") or {}).get("gpus") or []}
        return gpus.get(0, {}).get("healthy") is False and "healthy" not in gpus.get(1, {"healthy": 0})

    harness.api.wait_for(reported, 30, "the agent did not report the broken GPU")
    key = harness.submit("train", {"7g.80gb": 1})
    harness.wait_running([key], timeout=60)
    [ids] = [i for p, i in node.kubelet.admissions if p == key]
    assert [i.uuid for i in node.backend.list_instances(1)] == list(ids)
    # nothing on the broken GPU was made again: a new device there would be withheld too
    _wait_ready(harness, NODE)
    assert [i.uuid for i in node.backend.list_instances(0)] == before
