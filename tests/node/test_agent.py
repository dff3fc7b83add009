"""The agent's loop against an in-memory Kubernetes (its own MigLayout, pods) and simulated GPUs."""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from cdmo.api import build_miglayout, get_condition
from cdmo.config import AgentConfig
from cdmo.errors import CdmoError
from cdmo.mig.layouts import Instance
from cdmo.node_agent.agent import Agent, PodDevicesSource, backoff_delay
from cdmo.node_agent.backend import NoPermission, NvmlReturn
from cdmo.node_agent.kube import KubeError, WatchExpired
from cdmo.node_agent.podresources.client import (
    AllocatableDevices,
    PodDevices,
    PodResourcesClient,
    PodResourcesUnavailable,
)
from cdmo.node_agent.refresh import RefreshOutcome
from cdmo.node_agent.simulated import SimulatedBackend, SimulatedNode
from tests.node.conftest import RETRY, layout
from tests.node.podresources_server import serve_pod_resources

NODE = "gpu-1"
NOW = datetime(2025, 5, 1, tzinfo=UTC)


class FakeKube:
    """A MigLayout store with generations, resourceVersions, /status merge patches and watches."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.pods: list[dict[str, Any]] = []
        self.rv = 0
        self.status_writes: list[dict[str, Any]] = []
        self.watchers: list[queue.Queue[tuple[str, dict[str, Any]] | None]] = []
        self.lock = threading.Lock()
        self.fail_reads = 0
        self.expire_next_watch = False
        self.events: list[dict[str, Any]] = []

    def _bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _emit(self, kind: str, obj: dict[str, Any]) -> None:
        for w in list(self.watchers):
            w.put((kind, copy.deepcopy(obj)))

    def set_layout(self, layouts: dict[int, tuple[Instance, ...]] | None, name: str = NODE) -> None:
        with self.lock:
            if layouts is None:
                obj = self.objects.pop(name)
                self._emit("DELETED", obj)
                return
            obj = self.objects.get(name)
            kind = "MODIFIED"
            if obj is None:
                obj = build_miglayout(name, {})
                obj["metadata"]["generation"] = 0
                kind = "ADDED"
            obj["spec"] = build_miglayout(name, layouts)["spec"]
            obj["metadata"]["generation"] += 1
            obj["metadata"]["resourceVersion"] = self._bump()
            self.objects[name] = obj
            self._emit(kind, obj)

    def set_raw_spec(self, spec: Any, name: str = NODE) -> None:
        with self.lock:
            obj = self.objects[name]
            obj["spec"] = spec
            obj["metadata"]["generation"] += 1
            obj["metadata"]["resourceVersion"] = self._bump()

    # --- the AgentKube interface ---------------------------------------------------------

    def read_miglayout(self, name: str) -> tuple[dict[str, Any] | None, str | None]:
        with self.lock:
            if self.fail_reads:
                self.fail_reads -= 1
                raise KubeError("read MigLayout: Kubernetes API answered 503")
            obj = self.objects.get(name)
            return copy.deepcopy(obj), str(self.rv)

    def watch_miglayout(
        self, name: str, *, resource_version: str | None, timeout_seconds: float
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        if self.expire_next_watch:
            self.expire_next_watch = False
            raise WatchExpired("watch MigLayout: resourceVersion expired (410)")
        q: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        with self.lock:
            self.watchers.append(q)
        try:
            q.put(("BOOKMARK", {"metadata": {"resourceVersion": str(self.rv)}}))
            while True:
                item = q.get(timeout=timeout_seconds)
                if item is None:
                    return
                if item[1].get("metadata", {}).get("name", name) == name:
                    yield item
        except queue.Empty:
            return
        finally:
            with self.lock:
                self.watchers.remove(q)

    def interrupt(self) -> None:
        for w in list(self.watchers):
            w.put(None)

    def patch_miglayout_status(self, name: str, status: dict[str, Any]) -> None:
        with self.lock:
            obj = self.objects[name]
            merged = dict(obj.get("status") or {})
            for k, v in status.items():
                if v is None:
                    merged.pop(k, None)
                else:
                    merged[k] = copy.deepcopy(v)
            obj["status"] = merged
            obj["metadata"]["resourceVersion"] = self._bump()
            self.status_writes.append(copy.deepcopy(merged))
            self._emit("MODIFIED", obj)

    def list_node_pods(self, node: str) -> list[dict[str, Any]]:
        return [p for p in self.pods if p["spec"].get("nodeName") == node]

    def create_miglayout_event(
        self, layout: dict[str, Any], *, reason: str, message: str, event_type: str = "Normal"
    ) -> None:
        self.events.append(
            {"name": layout["metadata"]["name"], "reason": reason, "message": message, "type": event_type}
        )

    def status(self, name: str = NODE) -> dict[str, Any]:
        return copy.deepcopy(self.objects[name].get("status") or {})


class FakeRefresher:
    strategy = "fake"

    def __init__(self, *outcomes: RefreshOutcome) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def refresh(self, stop: threading.Event) -> RefreshOutcome:
        self.calls += 1
        if self.outcomes:
            return self.outcomes.pop(0)
        return RefreshOutcome(True, "SignalSent", "sent SIGHUP to nvidia-device-plugin (pid 1)")


class FakePodResources:
    def __init__(self, rows: list[PodDevices] | None = None, *, available: bool = True) -> None:
        self.rows = rows or []
        #: GetAllocatableResources; None: the kubelet does not serve it
        self.pools: list[AllocatableDevices] | None = []
        self.allocatable_calls = 0
        self._available = available

    def available(self) -> bool:
        return self._available

    def list(self) -> list[PodDevices]:
        return list(self.rows)

    def allocatable(self) -> list[AllocatableDevices]:
        self.allocatable_calls += 1
        if self.pools is None:
            raise PodResourcesUnavailable("GetAllocatableResources: UNIMPLEMENTED")
        return list(self.pools)


def make_agent(
    kube: FakeKube,
    node: SimulatedNode,
    refresher: FakeRefresher | None = None,
    pod_resources: PodDevicesSource | None = None,
    **conf: Any,
) -> Agent:
    config = AgentConfig(node_name=NODE, backend="simulated", **{"backoff_initial_seconds": 0.01, **conf})
    return Agent(
        config,
        SimulatedBackend(node),
        kube,
        refresher or FakeRefresher(),
        pod_resources=pod_resources if pod_resources is not None else FakePodResources(),
        retry=RETRY,
        clock=lambda: NOW,
    )


def wait_for(check: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.01)
    raise AssertionError(f"waited {seconds} s for {what}")


def layouts(node: SimulatedNode, gpu: int = 0) -> list[str]:
    return sorted(f"{gi.profile.name}@{gi.start}" for gi in node.gpus[gpu].gis.values())


# --- one pass ----------------------------------------------------------------------------------


def test_no_miglayout_means_nothing_to_do(node: SimulatedNode) -> None:
    kube = FakeKube()
    outcome = make_agent(kube, node).sync_once()
    assert outcome.settled and outcome.status is None and kube.status_writes == []


def test_a_pass_applies_the_spec_refreshes_and_writes_status(node: SimulatedNode) -> None:
    kube = FakeKube()
    kube.set_layout({0: layout("3g.40gb@0,3g.40gb@4")})
    refresher = FakeRefresher()
    agent = make_agent(kube, node, refresher)
    outcome = agent.sync_once()
    assert outcome.settled and layouts(node) == ["3g.40gb@0", "3g.40gb@4"]
    status = kube.status()
    assert status["phase"] == "Ready" and status["observedGeneration"] == 1 and "lastError" not in status
    assert refresher.calls == 1
    assert get_condition(status["conditions"], "DevicePluginRefreshed")["reason"] == "SignalSent"
    # A resync with nothing new: no NVML change, no refresh, no status write.
    writes = len(kube.status_writes)
    assert agent.sync_once().settled
    assert refresher.calls == 1 and len(kube.status_writes) == writes


def test_a_failed_refresh_is_retried_on_the_next_pass(node: SimulatedNode) -> None:
    kube = FakeKube()
    kube.set_layout({0: layout("7g.80gb@0")})
    refresher = FakeRefresher(
        RefreshOutcome(False, "DevicePluginNotFound", "no nvidia-device-plugin process is visible")
    )
    agent = make_agent(kube, node, refresher)
    assert not agent.sync_once().settled
    assert kube.status()["phase"] == "Applying"
    assert agent.sync_once().settled and refresher.calls == 2
    assert kube.status()["phase"] == "Ready" and "lastError" not in kube.status()


def test_refresh_after_a_restart_that_missed_it(node: SimulatedNode) -> None:
    kube = FakeKube()
    kube.set_layout({0: layout("2g.20gb@0")})
    SimulatedBackend(node).create_instance(0, "2g.20gb", 0)  # made by an agent that then died
    refresher = FakeRefresher()
    make_agent(kube, node, refresher).sync_once()
    assert refresher.calls == 1  # the status listed no MIG device: the plugin may not know this one


def test_a_spec_the_agent_cannot_read_is_an_error(node: SimulatedNode) -> None:
    kube = FakeKube()
    kube.set_layout({0: layout("1g.10gb@0")})
    agent = make_agent(kube, node)
    agent.sync_once()
    kube.set_raw_spec({"gpus": [{"index": 0, "instances": [{"profile": "huge", "start": 0}]}]})
    assert agent.sync_once().settled
    status = kube.status()
    assert status["phase"] == "Error" and status["observedGeneration"] == 2
    assert "is not a MIG profile name" in status["lastError"]
    assert get_condition(status["conditions"], "Applied")["reason"] == "InvalidSpec"
    assert layouts(node) == ["1g.10gb@0"]


def test_a_permission_error_is_written_then_raised(node: SimulatedNode) -> None:
    kube = FakeKube()
    kube.set_layout({0: layout("1g.10gb@0")})
    node.inject_fault("nvmlDeviceCreateGpuInstanceWithPlacement", NvmlReturn.NO_PERMISSION, count=-1)
    with pytest.raises(NoPermission):
        make_agent(kube, node).sync_once()
    status = kube.status()
    assert status["phase"] == "Error" and "privileged" in status["lastError"]
    assert get_condition(status["conditions"], "Applied")["reason"] == "PermissionDenied"


def test_bound_pods_and_pod_resources_keep_instances(node: SimulatedNode) -> None:
    kube = FakeKube()
    kube.set_layout({0: layout("1g.10gb@0,1g.10gb@1")})
    pr = FakePodResources()
    agent = make_agent(kube, node, pod_resources=pr)
    agent.sync_once()
    first = SimulatedBackend(node).list_instances(0)[0]
    pr.rows = [PodDevices("ml", "runner", "main", "nvidia.com/mig-1g.10gb", (first.uuid or "",))]
    kube.pods = [
        {
            "metadata": {"name": "runner", "namespace": "ml"},
            "spec": {
                "nodeName": NODE,
                "containers": [{"name": "main", "resources": {"limits": {"nvidia.com/mig-1g.10gb": 1}}}],
            },
            "status": {"phase": "Running"},
        },
        {
            "metadata": {"name": "next", "namespace": "ml"},
            "spec": {
                "nodeName": NODE,
                "containers": [{"name": "main", "resources": {"limits": {"nvidia.com/mig-1g.10gb": 1}}}],
            },
            "status": {"phase": "Pending"},
        },
    ]
    kube.set_layout({0: layout("1g.10gb@0,2g.20gb@2")})
    assert not agent.sync_once().settled
    status = kube.status()
    assert status["phase"] == "Blocked"
    assert "pod ml/next (bound to this node, not yet admitted)" in status["lastError"]
    held = {i["start"]: i.get("pod") for i in status["gpus"][0]["instances"] if i["allocated"]}
    assert held == {0: "ml/runner", 1: "ml/next"}
    assert layouts(node) == ["1g.10gb@0", "1g.10gb@1"]
    assert pr.allocatable_calls == 0  # pods asking profiles by name: no pools to read


def test_a_bound_pod_of_a_renamed_pool_keeps_its_instance_over_grpc(node: SimulatedNode) -> None:
    # The NVIDIA plugin advertising a 1g.10gb under a site's own name: only the kubelet's
    # GetAllocatableResources (a real gRPC server here) says which instance the pod will get.
    with serve_pod_resources() as (kubelet, socket):
        kube = FakeKube()
        kube.set_layout({0: layout("1g.10gb@0,1g.10gb@1")})
        agent = make_agent(kube, node, pod_resources=PodResourcesClient(socket))
        assert agent.sync_once().settled
        by_start = {i.start: i.uuid or "" for i in SimulatedBackend(node).list_instances(0)}
        kubelet.allocatable = {
            "example.com/my-gpu-slice": [by_start[1] + "::0", by_start[1] + "::1"],
            "nvidia.com/mig-1g.10gb": [by_start[0]],
        }
        kube.pods = [
            {
                "metadata": {"name": "next", "namespace": "ml"},
                "spec": {
                    "nodeName": NODE,
                    "containers": [{"name": "c", "resources": {"limits": {"example.com/my-gpu-slice": 1}}}],
                },
                "status": {"phase": "Pending"},
            }
        ]
        kube.set_layout({0: layout("1g.10gb@0,2g.20gb@2")})  # 1g.10gb@1 goes
        assert not agent.sync_once().settled
        status = kube.status()
        assert status["phase"] == "Blocked"
        assert "pod ml/next (bound to this node, not yet admitted)" in status["lastError"]
        held = {i["start"]: i.get("pod") for i in status["gpus"][0]["instances"] if i["allocated"]}
        assert held == {1: "ml/next"}
        assert layouts(node) == ["1g.10gb@0", "1g.10gb@1"]
        # a kubelet that does not serve GetAllocatableResources: nothing says what the name holds
        kubelet.allocatable = None
        assert agent.sync_once().settled
        assert layouts(node) == ["1g.10gb@0", "2g.20gb@2"]


def test_without_pod_resources_bound_pods_protect_their_whole_profile(node: SimulatedNode) -> None:
    kube = FakeKube()
    kube.set_layout({0: layout("1g.10gb@0,1g.10gb@1,3g.40gb@4")})
    agent = make_agent(kube, node, pod_resources=FakePodResources(available=False))
    agent.sync_once()
    kube.pods = [
        {
            "metadata": {"name": "r", "namespace": "ml"},
            "spec": {
                "nodeName": NODE,
                "containers": [{"name": "main", "resources": {"limits": {"nvidia.com/mig-1g.10gb": 1}}}],
            },
            "status": {"phase": "Running"},
        }
    ]
    kube.set_layout({0: layout("1g.10gb@0,3g.40gb@4")})
    agent.sync_once()
    assert kube.status()["phase"] == "Blocked"
    kube.set_layout({0: layout("1g.10gb@0,1g.10gb@1,1g.10gb@4,1g.10gb@5")})  # only the free 3g goes
    agent.sync_once()
    assert kube.status()["phase"] == "Ready"
    assert layouts(node) == ["1g.10gb@0", "1g.10gb@1", "1g.10gb@4", "1g.10gb@5"]


def test_the_agent_needs_its_node_name(node: SimulatedNode) -> None:
    with pytest.raises(CdmoError, match="NODE_NAME"):
        Agent(AgentConfig(), SimulatedBackend(node), FakeKube(), FakeRefresher())


# --- the loop ----------------------------------------------------------------------------------


def run_in_thread(agent: Agent) -> tuple[threading.Thread, threading.Event, list[BaseException]]:
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            agent.run(stop)
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, stop, errors


def test_the_loop_reacts_to_spec_changes_and_stops_promptly(node: SimulatedNode) -> None:
    kube = FakeKube()
    kube.set_layout({0: layout("4g.40gb@0")})
    agent = make_agent(kube, node, resync_seconds=3600, watch_timeout_seconds=3600)
    thread, stop, errors = run_in_thread(agent)
    wait_for(lambda: kube.status().get("observedGeneration") == 1, "the first status")
    assert layouts(node) == ["4g.40gb@0"]
    wait_for(lambda: kube.watchers != [], "the watch")
    kube.set_layout({0: layout("3g.40gb@0,3g.40gb@4"), 1: layout("7g.80gb@0")})
    # The resync is an hour away: only the watch event can bring this change in.
    wait_for(lambda: kube.status().get("observedGeneration") == 2, "the second generation")
    assert layouts(node) == ["3g.40gb@0", "3g.40gb@4"] and layouts(node, 1) == ["7g.80gb@0"]
    assert kube.status()["phase"] == "Ready"
    passes = agent.passes
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive() and errors == []
    assert agent.passes in (passes, passes + 1)  # its own status writes did not make it loop


def test_the_loop_backs_off_after_api_errors(node: SimulatedNode) -> None:
    kube = FakeKube()
    kube.set_layout({0: layout("1g.10gb@6")})
    kube.fail_reads = 2
    kube.expire_next_watch = True
    agent = make_agent(kube, node, resync_seconds=3600)
    thread, stop, errors = run_in_thread(agent)
    wait_for(lambda: kube.status().get("phase") == "Ready", "a pass after two failed reads")
    assert agent.passes >= 3
    text = agent.metrics.render().decode()
    assert 'cdmo_agent_failures_total{reason="KubeError"} 2.0' in text
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive() and errors == []


def test_the_loop_ends_on_a_fatal_error(node: SimulatedNode) -> None:
    kube = FakeKube()
    kube.set_layout({0: layout("1g.10gb@0")})
    node.inject_fault("*", NvmlReturn.NO_PERMISSION, count=-1)
    thread, _stop, errors = run_in_thread(make_agent(kube, node))
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], NoPermission)


def test_the_loop_survives_an_unexpected_error(node: SimulatedNode) -> None:
    kube = FakeKube()
    kube.set_layout({0: layout("2g.20gb@4")})
    agent = make_agent(kube, node, resync_seconds=3600)
    real_read = kube.read_miglayout
    calls = {"n": 0}

    def flaky(name: str) -> tuple[dict[str, Any] | None, str | None]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real_read(name)

    kube.read_miglayout = flaky  # type: ignore[method-assign]
    thread, stop, errors = run_in_thread(agent)
    wait_for(lambda: kube.status().get("phase") == "Ready", "a pass after the unexpected error")
    assert 'cdmo_agent_failures_total{reason="Unexpected"} 1.0' in agent.metrics.render().decode()
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive() and errors == []


# --- MIG mode back after a reboot (issue 10, item 5) -----------------------------------------


def test_a_hopper_gpu_back_from_a_reboot_gets_mig_and_its_layout_back(node: SimulatedNode) -> None:
    """The chart's default before: a rebooted H100 node stayed in Error with no instances."""
    kube = FakeKube()
    kube.set_layout({0: layout("3g.40gb@0,3g.40gb@4"), 1: layout("7g.80gb@0")})
    agent = make_agent(kube, node)
    assert agent.sync_once().settled
    node.reboot()
    assert not node.gpus[0].mig_current  # Hopper loses MIG mode on a reboot
    outcome = agent.sync_once()
    assert outcome.settled
    assert layouts(node, 0) == ["3g.40gb@0", "3g.40gb@4"] and layouts(node, 1) == ["7g.80gb@0"]
    status = kube.status()
    cond = get_condition(status["conditions"], "MigModeEnabled")
    assert cond["status"] == "True" and cond["reason"] == "MigModeRestored"
    assert "GPU 0" in cond["message"] and "GPU 1" in cond["message"]
    assert [(e["reason"], e["type"]) for e in kube.events] == [("MigModeRestored", "Normal")]
    assert status["phase"] == "Ready"


