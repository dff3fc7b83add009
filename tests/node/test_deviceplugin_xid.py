"""Critical XID errors reach the kubelet: the real pynvml on the NVML stand-in, the agent's real
gRPC device plugin, and the SimKubelet reading ListAndWatch over unix sockets.

An XID is raised the way the driver raises it: an ``xid`` record in the stand-in's state, which
``nvmlEventSetWait_v2`` delivers to every event set that registered the GPU before it. Events
come in the order raised, so a later XID whose effect has reached the kubelet proves that an
earlier one was handled too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from cdmo.config import AgentConfig
from cdmo.mig.layouts import Instance
from cdmo.node_agent.backend import NO_WAIT_RETRY, GpuInstanceInfo, NvmlReturn
from cdmo.node_agent.deviceplugin.plugin import KubeletDevicePlugin, PluginSettings
from cdmo.node_agent.nvml import NvmlBackend
from cdmo.node_agent.reconcile import reconcile_node
from cdmo.node_agent.simulated import SimulatedBackend, SimulatedNode
from cdmo.node_agent.wiring import build_device_plugin
from tests.harness.kubelet import SimKubelet
from tests.node.nvml_standin.gpus import CALLS_ENV, StandinGpus

R1 = "nvidia.com/mig-1g.10gb"
R3 = "nvidia.com/mig-3g.40gb"
H, U = "Healthy", "Unhealthy"


@pytest.fixture
def kubelet(short_dir: Path) -> Iterator[SimKubelet]:
    k = SimKubelet(short_dir).start()
    yield k
    k.stop()


@pytest.fixture
def info_logs() -> None:
    """Info-level logs reach capture_logs too (tests/conftest.py lets warnings through only)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))


@pytest.fixture
def backend(standin: StandinGpus) -> Iterator[NvmlBackend]:
    nvml = NvmlBackend()
    yield nvml
    nvml.close()


@pytest.fixture
def three(backend: NvmlBackend) -> tuple[GpuInstanceInfo, GpuInstanceInfo, GpuInstanceInfo]:
    """1g.10gb at 0 and at 1 on GPU 0, and at 0 on GPU 1."""
    return (
        backend.create_instance(0, "1g.10gb", 0),
        backend.create_instance(0, "1g.10gb", 1),
        backend.create_instance(1, "1g.10gb", 0),
    )


def start_plugin(backend: Any, d: Path, **kw: Any) -> KubeletDevicePlugin:
    settings = PluginSettings(plugin_dir=str(d), poll_seconds=0.1, event_wait_seconds=0.1, **kw)
    plugin = KubeletDevicePlugin(backend, settings)
    plugin.start()
    return plugin


def health(*pairs: tuple[GpuInstanceInfo, str]) -> dict[str | None, str]:
    return {i.uuid: h for i, h in pairs}


def test_a_critical_xid_on_one_mig_device_makes_exactly_that_device_unhealthy(  # type: ignore[no-untyped-def]
    standin, backend, three, kubelet, short_dir
) -> None:
    a, b, c = three
    plugin = start_plugin(backend, short_dir)
    try:
        assert plugin.watched_gpus == {0, 1}
        assert kubelet.wait_for(lambda k: k.devices(R1) == health((a, H), (b, H), (c, H)))
        with capture_logs() as logs:
            standin.raise_xid(0, 48, b.gi_id, b.ci_id)  # a double-bit ECC error on b
            assert kubelet.wait_for(lambda k: k.devices(R1) == health((a, H), (b, U), (c, H)), 10)
        marked = [e for e in logs if e["event"] == "Marked devices unhealthy after XID error"]
        assert [(e["xid"], e["gpu"], e["gi_id"], e["scope"], e["uuids"]) for e in marked] == [
            (48, 0, b.gi_id, "device", [b.uuid])
        ]
        # the kubelet hands out the healthy ones only, and the plugin never prefers b
        assert {kubelet.admit(f"default/p{n}", R1).ids[0] for n in range(2)} == {a.uuid, c.uuid}
        assert plugin.preferred(R1, [str(b.uuid)], [], 1) == []
        # the agent's own passes keep the mark (the poll re-reads NVML every 0.1 s)
        plugin.refresh()
        assert kubelet.devices(R1)[b.uuid] == U
        # made again at that placement, the instance has a new UUID: a new device, Healthy
        backend.destroy_instance(0, b.gi_id)
        b2 = backend.create_instance(0, "1g.10gb", 1)
        plugin.refresh()
        assert kubelet.wait_for(lambda k: k.devices(R1) == health((a, H), (b2, H), (c, H)))
    finally:
        plugin.stop()


