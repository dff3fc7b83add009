"""Execute: the re-check before each destroy (issue 10, item 3), repairs of half-made or
half-destroyed instances (item 4) and the device advertiser's hooks."""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import UTC, datetime

import pytest

from cdmo.api import ConditionType, get_condition
from cdmo.mig.layouts import format_layout
from cdmo.node_agent.backend import GpuBackend, NoPermission, NvmlReturn
from cdmo.node_agent.inuse import BoundPod, InUse, build_in_use
from cdmo.node_agent.nvml import NvmlBackend
from cdmo.node_agent.reconcile import GpuState, reconcile_node
from cdmo.node_agent.simulated import SimulatedBackend, SimulatedCrash, SimulatedNode
from cdmo.node_agent.status import build_status
from tests.node.conftest import RETRY, layout
from tests.node.fake_pynvml import make_fake_pynvml
from tests.node.nvml_standin.gpus import StandinGpus

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def holds(backend: GpuBackend, gpu: int) -> str:
    return format_layout(i.instance for i in backend.list_instances(gpu) if i.healthy)


# --- item 3: the re-check reads the node's current truth on every GPU --------------------------


def test_a_pod_bound_between_two_destroys_keeps_the_last_free_instance(sim: SimulatedBackend) -> None:
    """Two H100s, a free 1g.10gb each; a pod asking 1g.10gb binds after the first destroy.

    The old re-check used the plan's instances for the other GPU, so the reservation landed on
    GPU 0's instance, already destroyed, and GPU 1's went too: the pod had nothing to get.
    """
    first = sim.create_instance(0, "1g.10gb", 0)
    sim.create_instance(1, "1g.10gb", 0)

    def in_use() -> InUse:
        bound = not any(i.gi_id == first.gi_id and i.profile == "1g.10gb" for i in sim.list_instances(0))
        return build_in_use([], [BoundPod("ml", "late", {"1g.10gb": 1})] if bound else [])

    result = reconcile_node(sim, {0: layout("7g.80gb@0"), 1: layout("7g.80gb@0")}, in_use, retry=RETRY)
    assert holds(sim, 0) == "7g.80gb@0"
    assert holds(sim, 1) == "1g.10gb@0"  # the last free 1g.10gb stays for the pod
    assert result.gpu(1).state == GpuState.BLOCKED
    assert "ml/late" in result.gpu(1).message


def test_the_recheck_sees_processes_that_started_on_another_gpu(
    sim: SimulatedBackend, node: SimulatedNode
) -> None:
    """A reservation is placed over instances that are free now: a process that took GPU 1's
    1g.10gb after the decision leaves GPU 0's as the only one a waiting pod can get."""
    a = sim.create_instance(0, "1g.10gb", 0)
    b = sim.create_instance(1, "1g.10gb", 0)
    assert a.uuid and b.uuid
    calls = {"n": 0}

    def in_use() -> InUse:
        calls["n"] += 1
        if calls["n"] == 2:  # the first re-check: a process starts on GPU 1's instance
            node.add_process(b.uuid or "", 99)
        return build_in_use([], [BoundPod("ml", "waiting", {"1g.10gb": 1})])

    # The decision kept GPU 1's instance for the waiting pod and let GPU 0's go; by the re-check
    # GPU 1's is busy, so GPU 0's is the only free one and must stay.
    result = reconcile_node(sim, {0: layout("7g.80gb@0"), 1: layout("1g.10gb@0")}, in_use, retry=RETRY)
    assert holds(sim, 0) == "1g.10gb@0"
    assert result.gpu(0).state == GpuState.BLOCKED


# --- the device advertiser ---------------------------------------------------------------------


class RecordingAdvertiser:
    def __init__(self, backend: GpuBackend) -> None:
        self.backend = backend
        self.events: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = []

    def _present(self) -> tuple[str, ...]:
        return tuple(sorted(u for g in (0, 1) for i in self.backend.list_instances(g) for u in i.uuids))

    def withdraw(self, uuids: Collection[str]) -> frozenset[str]:
        self.events.append(("withdraw", tuple(uuids), self._present()))
        return frozenset()

    def refresh(self) -> None:
        self.events.append(("refresh", (), self._present()))


