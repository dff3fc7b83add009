"""Holders in every form a real node presents (issue 10, item 2): each test fails on the agent
that compared device ids exactly, kept only a GI's first CI and refused shared resource names."""

from __future__ import annotations

import pytest

from cdmo.mig.layouts import format_layout
from cdmo.node_agent.backend import GpuBackend
from cdmo.node_agent.inuse import BoundPod, build_bound_pods, build_in_use
from cdmo.node_agent.podresources.client import AllocatableDevices, PodDevices
from cdmo.node_agent.reconcile import GpuState, reconcile_node
from cdmo.node_agent.simulated import SimulatedBackend, SimulatedNode
from cdmo.node_agent.status import build_gpu_entries
from tests.node.conftest import RETRY, layout


def split_gi(node: SimulatedNode, gpu: int, profile: str, start: int, cis: int) -> list[str]:
    """A GI holding ``cis`` one-slice compute instances, as another tool may leave it."""
    prof = node.gpu(gpu).model.profile(profile)
    gi = node.create_gpu_instance(gpu, prof.profile_id, start, prof.placement_size)
    return [node.create_compute_instance(gpu, gi.gi_id, 0).uuid for _ in range(cis)]


def holds(backend: GpuBackend, gpu: int) -> str:
    return format_layout(i.instance for i in backend.list_instances(gpu))


def row(pod: str, resource: str, *ids: str) -> PodDevices:
    ns, name = pod.split("/")
    return PodDevices(ns, name, "main", resource, ids)


def test_every_compute_instance_of_a_split_gi_is_listed_with_its_uuid(
    any_backend: GpuBackend, node: SimulatedNode
) -> None:
    uuids = split_gi(node, 0, "2g.20gb", 2, cis=2)
    (inst,) = any_backend.list_instances(0)
    assert inst.uuids == tuple(uuids)
    assert [ci.ci_id for ci in inst.compute_instances] == [0, 1]
    assert not inst.healthy and inst.ci_count == 2


def test_a_pod_on_the_second_ci_of_a_split_gi_keeps_it(any_backend: GpuBackend, node: SimulatedNode) -> None:
    second = split_gi(node, 0, "2g.20gb", 2, cis=2)[1]
    in_use = build_in_use([row("ml/train", "nvidia.com/mig-1g.10gb", second)])
    result = reconcile_node(any_backend, {0: layout("7g.80gb@0")}, in_use, retry=RETRY)
    assert result.gpu(0).state == GpuState.BLOCKED
    assert result.destroyed == ()
    assert holds(any_backend, 0) == "2g.20gb@2"
    assert "ml/train" in result.gpu(0).message and second in result.gpu(0).message


def test_a_process_on_the_second_ci_of_a_split_gi_keeps_it(
    any_backend: GpuBackend, node: SimulatedNode
) -> None:
    second = split_gi(node, 0, "2g.20gb", 2, cis=2)[1]
    node.add_process(second, 4242)
    result = reconcile_node(any_backend, {0: layout("7g.80gb@0")}, retry=RETRY)
    assert result.gpu(0).state == GpuState.BLOCKED
    assert holds(any_backend, 0) == "2g.20gb@2"


@pytest.mark.parametrize(
    ("resource", "suffix"),
    [
        ("nvidia.com/mig-1g.10gb", "::3"),  # time-slicing or MPS, resource not renamed
        ("nvidia.com/mig-1g.10gb.shared", "::0"),  # renameByDefault
        ("nvidia.com/mig-1g.10gb.shared", ""),
        ("example.com/my-gpu-slice", ""),  # a site's own resource name: the id still holds it
    ],
    ids=["replica-id", "shared-name-replica", "shared-name", "foreign-name"],
)
def test_shared_and_renamed_holders_keep_their_instance(
    sim: SimulatedBackend, resource: str, suffix: str
) -> None:
    made = sim.create_instance(0, "1g.10gb", 0)
    assert made.uuid is not None
    in_use = build_in_use([row("ml/shared", resource, made.uuid + suffix)])
    result = reconcile_node(sim, {0: layout("7g.80gb@0")}, in_use, retry=RETRY)
    assert result.gpu(0).state == GpuState.BLOCKED
    assert holds(sim, 0) == "1g.10gb@0"


