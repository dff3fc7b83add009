"""The status the agent writes: shape, phase, conditions, times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cdmo.api import Phase, get_condition
from cdmo.node_agent.reconcile import reconcile_node
from cdmo.node_agent.refresh import RefreshOutcome
from cdmo.node_agent.simulated import SimulatedBackend, SimulatedNode
from cdmo.node_agent.status import build_error_status, build_status, mig_uuids, result_mig_uuids
from tests.node.conftest import RETRY, layout

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def test_status_shape_after_a_pass(sim: SimulatedBackend, node: SimulatedNode) -> None:
    node.create_gpu_instance(1, 19, 3, 1)  # an orphan 1g.10gb GI on the unmanaged GPU
    result = reconcile_node(sim, {0: layout("4g.40gb@0")}, retry=RETRY)
    ok = RefreshOutcome(True, "SignalSent", "sent SIGHUP")
    status = build_status(result, generation=7, now=T0, refresh=ok)
    assert status["observedGeneration"] == 7 and status["phase"] == "Ready"
    assert status["lastAppliedTime"] == "2025-03-01T12:00:00Z" and status["lastError"] is None
    gpu0, gpu1 = status["gpus"]
    assert gpu0["model"] == "h100-80gb" and gpu0["migEnabled"] is True and "state" not in gpu0
    [inst] = gpu0["instances"]
    assert set(inst) == {"profile", "start", "giId", "ciId", "uuid", "allocated"}
    assert (inst["profile"], inst["start"], inst["giId"], inst["ciId"], inst["allocated"]) == (
        "4g.40gb",
        0,
        1,
        0,
        False,
    )
    # The orphan has no CI and no UUID: those keys are left out, never null.
    assert gpu1["instances"] == [
        {"profile": "1g.10gb", "start": 3, "giId": 10, "allocated": False, "healthy": False}
    ]
    types = [c["type"] for c in status["conditions"]]
    assert types == sorted(["MigModeEnabled", "Applied", "Blocked", "DevicePluginRefreshed"])
    assert all(c["observedGeneration"] == 7 for c in status["conditions"])
    assert get_condition(status["conditions"], "DevicePluginRefreshed")["reason"] == "SignalSent"


def test_transition_time_moves_only_when_a_condition_flips(
    sim: SimulatedBackend, node: SimulatedNode
) -> None:
    first = build_status(reconcile_node(sim, {0: layout("1g.10gb@0")}, retry=RETRY), generation=1, now=T0)
    inst = sim.list_instances(0)[0]
    node.add_process(inst.uuid, 5)
    later = T0 + timedelta(minutes=5)
    second = build_status(
        reconcile_node(sim, {0: layout("2g.20gb@0")}, retry=RETRY), generation=2, now=later, previous=first
    )
    assert second["phase"] == Phase.BLOCKED
    mig1, mig2 = (get_condition(s["conditions"], "MigModeEnabled") for s in (first, second))
    blk1, blk2 = (get_condition(s["conditions"], "Blocked") for s in (first, second))
    assert mig2["lastTransitionTime"] == mig1["lastTransitionTime"] == "2025-03-01T12:00:00Z"
    assert blk2["lastTransitionTime"] == "2025-03-01T12:05:00Z" and blk1["status"] == "False"
    assert second["lastAppliedTime"] == first["lastAppliedTime"]  # not applied since
    assert second["gpus"][0]["state"] == "Blocked" and "process 5" in second["gpus"][0]["message"]


def test_last_applied_time_moves_only_when_something_was_applied(sim: SimulatedBackend) -> None:
    first = build_status(reconcile_node(sim, {0: layout("1g.10gb@0")}, retry=RETRY), generation=1, now=T0)
    later = T0 + timedelta(hours=1)
    same = build_status(
        reconcile_node(sim, {0: layout("1g.10gb@0")}, retry=RETRY), generation=1, now=later, previous=first
    )
    assert same["lastAppliedTime"] == first["lastAppliedTime"]
    assert same == first  # a resync with nothing new writes nothing new
    newer = build_status(
        reconcile_node(sim, {0: layout("1g.10gb@0")}, retry=RETRY), generation=2, now=later, previous=first
    )
    assert newer["lastAppliedTime"] == "2025-03-01T13:00:00Z"


def test_failed_refresh_keeps_the_phase_applying(sim: SimulatedBackend) -> None:
    result = reconcile_node(sim, {0: layout("7g.80gb@0")}, retry=RETRY)
    bad = RefreshOutcome(False, "DevicePluginNotFound", "no nvidia-device-plugin process is visible")
    status = build_status(result, generation=3, now=T0, refresh=bad)
    assert status["phase"] == Phase.APPLYING and status["lastError"] == bad.message
    cond = get_condition(status["conditions"], "DevicePluginRefreshed")
    assert cond["status"] == "False" and cond["reason"] == "DevicePluginNotFound"


def test_no_refresh_yet_is_reported_as_no_change(sim: SimulatedBackend) -> None:
    status = build_status(reconcile_node(sim, {}, retry=RETRY), generation=None, now=T0)
    assert "observedGeneration" not in status
    assert get_condition(status["conditions"], "DevicePluginRefreshed")["reason"] == "NoChange"
    assert get_condition(status["conditions"], "Applied")["message"] == "the spec lists no GPU"


def test_mig_uuids_of_a_status_and_a_result(sim: SimulatedBackend) -> None:
    result = reconcile_node(sim, {0: layout("3g.40gb@0,3g.40gb@4")}, retry=RETRY)
    status = build_status(result, generation=1, now=T0)
    assert mig_uuids(status) == result_mig_uuids(result) and len(mig_uuids(status)) == 2
    assert mig_uuids(None) == frozenset()


def test_error_status_keeps_the_gpu_report(sim: SimulatedBackend) -> None:
    previous = build_status(reconcile_node(sim, {0: layout("1g.10gb@0")}, retry=RETRY), generation=1, now=T0)
    status = build_error_status(
        generation=2, reason="InvalidSpec", message="spec.gpus: must be a list", now=T0, previous=previous
    )
    assert status["phase"] == "Error" and status["observedGeneration"] == 2
    assert status["gpus"] == previous["gpus"] and status["lastAppliedTime"] == previous["lastAppliedTime"]
    assert get_condition(status["conditions"], "Applied")["reason"] == "InvalidSpec"
    bare = build_error_status(generation=None, reason="Fatal", message="no", now=T0)
    assert "observedGeneration" not in bare and "gpus" not in bare


def test_what_the_device_plugin_withholds_is_reported_unhealthy(sim: SimulatedBackend) -> None:
    """The device plugin's XID marks reach the status, where the operator plans around them: a
    marked GPU and all its instances, and a marked MIG device's instance alone."""
    from cdmo.node_agent.advertise import Unhealthy

    result = reconcile_node(sim, {0: layout("3g.40gb@0,3g.40gb@4"), 1: layout("7g.80gb@0")}, retry=RETRY)
    by_start = {i.start: i for g in result.gpus if g.index == 0 for i in g.instances}
    marked = Unhealthy(gpus=frozenset({1}), uuids=frozenset({by_start[4].uuid or ""}))
    status = build_status(result, generation=1, now=T0, unhealthy=marked)
    gpu0, gpu1 = status["gpus"]
    assert "healthy" not in gpu0 and gpu1["healthy"] is False
    assert [i.get("healthy", True) for i in gpu0["instances"]] == [True, False]
    assert [i.get("healthy", True) for i in gpu1["instances"]] == [False]
    plain = build_status(result, generation=1, now=T0)
    assert all("healthy" not in g for g in plain["gpus"])
    assert all("healthy" not in i for g in plain["gpus"] for i in g["instances"])