def test_devices_are_withdrawn_before_their_destroy_and_refreshed_after(sim: SimulatedBackend) -> None:
    a = sim.create_instance(0, "1g.10gb", 0)
    b = sim.create_instance(0, "1g.10gb", 1)
    adv = RecordingAdvertiser(sim)
    reconcile_node(sim, {0: layout("2g.20gb@0")}, retry=RETRY, advertiser=adv)
    (withdraw, refresh) = adv.events
    assert withdraw[0] == "withdraw" and set(withdraw[1]) == {a.uuid, b.uuid}
    assert {a.uuid, b.uuid} <= set(withdraw[2])  # withdrawn while they still existed
    assert refresh[0] == "refresh" and a.uuid not in refresh[2]


def test_a_blocked_destroy_is_offered_again_by_the_refresh(sim: SimulatedBackend) -> None:
    a = sim.create_instance(0, "1g.10gb", 0)
    assert a.uuid
    adv = RecordingAdvertiser(sim)
    in_use = [InUse(), build_in_use([], [BoundPod("ml", "w", {"1g.10gb": 1})])]
    calls = iter([in_use[0], in_use[1], in_use[1]])
    result = reconcile_node(sim, {0: layout("7g.80gb@0")}, lambda: next(calls), retry=RETRY, advertiser=adv)
    assert result.gpu(0).state == GpuState.BLOCKED
    assert [e[0] for e in adv.events] == ["withdraw", "refresh"]
    assert a.uuid in adv.events[-1][2]


def test_the_advertiser_is_refreshed_when_the_pass_fails(sim: SimulatedBackend, node: SimulatedNode) -> None:
    sim.create_instance(0, "1g.10gb", 0)
    node.inject_fault("nvmlGpuInstanceDestroy", NvmlReturn.NO_PERMISSION)
    adv = RecordingAdvertiser(sim)
    with pytest.raises(NoPermission):
        reconcile_node(sim, {0: layout("7g.80gb@0")}, retry=RETRY, advertiser=adv)
    assert [e[0] for e in adv.events] == ["withdraw", "refresh"]


# --- item 4: half-made and half-destroyed instances --------------------------------------------


def test_a_gi_whose_destroy_is_refused_after_its_ci_went_gets_its_ci_again(
    any_backend: GpuBackend, node: SimulatedNode
) -> None:
    """dcgm-exporter holds the GI: NVML destroys the CI, then refuses the GI (IN_USE). The old
    agent left the GI without a CI, so its device vanished from the node."""
    old = any_backend.create_instance(0, "3g.40gb", 0)
    node.inject_fault("nvmlGpuInstanceDestroy", NvmlReturn.IN_USE)
    result = reconcile_node(any_backend, {0: layout("7g.80gb@0")}, retry=RETRY)
    (now,) = any_backend.list_instances(0)
    assert now.gi_id == old.gi_id and now.healthy and now.uuid != old.uuid
    g = result.gpu(0)
    assert g.state == GpuState.FAILED and g.repaired and "IN_USE" in g.repairs[0]
    status = build_status(result, generation=1, now=NOW)
    applied = get_condition(status["conditions"], ConditionType.APPLIED)
    assert applied is not None and "compute instance again" in applied["message"]
    # Once the client lets go, the next pass gets the layout.
    assert reconcile_node(any_backend, {0: layout("7g.80gb@0")}, retry=RETRY).settled
    assert holds(any_backend, 0) == "7g.80gb@0"


def test_a_gi_left_without_ci_is_repaired_in_place_when_the_layout_keeps_it(
    sim: SimulatedBackend, node: SimulatedNode
) -> None:
    node.crash_before_next_compute_instance = True
    with pytest.raises(SimulatedCrash):
        reconcile_node(sim, {0: layout("3g.40gb@4")}, retry=RETRY)
    (orphan,) = sim.list_instances(0)
    assert orphan.empty
    # dcgm-exporter holds the orphan GI: it could not be destroyed and made again.
    node.inject_fault("nvmlGpuInstanceDestroy", NvmlReturn.IN_USE, count=-1)
    result = reconcile_node(sim, {0: layout("3g.40gb@4")}, retry=RETRY)
    (now,) = sim.list_instances(0)
    assert now.gi_id == orphan.gi_id and now.healthy
    assert result.settled and result.gpu(0).repaired
    assert "had no compute instance" in result.gpu(0).message


