"""A client of the kubelet pod-resources API: which pod holds which device.

``List`` gives pods -> containers -> devices (``resource_name``, ``device_ids``); for the NVIDIA
device plugin's MIG resources the device ids are MIG UUIDs (deviceIDStrategy=uuid, its
default). Devices a container got through Dynamic Resource Allocation (``dynamic_resources``:
claims, each device named by its driver, pool and device name and its CDI devices) come as rows
whose resource name is ``dra:<driver>`` and whose ids are the device's name and CDI names.
``GetAllocatableResources`` gives every device the kubelet knows. The socket is
``/var/lib/kubelet/pod-resources/kubelet.sock``; mount the directory, not the socket, so that
a kubelet restart does not strand the client. A channel is opened per call for the same reason.
"""

from __future__ import annotations

import builtins
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from cdmo.errors import Transient
from cdmo.node_agent.podresources import api_pb2, api_pb2_grpc

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
_SOCKET_HINT = f"give the kubelet's pod-resources socket, {DEFAULT_SOCKET} (--pod-resources-socket or $CDMO_POD_RESOURCES_SOCKET)"

T = TypeVar("T")


class PodResourcesUnavailable(Transient):
    """The kubelet's pod-resources socket is missing or does not answer."""


#: The resource name of a row of DRA devices: ``dra:`` and the driver's name.
DRA_PREFIX = "dra:"


@dataclass(frozen=True)
class PodDevices:
    """Devices of one resource that the kubelet gave one container of one pod."""

    namespace: str
    pod: str
    container: str
    resource_name: str
    device_ids: tuple[str, ...]

    @property
    def pod_key(self) -> str:
        return f"{self.namespace}/{self.pod}"


@dataclass(frozen=True)
class AllocatableDevices:
    """Devices of one resource that the kubelet can hand out (from the device plugins)."""

    resource_name: str
    device_ids: tuple[str, ...]


#: The largest answer read: 16 MiB, the DefaultMaxMsgSize of the kubelet's own pod-resources
#: client package (pkg/kubelet/apis/podresources); gRPC's default is 4 MiB,
#: which a node with hundreds of pods, containers and CPU ids can pass, and then nothing on the
#: node could be decided (what is in use would be unknown).
MAX_MESSAGE_BYTES = 16 << 20


class PodResourcesClient:
    """``List`` and ``GetAllocatableResources`` over the kubelet's unix socket."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, *, timeout_seconds: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout_seconds = timeout_seconds

    def available(self) -> bool:
        """Whether the socket exists (the kubelet may still not answer)."""
        return bool(self.socket_path) and os.path.exists(self.socket_path)

    def _check_socket(self) -> None:
        """Refuse, before dialing, a path that cannot be the kubelet's socket: gRPC says only
        UNAVAILABLE for a missing path, a regular file and a directory alike."""
        try:
            mode = os.stat(self.socket_path).st_mode if self.socket_path else None
        except FileNotFoundError:
            mode = None
        except OSError as exc:
            raise PodResourcesUnavailable(
                f"cannot reach the kubelet pod-resources socket {self.socket_path}: {exc.strerror or exc}",
                hint=_SOCKET_HINT,
            ) from None
        if mode is None:
            raise PodResourcesUnavailable(
                f"the kubelet pod-resources socket {self.socket_path} does not exist",
                hint="mount /var/lib/kubelet/pod-resources into the agent pod",
            )
        if not stat.S_ISSOCK(mode):
            what = "not a socket"
            if stat.S_ISDIR(mode):
                what = "a directory"
            elif stat.S_ISREG(mode):
                what = "a regular file"
            raise PodResourcesUnavailable(
                f"{self.socket_path} is {what}, not the kubelet's pod-resources socket", hint=_SOCKET_HINT
            )

    def _call(self, method: Callable[[api_pb2_grpc.PodResourcesListerStub], T]) -> T:
        self._check_socket()
        try:
            with grpc.insecure_channel(
                f"unix://{self.socket_path}",
                options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
            ) as channel:
                return method(api_pb2_grpc.PodResourcesListerStub(channel))
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            if code == grpc.StatusCode.UNAVAILABLE:
                # Nothing listens on the socket, or what does is not a gRPC server (a garbage
                # answer breaks the HTTP/2 handshake): gRPC says UNAVAILABLE for both.
                raise PodResourcesUnavailable(
                    f"{self.socket_path} does not answer as the kubelet's pod-resources API ({name}): "
                    "the kubelet is not running, or this is not its socket",
                    hint=_SOCKET_HINT,
                ) from exc
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise PodResourcesUnavailable(
                    f"{self.socket_path} gave no answer in {self.timeout_seconds:g} s ({name}): "
                    "the kubelet is overloaded, or this is not its socket",
                    hint=_SOCKET_HINT,
                ) from exc
            raise PodResourcesUnavailable(
                f"the kubelet pod-resources API at {self.socket_path} failed: {name}"
            ) from exc

    def list(self) -> list[PodDevices]:
        """Every device the kubelet gave a container, sorted by pod, container and resource."""
        response: Any = self._call(
            lambda stub: stub.List(api_pb2.ListPodResourcesRequest(), timeout=self.timeout_seconds)
        )
        return build_pod_devices(response.pod_resources)

    # builtins.list: inside this class, ``list`` is the method above.
    def allocatable(self) -> builtins.list[AllocatableDevices]:
        """Every device the kubelet can hand out, by resource name."""
        response: Any = self._call(
            lambda stub: stub.GetAllocatableResources(
                api_pb2.AllocatableResourcesRequest(), timeout=self.timeout_seconds
            )
        )
        merged: dict[str, list[str]] = {}
        for dev in response.devices:
            merged.setdefault(dev.resource_name, []).extend(dev.device_ids)
        return [AllocatableDevices(name, tuple(sorted(ids))) for name, ids in sorted(merged.items())]


def build_pod_devices(pod_resources: Sequence[Any]) -> list[PodDevices]:
    """Flatten ``ListPodResourcesResponse.pod_resources`` into one row per container and resource."""
    rows = []
    for pod in pod_resources:
        for container in pod.containers:
            for dev in container.devices:
                if dev.device_ids:
                    rows.append(
                        PodDevices(
                            pod.namespace, pod.name, container.name, dev.resource_name, tuple(dev.device_ids)
                        )
                    )
            for claim in container.dynamic_resources:
                for res in claim.claim_resources:
                    names = (res.device_name, *(c.name for c in res.cdi_devices))
                    rows.append(
                        PodDevices(
                            pod.namespace,
                            pod.name,
                            container.name,
                            DRA_PREFIX + res.driver_name,
                            tuple(n for n in names if n),
                        )
                    )
    return sorted(rows, key=lambda r: (r.namespace, r.pod, r.container, r.resource_name))
