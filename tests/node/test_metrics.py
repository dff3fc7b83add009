"""The agent's Prometheus metrics: what a pass counts, and the endpoint."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from cdmo.node_agent.metrics import AgentMetrics
from cdmo.node_agent.reconcile import reconcile_node
from cdmo.node_agent.refresh import RefreshOutcome
from cdmo.node_agent.simulated import SimulatedBackend, SimulatedCrash, SimulatedNode
from tests.node.conftest import RETRY, layout


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")


def test_a_pass_counts_creates_destroys_and_blocks(sim: SimulatedBackend, node: SimulatedNode) -> None:
    metrics = AgentMetrics()
    metrics.observe_pass(reconcile_node(sim, {0: layout("1g.10gb@0,1g.10gb@1")}, retry=RETRY), 0.2)
    busy = sim.list_instances(0)[0]
    node.add_process(busy.uuid, 1)
    metrics.observe_pass(
        reconcile_node(sim, {0: layout("2g.20gb@0"), 1: layout("3g.40gb@0")}, retry=RETRY), 0.3
    )
    metrics.observe_refresh("sighup", RefreshOutcome(False, "DevicePluginNotFound", "x"))
    metrics.observe_refresh("sighup", RefreshOutcome(True, "SignalSent", "x"))
    text = metrics.render().decode()
    assert sample(text, 'cdmo_agent_instances_created_total{profile="1g.10gb"}') == 2
    assert sample(text, 'cdmo_agent_instances_created_total{profile="3g.40gb"}') == 1
    assert sample(text, "cdmo_agent_blocked_gpus") == 1
    assert sample(text, 'cdmo_agent_failures_total{reason="InstanceInUse"}') == 1
    assert sample(text, "cdmo_agent_reconcile_duration_seconds_count") == 2
    assert sample(text, 'cdmo_agent_device_plugin_refreshes_total{result="ok",strategy="sighup"}') == 1
    assert (
        sample(
            text, 'cdmo_agent_device_plugin_refreshes_total{result="DevicePluginNotFound",strategy="sighup"}'
        )
        == 1
    )


def test_repairs_and_restored_mig_mode_are_counted(sim: SimulatedBackend, node: SimulatedNode) -> None:
    metrics = AgentMetrics()
    node.crash_before_next_compute_instance = True
    with pytest.raises(SimulatedCrash):
        reconcile_node(sim, {0: layout("3g.40gb@4")}, retry=RETRY)
    metrics.observe_pass(reconcile_node(sim, {0: layout("3g.40gb@4")}, retry=RETRY), 0.1)
    node.reboot()
    restore = {g.uuid for g in sim.list_gpus()}
    metrics.observe_pass(
        reconcile_node(
            sim, {0: layout("3g.40gb@4"), 1: layout("7g.80gb@0")}, restore_mig=restore, retry=RETRY
        ),
        0.1,
    )
    text = metrics.render().decode()
    assert sample(text, 'cdmo_agent_instances_repaired_total{profile="3g.40gb"}') == 1
    assert sample(text, "cdmo_agent_mig_mode_restored_total") == 2


def test_two_agents_keep_separate_metrics() -> None:
    a, b = AgentMetrics(), AgentMetrics()
    a.observe_failure("NvmlError")
    assert "NvmlError" in a.render().decode() and "NvmlError" not in b.render().decode()


def test_the_endpoint_serves_the_metrics() -> None:
    metrics = AgentMetrics()
    metrics.observe_failure("Fatal")
    server = metrics.serve(0, addr="127.0.0.1")
    try:
        port = server.server_address[1]
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'cdmo_agent_failures_total{reason="Fatal"} 1.0' in body
    finally:
        server.shutdown()
        server.server_close()


def test_the_endpoint_answers_the_liveness_probe_beside_the_metrics() -> None:
    metrics = AgentMetrics()
    why: list[str | None] = [None]
    server = metrics.serve(0, addr="127.0.0.1", health=lambda: why[0])
    try:
        port = server.server_address[1]
        url = f"http://127.0.0.1:{port}"
        assert urllib.request.urlopen(url + "/healthz", timeout=5).read() == b"ok"
        why[0] = "no reconcile pass began or ended for 1000 s; one seems stuck"
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(url + "/healthz", timeout=5)
        assert failed.value.code == 503 and b"seems stuck" in failed.value.read()
        assert b"cdmo_agent_blocked_gpus" in urllib.request.urlopen(url + "/metrics", timeout=5).read()
    finally:
        server.shutdown()
        server.server_close()
