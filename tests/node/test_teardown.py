"""Teardown: every free instance goes, none while one is in use; MIG off after."""

from __future__ import annotations

from cdmo.node_agent.inuse import build_in_use
from cdmo.node_agent.podresources.client import PodDevices
from cdmo.node_agent.reconcile import reconcile_node
from cdmo.node_agent.simulated import SimulatedBackend, SimulatedNode
from cdmo.node_agent.teardown import teardown_node
from tests.node.conftest import RETRY, layout


def test_teardown_destroys_everything_and_switches_mig_off(sim: SimulatedBackend) -> None:
    reconcile_node(sim, {0: layout("3g.40gb@0,3g.40gb@4"), 1: layout("7g.80gb@0")}, retry=RETRY)
    result = teardown_node(sim, disable_mig=True, retry=RETRY)
    assert result.ok and len(result.destroyed) == 3
    assert [(m.gpu, m.current, m.reset_needed) for m in result.mig] == [(0, False, False), (1, False, False)]
    assert [g.mig_current for g in sim.list_gpus()] == [False, False]


def test_teardown_refuses_while_an_instance_is_in_use(sim: SimulatedBackend, node: SimulatedNode) -> None:
    reconcile_node(sim, {0: layout("1g.10gb@0,1g.10gb@1"), 1: layout("4g.40gb@0")}, retry=RETRY)
    held = sim.list_instances(1)[0]
    busy = sim.list_instances(0)[1]
    node.add_process(busy.uuid, 808)
    in_use = build_in_use([PodDevices("ml", "train", "main", "nvidia.com/mig-4g.40gb", (held.uuid or "",))])
    result = teardown_node(sim, in_use, disable_mig=True, retry=RETRY)
    assert result.refused and result.destroyed == () and result.mig == ()
    messages = sorted(b.message for b in result.holders)
    assert messages == [
        f"GPU 0: 1g.10gb@1 ({busy.uuid}) is held by process 808",
        f"GPU 1: 4g.40gb@0 ({held.uuid}) is held by pod ml/train",
    ]
    assert len(sim.list_instances(0)) == 2 and len(sim.list_instances(1)) == 1


def test_teardown_on_ampere_says_a_reset_is_needed(make_node) -> None:
    backend = SimulatedBackend(make_node("a100-40gb"))
    reconcile_node(backend, {0: layout("7g.40gb@0")}, retry=RETRY)
    result = teardown_node(backend, disable_mig=True, retry=RETRY)
    [change] = result.mig
    assert change.reset_needed and change.pending is False and change.current is True


def test_teardown_leaves_mig_on_without_the_flag(sim: SimulatedBackend) -> None:
    reconcile_node(sim, {0: layout("1g.10gb@0")}, retry=RETRY)
    result = teardown_node(sim, retry=RETRY)
    assert result.ok and result.mig == () and sim.list_instances(0) == []
    assert all(g.mig_current for g in sim.list_gpus())
