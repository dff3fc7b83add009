"""Who holds what: pod-resources, NVML processes and bound pods merged."""

from __future__ import annotations

from typing import Any

import pytest

from cdmo.node_agent.inuse import (
    MAX_RESERVATIONS_PER_POD,
    BoundPod,
    Holder,
    InUse,
    build_bound_pods,
    build_in_use,
    device_uuid,
    is_mig_index_id,
    mig_requests,
    named_devices,
)
from cdmo.node_agent.podresources.client import AllocatableDevices, PodDevices


def pod(
    name: str,
    *,
    limits: dict[str, Any] | None = None,
    init: dict[str, Any] | None = None,
    phase: str = "Pending",
    deleting: bool = False,
    requests: dict[str, Any] | None = None,
) -> dict[str, Any]:
    containers = [{"name": "main", "resources": {"limits": limits or {}, "requests": requests or {}}}]
    spec: dict[str, Any] = {"nodeName": "gpu-1", "containers": containers}
    if init:
        spec["initContainers"] = [{"name": "init", "resources": {"limits": init}}]
    meta: dict[str, Any] = {"name": name, "namespace": "ml"}
    if deleting:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    return {"metadata": meta, "spec": spec, "status": {"phase": phase}}


def test_mig_requests_sum_containers_and_take_the_largest_init() -> None:
    p = pod(
        "a",
        limits={"nvidia.com/mig-1g.10gb": 2, "nvidia.com/mig-1g.10gb.me": "1", "cpu": "2"},
        init={"nvidia.com/mig-1g.10gb": 3, "nvidia.com/mig-bogus": 1},
    )
    assert mig_requests(p) == {"1g.10gb": 3, "1g.10gb+me": 1}


def test_mig_requests_read_requests_too() -> None:
    assert mig_requests(pod("a", requests={"nvidia.com/mig-3g.40gb": 1})) == {"3g.40gb": 1}
    assert mig_requests({"spec": {}}) == {}


def test_bound_pods_skip_finished_and_non_mig_pods() -> None:
    pods = [
        pod("done", limits={"nvidia.com/mig-1g.10gb": 1}, phase="Succeeded"),
        pod("cpu-only", limits={"cpu": 1}),
        pod("waiting", limits={"nvidia.com/mig-1g.10gb": 1}),
        pod("going", limits={"nvidia.com/mig-2g.20gb": 1}, phase="Running", deleting=True),
    ]
    assert build_bound_pods(pods) == [
        BoundPod("ml", "going", {"2g.20gb": 1}, terminating=True),
        BoundPod("ml", "waiting", {"1g.10gb": 1}),
    ]


def test_pod_devices_become_holders_and_admitted_pods_reserve_nothing() -> None:
    devices = [
        PodDevices("ml", "a", "main", "nvidia.com/mig-1g.10gb", ("MIG-1", "MIG-2")),
        PodDevices("ml", "b", "main", "nvidia.com/gpu", ("GPU-1",)),
        PodDevices("ml", "c", "main", "nvidia.com/mig-weird", ("MIG-9",)),
    ]
    bound = [BoundPod("ml", "a", {"1g.10gb": 2}), BoundPod("ml", "w", {"1g.10gb": 1, "3g.40gb": 2})]
    in_use = build_in_use(devices, bound, {"MIG-2": [7], "MIG-5": [8, 9]})
    # Every row holds its device ids, whatever its resource name (issue 10, item 2).
    assert in_use.holders == {
        "GPU-1": (Holder("pod", "ml/b"),),
        "MIG-1": (Holder("pod", "ml/a"),),
        "MIG-2": (Holder("pod", "ml/a"), Holder("process", "7")),
        "MIG-5": (Holder("process", "8"), Holder("process", "9")),
        "MIG-9": (Holder("pod", "ml/c"),),
    }
    assert in_use.reservations == {"1g.10gb": ("ml/w",), "3g.40gb": ("ml/w", "ml/w")}
    assert in_use.unknown == {}


@pytest.mark.parametrize(
    ("device_id", "uuid"),
    [
        ("MIG-4f2a", "MIG-4f2a"),
        ("MIG-4f2a::0", "MIG-4f2a"),
        ("MIG-4f2a::13", "MIG-4f2a"),
        ("GPU-77::2", "GPU-77"),
        (" MIG-4f2a ", "MIG-4f2a"),
        ("0:1", None),
        ("3", None),
        ("", None),
    ],
    ids=["plain", "replica-0", "replica-13", "gpu-replica", "spaces", "index-mig", "index-gpu", "empty"],
)
def test_device_uuid_reads_the_plugins_replica_ids(device_id: str, uuid: str | None) -> None:
    assert device_uuid(device_id) == uuid