def test_mig_is_not_switched_back_on_when_turned_off(node: SimulatedNode) -> None:
    kube = FakeKube()
    kube.set_layout({0: layout("7g.80gb@0")})
    agent = make_agent(kube, node, auto_enable_mig=False)
    assert agent.sync_once().settled
    node.reboot()
    agent.sync_once()
    assert not node.gpus[0].mig_current and kube.events == []
    status = kube.status()
    assert status["phase"] == "Error"
    assert get_condition(status["conditions"], "MigModeEnabled")["reason"] == "MigModeDisabled"


def test_mig_waits_for_an_idle_gpu_and_names_what_holds_it(node: SimulatedNode) -> None:
    kube = FakeKube()
    kube.set_layout({0: layout("7g.80gb@0")})
    pods = FakePodResources()
    agent = make_agent(kube, node, pod_resources=pods)
    assert agent.sync_once().settled
    node.reboot()
    node.add_gpu_process(0, 555)
    pods.rows = [PodDevices("ml", "whole", "main", "nvidia.com/gpu", (node.gpus[0].uuid,))]
    assert not agent.sync_once().settled
    assert not node.gpus[0].mig_current and kube.events == []
    cond = get_condition(kube.status()["conditions"], "MigModeEnabled")
    assert cond["status"] == "False" and cond["reason"] == "GpuInUse"
    assert "pod ml/whole" in cond["message"] and "process 555" in cond["message"]
    # Once the GPU is idle, MIG comes back: the managed GPU is still remembered by the status.
    node.remove_gpu_process(0, 555)
    pods.rows = []
    assert agent.sync_once().settled
    assert node.gpus[0].mig_current and layouts(node) == ["7g.80gb@0"]


