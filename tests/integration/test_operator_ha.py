"""HA by kopf peering: of two replicas, one plans; when it goes, the other takes over."""

from __future__ import annotations

from tests.harness.e2e import Harness
from tests.harness.operator import OperatorRunner


def test_two_replicas_one_active_then_failover(harness: Harness) -> None:
    harness.api.create(
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "cdmo"}}
    )
    harness.add_node("gpu-node-1")
    active = OperatorRunner(
        harness.api.url,
        harness.config,
        standalone=False,
        peering_name="cdmo",
        priority=100,
        token=harness.operator_token,
    ).start()
    standby = OperatorRunner(
        harness.api.url,
        harness.config,
        standalone=False,
        peering_name="cdmo",
        priority=50,
        token=harness.operator_token,
    ).start()
    try:
        first = harness.submit("first", {"1g.10gb": 1})
        harness.wait_running([first])
        assert active.context is not None and standby.context is not None
        assert active.context.loop.passes > 0
        assert standby.context.loop.passes == 0  # paused by peering: it never planned

        active.stop()  # a graceful exit withdraws it from the peering object
        second = harness.submit("second", {"2g.20gb": 1})
        harness.wait_running([second], timeout=60)
        assert standby.context.loop.passes > 0
    finally:
        for runner in (active, standby):
            if runner.alive:
                runner.stop()