def test_shared_replicas_and_shared_names_hold_their_instance_and_count_for_the_pod() -> None:
    devices = [
        PodDevices("ml", "ts", "main", "nvidia.com/mig-1g.10gb", ("MIG-a::3",)),
        PodDevices("ml", "sh", "main", "nvidia.com/mig-1g.10gb.shared", ("MIG-b::0", "MIG-b::1")),
    ]
    bound = [BoundPod("ml", "sh", {"1g.10gb": 2}), BoundPod("ml", "ts", {"1g.10gb": 1})]
    in_use = build_in_use(devices, bound)
    assert in_use.holders == {"MIG-a": (Holder("pod", "ml/ts"),), "MIG-b": (Holder("pod", "ml/sh"),)}
    assert in_use.reservations == {}  # both pods got what they asked for


def test_index_device_ids_protect_every_instance_of_their_profile() -> None:
    in_use = build_in_use([PodDevices("ml", "ix", "main", "nvidia.com/mig-2g.20gb", ("0:1",))], [])
    assert in_use.holders == {}
    assert in_use.unknown == {"2g.20gb": ("ml/ix",)}


@pytest.mark.parametrize(
    ("device_id", "mig_index"),
    [("0:1", True), ("12:0::3", True), (" 3:4 ", True), ("0", False), ("MIG-a", False), ("0:1:2", False)],
)
def test_mig_index_ids_are_told_from_gpu_indexes_and_uuids(device_id: str, mig_index: bool) -> None:
    assert is_mig_index_id(device_id) is mig_index


@pytest.mark.parametrize("resource", ["nvidia.com/gpu", "nvidia.com/gpu.shared", "example.com/slice"])
def test_mig_index_ids_under_a_name_without_a_profile_hold_every_instance(resource: str) -> None:
    rows = [PodDevices("ml", "ix", "main", resource, ("1:2::0",))]
    in_use = build_in_use(rows, [], {"MIG-x": [7]})
    assert in_use.any_instance == (Holder("indexed", "ml/ix"),)
    assert in_use.whole_gpus == () and in_use.unknown == {}  # a MIG device: no MIG-off GPU is theirs
    assert "ml/ix" in str(in_use.any_instance[0]) and in_use.any_instance[0].pod == "ml/ix"


def test_bound_pods_keep_their_asks_of_names_that_say_no_profile() -> None:
    p = pod("r", limits={"example.com/my-gpu-slice": 2, "cpu": "2", "hugepages-2Mi": "1Gi"})
    (bound,) = build_bound_pods([p, pod("cpu", limits={"cpu": 1, "memory": "1Gi"})])
    assert bound.others == {"example.com/my-gpu-slice": 2} and bound.requests == {}
    big = build_bound_pods([pod("b", limits={"example.com/my-gpu-slice": 10**12})])
    assert big[0].others == {"example.com/my-gpu-slice": MAX_RESERVATIONS_PER_POD}


def test_a_renamed_pool_reserves_what_its_bound_pods_still_wait_for() -> None:
    allocatable = [
        AllocatableDevices("example.com/my-gpu-slice", ("MIG-a::0", "MIG-a::1", "MIG-b::0")),
        AllocatableDevices("nvidia.com/mig-1g.10gb", ("MIG-c",)),  # a profile's name: reserved by profile
        AllocatableDevices("example.com/nic", ("0000:3b:00.1",)),  # no MIG device: no pool
        AllocatableDevices("nvidia.com/gpu", ("0:0", "0:1")),  # migStrategy single, index ids
    ]
    bound = [
        BoundPod("ml", "in", {}, others={"example.com/my-gpu-slice": 2}),  # admitted with one of two
        BoundPod("ml", "wait", {}, others={"example.com/my-gpu-slice": 1, "example.com/nic": 1}),
        BoundPod("ml", "gone", {}, terminating=True, others={"example.com/my-gpu-slice": 1}),
        BoundPod("ml", "single", {}, others={"nvidia.com/gpu": 1}),
    ]
    rows = [PodDevices("ml", "in", "main", "example.com/my-gpu-slice", ("MIG-a::1",))]
    in_use = build_in_use(rows, bound, allocatable=allocatable)
    assert in_use.pool_reservations == {
        "example.com/my-gpu-slice": (frozenset({"MIG-a", "MIG-b"}), ("ml/in", "ml/wait"))
    }
    assert in_use.any_instance == (Holder("reservation", "ml/single"),)
    assert in_use.holders == {"MIG-a": (Holder("pod", "ml/in"),)}
    # processes merged in keep them; without GetAllocatableResources nothing says what a name holds
    assert (
        build_in_use(rows, bound, {"MIG-x": [1]}, allocatable).pool_reservations == in_use.pool_reservations
    )
    assert build_in_use(rows, bound).pool_reservations == {}


