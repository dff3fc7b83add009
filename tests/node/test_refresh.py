"""Device plugin refresh: SIGHUP through /proc, or delete the pod and wait for a Ready one."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cdmo.config import AgentConfig
from cdmo.errors import InvalidInput
from cdmo.node_agent.kube import KubeError
from cdmo.node_agent.refresh import (
    BuiltinRefresh,
    DeletePodRefresher,
    NoRefresh,
    SighupRefresher,
    build_refresher,
    pod_ready,
)


def fake_proc(root: Path, pid: int, comm: str, argv: list[str]) -> None:
    d = root / str(pid)
    d.mkdir()
    (d / "comm").write_text(comm + "\n")
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


def test_sighup_finds_the_plugin_by_comm_or_argv0(tmp_path: Path) -> None:
    fake_proc(tmp_path, 10, "nvidia-device-p", ["/usr/bin/nvidia-device-plugin", "--mig-strategy=mixed"])
    fake_proc(tmp_path, 11, "bash", ["/usr/bin/nvidia-device-plugin"])
    fake_proc(tmp_path, 12, "sleep", ["sleep", "nvidia-device-plugin"])
    (tmp_path / "self").mkdir()
    (tmp_path / "13").mkdir()  # a process that ended while we looked: no comm
    sent: list[tuple[int, int]] = []
    refresher = SighupRefresher(proc_root=tmp_path, send_signal=lambda pid, sig: sent.append((pid, sig)))
    outcome = refresher.refresh(threading.Event())
    assert sent == [(10, signal.SIGHUP), (11, signal.SIGHUP)]
    assert outcome.ok and outcome.reason == "SignalSent" and "10, 11" in outcome.message


def test_sighup_without_host_pid_says_so(tmp_path: Path) -> None:
    outcome = SighupRefresher(proc_root=tmp_path).refresh(threading.Event())
    assert not outcome.ok and outcome.reason == "DevicePluginNotFound" and "hostPID" in outcome.message


def test_sighup_permission_and_vanished_processes(tmp_path: Path) -> None:
    fake_proc(tmp_path, 20, "nvidia-device-p", ["nvidia-device-plugin"])

    def denied(pid: int, sig: int) -> None:
        raise PermissionError

    def gone(pid: int, sig: int) -> None:
        raise ProcessLookupError

    assert (
        SighupRefresher(proc_root=tmp_path, send_signal=denied).refresh(threading.Event()).reason
        == "PermissionDenied"
    )
    assert (
        SighupRefresher(proc_root=tmp_path, send_signal=gone).refresh(threading.Event()).reason
        == "DevicePluginNotFound"
    )


def test_sighup_reaches_a_real_process(tmp_path: Path) -> None:
    marker = tmp_path / "hup"
    script = (
        "import signal, sys, time, pathlib\n"
        f"signal.signal(signal.SIGHUP, lambda *a: (pathlib.Path({str(marker)!r}).write_text('hup'), sys.exit(0)))\n"
        f"pathlib.Path({str(tmp_path / 'ready')!r}).write_text('1')\n"
        "time.sleep(30)\n"
    )
    # exec -a gives the child the device plugin's argv[0], as the real binary has.
    child = subprocess.Popen(["bash", "-c", f'exec -a nvidia-device-plugin {sys.executable} -c "$0"', script])
    try:
        for _ in range(200):
            if (tmp_path / "ready").exists():
                break
            time.sleep(0.05)
        refresher = SighupRefresher()
        assert child.pid in refresher.find_pids()
        outcome = refresher.refresh(threading.Event())
        assert outcome.ok
        child.wait(timeout=10)
        assert marker.read_text() == "hup"
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()


class FakePods:
    """Device plugin pods of a DaemonSet: a deleted pod comes back Ready after ``delay`` polls."""

    def __init__(self, *, comes_back: bool = True, delay: int = 1) -> None:
        self.pods = [self._pod("plugin-a", "uid-1")]
        self.deleted: list[str] = []
        self.comes_back = comes_back
        self.delay = delay
        self.polls = 0
        self.fail = False

    @staticmethod
    def _pod(name: str, uid: str, ready: bool = True) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "uid": uid},
            "spec": {"nodeName": "gpu-1"},
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            },
        }

    def list_pods(self, namespace: str, label_selector: str, node: str) -> list[dict[str, Any]]:
        if self.fail:
            raise KubeError("list pods: Kubernetes API answered 500")
        assert (namespace, label_selector, node) == (
            "gpu-operator",
            "app=nvidia-device-plugin-daemonset",
            "gpu-1",
        )
        if self.deleted and self.comes_back:
            self.polls += 1
            if self.polls > self.delay:
                # The DaemonSet's new pod: first not Ready, Ready on the next look.
                self.pods = [self._pod("plugin-b", "uid-2", ready=self.polls > self.delay + 1)]
        return list(self.pods)

    def delete_pod(self, namespace: str, name: str) -> None:
        self.deleted.append(name)
        self.pods = [p for p in self.pods if p["metadata"]["name"] != name]


def delete_refresher(pods: FakePods, timeout: float = 10.0) -> DeletePodRefresher:
    clock = {"t": 0.0}

    def tick() -> float:
        clock["t"] += 1.0
        return clock["t"]

    return DeletePodRefresher(
        pods,
        node="gpu-1",
        namespace="gpu-operator",
        selector="app=nvidia-device-plugin-daemonset",
        timeout_seconds=timeout,
        poll_seconds=0.001,
        clock=tick,
    )


def test_delete_pod_waits_for_a_new_ready_pod() -> None:
    pods = FakePods(delay=2)
    outcome = delete_refresher(pods).refresh(threading.Event())
    assert pods.deleted == ["plugin-a"]
    assert outcome.ok and outcome.reason == "PodRestarted" and "plugin-b is Ready" in outcome.message


def test_delete_pod_times_out() -> None:
    outcome = delete_refresher(FakePods(comes_back=False), timeout=3).refresh(threading.Event())
    assert not outcome.ok and outcome.reason == "Timeout" and "within 3 s" in outcome.message


def test_delete_pod_without_a_plugin_pod() -> None:
    pods = FakePods()
    pods.pods = []
    outcome = delete_refresher(pods).refresh(threading.Event())
    assert not outcome.ok and outcome.reason == "DevicePluginNotFound"


def test_delete_pod_stops_with_the_agent() -> None:
    stop = threading.Event()
    stop.set()
    outcome = delete_refresher(FakePods(comes_back=False)).refresh(stop)
    assert outcome.reason == "Stopped"


def test_delete_pod_api_errors_are_reported() -> None:
    pods = FakePods()
    pods.fail = True
    outcome = delete_refresher(pods).refresh(threading.Event())
    assert not outcome.ok and outcome.reason == "KubernetesError" and "500" in outcome.message


def test_pod_ready() -> None:
    ready = FakePods._pod("p", "u")
    assert pod_ready(ready)
    assert not pod_ready({**ready, "metadata": {"deletionTimestamp": "now"}})
    assert not pod_ready({**ready, "status": {"phase": "Pending"}})
    assert not pod_ready(FakePods._pod("p", "u", ready=False))


def test_build_refresher() -> None:
    conf = AgentConfig(node_name="gpu-1")
    assert isinstance(build_refresher(dataclasses.replace(conf, refresh_strategy="none"), None), NoRefresh)
    assert NoRefresh().refresh(threading.Event()).ok
    builtin = build_refresher(conf, None)
    assert isinstance(builtin, BuiltinRefresh) and builtin.refresh(threading.Event()).reason == "Advertised"
    sighup = build_refresher(dataclasses.replace(conf, refresh_strategy="sighup"), None)
    assert isinstance(sighup, SighupRefresher) and sighup.process_name == "nvidia-device-plugin"
    deleting = build_refresher(
        dataclasses.replace(conf, refresh_strategy="delete-pod", refresh_timeout_seconds=9), FakePods()
    )
    assert (
        isinstance(deleting, DeletePodRefresher)
        and deleting.timeout_seconds == 9
        and deleting.node == "gpu-1"
    )
    with pytest.raises(InvalidInput, match="needs Kubernetes"):
        build_refresher(dataclasses.replace(conf, refresh_strategy="delete-pod"), None)
    with pytest.raises(InvalidInput, match="strategies are builtin, sighup, delete-pod, none"):
        build_refresher(dataclasses.replace(conf, refresh_strategy="kick"), None)
