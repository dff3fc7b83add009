"""External modes: the reconfiguring taint is on from before the first destroy until the refresh."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from cdmo.config import AgentConfig
from cdmo.errors import InvalidInput
from cdmo.mig.layouts import Instance
from cdmo.node_agent.agent import Agent
from cdmo.node_agent.kube import KubeError
from cdmo.node_agent.refresh import RefreshOutcome
from cdmo.node_agent.simulated import SimulatedBackend, SimulatedNode
from cdmo.node_agent.taint import ReconfiguringTaint, build_taints, parse_taint
from tests.node.conftest import RETRY
from tests.node.test_agent import NODE, NOW, FakeKube, FakePodResources

KEY = "cdmo.clear.ml/reconfiguring"


def test_parse_and_build_taints() -> None:
    assert parse_taint("cdmo.clear.ml/reconfiguring:NoSchedule") == (KEY, "NoSchedule")
    with pytest.raises(InvalidInput, match="KEY:EFFECT"):
        parse_taint("reconfiguring")
    other = {"key": "gpu", "value": "x", "effect": "NoSchedule"}
    added = build_taints([other], KEY, "NoSchedule", True)
    assert added == [other, {"key": KEY, "value": "true", "effect": "NoSchedule"}]
    assert build_taints(added, KEY, "NoSchedule", True) is None
    assert build_taints(added, KEY, "NoSchedule", False) == [other]
    assert build_taints([other], KEY, "NoSchedule", False) is None


class TaintKube(FakeKube):
    """FakeKube plus a Node whose taints are recorded with what the GPUs held at each write."""

    def __init__(self, node: SimulatedNode) -> None:
        super().__init__()
        self.sim = node
        self.taints: list[dict[str, Any]] = [{"key": "keep", "effect": "NoSchedule"}]
        self.node_rv = 1
        self.writes: list[tuple[bool, list[str]]] = []
        self.conflicts = 0

    def read_node(self, name: str) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "resourceVersion": str(self.node_rv)},
            "spec": {"taints": list(self.taints)},
        }

    def patch_node_taints(
        self, name: str, taints: list[dict[str, Any]], resource_version: str | None
    ) -> None:
        if self.conflicts:
            self.conflicts -= 1
            self.node_rv += 1
            raise KubeError("patch the taints of node: Kubernetes API answered 409 Conflict")
        assert resource_version == str(self.node_rv)
        self.node_rv += 1
        self.taints = taints
        held = sorted(f"{gi.profile.name}@{gi.start}" for gi in self.sim.gpus[0].gis.values())
        self.writes.append((any(t["key"] == KEY for t in taints), held))


class OrderRefresher:
    strategy = "sighup"

    def __init__(self, kube: TaintKube, ok: bool = True) -> None:
        self.kube, self.ok, self.tainted_at_refresh = kube, ok, None

    def refresh(self, stop: threading.Event) -> RefreshOutcome:
        self.tainted_at_refresh = any(t["key"] == KEY for t in self.kube.taints)
        return RefreshOutcome(self.ok, "SignalSent" if self.ok else "DevicePluginNotFound", "x")


def make(node: SimulatedNode, kube: TaintKube, refresher: OrderRefresher) -> Agent:
    config = AgentConfig(
        node_name=NODE, backend="simulated", refresh_strategy="sighup", backoff_initial_seconds=0.01
    )
    return Agent(
        config,
        SimulatedBackend(node),
        kube,
        refresher,
        pod_resources=FakePodResources(),
        retry=RETRY,
        clock=lambda: NOW,
        advertiser=ReconfiguringTaint(kube, NODE, config.reconfiguring_taint),
    )


def test_taint_is_set_before_the_first_destroy_and_lifted_after_the_refresh() -> None:
    node = SimulatedNode.from_models(["h100-80gb"], seed="taint")
    kube = TaintKube(node)
    kube.set_layout({0: (Instance("3g.40gb", 0), Instance("3g.40gb", 4))})
    refresher = OrderRefresher(kube)
    agent = make(node, kube, refresher)
    agent.sync_once()  # creates only: nothing destroyed, no taint written
    assert kube.writes == []
    kube.set_layout({0: (Instance("7g.80gb", 0),)})
    kube.conflicts = 1  # someone changed the node meanwhile: read again, never overwrite
    agent.sync_once()
    # the taint went on while both 3g instances still existed, and came off after the refresh
    assert kube.writes[0] == (True, ["3g.40gb@0", "3g.40gb@4"])
    assert refresher.tainted_at_refresh is True
    assert kube.writes[-1] == (False, ["7g.80gb@0"])
    assert kube.taints == [{"key": "keep", "effect": "NoSchedule"}]


def test_taint_stays_while_the_refresh_fails() -> None:
    node = SimulatedNode.from_models(["h100-80gb"], seed="taint2")
    kube = TaintKube(node)
    kube.set_layout({0: (Instance("3g.40gb", 0),)})
    agent = make(node, kube, OrderRefresher(kube))
    agent.sync_once()
    kube.set_layout({0: (Instance("7g.80gb", 0),)})
    agent.refresher = OrderRefresher(kube, ok=False)
    agent.sync_once()
    assert any(t["key"] == KEY for t in kube.taints)
    agent.refresher = OrderRefresher(kube, ok=True)
    agent.sync_once()  # level-triggered: the next pass refreshes again and lifts it
    assert not any(t["key"] == KEY for t in kube.taints)


class BrokenKube:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.reads = 0

    def read_node(self, name: str) -> dict[str, Any]:
        self.reads += 1
        raise self.exc

    def patch_node_taints(
        self, name: str, taints: list[dict[str, Any]], resource_version: str | None
    ) -> None:
        raise AssertionError("never reached")


def test_a_missing_node_is_skipped_and_a_failed_lift_waits_for_the_next_pass() -> None:
    from cdmo.node_agent.kube import NotFound

    gone = BrokenKube(NotFound("read node gpu-1: Kubernetes API answered 404"))
    taint = ReconfiguringTaint(gone, NODE, "cdmo.clear.ml/reconfiguring:NoSchedule")
    taint.withdraw(["MIG-x"])  # nothing to taint: no error, no retry
    assert gone.reads == 1
    down = BrokenKube(KubeError("read node gpu-1: connection refused"))
    taint = ReconfiguringTaint(down, NODE, "cdmo.clear.ml/reconfiguring:NoSchedule")
    taint.settle()  # logged, not raised (bounded retries first)
    assert down.reads == 4
    with pytest.raises(KubeError):
        taint.withdraw(["MIG-x"])  # a taint that cannot be set fails the pass before any destroy