def test_an_unwanted_gi_without_ci_that_stays_gets_its_ci_again(
    sim: SimulatedBackend, node: SimulatedNode
) -> None:
    prof = node.gpu(0).model.profile("2g.20gb")
    gi = node.create_gpu_instance(0, prof.profile_id, 2, prof.placement_size)
    node.inject_fault("nvmlGpuInstanceDestroy", NvmlReturn.IN_USE)
    result = reconcile_node(sim, {0: layout("3g.40gb@4")}, retry=RETRY)
    inst = next(i for i in sim.list_instances(0) if i.gi_id == gi.gi_id)
    assert inst.healthy
    assert result.gpu(0).state == GpuState.FAILED


def test_processes_on_a_gpu_with_mig_off_are_listed_by_the_gpu_uuid() -> None:
    node = SimulatedNode.from_models(["h100-80gb"], seed="t", mig_enabled=False)
    for backend in (SimulatedBackend(node), NvmlBackend(make_fake_pynvml(node))):
        assert backend.list_processes(0) == {}
        node.add_gpu_process(0, 12)
        assert backend.list_processes(0) == {node.gpus[0].uuid: (12,)}
        node.remove_gpu_process(0, 12)
        result = reconcile_node(backend, {0: layout("7g.80gb@0")}, enable_mig=True, retry=RETRY)
        assert result.settled and holds(backend, 0) == "7g.80gb@0"
        node.reboot()


def test_an_observation_less_what_the_pass_destroyed_keeps_a_gi_made_again_with_the_same_id(
    sim: SimulatedBackend,
) -> None:
    from cdmo.node_agent.observe import observe_node

    old = sim.create_instance(0, "1g.10gb", 0)
    sim.destroy_instance(0, old.gi_id)
    new = sim.create_instance(0, "1g.10gb", 0)
    assert new.gi_id == old.gi_id and new.uuids != old.uuids
    observed = observe_node(sim, retry=RETRY)
    assert observed.without([old]).instances[0] == (new,)
    assert observed.without([new]).instances[0] == ()


# --- a GPU lost, an instance of a profile the catalog lacks: the real pynvml over the stand-in ---


def test_a_gpu_lost_mid_pass_is_reported_and_the_other_gpus_results_kept(
    standin: StandinGpus,
) -> None:
    """GPU 1 falls off the bus after GPU 0's create (NVML: GPU_IS_LOST on every call on it).

    The pass used to end in an exception from reading GPU 1's final state: GPU 0's new instance
    went unreported and the status kept saying whatever it said before."""

    class LosesGpu1(NvmlBackend):
        def create_instance(self, gpu: int, profile: str, start: int):  # type: ignore[no-untyped-def]
            made = super().create_instance(gpu, profile, start)
            if gpu == 0:
                standin.lose_gpu(1)
            return made

    backend = LosesGpu1()
    result = reconcile_node(backend, {0: layout("3g.40gb@0"), 1: layout("1g.10gb@0,1g.10gb@1")}, retry=RETRY)
    assert result.gpu(0).state == GpuState.READY
    assert [(i.profile, i.start) for i in result.gpu(0).created] == [("3g.40gb", 0)]
    lost = result.gpu(1)
    assert lost.state == GpuState.FAILED and "GPU_IS_LOST" in lost.message
    # its second create was not tried on a GPU that is gone; reading it after the pass failed too
    assert [e.startswith("GPU 1: could not read") for e in lost.errors] == [False, True]


def test_a_held_instance_of_a_profile_the_catalog_lacks_blocks_its_gpu(
    make_standin: Callable[..., StandinGpus],
) -> None:
    """nvidia-smi made 2g.20gb+me@2 (not in cdmo's catalog) and a process runs on it; the spec
    asks for 3g.40gb@0, which overlaps it. The GPU is Blocked by that process, naming it; it
    used to be invisible, so cdmo tried the create and failed (INSUFFICIENT_RESOURCES) forever."""
    import pynvml

    standin = make_standin("h100-80gb-next")
    gi = standin.create_gpu_instance(0, 21, 2, 2)
    ci = standin.create_compute_instance(0, gi.gi_id, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_2_SLICE)
    standin.add_process(ci.uuid, 31337)
    before = standin.records("gi") + standin.records("ci")
    result = reconcile_node(NvmlBackend(), {0: layout("3g.40gb@0")}, retry=RETRY)
    assert result.gpu(0).state == GpuState.BLOCKED, result.gpu(0).message
    assert "2g.20gb+me@2" in result.gpu(0).message and "31337" in result.gpu(0).message
    assert standin.records("gi") + standin.records("ci") == before