def test_a_whole_gpu_xid_makes_every_device_of_that_gpu_unhealthy_until_the_agent_restarts(  # type: ignore[no-untyped-def]
    standin, backend, three, kubelet, short_dir
) -> None:
    a, b, c = three
    plugin = start_plugin(backend, short_dir)
    try:
        assert kubelet.wait_for(lambda k: len(k.devices(R1)) == 3)
        standin.raise_xid(0, 79)  # GI and CI ids 0xFFFFFFFF: the whole GPU
        assert kubelet.wait_for(lambda k: k.devices(R1) == health((a, U), (b, U), (c, H)), 10)
        # nor is an instance made on that GPU afterwards handed out
        d = backend.create_instance(0, "3g.40gb", 4)
        plugin.refresh()
        assert kubelet.wait_for(lambda k: k.devices(R3) == health((d, U)))
    finally:
        plugin.stop()
    # A new agent (after the GPU was reset, or the node rebooted) trusts every device again, as
    # NVIDIA's plugin does once restarted.
    plugin = start_plugin(backend, short_dir)
    try:
        assert kubelet.wait_for(
            lambda k: set(k.devices(R1).values()) == {H} and k.devices(R3) == health((d, H))
        )
    finally:
        plugin.stop()


def test_application_xids_change_nothing(standin, backend, three, kubelet, short_dir, info_logs) -> None:  # type: ignore[no-untyped-def]
    a, b, c = three
    plugin = start_plugin(backend, short_dir)
    try:
        assert kubelet.wait_for(lambda k: len(k.devices(R1)) == 3)
        with capture_logs() as logs:
            standin.raise_xid(0, 13, a.gi_id, a.ci_id)  # Graphics Engine Exception: the app's fault
            standin.raise_xid(0, 31)  # GPU memory page fault
            standin.raise_xid(0, 109, b.gi_id, b.ci_id)  # Context Switch Timeout
            standin.raise_xid(1, 94, c.gi_id, c.ci_id)  # then a critical one, after them
            assert kubelet.wait_for(lambda k: k.devices(R1) == health((a, H), (b, H), (c, U)), 10)
        ignored = [e["xid"] for e in logs if e["event"] == "Ignored XID error"]
        assert ignored == [13, 31, 109]
    finally:
        plugin.stop()


def test_the_knob_ignores_more_xids(standin, backend, three, kubelet, short_dir) -> None:  # type: ignore[no-untyped-def]
    a, b, c = three
    conf = AgentConfig.from_env(
        {"CDMO_DEVICE_PLUGIN_DIR": str(short_dir), "CDMO_DISABLE_HEALTHCHECKS": "48, 63"}
    )
    plugin = build_device_plugin(conf, backend)
    plugin.start()
    try:
        assert kubelet.wait_for(lambda k: len(k.devices(R1)) == 3)
        standin.raise_xid(0, 48, a.gi_id, a.ci_id)
        standin.raise_xid(0, 63)
        standin.raise_xid(1, 94, c.gi_id, c.ci_id)
        assert kubelet.wait_for(lambda k: k.devices(R1) == health((a, H), (b, H), (c, U)), 10)
    finally:
        plugin.stop()


