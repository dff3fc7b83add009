"""Fixtures for the node agent's tests: simulated GPUs, both backends on them, no waits."""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pynvml
import pytest
import structlog

from cdmo.mig.layouts import Instance, parse_layout
from cdmo.node_agent.backend import NO_WAIT_RETRY, GpuBackend
from cdmo.node_agent.nvml import NvmlBackend
from cdmo.node_agent.simulated import SimulatedBackend, SimulatedNode
from tests.node.fake_pynvml import make_fake_pynvml
from tests.node.nvml_standin.build import NoCompiler, build_standin
from tests.node.nvml_standin.gpus import STATE_ENV, StandinGpus
from tests.node.podresources_server import Kubelet, serve_pod_resources

RETRY = NO_WAIT_RETRY


class NoPodResources:
    """The kubelet's pod-resources answering that no pod holds anything."""

    def available(self) -> bool:
        return True

    def list(self) -> list[Any]:
        return []

    def allocatable(self) -> list[Any]:
        return []


def layout(text: str) -> tuple[Instance, ...]:
    return parse_layout(text)


@pytest.fixture
def node() -> SimulatedNode:
    """Two H100 80GB GPUs, MIG on, empty."""
    return SimulatedNode.from_models(["h100-80gb", "h100-80gb"], seed="test-node")


@pytest.fixture
def sim(node: SimulatedNode) -> SimulatedBackend:
    return SimulatedBackend(node)


@pytest.fixture(params=["simulated", "nvml"])
def any_backend(request: pytest.FixtureRequest, node: SimulatedNode) -> GpuBackend:
    """The same simulated GPUs through either backend (NVML through the fake pynvml)."""
    if request.param == "simulated":
        return SimulatedBackend(node)
    return NvmlBackend(make_fake_pynvml(node))


@pytest.fixture(scope="session")
def nvml_standin_lib(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The NVML stand-in, built now and loaded into this process where pynvml's own
    ``CDLL("libnvidia-ml.so.1")`` finds it (by soname); commands get it by LD_LIBRARY_PATH."""
    try:
        lib = build_standin(tmp_path_factory.mktemp("nvml-standin"))
    except NoCompiler as exc:
        reason = f"the NVML stand-in cannot be built: {exc}"
        if os.environ.get("CI"):  # as the chart tests: CI must run them
            pytest.fail(f"{reason} (CI must run the NVML tests: install gcc)")
        pytest.skip(reason)
    loaded = ctypes.CDLL(str(lib))
    yield lib
    del loaded  # kept alive for the session: pynvml holds the same library


@pytest.fixture
def make_standin(
    nvml_standin_lib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., StandinGpus]:
    """GPUs in a fresh stand-in state file, which this process's NVML then reads."""

    def make(*models: str, mig: bool = True) -> StandinGpus:
        gpus = StandinGpus.create(tmp_path / "nvml-standin.state", list(models), mig=mig)
        monkeypatch.setenv(STATE_ENV, str(gpus.path))
        pynvml.nvmlInit()
        try:  # the real pynvml must have loaded the stand-in, not a driver's library
            same = pynvml.nvmlLib._handle == ctypes.CDLL(str(nvml_standin_lib))._handle
            assert same, f"pynvml loaded {pynvml.nvmlLib._name}, not the stand-in"
        finally:
            pynvml.nvmlShutdown()
        return gpus

    return make


@pytest.fixture
def standin(make_standin: Callable[..., StandinGpus]) -> StandinGpus:
    """Two H100 80GB GPUs behind the NVML stand-in, MIG on, empty."""
    return make_standin("h100-80gb", "h100-80gb")


@pytest.fixture
def pod_resources_server() -> Iterator[tuple[Kubelet, str]]:
    """A real pod-resources gRPC server on a unix socket: (servicer, socket path)."""
    with serve_pod_resources() as served:
        yield served


@pytest.fixture
def make_node() -> Callable[..., SimulatedNode]:
    def make(*models: str, mig: bool = True) -> SimulatedNode:
        return SimulatedNode.from_models(list(models), seed="test-node", mig_enabled=mig)

    return make


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """The CLI verbs configure structlog for the process; a later test must not log to a closed capture."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A fresh folder under /tmp: unix socket paths are short (107 bytes), and pytest's
    tmp_path can be too long for the device plugin's and the kubelet's sockets."""
    d = Path(tempfile.mkdtemp(prefix="cdmo-dp-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)
