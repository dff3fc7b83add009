"""End to end: the real kopf operator and real node agents on simulated GPUs, against the API double.

Every test also checks (in the ``harness`` fixture) that no pod ever lost a device it held:
each destroy on a simulated GPU is checked against the kubelet's allocations, and every
Running pod's UUIDs are checked after each change in the API.
"""

from __future__ import annotations

import dataclasses
import json

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from cdmo.mig.layouts import Instance
from tests.harness.e2e import Harness
from tests.harness.kube_api import Store

GROUP, VERSION, PLURAL = "cdmo.clear.ml", "v1alpha1", "miglayouts"
#: ClearML queues on H100 80GB (cdmo.mig.resources.queue_profile)
SLICE = {"slice-1": "1g.10gb", "slice-2": "2g.20gb", "slice-4": "4g.40gb", "slice-7": "7g.80gb"}


def _generation(harness: Harness, node: str) -> int:
    ml = harness.api.get(PLURAL, node)
    assert ml is not None
    return int(ml["metadata"]["generation"])


def _wait_ready(harness: Harness, *nodes: str, timeout: float = 30.0) -> None:
    """Each node's MigLayout has a spec (adopted) that its agent has applied."""

    def ready(store: Store) -> bool:
        rtype = store.type_of(PLURAL)
        for name in nodes:
            ml = store.get(rtype, None, name)
            if ml is None or "gpus" not in (ml.get("spec") or {}):
                return False
            status = ml.get("status") or {}
            if (
                status.get("observedGeneration") != ml["metadata"]["generation"]
                or status.get("phase") != "Ready"
            ):
                return False
        return True

    harness.api.wait_for(ready, timeout, f"MigLayouts of {nodes} not Ready")


def test_clearml_queues_pods_arriving_over_time_all_run(harness: Harness) -> None:
    for name in ("gpu-node-1", "gpu-node-2", "gpu-node-3"):
        harness.add_node(name, ("h100-80gb", "h100-80gb"))
    harness.start_operator()

    waves = [
        [("a1", "slice-1"), ("a2", "slice-1"), ("a3", "slice-2"), ("a4", "slice-4")],
        [("b1", "slice-7"), ("b2", "slice-2"), ("b3", "slice-1")],
        [("c1", "slice-4"), ("c2", "slice-4"), ("c3", "slice-1"), ("c4", "slice-7")],
        [("d1", "slice-7"), ("d2", "slice-2")],
    ]
    # jobs that finish after each wave: their instances are free for reuse or reshaping
    finished = {0: ["a2", "a4"], 2: ["c2", "c3"]}
    running: list[str] = []
    for i, wave in enumerate(waves):
        keys = [harness.submit(name, {SLICE[queue]: 1}, labels={"queue": queue}) for name, queue in wave]
        harness.wait_running(keys, timeout=60)
        running += keys
        for name in finished.get(i, []):
            harness.api.delete("pods", name, "default")
            running.remove(f"default/{name}")
    # every pod that ran still runs, on the device it was first given
    for key in running:
        pod = harness.pod(key)
        assert pod is not None and pod["status"]["phase"] == "Running", key
    assert harness.events(reason="Repartitioning"), "no pod was served by repartitioning"
    assert harness.cluster.check_running_pods_keep_devices() == []


def test_label_removed_node_is_never_changed_again(harness: Harness) -> None:
    harness.add_node("gpu-node-1")
    harness.add_node("gpu-node-2")
    harness.start_operator()
    first = harness.submit("first", {"3g.40gb": 1})
    harness.wait_running([first])
    _wait_ready(harness, "gpu-node-1", "gpu-node-2")

    node = next(n for n in ("gpu-node-1", "gpu-node-2") if harness.layout(n)[0])
    other = "gpu-node-2" if node == "gpu-node-1" else "gpu-node-1"
    before_gen, before_layout = _generation(harness, node), harness.layout(node)
    harness.api.patch("nodes", node, {"metadata": {"labels": {"cdmo.clear.ml/gpu-partitioning": None}}})

    # 3g.40gb@0 of the same GPU would be the obvious place on the unlabelled node
    later = [harness.submit(f"later-{i}", {"3g.40gb": 1}) for i in range(2)]
    harness.wait_running(later)
    assert {harness.pod(k)["spec"]["nodeName"] for k in later} == {other}  # type: ignore[index]
    assert _generation(harness, node) == before_gen
    assert harness.layout(node) == before_layout
    ml = harness.api.get(PLURAL, node)
    assert ml is not None  # kept: its status still tells what the GPUs hold


