"""The real agent and KubeClient against the HTTP Kubernetes API double (tests/harness/kube_api.py).

Skipped, with the reason printed, when the harness is not in the tree.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from cdmo.api import GROUP, PLURAL, VERSION, build_miglayout
from cdmo.cli import main
from cdmo.config import AgentConfig
from cdmo.node_agent.agent import Agent
from cdmo.node_agent.kube import KubeClient
from cdmo.node_agent.refresh import NoRefresh
from cdmo.node_agent.simulated import SimulatedBackend, SimulatedNode, load_state
from tests.node.conftest import RETRY, NoPodResources, layout

kube_api = pytest.importorskip(
    "tests.harness.kube_api", reason="the Kubernetes API double (tests/harness) is not here"
)


@pytest.fixture(scope="module")
def api() -> Iterator[Any]:
    with kube_api.KubeApiDouble() as double:
        yield double


def custom(api: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(client.ApiClient(client.Configuration(host=api.url)))


def wait_for(check: Callable[[], bool], what: str, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"waited {seconds} s for {what}")


def test_agent_applies_its_miglayout_over_http(api: Any) -> None:
    objects = custom(api)
    objects.create_cluster_custom_object(
        GROUP, VERSION, PLURAL, build_miglayout("node-a", {0: layout("4g.40gb@0")})
    )
    node = SimulatedNode.from_models(["h100-80gb"], seed="node-a")
    conf = AgentConfig(
        node_name="node-a", resync_seconds=3600, watch_timeout_seconds=30, backoff_initial_seconds=0.05
    )
    kube = KubeClient.for_host(api.url)
    agent = Agent(
        conf, SimulatedBackend(node), kube, NoRefresh(), pod_resources=NoPodResources(), retry=RETRY
    )
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()

    def status() -> dict[str, Any]:
        return objects.get_cluster_custom_object(GROUP, VERSION, PLURAL, "node-a").get("status") or {}

    try:
        wait_for(
            lambda: status().get("observedGeneration") == 1 and status().get("phase") == "Ready",
            "generation 1",
        )
        objects.patch_cluster_custom_object(
            GROUP,
            VERSION,
            PLURAL,
            "node-a",
            {"spec": build_miglayout("node-a", {0: layout("3g.40gb@0,3g.40gb@4")})["spec"]},
        )
        wait_for(
            lambda: status().get("observedGeneration") == 2 and status().get("phase") == "Ready",
            "generation 2",
        )
        assert [(i["profile"], i["start"]) for i in status()["gpus"][0]["instances"]] == [
            ("3g.40gb", 0),
            ("3g.40gb", 4),
        ]
    finally:
        stop.set()
        thread.join(timeout=10)
        kube.close()
    assert not thread.is_alive()


def test_cdmo_agent_once_from_a_kubeconfig(api: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = custom(api)
    objects.create_cluster_custom_object(
        GROUP, VERSION, PLURAL, build_miglayout("node-b", {0: layout("7g.80gb@0")})
    )
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: k, cluster: {{server: '{api.url}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("NODE_NAME", "node-b")
    state = tmp_path / "node.json"
    code = main(
        [
            "agent",
            "--once",
            "--kubeconfig",
            str(kubeconfig),
            "--sim-state",
            str(state),
            "--sim-gpus",
            "h100-80gb",
            "--refresh-strategy",
            "none",
            "--pod-resources-socket",
            str(tmp_path / "none.sock"),
            "--log-format",
            "json",
        ]
    )
    assert code == 0
    status = objects.get_cluster_custom_object(GROUP, VERSION, PLURAL, "node-b")["status"]
    assert status["phase"] == "Ready" and status["observedGeneration"] == 1
    assert [gi.profile.name for gi in load_state(state).gpus[0].gis.values()] == ["7g.80gb"]


def test_mig_restored_after_a_reboot_is_a_condition_and_an_event_over_http(api: Any) -> None:
    """The status (with migManaged, through the CRD's schema) and the Event go through the double."""
    objects = custom(api)
    objects.create_cluster_custom_object(
        GROUP, VERSION, PLURAL, build_miglayout("node-r", {0: layout("3g.40gb@0,3g.40gb@4")})
    )
    node = SimulatedNode.from_models(["h100-80gb"], seed="node-r")
    kube = KubeClient.for_host(api.url)
    conf = AgentConfig(node_name="node-r")
    agent = Agent(
        conf, SimulatedBackend(node), kube, NoRefresh(), pod_resources=NoPodResources(), retry=RETRY
    )
    try:
        assert agent.sync_once().settled
        node.reboot()
        assert agent.sync_once().settled
    finally:
        kube.close()
    status = objects.get_cluster_custom_object(GROUP, VERSION, PLURAL, "node-r")["status"]
    assert status["gpus"][0]["migManaged"] is True and status["gpus"][0]["migEnabled"] is True
    cond = next(c for c in status["conditions"] if c["type"] == "MigModeEnabled")
    assert cond["reason"] == "MigModeRestored"
    core = client.CoreV1Api(client.ApiClient(client.Configuration(host=api.url)))
    events = [e for e in core.list_namespaced_event("default").items if e.reason == "MigModeRestored"]
    assert [(e.involved_object.kind, e.involved_object.name, e.type) for e in events] == [
        ("MigLayout", "node-r", "Normal")
    ]
