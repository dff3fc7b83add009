"""A kubelet pod-resources gRPC server on a unix socket in a short temp dir, answering List
with the devices a test gives it (as the NVIDIA device plugin would have them allocated), and
GetAllocatableResources with the devices it would have advertised."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from cdmo.node_agent.podresources import api_pb2, api_pb2_grpc


@dataclass(frozen=True)
class Held:
    """One container's devices as the kubelet reports them in pod-resources List."""

    namespace: str
    pod: str
    resource: str
    device_ids: tuple[str, ...]


@dataclass(frozen=True)
class Claimed:
    """One device a container got through a DRA claim, as the kubelet reports it in List."""

    namespace: str
    pod: str
    driver: str
    device: str
    cdi_devices: tuple[str, ...] = ()


class Kubelet(api_pb2_grpc.PodResourcesListerServicer):
    """The kubelet's pod-resources service, answering with ``self.held``."""

    def __init__(self) -> None:
        self.held: list[Held] = []
        self.claimed: list[Claimed] = []
        #: resource name -> device ids, for GetAllocatableResources (None: not served, as an old kubelet)
        self.allocatable: dict[str, list[str]] | None = {}

    def List(self, request: Any, context: Any) -> Any:
        held = [
            _pod(
                h.namespace,
                h.pod,
                devices=[api_pb2.ContainerDevices(resource_name=h.resource, device_ids=h.device_ids)],
            )
            for h in self.held
        ]
        claimed = [
            _pod(
                c.namespace,
                c.pod,
                dynamic_resources=[
                    api_pb2.DynamicResource(
                        claim_name=f"{c.pod}-gpu",
                        claim_namespace=c.namespace,
                        claim_resources=[
                            api_pb2.ClaimResource(
                                cdi_devices=[api_pb2.CDIDevice(name=n) for n in c.cdi_devices],
                                driver_name=c.driver,
                                pool_name="node-1",
                                device_name=c.device,
                            )
                        ],
                    )
                ],
            )
            for c in self.claimed
        ]
        return api_pb2.ListPodResourcesResponse(pod_resources=held + claimed)

    def GetAllocatableResources(self, request: Any, context: Any) -> Any:
        if self.allocatable is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "unknown method GetAllocatableResources")
        return api_pb2.AllocatableResourcesResponse(
            devices=[
                api_pb2.ContainerDevices(resource_name=name, device_ids=ids)
                for name, ids in sorted((self.allocatable or {}).items())
            ]
        )


def _pod(namespace: str, name: str, **container: Any) -> Any:
    """A pod with one container, ``main``, holding what ``container`` gives it."""
    return api_pb2.PodResources(
        name=name, namespace=namespace, containers=[api_pb2.ContainerResources(name="main", **container)]
    )


@contextlib.contextmanager
def serve_pod_resources() -> Iterator[tuple[Kubelet, str]]:
    """A running server and its socket path; stopped and removed on exit."""
    tmp = tempfile.mkdtemp(prefix="cdmo-kl-", dir="/tmp")  # unix socket paths are short
    socket_path = str(Path(tmp) / "kubelet.sock")
    servicer = Kubelet()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    api_pb2_grpc.add_PodResourcesListerServicer_to_server(servicer, server)
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    try:
        yield servicer, socket_path
    finally:
        server.stop(grace=None)
        shutil.rmtree(tmp, ignore_errors=True)
