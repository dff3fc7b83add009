"""Make the NVIDIA device plugin look at the MIG devices again after a change.

The plugin enumerates devices only when it starts or on SIGHUP (ARCHITECTURE.md, "Facts
worth knowing"). Strategies:

- ``builtin``: the agent's own device plugin (cdmo.node_agent.deviceplugin) advertises every
  change itself, during the pass; nothing is left to do here;

- ``sighup``: send SIGHUP to every ``nvidia-device-plugin`` process found under /proc; the
  agent pod needs ``hostPID: true`` to see them;
- ``delete-pod``: delete the device plugin pod(s) of this node (label selector, namespace)
  and wait, with a timeout, until a new one is Ready; the DaemonSet makes the new one;
- ``none``: do nothing (another tool refreshes the plugin).

Waits are interruptible by the agent's stop event.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from cdmo.config import AgentConfig
from cdmo.errors import CdmoError, InvalidInput

log = structlog.get_logger("cdmo.node_agent.refresh")

STRATEGIES = ("builtin", "sighup", "delete-pod", "none")


@dataclass(frozen=True)
class RefreshOutcome:
    """How a refresh went: the DevicePluginRefreshed condition is made from it."""

    ok: bool
    reason: str
    message: str


class Refresher(Protocol):
    strategy: str

    def refresh(self, stop: threading.Event) -> RefreshOutcome: ...


class NoRefresh:
    """Strategy ``none``."""

    strategy = "none"

    def refresh(self, stop: threading.Event) -> RefreshOutcome:
        return RefreshOutcome(True, "RefreshDisabled", "the device plugin refresh strategy is none")


class PluginRegistration(Protocol):
    """What BuiltinRefresh asks the agent's device plugin (KubeletDevicePlugin implements it)."""

    def registration(self) -> tuple[bool, str]: ...


class BuiltinRefresh:
    """Strategy ``builtin``: the agent's device plugin already sent the new lists during the
    pass; the refresh only says whether the kubelet has every resource registered."""

    strategy = "builtin"

    def __init__(self, plugin: PluginRegistration | None = None) -> None:
        self.plugin = plugin

    def refresh(self, stop: threading.Event) -> RefreshOutcome:
        if self.plugin is None:
            return RefreshOutcome(
                True, "Advertised", "the agent's own device plugin advertises the MIG devices"
            )
        ok, message = self.plugin.registration()
        return RefreshOutcome(ok, "Advertised" if ok else "NotRegistered", message)


class SighupRefresher:
    """Strategy ``sighup``: signal the device plugin process (needs hostPID)."""

    strategy = "sighup"

    def __init__(
        self,
        process_name: str = "nvidia-device-plugin",
        *,
        proc_root: str | os.PathLike[str] = "/proc",
        send_signal: Callable[[int, int], None] = os.kill,
    ) -> None:
        self.process_name = process_name
        self.proc_root = Path(proc_root)
        self.send_signal = send_signal

    def find_pids(self) -> list[int]:
        """Pids whose command (comm, truncated to 15 characters by the kernel) or argv[0] is the plugin's."""
        pids = []
        for entry in self.proc_root.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                comm = (entry / "comm").read_text().strip()
                argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
            except OSError:
                continue  # the process ended while we looked
            if comm == self.process_name[:15] or os.path.basename(argv0) == self.process_name:
                pids.append(int(entry.name))
        return sorted(pids)

    def refresh(self, stop: threading.Event) -> RefreshOutcome:
        pids = self.find_pids()
        if not pids:
            return RefreshOutcome(
                False,
                "DevicePluginNotFound",
                f"no {self.process_name} process is visible; the sighup strategy needs hostPID: true "
                "in the agent pod (or use the delete-pod strategy)",
            )
        signalled = []
        for pid in pids:
            try:
                self.send_signal(pid, signal.SIGHUP)
                signalled.append(pid)
            except ProcessLookupError:
                continue
            except PermissionError:
                return RefreshOutcome(
                    False,
                    "PermissionDenied",
                    f"not allowed to signal {self.process_name} (pid {pid}); run the agent privileged",
                )
        if not signalled:
            return RefreshOutcome(
                False, "DevicePluginNotFound", f"{self.process_name} exited before it was signalled"
            )
        log.info("Sent SIGHUP to device plugin", pids=signalled)
        return RefreshOutcome(
            True, "SignalSent", f"sent SIGHUP to {self.process_name} (pid {', '.join(map(str, signalled))})"
        )