def test_agent_down_on_one_node_others_keep_being_served(harness: Harness) -> None:
    harness.config = dataclasses.replace(harness.config, stale_timeout_seconds=15.0)
    harness.add_node("gpu-node-1")
    harness.add_node("gpu-node-2")
    harness.start_operator()
    _wait_ready(harness, "gpu-node-1", "gpu-node-2")
    harness.stop_agent("gpu-node-1")

    # only gpu-node-1 may take this one: its plan waits on the dead agent
    pinned = harness.submit("pinned", {"2g.20gb": 1}, node_selector={"kubernetes.io/hostname": "gpu-node-1"})
    harness.wait_event(pinned, "Repartitioning")
    assert _generation(harness, "gpu-node-1") > _observed(harness, "gpu-node-1")

    # the other node is not held back meanwhile
    others = [harness.submit(f"job-{i}", {"2g.20gb": 1}) for i in range(2)]
    harness.wait_running(others)
    assert {harness.pod(k)["spec"]["nodeName"] for k in others} == {"gpu-node-2"}  # type: ignore[index]
    assert harness.events("gpu-node-1", "AgentStale") == []  # all that happened before the timeout
    # meanwhile the pinned pod waits for its node's plan: it is not planned again (and found unservable)
    assert harness.operator is not None and harness.operator.context is not None
    assert harness.operator.context.metrics.total("cdmo_unsatisfied_pods") == 0

    # past the timeout the node is reported Stale; when its agent is back, it is served again
    harness.wait_event("gpu-node-1", "AgentStale")
    harness.start_agent("gpu-node-1")
    harness.wait_running([pinned])
    assert harness.pod(pinned)["spec"]["nodeName"] == "gpu-node-1"  # type: ignore[index]


def _observed(harness: Harness, node: str) -> int:
    ml = harness.api.get(PLURAL, node)
    assert ml is not None
    return int((ml.get("status") or {}).get("observedGeneration") or 0)


def test_operator_restarted_mid_flight_converges(harness: Harness) -> None:
    harness.add_node("gpu-node-1")
    harness.add_node("gpu-node-2")
    harness.start_operator()
    first = [harness.submit(f"early-{i}", {"1g.10gb": 1}) for i in range(3)]
    harness.wait_event(first[0], "Repartitioning")
    harness.stop_operator()  # mid-flight: specs written, agents still applying
    late = [harness.submit(f"late-{i}", {"2g.20gb": 1}) for i in range(2)]
    harness.start_operator()
    harness.wait_running(first + late, timeout=60)
    for name in ("gpu-node-1", "gpu-node-2"):
        ml = harness.api.get(PLURAL, name)
        assert ml is not None and ml["status"]["phase"] == "Ready"
    # the restarted operator waited for the plans in flight instead of planning those pods
    # again elsewhere: exactly one instance per pod exists, none left over
    instances = [
        i for n in ("gpu-node-1", "gpu-node-2") for layout in harness.layout(n).values() for i in layout
    ]
    assert len(instances) == len(first + late), instances


@pytest.mark.parametrize(
    ("requests", "code"),
    [
        ({"nvidia.com/mig-banana": 1}, "UnknownProfile"),
        ({"nvidia.com/mig-5g.55gb": 1}, "UnknownProfile"),
        ({"7g.80gb": 2}, "NoFittingGpu"),
    ],
    ids=["not-a-profile-name", "no-such-profile", "more-than-any-node-holds"],
)
def test_unservable_pod_gets_one_warning_and_operator_keeps_running(
    harness: Harness, requests: dict[str, int], code: str
) -> None:
    harness.add_node("gpu-node-1")
    harness.start_operator()
    bad = harness.submit("bad", requests)
    ev = harness.wait_event(bad, code)
    assert ev["type"] == "Warning" and ev["message"]
    # the operator goes on serving others, and does not repeat the same warning
    good = harness.submit("good", {"1g.10gb": 1})
    harness.wait_running([good])
    assert harness.operator is not None and harness.operator.alive
    passes = harness.operator.context.loop.passes  # type: ignore[union-attr]
    harness.api.wait_for(lambda _: harness.operator.context.loop.passes >= passes + 2, 30)  # type: ignore[union-attr]
    warnings = [e for e in harness.events(bad) if e["type"] == "Warning"]
    assert len(warnings) == 1, warnings