@pytest.mark.parametrize("value", ["all", "xids"])
def test_the_knob_turns_xid_health_checks_off(  # type: ignore[no-untyped-def]
    standin, backend, three, kubelet, short_dir, tmp_path, monkeypatch, value
) -> None:
    calls = tmp_path / "calls"
    monkeypatch.setenv(CALLS_ENV, str(calls))
    conf = AgentConfig.from_env(
        {"CDMO_DEVICE_PLUGIN_DIR": str(short_dir), "CDMO_DISABLE_HEALTHCHECKS": value}
    )
    plugin = build_device_plugin(conf, backend)
    plugin.start()
    try:
        assert kubelet.wait_for(lambda k: len(k.devices(R1)) == 3)
        assert plugin.watched_gpus == frozenset()
        standin.raise_xid(0, 48, three[0].gi_id, three[0].ci_id)
        standin.raise_xid(1, 79)
        seen = len(calls.read_text().splitlines())
        # the plugin's poll reads the GPUs again after the XIDs (at most 0.5 s later) ...
        deadline = time.monotonic() + 10
        while (
            "nvmlDeviceGetCount" not in calls.read_text().splitlines()[seen:] and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        assert "nvmlDeviceGetCount" in calls.read_text().splitlines()[seen:]
        assert kubelet.wait_for(lambda k: set(k.devices(R1).values()) == {H})
    finally:
        plugin.stop()
    # ... and no event set was ever made
    made = calls.read_text().splitlines()
    assert not {"nvmlEventSetCreate", "nvmlDeviceRegisterEvents", "nvmlEventSetWait"} & set(made)


def test_a_gpu_whose_registration_nvml_refuses_is_not_watched_and_nothing_fails(  # type: ignore[no-untyped-def]
    standin, backend, three, kubelet, short_dir
) -> None:
    a, b, c = three
    standin.inject_fault("nvmlDeviceRegisterEvents", NvmlReturn.NOT_SUPPORTED, 1)  # GPU 0's, the first
    with capture_logs() as logs:
        plugin = start_plugin(backend, short_dir)
    try:
        assert plugin.watched_gpus == {1}
        warned = [(e["event"], e.get("gpu")) for e in logs if e["log_level"] == "warning"]
        assert warned == [("Skipped watching GPU for XID errors", 0)]
        assert kubelet.wait_for(lambda k: k.devices(R1) == health((a, H), (b, H), (c, H)))
        standin.raise_xid(0, 48, a.gi_id, a.ci_id)  # not watched: not seen
        standin.raise_xid(1, 48, c.gi_id, c.ci_id)
        assert kubelet.wait_for(lambda k: k.devices(R1) == health((a, H), (b, H), (c, U)), 10)
        assert kubelet.admit("default/p", R1).ids[0] in {a.uuid, b.uuid}
    finally:
        plugin.stop()


def test_stop_is_prompt_and_frees_the_event_set(
    standin, backend, kubelet, short_dir, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    calls = tmp_path / "calls"
    monkeypatch.setenv(CALLS_ENV, str(calls))
    plugin = KubeletDevicePlugin(backend, PluginSettings(plugin_dir=str(short_dir)))  # 1 s waits
    plugin.start()
    time.sleep(0.3)  # the watcher is inside nvmlEventSetWait_v2 now
    started = time.monotonic()
    plugin.stop()
    assert time.monotonic() - started < 3.0
    made = calls.read_text().splitlines()
    assert made.count("nvmlEventSetCreate") == made.count("nvmlEventSetFree") == 1


def test_a_failed_wait_is_watched_again(standin, backend, three, kubelet, short_dir, info_logs) -> None:  # type: ignore[no-untyped-def]
    a, b, c = three
    plugin = start_plugin(backend, short_dir, event_backoff=0.05)
    try:
        assert kubelet.wait_for(lambda k: len(k.devices(R1)) == 3)
        with capture_logs() as logs:
            standin.inject_fault("nvmlEventSetWait", NvmlReturn.UNKNOWN, 2)
            deadline = time.monotonic() + 10
            # each failed wait: a warning, a backoff, the event set made and registered again
            while sum(e["event"] == "Watching GPUs for XID errors" for e in logs) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
            "Failed to wait for XID errors; will watch again"
        ] * 2
        assert plugin.watched_gpus == {0, 1}
        standin.raise_xid(0, 48, a.gi_id, a.ci_id)
        assert kubelet.wait_for(lambda k: k.devices(R1) == health((a, U), (b, H), (c, H)), 10)
    finally:
        plugin.stop()


# --- with the agent's passes, on simulated GPUs ----------------------------------------------------


def test_a_pass_that_makes_the_instance_again_brings_a_healthy_device(short_dir, kubelet) -> None:  # type: ignore[no-untyped-def]
    """An XID marks the device (its UUID); the operator's next layout drops the instance and the
    agent destroys it (free: the kubelet gives it to no pod) and makes it again at the same
    placement: a new UUID, Healthy. Nothing in between holds up a pass."""
    node = SimulatedNode.from_models(["h100-80gb", "h100-80gb"], seed="xid-node")
    plugin = start_plugin(SimulatedBackend(node), short_dir)
    try:
        desired = {0: [Instance("3g.40gb", 0), Instance("3g.40gb", 4)]}
        plugin.set_desired(desired)
        reconcile_node(SimulatedBackend(node), desired, retry=NO_WAIT_RETRY, advertiser=plugin)
        assert kubelet.wait_for(lambda k: len(k.devices(R3)) == 2)
        broken = next(i for i in SimulatedBackend(node).list_instances(0) if i.start == 4)
        node.inject_xid(0, 95, broken.gi_id, broken.ci_id)  # uncontained memory error
        assert kubelet.wait_for(lambda k: k.devices(R3).get(broken.uuid) == U, 10)
        for layout in ({0: [Instance("3g.40gb", 0)]}, desired):
            plugin.set_desired(layout)
            result = reconcile_node(SimulatedBackend(node), layout, retry=NO_WAIT_RETRY, advertiser=plugin)
            assert result.settled
        again = next(i for i in SimulatedBackend(node).list_instances(0) if i.start == 4)
        assert again.uuid != broken.uuid
        assert kubelet.wait_for(lambda k: set(k.devices(R3).values()) == {H} and again.uuid in k.devices(R3))
    finally:
        plugin.stop()
