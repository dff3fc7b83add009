"""A simulated kubelet device manager speaking the real device-plugin protocol over unix sockets.

It serves ``Registration`` on ``kubelet.sock`` in a directory, and for every plugin that
registers it does what the kubelet's device manager does: dial the plugin's endpoint, read
``GetDevicePluginOptions``, keep one ``ListAndWatch`` stream open and remember the last list,
and on admission pick devices (``GetPreferredAllocation`` when offered, from the healthy
devices not yet handed out), then call ``Allocate``. A pod is admitted only with devices the
plugin allocated; :meth:`admit` raises :class:`AdmissionError` otherwise, as the kubelet
fails such a pod with ``UnexpectedAdmissionError``.

Differences from a real kubelet: no checkpoint, no topology manager, no pod-resources (the
e2e cluster serves that); a restart (:meth:`restart`) removes every socket in the directory
and re-creates ``kubelet.sock``, as the kubelet does when it starts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from cdmo.node_agent.deviceplugin import api_pb2, api_pb2_grpc


class AdmissionError(Exception):
    """The kubelet would fail the pod (UnexpectedAdmissionError)."""


@dataclass
class _Plugin:
    resource: str
    endpoint: str
    channel: grpc.Channel
    stub: api_pb2_grpc.DevicePluginStub
    preferred: bool
    devices: dict[str, str] = field(default_factory=dict)
    #: device ID -> the NUMA nodes its topology names (the Topology Manager's hint)
    topology: dict[str, tuple[int, ...]] = field(default_factory=dict)
    stream: Any = None
    updates: int = 0


@dataclass(frozen=True)
class Allocation:
    resource: str
    ids: tuple[str, ...]
    envs: dict[str, str]
    mounts: tuple[tuple[str, str], ...]
    annotations: dict[str, str]


class SimKubelet(api_pb2_grpc.RegistrationServicer):
    def __init__(self, plugin_dir: str | Path, on_change: Callable[[], None] | None = None) -> None:
        self.dir = Path(plugin_dir)
        #: called (from a gRPC thread) after every list the kubelet receives or loses
        self.on_change = on_change
        self._lock = threading.Condition()
        self._plugins: dict[str, _Plugin] = {}
        self._server: grpc.Server | None = None
        self.registrations: list[tuple[str, str]] = []
        #: (monotonic time, resource, device IDs listed) for every ListAndWatch message
        self.history: list[tuple[float, str, tuple[str, ...]]] = []
        #: device ID -> pod it was handed to
        self.assigned: dict[str, str] = {}
        #: every admission, in order: (pod, device IDs)
        self.admissions: list[tuple[str, tuple[str, ...]]] = []

    # --- life cycle ----------------------------------------------------------------------------

    def start(self) -> SimKubelet:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "kubelet.sock").unlink(missing_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_RegistrationServicer_to_server(self, server)
        server.add_insecure_port(f"unix:{self.dir / 'kubelet.sock'}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None)
            self._server = None
        with self._lock:
            plugins, self._plugins = list(self._plugins.values()), {}
        for p in plugins:
            if p.stream is not None:
                p.stream.cancel()
            p.channel.close()

    def restart(self) -> None:
        """Stop, delete every socket in the directory (the kubelet does on start), start again."""
        self.stop()
        for sock in self.dir.glob("*.sock"):
            sock.unlink(missing_ok=True)
        self.start()

    # --- Registration --------------------------------------------------------------------------

    def Register(self, request: Any, context: Any) -> Any:
        if request.version != "v1beta1":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported version {request.version}")
        channel = grpc.insecure_channel(f"unix:{self.dir / request.endpoint}")
        stub = api_pb2_grpc.DevicePluginStub(channel)
        options = stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=5)
        plugin = _Plugin(
            request.resource_name,
            request.endpoint,
            channel,
            stub,
            options.get_preferred_allocation_available,
        )
        with self._lock:
            old = self._plugins.get(request.resource_name)
            self._plugins[request.resource_name] = plugin
            self.registrations.append((request.resource_name, request.endpoint))
        if old is not None and old.stream is not None:
            old.stream.cancel()
        plugin.stream = stub.ListAndWatch(api_pb2.Empty())
        threading.Thread(target=self._watch, args=(plugin,), daemon=True).start()
        return api_pb2.Empty()

    def _watch(self, plugin: _Plugin) -> None:
        try:
            for msg in plugin.stream:
                with self._lock:
                    plugin.devices = {d.ID: d.health for d in msg.devices}
                    plugin.topology = {d.ID: tuple(n.ID for n in d.topology.nodes) for d in msg.devices}
                    plugin.updates += 1
                    self.history.append((time.monotonic(), plugin.resource, tuple(d.ID for d in msg.devices)))
                    self._lock.notify_all()
                if self.on_change is not None:
                    self.on_change()
        except grpc.RpcError:
            # The plugin went away (or the kubelet cancelled the stream): as the kubelet does,
            # its devices turn unhealthy, so nothing is handed out until it registers again.
            with self._lock:
                if self._plugins.get(plugin.resource) is plugin:
                    plugin.devices = dict.fromkeys(plugin.devices, "Unhealthy")
                self._lock.notify_all()
            if self.on_change is not None:
                self.on_change()

    # --- what tests read -----------------------------------------------------------------------

    def resources(self) -> list[str]:
        with self._lock:
            return sorted(self._plugins)

    def devices(self, resource: str) -> dict[str, str]:
        with self._lock:
            p = self._plugins.get(resource)
            return dict(p.devices) if p else {}

    def topology(self, resource: str) -> dict[str, tuple[int, ...]]:
        """Device ID -> the NUMA nodes the plugin listed it on (empty: no topology given)."""
        with self._lock:
            p = self._plugins.get(resource)
            return dict(p.topology) if p else {}

    def capacity(self) -> dict[str, int]:
        """Healthy devices per registered resource (what the node would report)."""
        with self._lock:
            return {
                r: sum(1 for h in p.devices.values() if h == "Healthy")
                for r, p in sorted(self._plugins.items())
            }

    def wait_for(self, check: Callable[[SimKubelet], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while not check(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.1))
        return True

    # --- admission -----------------------------------------------------------------------------

    def admit(self, pod: str, resource: str, count: int = 1) -> Allocation:
        """Hand ``count`` devices of ``resource`` to ``pod``, as the device manager does."""
        with self._lock:
            p = self._plugins.get(resource)
            if p is None:
                raise AdmissionError(f"{pod}: resource {resource} is not registered")
            free = sorted(i for i, h in p.devices.items() if h == "Healthy" and i not in self.assigned)
        if len(free) < count:
            raise AdmissionError(f"{pod}: {resource} has {len(free)} free devices, {count} asked")
        chosen: Sequence[str] = free[:count]
        if p.preferred:
            req = api_pb2.PreferredAllocationRequest(
                container_requests=[
                    api_pb2.ContainerPreferredAllocationRequest(
                        available_deviceIDs=free, allocation_size=count
                    )
                ]
            )
            answer = list(p.stub.GetPreferredAllocation(req, timeout=5).container_responses[0].deviceIDs)
            if len(answer) == count and set(answer) <= set(free):
                chosen = answer
        try:
            resp = p.stub.Allocate(
                api_pb2.AllocateRequest(
                    container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=list(chosen))]
                ),
                timeout=5,
            ).container_responses[0]
        except grpc.RpcError as exc:
            raise AdmissionError(f"{pod}: Allocate of {list(chosen)} failed: {exc.details()}") from None
        with self._lock:
            for i in chosen:
                self.assigned[i] = pod
            self.admissions.append((pod, tuple(chosen)))
        return Allocation(
            resource,
            tuple(chosen),
            dict(resp.envs),
            tuple((m.container_path, m.host_path) for m in resp.mounts),
            dict(resp.annotations),
        )

    def release(self, pod: str) -> None:
        with self._lock:
            for i in [i for i, p in self.assigned.items() if p == pod]:
                del self.assigned[i]
