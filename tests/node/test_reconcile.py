"""Reconcile on simulated GPUs: the node agent's behaviour, without Kubernetes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cdmo.api import Phase, get_condition
from cdmo.mig.layouts import Instance, format_layout
from cdmo.node_agent.backend import GpuInstanceInfo, NoPermission, NvmlReturn, RetryPolicy
from cdmo.node_agent.inuse import BoundPod, Holder, InUse, build_in_use
from cdmo.node_agent.podresources.client import PodDevices
from cdmo.node_agent.reconcile import (
    GpuState,
    Reason,
    Step,
    diff_layout,
    execute_decision,
    prepare_node,
    protected_instances,
    reconcile_node,
)
from cdmo.node_agent.simulated import SimulatedBackend, SimulatedCrash, SimulatedNode
from cdmo.node_agent.status import build_status
from tests.node.conftest import RETRY, layout

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def holds(backend: SimulatedBackend, gpu: int) -> str:
    return format_layout(i.instance for i in backend.list_instances(gpu) if i.healthy)


def pod_holding(uuid: str | None, pod: str = "default/train-1", profile: str = "1g.10gb") -> PodDevices:
    ns, name = pod.split("/")
    assert uuid is not None
    return PodDevices(ns, name, "main", f"nvidia.com/mig-{profile}", (uuid,))


def info(
    gpu: int,
    profile: str,
    start: int,
    gi_id: int,
    *,
    uuid: str | None = "MIG-x",
    size: int = 1,
    ci_id: int | None = 0,
) -> GpuInstanceInfo:
    return GpuInstanceInfo(gpu, profile, start, size, gi_id, ci_id, uuid)


# --- the pure diff -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("desired", "actual", "steps"),
    [
        ("", [], []),
        ("1g.10gb@0", [], ["create 1g.10gb@0"]),
        ("1g.10gb@0", [info(0, "1g.10gb", 0, 7)], []),
        ("", [info(0, "1g.10gb", 0, 7)], ["destroy 1g.10gb@0"]),
        (
            "2g.20gb@0",
            [info(0, "1g.10gb", 0, 7), info(0, "1g.10gb", 1, 8)],
            ["destroy 1g.10gb@0", "destroy 1g.10gb@1", "create 2g.20gb@0"],
        ),
        (
            "1g.10gb@0",
            [info(0, "1g.10gb", 0, 7, uuid=None, ci_id=None)],
            ["repair 1g.10gb@0"],
        ),
        ("3g.40gb@4,1g.10gb@0", [info(0, "1g.10gb", 0, 7)], ["create 3g.40gb@4"]),
    ],
    ids=["empty", "create", "keep", "destroy", "merge", "heal-orphan", "add-beside"],
)
def test_diff_layout(desired: str, actual: list[GpuInstanceInfo], steps: list[str]) -> None:
    diff = diff_layout(layout(desired), actual)
    assert [f"{s.action} {s.profile}@{s.start}" for s in diff.steps] == steps
    assert diff.blockers == ()


def test_diff_destroys_before_it_creates() -> None:
    diff = diff_layout(layout("3g.40gb@0"), [info(0, "4g.40gb", 0, 1, size=4)], gpu=0)
    assert [s.action for s in diff.steps] == ["destroy", "create"]
    assert diff.destroys == (Step("destroy", 0, "4g.40gb", 0, 1, "MIG-x"),)
    assert diff.creates == (Step("create", 0, "3g.40gb", 0),)


def test_diff_with_a_held_unwanted_instance_has_only_blockers() -> None:
    held = info(0, "1g.10gb", 0, 7, uuid="MIG-held")
    diff = diff_layout(layout("7g.80gb@0"), [held, info(0, "1g.10gb", 1, 8)], {7: (Holder("pod", "ns/p"),)})
    assert diff.steps == ()
    assert [b.instance for b in diff.blockers] == [held]
    assert diff.blockers[0].pods == ("ns/p",)
    assert "1g.10gb@0 (MIG-held) is held by pod ns/p" in diff.blockers[0].message


def test_diff_keeps_a_held_broken_instance_at_a_desired_place() -> None:
    partial = GpuInstanceInfo(0, "3g.40gb", 0, 4, 1, 0, "MIG-p", full=False)
    diff = diff_layout(layout("3g.40gb@0"), [partial], {1: (Holder("process", "5"),)})
    assert diff.steps == () and diff.blockers == ()


def test_reservations_prefer_instances_the_layout_keeps() -> None:
    actual = {0: [info(0, "1g.10gb", 0, 7, uuid="MIG-a"), info(0, "1g.10gb", 1, 8, uuid="MIG-b")]}
    in_use = InUse(reservations={"1g.10gb": ("ns/waiting",)})
    kept_second = protected_instances(actual, {0: layout("1g.10gb@1")}, in_use)
    assert kept_second == {(0, 8): (Holder("reservation", "ns/waiting"),)}
    neither_kept = protected_instances(actual, {0: layout("2g.20gb@2")}, in_use)
    assert neither_kept == {(0, 7): (Holder("reservation", "ns/waiting"),)}


def test_unknown_holders_protect_every_instance_of_the_profile() -> None:
    actual = {0: [info(0, "1g.10gb", 0, 7), info(0, "2g.20gb", 2, 4, size=2)]}
    held = protected_instances(actual, {0: ()}, InUse(unknown={"1g.10gb": ("ns/p",)}))
    assert list(held) == [(0, 7)]


# --- the scenarios the issue asks for ----------------------------------------------------------


def test_from_empty(sim: SimulatedBackend) -> None:
    desired = {
        0: layout("3g.40gb@0,2g.20gb@4,1g.10gb@6"),
        1: layout("1g.20gb@0,1g.20gb@2,1g.20gb@4,1g.20gb@6"),
    }
    result = reconcile_node(sim, desired, retry=RETRY)
    assert [g.state for g in result.gpus] == [GpuState.READY, GpuState.READY]
    assert holds(sim, 0) == "3g.40gb@0,2g.20gb@4,1g.10gb@6"
    assert holds(sim, 1) == "1g.20gb@0,1g.20gb@2,1g.20gb@4,1g.20gb@6"
    assert len(result.created) == 7 and result.destroyed == () and result.changed
    status = build_status(result, generation=1, now=NOW)
    assert status["phase"] == Phase.READY and status["lastError"] is None
    again = reconcile_node(sim, desired, retry=RETRY)
    assert not again.changed and again.settled  # level-triggered: nothing left to do


def test_repack_around_a_used_instance(sim: SimulatedBackend, node: SimulatedNode) -> None:
    reconcile_node(
        sim, {0: layout("1g.10gb@0,1g.10gb@1,1g.10gb@2,1g.10gb@3,1g.10gb@4,1g.10gb@5,1g.10gb@6")}, retry=RETRY
    )
    used = next(i for i in sim.list_instances(0) if i.start == 4)
    node.add_process(used.uuid, 1234)
    in_use = build_in_use([pod_holding(used.uuid)])
    result = reconcile_node(sim, {0: layout("2g.20gb@0,2g.20gb@2,1g.10gb@4,1g.10gb@6")}, in_use, retry=RETRY)
    assert result.gpu(0).state == GpuState.READY
    assert holds(sim, 0) == "2g.20gb@0,2g.20gb@2,1g.10gb@4,1g.10gb@6"
    assert used.uuid in {i.uuid for i in sim.list_instances(0)}  # the same MIG device, untouched
    assert sorted(i.start for i in result.destroyed) == [0, 1, 2, 3, 5]
    entry = build_status(result, generation=2, now=NOW)["gpus"][0]["instances"]
    assert [(e["start"], e["allocated"], e.get("pod")) for e in entry if e["allocated"]] == [
        (4, True, "default/train-1")
    ]


def test_blocked_by_an_instance_in_use(sim: SimulatedBackend, node: SimulatedNode) -> None:
    reconcile_node(sim, {0: layout("1g.10gb@0,1g.10gb@1"), 1: layout("4g.40gb@0")}, retry=RETRY)
    busy = sim.list_instances(0)[0]
    node.add_process(busy.uuid, 4242)
    result = reconcile_node(sim, {0: layout("7g.80gb@0"), 1: layout("3g.40gb@0,3g.40gb@4")}, retry=RETRY)
    assert result.gpu(0).state == GpuState.BLOCKED
    assert holds(sim, 0) == "1g.10gb@0,1g.10gb@1"  # nothing on GPU 0 changed, not even the free one
    assert result.gpu(1).state == GpuState.READY  # the other GPU went ahead
    status = build_status(result, generation=3, now=NOW)
    assert status["phase"] == Phase.BLOCKED
    blocked = get_condition(status["conditions"], "Blocked")
    assert blocked is not None and blocked["status"] == "True" and blocked["reason"] == "InstanceInUse"
    assert f"1g.10gb@0 ({busy.uuid}) is held by process 4242" in blocked["message"]


def test_bound_but_not_admitted_pod_keeps_its_instance(sim: SimulatedBackend) -> None:
    reconcile_node(sim, {0: layout("1g.10gb@0,3g.40gb@4")}, retry=RETRY)
    waiting = BoundPod("default", "just-bound", {"1g.10gb": 1})
    in_use = build_in_use([], [waiting])  # pod-resources lists it with no device: not admitted yet
    result = reconcile_node(sim, {0: layout("2g.20gb@0,3g.40gb@4")}, in_use, retry=RETRY)
    assert result.gpu(0).state == GpuState.BLOCKED
    assert holds(sim, 0) == "1g.10gb@0,3g.40gb@4"
    assert result.gpu(0).blockers[0].holders == (Holder("reservation", "default/just-bound"),)
    # Once it is admitted and holds the device, the same spec is still blocked, now by the pod.
    uuid = sim.list_instances(0)[0].uuid
    admitted = build_in_use([pod_holding(uuid, "default/just-bound")], [waiting])
    assert (
        reconcile_node(sim, {0: layout("2g.20gb@0,3g.40gb@4")}, admitted, retry=RETRY).gpu(0).state
        == GpuState.BLOCKED
    )
    # A layout that keeps a 1g.10gb elsewhere lets the agent repack: the reservation moves there.
    result = reconcile_node(sim, {0: layout("1g.10gb@0,1g.10gb@1,3g.40gb@4")}, in_use, retry=RETRY)
    assert result.gpu(0).state == GpuState.READY


def test_in_use_is_checked_again_right_before_destroy(sim: SimulatedBackend, node: SimulatedNode) -> None:
    reconcile_node(sim, {0: layout("1g.10gb@0,1g.10gb@1")}, retry=RETRY)
    first, second = sim.list_instances(0)
    calls = {"n": 0}

    def in_use() -> InUse:
        # The planner sees nothing in use; by the second look, a pod has taken the second one.
        calls["n"] += 1
        return build_in_use([pod_holding(second.uuid)] if calls["n"] > 2 else [])

    result = reconcile_node(sim, {0: layout("2g.20gb@0")}, in_use, retry=RETRY)
    assert result.gpu(0).state == GpuState.BLOCKED
    assert [i.start for i in result.destroyed] == [0]
    assert second.uuid in {i.uuid for i in sim.list_instances(0)}
    assert "default/train-1" in result.gpu(0).message
    assert first.uuid not in {i.uuid for i in sim.list_instances(0)}


def test_a_process_that_starts_after_planning_is_seen_before_destroy(
    sim: SimulatedBackend, node: SimulatedNode
) -> None:
    reconcile_node(sim, {0: layout("3g.40gb@0")}, retry=RETRY)
    [inst] = sim.list_instances(0)
    plan = prepare_node(sim, {0: layout("4g.40gb@0")}, retry=RETRY)
    assert plan.gpus[0].state == GpuState.PENDING
    node.add_process(inst.uuid, 31337)
    result = execute_decision(sim, plan, retry=RETRY)
    assert result.gpu(0).state == GpuState.BLOCKED and holds(sim, 0) == "3g.40gb@0"


def test_dying_between_gi_and_ci_then_starting_again_heals(
    sim: SimulatedBackend, node: SimulatedNode
) -> None:
    desired = {0: layout("3g.40gb@0,3g.40gb@4")}
    node.crash_before_next_compute_instance = True
    with pytest.raises(SimulatedCrash):
        reconcile_node(sim, desired, retry=RETRY)
    [orphan] = sim.list_instances(0)
    assert orphan.ci_id is None
    result = reconcile_node(sim, desired, retry=RETRY)  # the agent starts again
    assert result.gpu(0).state == GpuState.READY
    assert holds(sim, 0) == "3g.40gb@0,3g.40gb@4"
    assert all(i.healthy for i in sim.list_instances(0))


def test_a_transient_nvml_error_is_retried(sim: SimulatedBackend, node: SimulatedNode) -> None:
    node.inject_fault("nvmlDeviceCreateGpuInstanceWithPlacement", NvmlReturn.TIMEOUT, count=2)
    node.inject_fault("nvmlGpuInstanceDestroy", NvmlReturn.UNKNOWN, count=1)
    result = reconcile_node(sim, {0: layout("4g.40gb@0")}, retry=RETRY)
    assert result.gpu(0).state == GpuState.READY and holds(sim, 0) == "4g.40gb@0"
    result = reconcile_node(sim, {0: layout("3g.40gb@4")}, retry=RETRY)
    assert result.gpu(0).state == GpuState.READY and holds(sim, 0) == "3g.40gb@4"
    assert node.calls.count("nvmlDeviceCreateGpuInstanceWithPlacement") == 4
    assert node.faults == []


def test_transient_errors_beyond_the_retries_are_reported_and_retried_next_pass(
    sim: SimulatedBackend, node: SimulatedNode
) -> None:
    node.inject_fault("nvmlDeviceCreateGpuInstanceWithPlacement", NvmlReturn.TIMEOUT, count=5)
    result = reconcile_node(
        sim, {0: layout("2g.20gb@0,2g.20gb@2")}, retry=RetryPolicy(attempts=2, initial_seconds=0)
    )
    gpu = result.gpu(0)
    assert gpu.state == GpuState.FAILED and gpu.reason == Reason.NVML_ERROR and len(gpu.errors) == 2
    status = build_status(result, generation=4, now=NOW)
    assert status["phase"] == Phase.APPLYING and "TIMEOUT" in status["lastError"]
    assert not result.settled
    result = reconcile_node(sim, {0: layout("2g.20gb@0,2g.20gb@2")}, retry=RETRY)
    assert result.gpu(0).state == GpuState.READY


def test_a_permission_error_is_fatal_with_its_message(sim: SimulatedBackend, node: SimulatedNode) -> None:
    node.inject_fault("nvmlDeviceCreateGpuInstanceWithPlacement", NvmlReturn.NO_PERMISSION, count=-1)
    with pytest.raises(NoPermission) as err:
        reconcile_node(sim, {0: layout("1g.10gb@0")}, retry=RETRY)
    assert "must run privileged" in str(err.value)
    assert node.calls.count("nvmlDeviceCreateGpuInstanceWithPlacement") == 1  # not retried


def test_mig_off_is_reported_with_the_fix(make_node) -> None:
    backend = SimulatedBackend(make_node("h100-80gb", "a100-40gb", mig=False))
    result = reconcile_node(backend, {0: layout("1g.10gb@0"), 1: layout("1g.5gb@0")}, retry=RETRY)
    assert [g.state for g in result.gpus] == [GpuState.MIG_OFF, GpuState.MIG_OFF]
    status = build_status(result, generation=1, now=NOW)
    assert status["phase"] == Phase.ERROR
    cond = get_condition(status["conditions"], "MigModeEnabled")
    assert cond is not None and cond["status"] == "False" and cond["reason"] == "MigModeDisabled"
    assert "nvidia-smi -i 0 -mig 1" in cond["message"] and "--enable-mig" in cond["message"]
    assert "nvidia-smi -i 1 -r" in result.gpu(1).message  # Ampere needs a reset too


def test_enable_mig_switches_hopper_on_and_applies_in_the_same_pass(make_node) -> None:
    backend = SimulatedBackend(make_node("h100-80gb", "a100-40gb", mig=False))
    result = reconcile_node(
        backend, {0: layout("7g.80gb@0"), 1: layout("7g.40gb@0")}, enable_mig=True, retry=RETRY
    )
    assert result.gpu(0).state == GpuState.READY and holds(backend, 0) == "7g.80gb@0"
    ampere = result.gpu(1)
    assert ampere.state == GpuState.MIG_OFF and ampere.reason == Reason.MIG_MODE_RESET_REQUIRED
    assert "nvidia-smi -i 1 -r" in ampere.message


def test_mig_off_with_nothing_desired_is_fine(make_node) -> None:
    result = reconcile_node(SimulatedBackend(make_node("h100-80gb", mig=False)), {0: ()}, retry=RETRY)
    assert result.gpu(0).state == GpuState.READY and result.gpu(0).reason == Reason.NOTHING_DESIRED


def test_after_a_reboot_the_layout_is_made_again(make_node) -> None:
    node = make_node("a100-80gb")
    backend = SimulatedBackend(node)
    desired = {0: layout("4g.40gb@0,2g.20gb@4,1g.10gb@6")}
    reconcile_node(backend, desired, retry=RETRY)
    before = {i.uuid for i in backend.list_instances(0)}
    node.reboot()
    assert backend.list_instances(0) == []
    result = reconcile_node(backend, desired, retry=RETRY)
    assert result.gpu(0).state == GpuState.READY and holds(backend, 0) == "4g.40gb@0,2g.20gb@4,1g.10gb@6"
    assert before.isdisjoint(i.uuid for i in backend.list_instances(0))


def test_invalid_layout_is_refused_for_that_gpu_and_nothing_is_destroyed(sim: SimulatedBackend) -> None:
    reconcile_node(sim, {0: layout("1g.10gb@0"), 1: layout("1g.10gb@0")}, retry=RETRY)
    before = [i.uuid for i in sim.list_instances(0)]
    result = reconcile_node(sim, {0: layout("4g.40gb@0,3g.40gb@0"), 1: layout("7g.80gb@0")}, retry=RETRY)
    bad = result.gpu(0)
    assert bad.state == GpuState.REFUSED and bad.reason == Reason.INVALID_LAYOUT
    assert "overlaps" in bad.message and "nothing on it was changed" in bad.message
    assert [i.uuid for i in sim.list_instances(0)] == before
    assert result.gpu(1).state == GpuState.READY and holds(sim, 1) == "7g.80gb@0"
    status = build_status(result, generation=5, now=NOW)
    assert status["phase"] == Phase.ERROR
    applied = get_condition(status["conditions"], "Applied")
    assert applied is not None and applied["reason"] == "InvalidLayout"
    assert status["lastError"].startswith("GPU 0 (h100-80gb) cannot hold")


def test_unknown_profile_on_the_model_is_refused(sim: SimulatedBackend) -> None:
    result = reconcile_node(sim, {0: layout("1g.6gb@0")}, retry=RETRY)
    assert (
        result.gpu(0).state == GpuState.REFUSED and "not a MIG profile of h100-80gb" in result.gpu(0).message
    )


def test_unknown_gpu_index_is_refused(sim: SimulatedBackend) -> None:
    reconcile_node(sim, {0: layout("3g.40gb@0")}, retry=RETRY)
    result = reconcile_node(sim, {0: layout("3g.40gb@0"), 5: layout("1g.10gb@0")}, retry=RETRY)
    missing = result.gpu(5)
    assert missing.state == GpuState.REFUSED and missing.reason == Reason.UNKNOWN_GPU
    assert "this node has GPUs 0, 1" in missing.message
    assert holds(sim, 0) == "3g.40gb@0"
    assert build_status(result, generation=6, now=NOW)["phase"] == Phase.ERROR


def test_gpus_not_in_the_spec_are_left_alone(sim: SimulatedBackend) -> None:
    reconcile_node(sim, {1: layout("1g.10gb@3")}, retry=RETRY)
    result = reconcile_node(sim, {0: ()}, retry=RETRY)
    assert result.gpu(1).state == GpuState.UNMANAGED and holds(sim, 1) == "1g.10gb@3"


def test_unexpected_leftovers_fail_the_check_after_the_pass(
    sim: SimulatedBackend, node: SimulatedNode
) -> None:
    class Sneaky(SimulatedBackend):
        def create_instance(self, gpu: int, profile: str, start: int) -> GpuInstanceInfo:
            made = super().create_instance(gpu, profile, start)
            if profile == "2g.20gb":
                super().create_instance(gpu, "1g.10gb", 6)  # something else appears meanwhile
            return made

    result = reconcile_node(Sneaky(node), {0: layout("2g.20gb@0")}, retry=RETRY)
    assert (
        result.gpu(0).state == GpuState.FAILED and "but the spec asks for 2g.20gb@0" in result.gpu(0).message
    )


def test_busy_destroy_stops_that_gpu(sim: SimulatedBackend, node: SimulatedNode) -> None:
    reconcile_node(sim, {0: layout("1g.10gb@0")}, retry=RETRY)
    node.inject_fault("nvmlGpuInstanceDestroy", NvmlReturn.IN_USE)  # DCGM holds a handle
    result = reconcile_node(sim, {0: layout("2g.20gb@0")}, retry=RETRY)
    assert result.gpu(0).state == GpuState.FAILED and "IN_USE" in result.gpu(0).errors[0]
    assert reconcile_node(sim, {0: layout("2g.20gb@0")}, retry=RETRY).gpu(0).state == GpuState.READY


def test_placement_taken_is_reported(sim: SimulatedBackend, node: SimulatedNode) -> None:
    node.inject_fault("nvmlDeviceCreateGpuInstanceWithPlacement", NvmlReturn.INSUFFICIENT_RESOURCES)
    result = reconcile_node(sim, {0: layout("1g.10gb@0,1g.10gb@1")}, retry=RETRY)
    assert result.gpu(0).state == GpuState.FAILED and "placement is taken" in result.gpu(0).errors[0]
    assert holds(sim, 0) == "1g.10gb@1"


def test_an_unreadable_in_use_source_stops_destroys(sim: SimulatedBackend) -> None:
    from cdmo.node_agent.podresources.client import PodResourcesUnavailable

    reconcile_node(sim, {0: layout("1g.10gb@0")}, retry=RETRY)
    calls = {"n": 0}

    def flaky() -> InUse:
        calls["n"] += 1
        if calls["n"] > 1:
            raise PodResourcesUnavailable("kubelet gone")
        return InUse()

    result = reconcile_node(sim, {0: layout("2g.20gb@0")}, flaky, retry=RETRY)
    assert result.gpu(0).state == GpuState.FAILED and "could not check who holds" in result.gpu(0).errors[0]
    assert holds(sim, 0) == "1g.10gb@0"


def test_a_half_made_gpu_instance_goes_while_pod_resources_is_unreadable(
    sim: SimulatedBackend, node: SimulatedNode
) -> None:
    """A pod bound for 3g.40gb, pod-resources unreadable: it may hold the 3g.40gb device, so that
    one stays; the GPU instance a failed create left without a compute instance is no device it
    can hold, so the layout that drops it gets it destroyed (it used to block the GPU)."""
    held = sim.create_instance(0, "3g.40gb", 0)
    node.inject_fault("nvmlGpuInstanceCreateComputeInstance", NvmlReturn.UNKNOWN)
    node.inject_fault("nvmlGpuInstanceDestroy", NvmlReturn.IN_USE)
    reconcile_node(sim, {0: layout("3g.40gb@0,3g.40gb@4")}, retry=RETRY)
    [left] = [i for i in sim.list_instances(0) if i.empty]
    assert (left.profile, left.start) == ("3g.40gb", 4)
    in_use = build_in_use(None, [BoundPod("ml", "train", {"3g.40gb": 1})])  # None: unreadable
    result = reconcile_node(sim, {0: layout("3g.40gb@0")}, lambda: in_use, retry=RETRY).gpu(0)
    assert result.state == GpuState.READY, result.message
    assert [i.gi_id for i in result.destroyed] == [left.gi_id]
    assert [i.uuid for i in sim.list_instances(0)] == [held.uuid]


def test_plan_lists_refusals_and_steps(sim: SimulatedBackend) -> None:
    plan = prepare_node(sim, {0: layout("3g.40gb@0"), 3: ()}, retry=RETRY)
    assert [s.action for s in plan.steps] == ["create"]
    assert [g.index for g in plan.refusals] == [3]
    assert plan.desired == {0: (Instance("3g.40gb", 0),), 3: ()}


def test_a_failed_mig_switch_is_reported_on_that_gpu(make_node) -> None:
    node = make_node("h100-80gb", "h100-80gb", mig=False)
    node.inject_fault("nvmlDeviceSetMigMode", NvmlReturn.IN_USE)  # a client holds the GPU
    backend = SimulatedBackend(node)
    result = reconcile_node(
        backend, {0: layout("7g.80gb@0"), 1: layout("7g.80gb@0")}, enable_mig=True, retry=RETRY
    )
    assert result.gpu(0).state == GpuState.MIG_OFF and "switching MIG on failed" in result.gpu(0).message
    assert result.gpu(1).state == GpuState.READY and holds(backend, 1) == "7g.80gb@0"


def test_after_a_hopper_reboot_enable_mig_brings_the_layout_back(make_node) -> None:
    node = make_node("h100-80gb")
    backend = SimulatedBackend(node)
    desired = {0: layout("3g.40gb@0,3g.40gb@4")}
    reconcile_node(backend, desired, enable_mig=True, retry=RETRY)
    node.reboot()
    assert reconcile_node(backend, desired, retry=RETRY).gpu(0).state == GpuState.MIG_OFF
    result = reconcile_node(backend, desired, enable_mig=True, retry=RETRY)
    assert result.gpu(0).state == GpuState.READY and holds(backend, 0) == "3g.40gb@0,3g.40gb@4"
