"""The pod-resources client against a real gRPC server on a unix socket in a temp dir."""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from cdmo.node_agent.podresources import api_pb2, api_pb2_grpc
from cdmo.node_agent.podresources.client import (
    AllocatableDevices,
    PodDevices,
    PodResourcesClient,
    PodResourcesUnavailable,
)


class FakeKubelet(api_pb2_grpc.PodResourcesListerServicer):
    """What a kubelet with the NVIDIA device plugin (mixed strategy) answers."""

    def __init__(self) -> None:
        self.fail = False
        #: extra pods without devices, to make the answer big
        self.crowd = 0

    def List(self, request, context):
        if self.fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "kubelet restarting")
        crowd = [
            api_pb2.PodResources(
                name=f"pod-{i:06d}-" + "x" * 200,
                namespace="busy",
                containers=[api_pb2.ContainerResources(name="c", cpu_ids=list(range(64)))],
            )
            for i in range(self.crowd)
        ]
        known = [
            api_pb2.PodResources(
                name="train-1",
                namespace="ml",
                containers=[
                    api_pb2.ContainerResources(
                        name="main",
                        devices=[
                            api_pb2.ContainerDevices(
                                resource_name="nvidia.com/mig-1g.10gb", device_ids=["MIG-a", "MIG-b"]
                            ),
                            api_pb2.ContainerDevices(resource_name="nvidia.com/mig-3g.40gb", device_ids=[]),
                        ],
                        cpu_ids=[1, 2],
                    ),
                    api_pb2.ContainerResources(name="sidecar"),
                ],
            ),
            api_pb2.PodResources(
                name="web", namespace="default", containers=[api_pb2.ContainerResources(name="c")]
            ),
        ]
        return api_pb2.ListPodResourcesResponse(pod_resources=[*crowd, *known])

    def GetAllocatableResources(self, request, context):
        return api_pb2.AllocatableResourcesResponse(
            devices=[
                api_pb2.ContainerDevices(resource_name="nvidia.com/mig-1g.10gb", device_ids=["MIG-b"]),
                api_pb2.ContainerDevices(
                    resource_name="nvidia.com/mig-1g.10gb", device_ids=["MIG-a", "MIG-c"]
                ),
                api_pb2.ContainerDevices(resource_name="nvidia.com/mig-3g.40gb", device_ids=["MIG-d"]),
            ]
        )


@pytest.fixture
def kubelet() -> Iterator[tuple[FakeKubelet, str]]:
    # A short directory: unix socket paths are limited to about 107 bytes.
    tmp = tempfile.mkdtemp(prefix="cdmo-pr-", dir="/tmp")
    socket_path = str(Path(tmp) / "kubelet.sock")
    servicer = FakeKubelet()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    api_pb2_grpc.add_PodResourcesListerServicer_to_server(servicer, server)
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    try:
        yield servicer, socket_path
    finally:
        server.stop(grace=None)
        shutil.rmtree(tmp, ignore_errors=True)


def test_list_gives_one_row_per_container_and_resource(kubelet: tuple[FakeKubelet, str]) -> None:
    _, path = kubelet
    rows = PodResourcesClient(path).list()
    assert rows == [PodDevices("ml", "train-1", "main", "nvidia.com/mig-1g.10gb", ("MIG-a", "MIG-b"))]
    assert rows[0].pod_key == "ml/train-1"


def test_allocatable_merges_by_resource(kubelet: tuple[FakeKubelet, str]) -> None:
    _, path = kubelet
    assert PodResourcesClient(path).allocatable() == [
        AllocatableDevices("nvidia.com/mig-1g.10gb", ("MIG-a", "MIG-b", "MIG-c")),
        AllocatableDevices("nvidia.com/mig-3g.40gb", ("MIG-d",)),
    ]


def test_an_answer_past_grpcs_default_4_mib_is_read(kubelet: tuple[FakeKubelet, str]) -> None:
    """gRPC refuses answers over 4 MiB unless told otherwise; the kubelet's own clients allow 16."""
    servicer, path = kubelet
    servicer.crowd = 30_000  # about 9 MiB: 200-character names and 64 CPU ids each
    rows = PodResourcesClient(path, timeout_seconds=30).list()
    assert [r.pod_key for r in rows] == ["ml/train-1"]


def test_a_failing_kubelet_is_unavailable(kubelet: tuple[FakeKubelet, str]) -> None:
    servicer, path = kubelet
    servicer.fail = True
    with pytest.raises(PodResourcesUnavailable, match="UNAVAILABLE"):
        PodResourcesClient(path, timeout_seconds=2).list()


def test_a_missing_socket_says_what_to_mount(tmp_path: Path) -> None:
    client = PodResourcesClient(str(tmp_path / "kubelet.sock"))
    assert not client.available()
    with pytest.raises(PodResourcesUnavailable, match="mount /var/lib/kubelet/pod-resources"):
        client.list()


@pytest.fixture
def garbage_socket() -> Iterator[str]:
    """A unix socket whose server answers every connection with bytes that are not gRPC."""
    tmp = tempfile.mkdtemp(prefix="cdmo-pr-", dir="/tmp")
    path = str(Path(tmp) / "kubelet.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed: the test is over
            with conn, contextlib.suppress(OSError):
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\nnot grpc" * 10)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_socket_that_answers_garbage_is_named_as_not_the_kubelets(garbage_socket: str) -> None:
    """It once said only 'failed: StatusCode.UNAVAILABLE', with no hint of a wrong path."""
    with pytest.raises(PodResourcesUnavailable) as err:
        PodResourcesClient(garbage_socket, timeout_seconds=5).list()
    assert f"{garbage_socket} does not answer as the kubelet's pod-resources API (UNAVAILABLE)" in str(
        err.value
    )
    assert "give the kubelet's pod-resources socket, /var/lib/kubelet/pod-resources/kubelet.sock" in str(
        err.value
    )


@pytest.mark.parametrize("kind", ["regular file", "directory"])
def test_a_path_that_is_no_socket_is_named_before_dialing(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "kubelet.sock"
    if kind == "directory":
        path.mkdir()
    else:
        path.write_text("")
    client = PodResourcesClient(str(path))
    assert client.available()  # it exists: the agent reads it, and a failed read stays "degraded"
    with pytest.raises(PodResourcesUnavailable, match=f"is a {kind}, not the kubelet's pod-resources socket"):
        client.list()
    with pytest.raises(PodResourcesUnavailable, match=r"/var/lib/kubelet/pod-resources/kubelet\.sock"):
        client.allocatable()