UUID = "MIG-0c857411-df95-5b34-b8c0-394ff5bc1c26"


def test_dra_devices_hold_the_uuids_their_names_carry_or_everything_of_nvidias_gpu_driver() -> None:
    rows = [
        PodDevices("ml", "named", "main", "dra:gpu.nvidia.com", ("mig-1", f"nvidia.com/gpu={UUID}")),
        PodDevices(
            "ml", "blind", "main", "dra:gpu.nvidia.com", ("gpu-0-mig-9-0-1", "k8s.gpu.nvidia.com/claim=x")
        ),
        PodDevices("ml", "nic", "main", "dra:net.example.com", ("eth1",)),
        PodDevices("ml", "other", "main", "dra:example.com", (f"example.com/dev={UUID}",)),
    ]
    in_use = build_in_use(rows, [])
    assert in_use.holders == {UUID: (Holder("pod", "ml/named"), Holder("pod", "ml/other"))}
    assert in_use.any_instance == (Holder("dra", "ml/blind"),)
    assert in_use.whole_gpus == (Holder("dra", "ml/blind"),)
    assert "DRA claim" in str(in_use.any_instance[0])


def test_devices_a_pod_names_past_the_device_plugin_are_held_until_it_is_done() -> None:
    gpu = "GPU-9d3b5ac0-51d3-4b8e-9f0e-2b6f1c1e7a10"
    p = pod("direct", deleting=True, phase="Running")
    p["spec"]["containers"][0]["env"] = [
        {"name": "NVIDIA_VISIBLE_DEVICES", "value": f"{UUID},{gpu}"},
        {"name": "NVIDIA_VISIBLE_DEVICES", "valueFrom": {"fieldRef": {"fieldPath": "x"}}},
    ]
    monitor = pod("dcgm", phase="Running")
    monitor["spec"]["containers"][0]["env"] = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]
    cdi = pod("cdi", phase="Running")
    cdi["metadata"]["annotations"] = {"cdi.k8s.io/ctr": "nvidia.com/gpu=0:3", "other": "MIG-x"}
    done = pod("done", phase="Succeeded")
    done["spec"]["containers"][0]["env"] = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": UUID}]
    assert named_devices(p) == ((gpu, UUID), False)
    assert named_devices(monitor) == ((), False) and named_devices(cdi) == ((), True)
    bound = build_bound_pods([p, monitor, cdi, done])
    assert [b.key for b in bound] == ["ml/cdi", "ml/direct"]  # the monitor names no device
    in_use = build_in_use([], bound)
    assert in_use.holders == {gpu: (Holder("pod", "ml/direct"),), UUID: (Holder("pod", "ml/direct"),)}
    assert in_use.any_instance == (Holder("indexed", "ml/cdi"),)


def test_whole_gpu_pods_that_cannot_be_tied_to_a_gpu_hold_every_gpus_mig_mode() -> None:
    # an index device id under nvidia.com/gpu: which GPU it is, is unknown
    in_use = build_in_use([PodDevices("ml", "ix", "main", "nvidia.com/gpu", ("0",))], [])
    assert in_use.whole_gpus == (Holder("pod", "ml/ix"),)
    # a bound pod asking a whole GPU, not yet admitted; an admitted one holds by its GPU UUID
    bound = build_bound_pods(
        [pod("wait", limits={"nvidia.com/gpu": 1}), pod("in", limits={"nvidia.com/gpu": 1})]
    )
    assert [p.whole_gpu for p in bound] == [True, True]
    rows = [PodDevices("ml", "in", "main", "nvidia.com/gpu", ("GPU-0",))]
    in_use = build_in_use(rows, bound)
    assert in_use.whole_gpus == (Holder("reservation", "ml/wait"),)
    assert in_use.holders_of("GPU-0") == (Holder("pod", "ml/in"),)
    # without pod-resources, any bound whole-GPU pod may be on any GPU
    assert len(build_in_use(None, bound).whole_gpus) == 2
    # processes merged in keep them
    assert build_in_use(rows, bound, {"GPU-1": [7]}).whole_gpus == in_use.whole_gpus