def test_a_gpu_cdmo_never_managed_is_not_switched_on(make_node: Callable[..., SimulatedNode]) -> None:
    node = make_node("h100-80gb", mig=False)
    kube = FakeKube()
    kube.set_layout({0: layout("7g.80gb@0")})
    agent = make_agent(kube, node)
    agent.sync_once()
    assert not node.gpus[0].mig_current and kube.events == []


def test_an_unreachable_api_server_fails_the_pass_as_a_kube_error(node: SimulatedNode) -> None:
    """Connection errors of the Kubernetes client used to escape as urllib3 exceptions, with a
    traceback from the loop; now they end the pass as an API error does."""
    import socket

    import kubernetes

    from cdmo.node_agent.kube import KubeClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = kubernetes.client.Configuration(host=f"http://127.0.0.1:{port}")
    conf.retries = False
    kube = KubeClient(kubernetes.client.ApiClient(conf), request_timeout_seconds=2, retry_wait_seconds=0)
    config = AgentConfig(node_name=NODE, backend="simulated")
    agent = Agent(
        config, SimulatedBackend(node), kube, FakeRefresher(), pod_resources=FakePodResources(), retry=RETRY
    )
    with pytest.raises(KubeError, match="cannot reach the Kubernetes API"):
        agent.sync_once()


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, True),
        (["--no-auto-enable-mig"], {}, False),
        ([], {"CDMO_AUTO_ENABLE_MIG": "false"}, False),
        ([], {"CDMO_AUTO_ENABLE_MIG": "true"}, True),
    ],
    ids=["default-on", "flag-off", "env-off", "env-on"],
)
def test_automatic_mig_enable_is_on_by_default_and_turns_off(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str], expected: bool
) -> None:
    import argparse

    from cdmo.commands.agent import add_arguments, build_config

    monkeypatch.delenv("CDMO_AUTO_ENABLE_MIG", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert build_config(parser.parse_args([*argv, "--node-name", "n"])).auto_enable_mig is expected


def test_a_pass_that_hangs_is_what_the_liveness_probe_reports(node: SimulatedNode) -> None:
    """GET /healthz asks Agent.stuck: a pass that never returns (a wedged driver, a kubelet call
    without an answer) kept the agent up and doing nothing, with no probe to restart it."""
    kube = FakeKube()
    kube.set_layout({0: layout("4g.40gb@0")})
    entered, release = threading.Event(), threading.Event()
    real = kube.list_node_pods

    def hangs(name: str) -> list[dict[str, Any]]:
        entered.set()
        release.wait(30)
        return real(name)

    kube.list_node_pods = hangs  # type: ignore[method-assign]
    agent = make_agent(kube, node, resync_seconds=60, liveness_seconds=900, watch_timeout_seconds=3600)
    thread, stop, errors = run_in_thread(agent)
    try:
        wait_for(entered.is_set, "the pass to begin")
        now = time.monotonic()
        assert agent.stuck(now) is None and agent.stuck(now + 900) is None
        message = agent.stuck(now + 961)  # longer than the longest wait (60 s) plus 900 s
        assert message is not None and "stuck" in message
        time.sleep(1.5)  # the pass hangs a while: its end beats later than its start
        release.set()
        wait_for(lambda: kube.status().get("observedGeneration") == 1, "the pass to end")
        wait_for(lambda: agent.stuck(now + 961) is None, "the beat at the end of the pass")
    finally:
        release.set()
        stop.set()
        thread.join(timeout=5)
    assert errors == []
    never = make_agent(FakeKube(), node, liveness_seconds=0)
    assert never.stuck(time.monotonic() + 10**9) is None


def test_a_pass_that_cannot_read_the_gpus_says_so_in_the_status(node: SimulatedNode) -> None:
    """It only logged: the status went on saying Ready while nothing on the node was decided."""
    kube = FakeKube()
    kube.set_layout({0: layout("1g.10gb@6")})
    agent = make_agent(kube, node)
    agent.sync_once()
    assert kube.status()["phase"] == "Ready"
    node.inject_fault("nvmlDeviceGetGpuInstances", NvmlReturn.GPU_IS_LOST, count=-1)
    with pytest.raises(CdmoError):
        agent.sync_once()
    status = kube.status()
    assert status["phase"] == "Error" and "GPU_IS_LOST" in status["lastError"], status
    assert status["gpus"]  # the last report of the GPUs is kept: nothing was changed
    node.faults.clear()
    agent.sync_once()
    assert kube.status()["phase"] == "Ready" and kube.status().get("lastError") is None


@pytest.mark.parametrize("failures", [1, 2, 1025, 10**6])
def test_the_backoff_never_overflows_and_stays_within_the_resync(failures: int) -> None:
    """After about 1,000 failed passes in a row, 2.0 * 2 ** (failures - 1) raised OverflowError."""
    config = AgentConfig.from_env({"CDMO_RESYNC_SECONDS": "60", "CDMO_BACKOFF_INITIAL_SECONDS": "2"})
    delay = backoff_delay(config, failures)
    expected = 60.0 if failures > 6 else min(60.0, 2.0 * 2 ** (failures - 1))
    assert delay == expected