@pytest.mark.parametrize("resource", ["nvidia.com/gpu", "example.com/my-gpu-slice"])
def test_a_mig_index_id_under_a_name_without_a_profile_keeps_every_instance(
    any_backend: GpuBackend, resource: str
) -> None:
    # deviceIDStrategy: index names a MIG device <gpu>:<index>; under nvidia.com/gpu (migStrategy
    # single) or a renamed resource nothing says which instance, so none of the node's may go.
    any_backend.create_instance(0, "1g.10gb", 0)
    any_backend.create_instance(1, "2g.20gb", 2)
    in_use = build_in_use([row("ml/indexed", resource, "1:0")])
    desired = {0: layout("7g.80gb@0"), 1: layout("7g.80gb@0")}
    result = reconcile_node(any_backend, desired, in_use, retry=RETRY)
    assert [result.gpu(i).state for i in (0, 1)] == [GpuState.BLOCKED, GpuState.BLOCKED]
    assert result.destroyed == ()
    assert (holds(any_backend, 0), holds(any_backend, 1)) == ("1g.10gb@0", "2g.20gb@2")
    assert "ml/indexed" in result.gpu(0).message
    # the same pod under its profile's name keeps that profile only: the 2g.20gb may go
    in_use = build_in_use([row("ml/indexed", "nvidia.com/mig-1g.10gb", "1:0")])
    result = reconcile_node(any_backend, desired, in_use, retry=RETRY)
    assert result.gpu(0).state == GpuState.BLOCKED and holds(any_backend, 1) == "7g.80gb@0"


def test_a_bound_pod_asking_a_renamed_resource_keeps_a_free_instance_of_that_pool(
    any_backend: GpuBackend,
) -> None:
    outside = any_backend.create_instance(0, "1g.10gb", 0)
    pooled = any_backend.create_instance(1, "1g.10gb", 0)
    assert outside.uuid and pooled.uuid
    pools = [AllocatableDevices("example.com/my-gpu-slice", (pooled.uuid + "::0", pooled.uuid + "::1"))]
    bound = [BoundPod("ml", "next", {}, others={"example.com/my-gpu-slice": 1})]
    in_use = build_in_use([], bound, allocatable=pools)
    desired = {0: layout("7g.80gb@0"), 1: layout("7g.80gb@0")}
    result = reconcile_node(any_backend, desired, in_use, retry=RETRY)
    assert result.gpu(1).state == GpuState.BLOCKED and holds(any_backend, 1) == "1g.10gb@0"
    assert "pod ml/next (bound to this node, not yet admitted)" in result.gpu(1).message
    assert holds(any_backend, 0) == "7g.80gb@0"  # the same profile outside the pool may go


def test_a_pod_naming_its_device_in_nvidia_visible_devices_keeps_it(any_backend: GpuBackend) -> None:
    # No resource asked, nothing in pod-resources: the container toolkit hands the device over
    # by the variable alone, and the instance stays while the pod runs.
    made = any_backend.create_instance(0, "1g.10gb", 0)
    assert made.uuid
    direct = {
        "metadata": {"name": "direct", "namespace": "ml"},
        "spec": {
            "containers": [{"name": "c", "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": made.uuid}]}]
        },
        "status": {"phase": "Running"},
    }
    in_use = build_in_use([], build_bound_pods([direct]))
    result = reconcile_node(any_backend, {0: layout("7g.80gb@0")}, in_use, retry=RETRY)
    assert result.gpu(0).state == GpuState.BLOCKED and "pod ml/direct" in result.gpu(0).message
    assert holds(any_backend, 0) == "1g.10gb@0"


def test_a_bound_pod_asking_a_shared_resource_reserves_an_instance_of_its_profile(
    sim: SimulatedBackend,
) -> None:
    sim.create_instance(0, "1g.10gb", 0)
    pod = {
        "metadata": {"name": "w", "namespace": "ml"},
        "spec": {"containers": [{"resources": {"limits": {"nvidia.com/mig-1g.10gb.shared": 1}}}]},
        "status": {"phase": "Pending"},
    }
    in_use = build_in_use([], build_bound_pods([pod]))
    result = reconcile_node(sim, {0: layout("7g.80gb@0")}, in_use, retry=RETRY)
    assert result.gpu(0).state == GpuState.BLOCKED
    assert holds(sim, 0) == "1g.10gb@0"


def test_with_no_holder_the_same_layouts_apply(any_backend: GpuBackend, node: SimulatedNode) -> None:
    split_gi(node, 0, "2g.20gb", 2, cis=2)
    made = any_backend.create_instance(1, "1g.10gb", 0)
    result = reconcile_node(any_backend, {0: layout("7g.80gb@0"), 1: layout("7g.80gb@0")}, retry=RETRY)
    assert result.settled, result.gpus
    assert holds(any_backend, 0) == holds(any_backend, 1) == "7g.80gb@0"
    assert made.uuid in {u for i in result.destroyed for u in i.uuids}


def test_status_lists_every_ci_uuid_of_a_split_gi(sim: SimulatedBackend, node: SimulatedNode) -> None:
    uuids = split_gi(node, 0, "2g.20gb", 2, cis=2)
    in_use = build_in_use(
        [row("ml/train", "nvidia.com/mig-1g.10gb", uuids[1] + "::1")], [BoundPod("ml", "x", {})]
    )
    gpus = sim.list_gpus()
    (entry, _) = build_gpu_entries(gpus, {0: tuple(sim.list_instances(0))}, in_use)
    (inst,) = entry["instances"]
    assert inst["uuid"] == uuids[0]
    assert inst["uuids"] == uuids
    assert inst["allocated"] is True and inst["pod"] == "ml/train"
