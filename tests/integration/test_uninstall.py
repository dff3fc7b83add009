"""Uninstalling in the order docs/disabling.md gives (issue 14), against the API double, which
honours finalizers as an API server does: a MigLayout with the operator's finalizer is only
marked for deletion until the operator lets go of it.

Order that finishes: unlabel the node, then delete its MigLayout while the operator runs, then
remove the operator. The other orders are shown too: a MigLayout deleted while its node is
still labelled comes back, and one deleted after the operator is gone stays Terminating until
an operator runs again.
"""

from __future__ import annotations

from typing import Any

from cdmo.api import PARTITIONING_LABEL_KEY
from cdmo.operator.handlers import FINALIZER
from tests.harness.e2e import Harness
from tests.harness.kube_api import Store

PLURAL = "miglayouts"
NODE = "gpu-node-1"


def _miglayout(store: Store) -> dict[str, Any] | None:
    return store.get(store.type_of(PLURAL), None, NODE)


def _wait_finalized(harness: Harness) -> dict[str, Any]:
    """The node's MigLayout, once the operator has put its finalizer on it."""

    def check(store: Store) -> dict[str, Any] | None:
        ml = _miglayout(store)
        return ml if ml and FINALIZER in (ml["metadata"].get("finalizers") or []) else None

    found: dict[str, Any] = harness.api.wait_for(check, 30, f"no MigLayout {NODE} with {FINALIZER}")
    return found


def _wait_gone(harness: Harness) -> None:
    harness.api.wait_for(lambda store: _miglayout(store) is None, 30, f"MigLayout {NODE} is still there")


def test_the_documented_order_finishes(harness: Harness) -> None:
    harness.add_node(NODE, ("h100-80gb",))
    harness.start_operator()
    _wait_finalized(harness)

    # 1-2. Unlabel: the agent's DaemonSet pod leaves the node.
    harness.api.patch("nodes", NODE, {"metadata": {"labels": {PARTITIONING_LABEL_KEY: None}}})
    harness.stop_agent(NODE)
    # 3. Delete the MigLayout while the operator runs: it removes its finalizer, the object goes.
    harness.api.delete(PLURAL, NODE)
    _wait_gone(harness)
    # 4. Remove the operator: nothing is left behind for the CRD's deletion to wait on.
    harness.stop_operator()
    assert harness.api.list(PLURAL) == []


def test_a_miglayout_of_a_labelled_node_comes_back(harness: Harness) -> None:
    # Why the label goes first: the operator makes a MigLayout for a labelled node that has
    # none when it sees the node change, and a real node changes often (the kubelet's status
    # updates); the double has no kubelet heartbeat, so the test writes one.
    harness.add_node(NODE, ("h100-80gb",))
    harness.start_operator()
    first = _wait_finalized(harness)
    harness.api.delete(PLURAL, NODE)
    _wait_gone(harness)
    harness.api.patch("nodes", NODE, {"metadata": {"annotations": {"example.com/heartbeat": "1"}}})

    def recreated(store: Store) -> bool:
        ml = _miglayout(store)
        return bool(ml and ml["metadata"]["uid"] != first["metadata"]["uid"])

    harness.api.wait_for(recreated, 30, "the operator did not make a new MigLayout for the labelled node")


def test_uninstalling_first_leaves_miglayouts_terminating_until_an_operator_runs(harness: Harness) -> None:
    harness.add_node(NODE, ("h100-80gb",))
    harness.start_operator()
    _wait_finalized(harness)
    harness.api.patch("nodes", NODE, {"metadata": {"labels": {PARTITIONING_LABEL_KEY: None}}})
    harness.stop_agent(NODE)
    harness.stop_operator()  # `helm uninstall` before deleting the MigLayouts

    harness.api.delete(PLURAL, NODE)
    stuck = harness.api.get(PLURAL, NODE)
    assert stuck is not None and stuck["metadata"].get("deletionTimestamp")
    assert FINALIZER in stuck["metadata"]["finalizers"]

    # The way out docs/disabling.md gives: run the operator again; it lets go at once.
    harness.start_operator()
    _wait_gone(harness)