class DevicePluginPods(Protocol):
    """The part of the kube client the delete-pod strategy uses."""

    def list_pods(self, namespace: str, label_selector: str, node: str) -> list[dict[str, Any]]: ...

    def delete_pod(self, namespace: str, name: str) -> None: ...


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """Running, not being deleted, and its Ready condition True."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


class DeletePodRefresher:
    """Strategy ``delete-pod``: restart the device plugin pod of this node and wait for Ready."""

    strategy = "delete-pod"

    def __init__(
        self,
        kube: DevicePluginPods,
        *,
        node: str,
        namespace: str,
        selector: str,
        timeout_seconds: float = 120.0,
        poll_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.node = node
        self.namespace = namespace
        self.selector = selector
        self.timeout_seconds = timeout_seconds
        self.poll_seconds = poll_seconds
        self.clock = clock

    def refresh(self, stop: threading.Event) -> RefreshOutcome:
        where = f"{self.selector} in namespace {self.namespace} on node {self.node}"
        try:
            pods = self.kube.list_pods(self.namespace, self.selector, self.node)
            if not pods:
                return RefreshOutcome(False, "DevicePluginNotFound", f"no device plugin pod matches {where}")
            old = {p["metadata"]["uid"] for p in pods}
            names = sorted(p["metadata"]["name"] for p in pods)
            for name in names:
                self.kube.delete_pod(self.namespace, name)
            log.info("Deleted device plugin pods", pods=names, namespace=self.namespace)
            deadline = self.clock() + self.timeout_seconds
            while True:
                fresh = [
                    p
                    for p in self.kube.list_pods(self.namespace, self.selector, self.node)
                    if p["metadata"]["uid"] not in old and pod_ready(p)
                ]
                if fresh:
                    new = fresh[0]["metadata"]["name"]
                    return RefreshOutcome(
                        True,
                        "PodRestarted",
                        f"restarted device plugin pod {', '.join(names)}; {new} is Ready",
                    )
                remaining = deadline - self.clock()
                if remaining <= 0:
                    return RefreshOutcome(
                        False,
                        "Timeout",
                        f"deleted device plugin pod {', '.join(names)} but no new pod matching {where} "
                        f"was Ready within {self.timeout_seconds:g} s",
                    )
                if stop.wait(min(self.poll_seconds, remaining)):
                    return RefreshOutcome(
                        False, "Stopped", "the agent stopped while waiting for the device plugin"
                    )
        except CdmoError as exc:
            return RefreshOutcome(False, "KubernetesError", f"could not restart the device plugin pod: {exc}")


def build_refresher(config: AgentConfig, kube: DevicePluginPods | None) -> Refresher:
    """The refresher that ``config.refresh_strategy`` names."""
    if config.refresh_strategy == "builtin":
        return BuiltinRefresh()
    if config.refresh_strategy == "none":
        return NoRefresh()
    if config.refresh_strategy == "sighup":
        return SighupRefresher(config.device_plugin_process)
    if config.refresh_strategy == "delete-pod":
        if kube is None:
            raise InvalidInput("the delete-pod refresh strategy needs Kubernetes", hint="use sighup or none")
        return DeletePodRefresher(
            kube,
            node=config.node_name,
            namespace=config.device_plugin_namespace,
            selector=config.device_plugin_selector,
            timeout_seconds=config.refresh_timeout_seconds,
            poll_seconds=config.refresh_poll_seconds,
        )
    raise InvalidInput(
        f"unknown device plugin refresh strategy {config.refresh_strategy!r}",
        hint="strategies are " + ", ".join(STRATEGIES),
    )