def test_invalid_profile_in_a_miglayout_spec_is_refused_by_the_crd(harness: Harness) -> None:
    harness.add_node("gpu-node-1")
    harness.start_operator()
    _wait_ready(harness, "gpu-node-1")
    client = harness.api_client()  # as the operator: the one writer of spec the policy allows
    try:
        custom = kubernetes.client.CustomObjectsApi(client)
        with pytest.raises(ApiException) as err:
            custom.patch_cluster_custom_object(
                GROUP,
                VERSION,
                PLURAL,
                "gpu-node-1",
                {"spec": {"gpus": [{"index": 0, "instances": [{"profile": "1g.10gb-big", "start": 0}]}]}},
            )
    finally:
        client.close()
    assert err.value.status == 422
    status = json.loads(err.value.body)
    assert status["reason"] == "Invalid"
    assert status["details"]["causes"][0]["field"] == "spec.gpus[0].instances[0].profile"
    assert "should match" in status["details"]["causes"][0]["message"]


def test_node_joins_with_its_current_layout_and_free_instances_are_reused(harness: Harness) -> None:
    harness.add_node("gpu-node-1", layout={0: [Instance("3g.40gb", 0), Instance("3g.40gb", 4)]})
    harness.start_operator()
    _wait_ready(harness, "gpu-node-1")
    ml = harness.api.get(PLURAL, "gpu-node-1")
    assert ml is not None
    assert ml["spec"]["gpus"] == [
        {"index": 0, "instances": [{"profile": "3g.40gb", "start": 0}, {"profile": "3g.40gb", "start": 4}]}
    ]
    pod = harness.submit("fits-as-is", {"3g.40gb": 1})
    harness.wait_running([pod])
    assert harness.layout("gpu-node-1") == {0: ["3g.40gb@0", "3g.40gb@4"]}
    assert harness.events(pod, "Repartitioning") == []


def test_operator_survives_dropped_watches_and_410_gone() -> None:
    # rare bookmarks, so that kopf's pod watch stays at the version of the last pod event
    harness = Harness(bookmark_interval=60.0)
    try:
        harness.add_node("gpu-node-1")
        harness.start_operator()
        first = harness.submit("first", {"1g.10gb": 1})
        harness.wait_running([first])
        # writes kopf's pod watch does not see, etcd compaction, then every watch cut: kopf
        # resumes from a version the server no longer has, gets 410 Gone, and lists again
        harness.api.patch("nodes", "gpu-node-1", {"metadata": {"annotations": {"touch": "1"}}})
        harness.api.compact()
        assert harness.api.drop_watches() > 0
        second = harness.submit("second", {"2g.20gb": 1})
        harness.wait_running([second], timeout=60)
        expired = harness.api.server.expired_watches
        assert any(path.startswith("/api/v1/pods?") for path in expired), expired
        assert harness.cluster.violations == []
        assert harness.operator is not None and harness.operator.alive
    finally:
        harness.close()


def test_only_miglayout_deleted_while_its_node_is_labelled_is_made_again_and_planning_goes_on(
    harness: Harness,
) -> None:
    # The planning loop rides on a MigLayout's kopf daemon: with the only MigLayout gone and
    # nothing else changing, nothing would carry it until the node next changed.
    harness.add_node("gpu-node-1")
    harness.start_operator()
    _wait_ready(harness, "gpu-node-1")
    ml = harness.api.get(PLURAL, "gpu-node-1")
    assert ml is not None
    old_uid = ml["metadata"]["uid"]
    harness.api.delete(PLURAL, "gpu-node-1")

    def made_again(store: Store) -> bool:
        again = store.get(store.type_of(PLURAL), None, "gpu-node-1")
        return again is not None and again["metadata"]["uid"] != old_uid

    harness.api.wait_for(made_again, 30.0, "the deleted MigLayout of a labelled node was not made again")
    pod = harness.submit("after-delete", {"3g.40gb": 1})
    harness.wait_running([pod], timeout=60)
