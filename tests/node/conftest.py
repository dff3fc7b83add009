"""Fixtures for the node agent's tests: simulated GPUs, both backends on them, no waits."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import structlog

from cdmo.mig.layouts import Instance, parse_layout
from cdmo.node_agent.backend import NO_WAIT_RETRY, GpuBackend
from cdmo.node_agent.nvml import NvmlBackend
from cdmo.node_agent.simulated import SimulatedBackend, SimulatedNode
from tests.node.fake_pynvml import make_fake_pynvml

RETRY = NO_WAIT_RETRY


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
