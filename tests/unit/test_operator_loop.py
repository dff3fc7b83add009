"""One planning pass against a fake writer, and the batch window (cdmo.operator.loop)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from cdmo.config import OperatorConfig
from cdmo.operator.events import PodEvent
from cdmo.operator.loop import Indexes, PlanningLoop
from cdmo.operator.metrics import OperatorMetrics
from cdmo.operator.snapshot import summarize_miglayout

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
CONFIG = OperatorConfig(batch_idle_seconds=0.05, batch_max_seconds=1.0, resync_seconds=30.0)


class FakeWriter:
    def __init__(self, conflict: set[str] | None = None) -> None:
        self.created: list[str] = []
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.owned: list[tuple[str, str]] = []
        self.conflict = conflict or set()

    async def create_miglayout(self, node_name: str, node_uid: str = "") -> bool:
        self.created.append(node_name)
        return True

    async def set_owner(self, node_name: str, node_uid: str, resource_version: str) -> bool:
        self.owned.append((node_name, node_uid))
        return True

    async def patch_spec(self, node_name: str, body: dict[str, Any]) -> dict[str, Any] | None:
        if node_name in self.conflict:
            return None
        self.patches.append((node_name, body))
        return {"metadata": {"generation": 3}}


def _node(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "labels": {"cdmo.clear.ml/gpu-partitioning": "mig"},
        "taints": [],
        "unschedulable": False,
        "product": "NVIDIA-H100-80GB-HBM3",
        "allocatable": {},
    }


def _ml(name: str, instances: list[dict[str, Any]], *, spec: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": name, "uid": f"u-{name}", "resourceVersion": "7", "generation": 2},
        "spec": {
            "gpus": [
                {"index": 0, "instances": [{"profile": i["profile"], "start": i["start"]} for i in instances]}
            ]
        }
        if spec
        else {},
        "status": {
            "observedGeneration": 2,
            "gpus": [{"index": 0, "model": "h100-80gb", "migEnabled": True, "instances": instances}],
        },
    }
    return summarize_miglayout(body)


def _pod(name: str, resource: str, count: int = 1) -> dict[str, Any]:
    return {
        "key": f"default/{name}",
        "name": name,
        "namespace": "default",
        "uid": f"u-{name}",
        "created": "2026-01-01T11:00:00Z",
        "node": "",
        "phase": "Pending",
        "unschedulable": True,
        "requests": {resource: count},
        "priority": 0,
        "nodeSelector": {},
        "tolerations": [],
        "affinity": {},
    }


def _loop(writer: FakeWriter) -> tuple[PlanningLoop, list[PodEvent]]:
    posted: list[PodEvent] = []
    loop = PlanningLoop(CONFIG, writer, OperatorMetrics(), post_event=posted.append, clock=lambda: NOW)
    return loop, posted


async def test_a_pass_patches_the_changed_node_and_tells_the_pod() -> None:
    writer = FakeWriter()
    loop, posted = _loop(writer)
    idx = Indexes(
        nodes={"n1": _node("n1")},
        miglayouts={"n1": _ml("n1", [])},
        pending=(_pod("p", "nvidia.com/mig-1g.10gb"),),
    )
    result = await loop.run_pass(idx)
    assert result.patched == ["n1"]
    (node, body) = writer.patches[0]
    assert node == "n1" and body["metadata"]["resourceVersion"] == "7"
    assert [(e.type, e.reason) for e in posted] == [("Normal", "PlanPublished"), ("Normal", "Repartitioning")]
    assert posted[1].ref["metadata"]["name"] == "p"
    assert loop.metrics.value("cdmo_plans_total") == 1
    assert loop.metrics.value("cdmo_nodes_changed_total") == 1
    assert loop.metrics.value("cdmo_pending_mig_pods", resource="nvidia.com/mig-1g.10gb") == 1


async def test_a_conflict_is_counted_and_planned_again() -> None:
    writer = FakeWriter(conflict={"n1"})
    loop, posted = _loop(writer)
    idx = Indexes(
        nodes={"n1": _node("n1")},
        miglayouts={"n1": _ml("n1", [])},
        pending=(_pod("p", "nvidia.com/mig-1g.10gb"),),
    )
    result = await loop.run_pass(idx)
    assert result.conflicts == ["n1"] and result.patched == []
    assert loop.metrics.value("cdmo_spec_conflicts_total") == 1
    assert posted == []  # nothing was published, so nothing to announce


async def test_missing_miglayouts_are_created_and_bare_ones_adopted() -> None:
    writer = FakeWriter()
    loop, _ = _loop(writer)
    bare = _ml("n2", [{"profile": "3g.40gb", "start": 0, "allocated": False}], spec=False)
    result = await loop.run_pass(
        Indexes(nodes={"n1": _node("n1"), "n2": _node("n2")}, miglayouts={"n2": bare})
    )
    assert writer.created == ["n1"]
    assert result.adopted == ["n2"]
    assert writer.patches[0][1]["spec"] == {
        "gpus": [{"index": 0, "instances": [{"profile": "3g.40gb", "start": 0}]}]
    }


async def test_unservable_pod_warned_once_per_reason() -> None:
    writer = FakeWriter()
    loop, posted = _loop(writer)
    idx = Indexes(
        nodes={"n1": _node("n1")},
        miglayouts={"n1": _ml("n1", [])},
        pending=(_pod("huge", "nvidia.com/mig-7g.80gb", 2), _pod("typo", "nvidia.com/mig-banana")),
    )
    await loop.run_pass(idx)
    await loop.run_pass(idx)
    warnings = [(e.ref["metadata"]["name"], e.reason) for e in posted if e.type == "Warning"]
    assert sorted(warnings) == [("huge", "NoFittingGpu"), ("typo", "UnknownProfile")]
    assert loop.metrics.value("cdmo_unsatisfied_pods", code="UnknownProfile") == 1


async def test_a_burst_of_changes_makes_one_pass() -> None:
    writer = FakeWriter()
    loop, _ = _loop(writer)
    stopped: list[bool] = []

    class Stop:
        def __bool__(self) -> bool:
            return bool(stopped)

    idx = Indexes(nodes={"n1": _node("n1")}, miglayouts={"n1": _ml("n1", [])})
    task = asyncio.create_task(loop.run(Stop(), lambda: idx))
    for _ in range(20):
        loop.nudge()  # all within the idle window: one batch
    async with asyncio.timeout(10):
        while loop.passes < 1:
            await asyncio.sleep(0.01)
    await asyncio.sleep(CONFIG.batch_idle_seconds * 4)
    assert loop.passes == 1
    stopped.append(True)
    task.cancel()


async def test_the_max_window_bounds_an_endless_stream_of_changes() -> None:
    config = OperatorConfig(batch_idle_seconds=60.0, batch_max_seconds=0.1, resync_seconds=60.0)
    writer = FakeWriter()
    loop = PlanningLoop(config, writer, OperatorMetrics(), post_event=lambda e: None, clock=lambda: NOW)
    idx = Indexes(nodes={"n1": _node("n1")}, miglayouts={"n1": _ml("n1", [])})
    task = asyncio.create_task(loop.run(False, lambda: idx))
    try:
        # changes keep coming faster than the idle window: only batch_max can end the batch
        async with asyncio.timeout(10):
            while loop.passes < 1:
                loop.nudge()
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert loop.passes >= 1


async def test_absurd_counts_are_told_why_and_the_other_pods_are_served() -> None:
    # Issue 10: one pod asking 10^12 devices stopped every planning pass; 2^70 raised OverflowError.
    from cdmo.operator.demand import summarize_pod

    def body(name: str, count: str) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "namespace": "default", "uid": f"u-{name}"},
            "spec": {
                "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/mig-1g.10gb": count}}}]
            },
            "status": {
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}],
            },
        }

    writer = FakeWriter()
    loop, posted = _loop(writer)
    pods = tuple(
        summarize_pod(body(n, c))
        for n, c in (("ok", "1"), ("trillion", "1000000000000"), ("beyond", str(2**70)))
    )
    result = await loop.run_pass(
        Indexes(nodes={"n1": _node("n1")}, miglayouts={"n1": _ml("n1", [])}, pending=pods)
    )
    assert result.patched == ["n1"]
    by_pod = {
        e.ref["metadata"]["name"]: (e.type, e.reason, e.message) for e in posted if e.ref.get("kind") == "Pod"
    }
    assert by_pod["ok"][:2] == ("Normal", "Repartitioning")
    assert by_pod["trillion"][:2] == ("Warning", "TooManyDevices")
    assert by_pod["beyond"][:2] == ("Warning", "InvalidCount")
    assert "more than Kubernetes can count" in by_pod["beyond"][2]


def test_stale_reports_are_forgotten_when_the_generation_moves_or_the_node_goes() -> None:
    from cdmo.operator.loop import prune_stale_reported
    from cdmo.operator.stale import NodeState

    reported = {("a", 3), ("a", 2), ("b", 1), ("gone", 7)}
    miglayouts = {"a": {"generation": 3}, "b": {"generation": 2}}
    states = {"a": NodeState.STALE, "b": NodeState.STALE}
    # a: only its current generation; b: its generation moved on; gone: no MigLayout any more
    assert prune_stale_reported(reported, miglayouts, states) == {("a", 3)}
    # a node that is no longer Stale keeps nothing: a later Stale spell is reported again
    assert prune_stale_reported({("a", 3)}, miglayouts, {"a": NodeState.READY}) == set()


async def test_a_report_contradicting_the_spec_keeps_the_node_out_unless_writers_are_verified() -> None:
    forged = {**_ml("n1", []), "phase": "Ready"}
    forged["statusGpus"] = [
        {
            "index": 0,
            "model": "h100-80gb",
            "migEnabled": True,
            "instances": [{"profile": "1g.10gb", "start": 0}],
        }
    ]
    idx = Indexes(
        nodes={"n1": _node("n1")}, miglayouts={"n1": forged}, pending=(_pod("p", "nvidia.com/mig-1g.10gb"),)
    )
    writer = FakeWriter()
    loop, posted = _loop(writer)
    await loop.run_pass(idx)
    await loop.run_pass(idx)
    assert writer.patches == []
    # told once, not on every pass
    assert [e.reason for e in posted].count("ReportContradictsSpec") == 1
    # where the admission policy enforces who writes status, the node's own agent wrote it
    trusting = PlanningLoop(
        OperatorConfig(batch_idle_seconds=0.05, status_writers_verified=True),
        (writer := FakeWriter()),
        OperatorMetrics(),
        post_event=lambda _: None,
        clock=lambda: NOW,
    )
    result = await trusting.run_pass(idx)
    assert result.planned and "ReportContradictsSpec" not in [e.reason for e in result.events]


async def test_pods_that_took_prewarmed_instances_make_the_loop_refill_them() -> None:
    # No pod waits: the one that asked took its pre-warmed instance at once and is only ever seen
    # bound. It still counts as demand (at its creation time), so the pass plans a new free 1g.
    writer = FakeWriter()
    config = OperatorConfig(batch_idle_seconds=0.05, defrag_ops_per_hour=0)
    loop = PlanningLoop(config, writer, OperatorMetrics(), post_event=lambda e: None, clock=lambda: NOW)
    bound = {**_pod("b", "nvidia.com/mig-1g.10gb"), "node": "n1", "created": "2026-01-01T11:58:00Z"}
    used = [{"profile": "1g.10gb", "start": 0, "allocated": True, "pod": "default/b"}]
    idx = Indexes(nodes={"n1": _node("n1")}, miglayouts={"n1": _ml("n1", used)}, bound=(bound,))
    result = await loop.run_pass(idx)
    assert result.planned and result.patched == ["n1"]
    instances = writer.patches[0][1]["spec"]["gpus"][0]["instances"]
    assert sorted((i["profile"], i["start"]) for i in instances)[0] == ("1g.10gb", 0)
    assert len(instances) == 2  # the used one, and one made ready
    # Ready now: the next pass has nothing to do.
    ready = [*used, {"profile": "1g.10gb", "start": 1, "allocated": False}]
    writer.patches.clear()
    result = await loop.run_pass(
        Indexes(nodes={"n1": _node("n1")}, miglayouts={"n1": _ml("n1", ready)}, bound=(bound,))
    )
    assert not result.planned and writer.patches == []
    # Taken again by a pod seen before: no new ask, no refill (the next new pod triggers one).
    writer.patches.clear()
    result = await loop.run_pass(
        Indexes(nodes={"n1": _node("n1")}, miglayouts={"n1": _ml("n1", used)}, bound=(bound,))
    )
    assert not result.planned