def test_a_shared_resource_on_a_bound_pod_reserves_its_profile() -> None:
    p = pod("s", limits={"nvidia.com/mig-1g.10gb.shared": 1})
    assert mig_requests(p) == {"1g.10gb": 1}


def test_a_huge_count_on_a_bound_pod_reserves_a_bounded_number() -> None:
    in_use = build_in_use([], [BoundPod("ml", "big", {"1g.10gb": 10**12})])
    assert len(in_use.reservations["1g.10gb"]) == MAX_RESERVATIONS_PER_POD


def test_terminating_pods_that_hold_nothing_reserve_nothing() -> None:
    in_use = build_in_use([], [BoundPod("ml", "gone", {"1g.10gb": 1}, terminating=True)])
    assert in_use.reservations == {}


def test_without_pod_resources_every_instance_of_the_profile_is_unknown() -> None:
    in_use = build_in_use(None, [BoundPod("ml", "a", {"1g.10gb": 1}), BoundPod("ml", "b", {"1g.10gb": 1})])
    assert in_use.unknown == {"1g.10gb": ("ml/a", "ml/b")} and in_use.reservations == {}


@pytest.mark.parametrize(
    ("holder", "text"),
    [
        (Holder("pod", "ml/a"), "pod ml/a"),
        (Holder("process", "42"), "process 42"),
        (Holder("reservation", "ml/a"), "pod ml/a (bound to this node, not yet admitted)"),
        (
            Holder("unknown", "ml/a"),
            "pod ml/a (pod-resources unreadable: it may hold any instance of this profile)",
        ),
    ],
    ids=["pod", "process", "reservation", "unknown"],
)
def test_holders_explain_themselves(holder: Holder, text: str) -> None:
    assert str(holder) == text
    assert holder.pod == (None if holder.kind == "process" else "ml/a")


def test_with_processes_does_not_duplicate() -> None:
    once = InUse().with_processes({"MIG-1": [5]})
    assert once.with_processes({"MIG-1": [5]}).holders == {"MIG-1": (Holder("process", "5"),)}
    assert once.holders_of(None) == () and once.holders_of("MIG-x") == ()


@pytest.mark.parametrize("count", [str(10**12), str(2**70), "99999999999999999999", "1e999999999"])
def test_a_bound_pod_with_an_absurd_count_reserves_a_bounded_number(count: str) -> None:
    # Issue 10: such a pod made every agent pass fail (OverflowError) or run out of memory.
    from cdmo.node_agent.inuse import MAX_RESERVATIONS_PER_POD

    bound = build_bound_pods([pod("huge", limits={"nvidia.com/mig-1g.10gb": count})])
    assert bound == [BoundPod("ml", "huge", {"1g.10gb": MAX_RESERVATIONS_PER_POD})]
    in_use = build_in_use([], bound)
    assert len(in_use.reservations["1g.10gb"]) == MAX_RESERVATIONS_PER_POD


def test_a_bound_pod_asking_a_shared_resource_reserves_its_profile() -> None:
    bound = build_bound_pods([pod("shared", limits={"nvidia.com/mig-1g.10gb.shared": 1})])
    assert bound == [BoundPod("ml", "shared", {"1g.10gb": 1})]
    assert build_in_use([], bound).reservations == {"1g.10gb": ("ml/shared",)}


def test_a_bound_pod_with_a_native_sidecar_reserves_for_both() -> None:
    body = pod("sidecar", limits={"nvidia.com/mig-1g.10gb": 1})
    body["spec"]["initContainers"] = [
        {"name": "proxy", "restartPolicy": "Always", "resources": {"limits": {"nvidia.com/mig-1g.10gb": 1}}}
    ]
    assert build_in_use([], build_bound_pods([body])).reservations == {"1g.10gb": ("ml/sidecar",) * 2}
