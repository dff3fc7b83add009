"""The agent's device plugin against a kubelet that speaks the real protocol over unix sockets."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pynvml
import pytest
from structlog.testing import capture_logs

from cdmo.errors import InvalidInput
from cdmo.mig.layouts import Instance
from cdmo.node_agent.advertise import HANDED_OUT_GRACE_SECONDS
from cdmo.node_agent.backend import NO_WAIT_RETRY, NvmlReturn
from cdmo.node_agent.deviceplugin import api_pb2_grpc
from cdmo.node_agent.deviceplugin.plugin import KubeletDevicePlugin, PluginSettings, endpoint_name
from cdmo.node_agent.nvml import NvmlBackend
from cdmo.node_agent.reconcile import GpuState, reconcile_node
from cdmo.node_agent.simulated import SimulatedBackend, SimulatedNode
from tests.harness.kubelet import AdmissionError, SimKubelet
from tests.node.nvml_standin.gpus import StandinGpus

R1 = "nvidia.com/mig-1g.10gb"
R3 = "nvidia.com/mig-3g.40gb"


@pytest.fixture
def node() -> SimulatedNode:
    return SimulatedNode.from_models(["h100-80gb", "h100-80gb"], seed="dp-node")


@pytest.fixture
def kubelet(short_dir: Path) -> Iterator[SimKubelet]:
    k = SimKubelet(short_dir).start()
    yield k
    k.stop()


def make_plugin(node: SimulatedNode, d: Path, **kw: object) -> KubeletDevicePlugin:
    settings = PluginSettings(plugin_dir=str(d), poll_seconds=0.1, event_wait_seconds=0.1, **kw)  # type: ignore[arg-type]
    plugin = KubeletDevicePlugin(SimulatedBackend(node), settings)
    plugin.start()
    return plugin


def apply(node: SimulatedNode, plugin: KubeletDevicePlugin, desired: dict[int, list[Instance]]):  # type: ignore[no-untyped-def]
    plugin.set_desired(desired)
    return reconcile_node(SimulatedBackend(node), desired, retry=NO_WAIT_RETRY, advertiser=plugin)


def uuids(node: SimulatedNode, profile: str) -> set[str]:
    backend = SimulatedBackend(node)
    return {i.uuid for g in (0, 1) for i in backend.list_instances(g) if i.profile == profile and i.uuid}


def test_registers_every_resource_and_lists_exactly_the_mig_uuids(node, kubelet, short_dir) -> None:  # type: ignore[no-untyped-def]
    plugin = make_plugin(node, short_dir)
    try:
        apply(node, plugin, {0: [Instance("3g.40gb", 0), Instance("1g.10gb", 4), Instance("1g.10gb", 5)]})
        assert kubelet.wait_for(lambda k: set(k.resources()) == {R1, R3})
        assert kubelet.wait_for(
            lambda k: (
                set(k.devices(R1)) == uuids(node, "1g.10gb") and set(k.devices(R3)) == uuids(node, "3g.40gb")
            )
        )
        assert len(kubelet.devices(R3)) == 1 and len(kubelet.devices(R1)) == 2
        assert all(h == "Healthy" for h in kubelet.devices(R1).values())
        assert (short_dir / endpoint_name(R1)).exists()
        assert sorted(e for _, e in kubelet.registrations) == [
            "cdmo-mig-1g.10gb.sock",
            "cdmo-mig-3g.40gb.sock",
        ]
        # volume-mounts is the default form
        alloc = kubelet.admit("default/p1", R3)
        assert alloc.envs == {"NVIDIA_VISIBLE_DEVICES": "/var/run/nvidia-container-devices"}
        assert alloc.mounts == ((f"/var/run/nvidia-container-devices/{alloc.ids[0]}", "/dev/null"),)
    finally:
        plugin.stop()
    assert not (short_dir / endpoint_name(R1)).exists()


def test_withdrawn_devices_leave_the_stream_before_destroy_and_are_refused(node, kubelet, short_dir) -> None:  # type: ignore[no-untyped-def]
    plugin = make_plugin(node, short_dir)
    try:
        apply(node, plugin, {0: [Instance("3g.40gb", 0), Instance("3g.40gb", 4)]})
        assert kubelet.wait_for(lambda k: len(k.devices(R3)) == 2)
        doomed = sorted(kubelet.devices(R3))
        gone_when_destroyed: list[bool] = []
        real_destroy = SimulatedBackend.destroy_instance

        class Watching(SimulatedBackend):
            def destroy_instance(self, gpu: int, gi_id: int) -> None:
                # withdraw returns once the stream has sent the new list; the kubelet's thread may
                # still be reading it (on a loaded machine), so it gets a moment, while the destroy
                # waits: without the withdraw the list would change only after the destroy.
                gone_when_destroyed.append(
                    kubelet.wait_for(lambda k: not (set(k.devices(R3)) & set(doomed)), timeout=2.0)
                )
                real_destroy(self, gpu, gi_id)

        plugin.set_desired({0: [Instance("7g.80gb", 0)]})
        reconcile_node(Watching(node), {0: [Instance("7g.80gb", 0)]}, retry=NO_WAIT_RETRY, advertiser=plugin)
        # at every destroy, the kubelet's list no longer held the withdrawn devices
        assert gone_when_destroyed and all(gone_when_destroyed)
        # the emptied resource stays registered with an empty list
        assert kubelet.wait_for(
            lambda k: k.devices(R3) == {} and len(k.devices("nvidia.com/mig-7g.80gb")) == 1
        )
        assert R3 in kubelet.resources()
        with pytest.raises(AdmissionError, match="free devices"):
            kubelet.admit("default/late", R3)
        # Allocate refuses a withdrawn device even if a kubelet asks for it
        new = next(iter(kubelet.devices("nvidia.com/mig-7g.80gb")))
        plugin.withdraw([new])
        with pytest.raises(Exception, match="being withdrawn"):
            plugin.allocate("nvidia.com/mig-7g.80gb", [new])
        assert kubelet.wait_for(lambda k: k.devices("nvidia.com/mig-7g.80gb") == {})
        plugin.refresh()  # not destroyed after all: offered again
        assert kubelet.wait_for(lambda k: list(k.devices("nvidia.com/mig-7g.80gb")) == [new])
    finally:
        plugin.stop()


def test_a_held_instance_is_withdrawn_then_offered_again(node, kubelet, short_dir) -> None:  # type: ignore[no-untyped-def]
    plugin = make_plugin(node, short_dir)
    try:
        apply(node, plugin, {0: [Instance("3g.40gb", 0)]})
        assert kubelet.wait_for(lambda k: len(k.devices(R3)) == 1)
        uuid = next(iter(kubelet.devices(R3)))
        node.add_process(uuid, 4242)  # a process appears: the destroy is refused at the re-check
        result = apply(node, plugin, {0: [Instance("7g.80gb", 0)]})
        assert result.blocked or result.errors or not result.destroyed
        assert kubelet.wait_for(lambda k: list(k.devices(R3)) == [uuid])
    finally:
        plugin.stop()


def test_a_device_just_handed_to_the_kubelet_is_kept_until_pod_resources_can_list_it(  # type: ignore[no-untyped-def]
    node, kubelet, short_dir
) -> None:
    # The kubelet records an allocation in pod-resources only after Allocate returns: a plan
    # landing in between would find the device free there, and destroy it under a starting pod.
    now = [1000.0]
    settings = PluginSettings(plugin_dir=str(short_dir), poll_seconds=0.1, event_wait_seconds=0.1)
    plugin = KubeletDevicePlugin(SimulatedBackend(node), settings, clock=lambda: now[0])
    plugin.start()
    try:
        apply(node, plugin, {0: [Instance("3g.40gb", 0), Instance("3g.40gb", 4)]})
        assert kubelet.wait_for(lambda k: len(k.devices(R3)) == 2)
        handed = kubelet.admit("ml/starting", R3).ids[0]  # Allocate over gRPC; no pod-resources row
        result = apply(node, plugin, {0: [Instance("7g.80gb", 0)]})
        assert result.gpu(0).state == GpuState.BLOCKED
        assert f"the kubelet (it was just handed device {handed}" in result.gpu(0).message
        assert handed in uuids(node, "3g.40gb")
        assert handed not in {u for i in result.destroyed for u in i.uuids}
        now[0] += HANDED_OUT_GRACE_SECONDS  # by now pod-resources would list it, were it in use
        result = apply(node, plugin, {0: [Instance("7g.80gb", 0)]})
        assert result.settled and uuids(node, "3g.40gb") == set()
    finally:
        plugin.stop()


def test_preferred_allocation_prefers_instances_the_plan_keeps(node, kubelet, short_dir) -> None:  # type: ignore[no-untyped-def]
    with capture_logs() as logs:
        plugin = make_plugin(node, short_dir, device_list_strategy="envvar", device_id_strategy="index")
    # index ids move as the agent makes and destroys instances: the start says so, once
    warned = [e["event"] for e in logs if e["log_level"] == "warning" and "move" in e["event"]]
    assert len(warned) == 1 and "--device-id-strategy uuid" in warned[0]
    try:
        apply(node, plugin, {0: [Instance("1g.10gb", s) for s in range(7)]})
        assert kubelet.wait_for(lambda k: len(k.devices(R1)) == 7)
        # the next plan keeps only the 1g at start 6 on GPU 0
        plugin.set_desired({0: [Instance("1g.10gb", 6), Instance("3g.40gb", 0)]})
        alloc = kubelet.admit("default/p", R1)
        kept = next(i for i in SimulatedBackend(node).list_instances(0) if i.start == 6)
        assert alloc.ids == (kept.uuid,)
        assert alloc.envs["NVIDIA_VISIBLE_DEVICES"].startswith("0:")
    finally:
        plugin.stop()


def test_re_registers_when_the_kubelet_restarts(node, kubelet, short_dir) -> None:  # type: ignore[no-untyped-def]
    plugin = make_plugin(node, short_dir)
    try:
        apply(node, plugin, {0: [Instance("3g.40gb", 0)]})
        assert kubelet.wait_for(lambda k: len(k.devices(R3)) == 1)
        before = len(kubelet.registrations)
        kubelet.restart()  # removes every socket, re-creates kubelet.sock
        assert kubelet.wait_for(lambda k: len(k.registrations) > before and len(k.devices(R3)) == 1, 5)
        assert (short_dir / endpoint_name(R3)).exists()
    finally:
        plugin.stop()


def test_changes_outside_the_agent_and_nvml_health_reach_the_kubelet(node, kubelet, short_dir) -> None:  # type: ignore[no-untyped-def]
    plugin = make_plugin(node, short_dir)
    try:
        apply(node, plugin, {0: [Instance("3g.40gb", 0)], 1: []})
        assert kubelet.wait_for(lambda k: len(k.devices(R3)) == 1)
        SimulatedBackend(node).create_instance(1, "1g.10gb", 0)  # someone ran nvidia-smi
        # No agent pass runs here: only the plugin's own re-read of NVML can list it (the waits
        # bound a hang; how soon is the poll interval's business, not a test's).
        assert kubelet.wait_for(lambda k: len(k.devices(R1)) == 1, 20.0)
        node.inject_fault("*", NvmlReturn.GPU_IS_LOST, count=1000)
        assert kubelet.wait_for(lambda k: set(k.devices(R3).values()) == {"Unhealthy"}, 20.0)
    finally:
        plugin.stop()


def test_mig_off_gpus_are_offered_as_whole_gpus(short_dir, kubelet) -> None:  # type: ignore[no-untyped-def]
    node = SimulatedNode.from_models(["h100-80gb", "h100-80gb"], seed="off", mig_enabled=False)
    plugin = make_plugin(node, short_dir)
    try:
        assert kubelet.wait_for(lambda k: len(k.devices("nvidia.com/gpu")) == 2)
        assert all(i.startswith("GPU-") for i in kubelet.devices("nvidia.com/gpu"))
    finally:
        plugin.stop()


def test_mig_stays_off_on_a_gpu_just_handed_to_the_kubelet_whole(short_dir, kubelet) -> None:  # type: ignore[no-untyped-def]
    node = SimulatedNode.from_models(["h100-80gb", "h100-80gb"], seed="off", mig_enabled=False)
    now = [1000.0]
    settings = PluginSettings(plugin_dir=str(short_dir), poll_seconds=0.1, event_wait_seconds=0.1)
    plugin = KubeletDevicePlugin(SimulatedBackend(node), settings, clock=lambda: now[0])
    plugin.start()
    try:
        assert kubelet.wait_for(lambda k: len(k.devices("nvidia.com/gpu")) == 2)
        handed = kubelet.admit("ml/whole", "nvidia.com/gpu").ids[0]  # no pod-resources row yet
        index = next(g.index for g in SimulatedBackend(node).list_gpus() if g.uuid == handed)
        desired = {index: [Instance("7g.80gb", 0)]}
        plugin.set_desired(desired)
        backend = SimulatedBackend(node)
        result = reconcile_node(backend, desired, retry=NO_WAIT_RETRY, advertiser=plugin, enable_mig=True)
        assert not backend.list_gpus()[index].mig_current
        assert f"the kubelet (it was just handed device {handed}" in result.gpu(index).message
        now[0] += HANDED_OUT_GRACE_SECONDS
        reconcile_node(backend, desired, retry=NO_WAIT_RETRY, advertiser=plugin, enable_mig=True)
        assert backend.list_gpus()[index].mig_current or backend.list_gpus()[index].mig_pending
    finally:
        plugin.stop()


def test_bad_settings_are_refused_with_a_hint(node) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput, match="too long"):
        KubeletDevicePlugin(SimulatedBackend(node), PluginSettings(plugin_dir="/tmp/" + "x" * 100))
    with pytest.raises(InvalidInput, match="device ID strategy"):
        KubeletDevicePlugin(SimulatedBackend(node), PluginSettings(device_id_strategy="name"))


def test_nvidia_plugin_sockets_are_noticed(node, kubelet, short_dir) -> None:  # type: ignore[no-untyped-def]
    plugin = make_plugin(node, short_dir)
    try:
        assert plugin.nvidia_sockets() == []
        (short_dir / "nvidia-mig-1g.10gb.sock").touch()
        assert plugin.nvidia_sockets() == ["nvidia-mig-1g.10gb.sock"]
    finally:
        plugin.stop()


def test_registration_state_feeds_the_refresh_outcome(node, short_dir) -> None:  # type: ignore[no-untyped-def]
    import threading

    from cdmo.node_agent.refresh import BuiltinRefresh

    plugin = make_plugin(node, short_dir)
    try:
        apply(node, plugin, {0: [Instance("3g.40gb", 0)]})
        outcome = BuiltinRefresh(plugin).refresh(threading.Event())
        assert not outcome.ok and outcome.reason == "NotRegistered" and "no kubelet socket" in outcome.message
        kubelet = SimKubelet(short_dir).start()  # the kubelet comes up later
        try:
            assert kubelet.wait_for(lambda k: R3 in k.resources(), 5)
            deadline = time.monotonic() + 5
            while not plugin.registration()[0] and time.monotonic() < deadline:
                time.sleep(0.05)
            outcome = BuiltinRefresh(plugin).refresh(threading.Event())
            assert outcome.ok and outcome.reason == "Advertised"
        finally:
            kubelet.stop()
    finally:
        plugin.stop()


class _RefusingKubelet(api_pb2_grpc.RegistrationServicer):
    """A kubelet whose Register always fails (a version it refuses, or one still starting)."""

    def __init__(self, plugin_dir: Path) -> None:
        self.calls = 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        api_pb2_grpc.add_RegistrationServicer_to_server(self, self.server)
        (plugin_dir / "kubelet.sock").unlink(missing_ok=True)
        self.server.add_insecure_port(f"unix:{plugin_dir / 'kubelet.sock'}")
        self.server.start()

    def Register(self, request: Any, context: Any) -> Any:
        self.calls += 1
        context.abort(grpc.StatusCode.UNAVAILABLE, "kubelet is not ready")

    def stop(self) -> None:
        self.server.stop(grace=None).wait()


def test_a_refused_registration_is_retried_with_backoff_and_at_once_for_a_new_kubelet(  # type: ignore[no-untyped-def]
    node, short_dir
) -> None:
    # Every reconcile pass serves and registers (set_desired, refresh): without a backoff, a
    # kubelet that refuses (or hangs, up to register_timeout per call) is asked again on every
    # pass and every poll, holding up the pass each time.
    now = [1000.0]
    refusing = _RefusingKubelet(short_dir)
    settings = PluginSettings(
        plugin_dir=str(short_dir), poll_seconds=3600, event_wait_seconds=0.1
    )  # no background ticks
    plugin = KubeletDevicePlugin(SimulatedBackend(node), settings, clock=lambda: now[0])
    plugin.start()
    try:
        apply(node, plugin, {0: [Instance("3g.40gb", 0)]})
        first = refusing.calls
        assert first >= 1
        for _ in range(5):
            plugin.refresh()  # what each later pass does
        assert refusing.calls == first, "registration retried before its backoff ran out"
        assert plugin.registration()[0] is False
        now[0] += 60.0
        plugin.refresh()
        assert refusing.calls > first, "registration never retried after its backoff"
        # A new kubelet (a new kubelet.sock) is asked at once, backoff or not.
        refusing.stop()
        kubelet = SimKubelet(short_dir).start()
        try:
            plugin.refresh()
            assert R3 in kubelet.resources()
            assert plugin.registration()[0] is True
        finally:
            kubelet.stop()
    finally:
        refusing.stop()
        plugin.stop()


class _TwoNumaNodes(SimulatedBackend):
    """GPU N on NUMA node N, as the kernel would say of a two-socket machine."""

    def list_gpus(self):  # type: ignore[no-untyped-def]
        return [dataclasses.replace(g, numa_node=g.index) for g in super().list_gpus()]


def test_devices_name_their_gpus_numa_node_for_the_topology_manager(node, kubelet, short_dir) -> None:  # type: ignore[no-untyped-def]
    """As NVIDIA's plugin does; without it the kubelet could not align a MIG device with the CPUs
    of its socket."""
    plugin = KubeletDevicePlugin(
        _TwoNumaNodes(node),
        PluginSettings(plugin_dir=str(short_dir), poll_seconds=0.1, event_wait_seconds=0.1),
    )
    plugin.start()
    try:
        desired = {0: [Instance("1g.10gb", 0)], 1: [Instance("1g.10gb", 0)]}
        plugin.set_desired(desired)
        reconcile_node(_TwoNumaNodes(node), desired, retry=NO_WAIT_RETRY, advertiser=plugin)
        assert kubelet.wait_for(lambda k: len(k.topology(R1)) == 2)
        on = {SimulatedBackend(node).list_instances(g)[0].uuid: (g,) for g in (0, 1)}
        assert kubelet.topology(R1) == on
    finally:
        plugin.stop()
    # where the kernel says nothing, no topology is given (the kubelet then has no preference)
    plain = make_plugin(node, short_dir)
    try:
        assert kubelet.wait_for(lambda k: set(k.topology(R1).values()) == {()})
    finally:
        plain.stop()


# --- index device ids are NVML's MIG device indexes (real pynvml on the NVML stand-in) ------------


@pytest.fixture
def nvml_backend(standin: StandinGpus) -> Iterator[NvmlBackend]:
    backend = NvmlBackend()
    yield backend
    backend.close()


def nvml_plugin(backend: NvmlBackend, d: Path, **kw: object) -> KubeletDevicePlugin:
    settings = PluginSettings(
        plugin_dir=str(d), poll_seconds=0.1, event_wait_seconds=0.1, device_id_strategy="index", **kw
    )  # type: ignore[arg-type]
    plugin = KubeletDevicePlugin(backend, settings)
    plugin.start()
    return plugin


def test_index_ids_are_nvmls_mig_device_indexes_in_its_order_with_its_holes(  # type: ignore[no-untyped-def]
    standin, nvml_backend, kubelet, short_dir
) -> None:
    """The driver numbers MIG devices by slot (standin.c: mig-index-by-start), not in GI id
    order, with holes. Each index id the plugin answers must be the one NVIDIA's toolkit
    resolves (nvmlDeviceGetMigDeviceHandleByIndex) to the very device the kubelet handed out:
    GI-id order named 1g.10gb@0 "0:1", which is 1g.10gb@1 here, another pod's device."""
    standin.set_option("mig-index-by-start")
    for gpu, profile, start in [(0, "1g.10gb", 0), (0, "1g.10gb", 1), (0, "3g.40gb", 4), (1, "3g.40gb", 4)]:
        nvml_backend.create_instance(gpu, profile, start)
    plugin = nvml_plugin(nvml_backend, short_dir, device_list_strategy="envvar,cdi-annotations")
    try:
        assert kubelet.wait_for(lambda k: len(k.devices(R1)) == 2 and len(k.devices(R3)) == 2)
        answered = {}
        for n, resource in enumerate([R1, R1, R3, R3]):
            alloc = kubelet.admit(f"default/p{n}", resource)
            [index_id] = alloc.envs["NVIDIA_VISIBLE_DEVICES"].split(",")
            assert standin.resolve_index(index_id) == alloc.ids[0], f"{index_id} is not {alloc.ids[0]}"
            assert list(alloc.annotations.values()) == [f"nvidia.com/gpu={index_id}"]
            answered[alloc.ids[0]] = index_id
        # the slots: start + CI id; 1:0 to 1:3 and 0:2, 0:3, 0:5, 0:6 are holes
        assert sorted(answered.values()) == ["0:0", "0:1", "0:4", "1:4"]
    finally:
        plugin.stop()


def test_index_ids_count_every_compute_instance_of_a_split_gpu_instance(  # type: ignore[no-untyped-def]
    standin, nvml_backend, kubelet, short_dir
) -> None:
    """NVML numbers MIG devices (compute instances), not GPU instances: a 3g.40gb@0 split into two
    by another tool takes indexes 0 and 1, so the whole 3g.40gb@4 after it is 0:2, not 0:1."""
    gi = standin.create_gpu_instance(0, 9, 0, 4)
    standin.create_compute_instance(0, gi.gi_id, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE)
    standin.create_compute_instance(0, gi.gi_id, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_2_SLICE)
    made = nvml_backend.create_instance(0, "3g.40gb", 4)
    plugin = nvml_plugin(nvml_backend, short_dir, device_list_strategy="envvar")
    try:
        assert kubelet.wait_for(lambda k: k.capacity().get(R3) == 1)  # the split one is Unhealthy
        alloc = kubelet.admit("default/p", R3)
        assert alloc.ids == (made.uuid,)
        assert alloc.envs == {"NVIDIA_VISIBLE_DEVICES": "0:2"}
        assert standin.resolve_index("0:2") == made.uuid
    finally:
        plugin.stop()


def test_a_mig_device_nvml_gives_no_index_for_is_named_by_its_uuid(  # type: ignore[no-untyped-def]
    standin, nvml_backend, kubelet, short_dir
) -> None:
    """nvml.h: nvmlDeviceGetMigDeviceHandleByIndex may answer NOT_SUPPORTED. The index is then
    unknown: the device stays offered and Healthy, and the container is told its UUID (which
    the toolkit takes under either strategy), never a guessed index."""
    made = nvml_backend.create_instance(0, "3g.40gb", 4)
    standin.inject_fault("nvmlDeviceGetMigDeviceHandleByIndex", NvmlReturn.NOT_SUPPORTED, -1)
    plugin = nvml_plugin(nvml_backend, short_dir, device_list_strategy="envvar,volume-mounts")
    try:
        assert kubelet.wait_for(lambda k: k.devices(R3) == {made.uuid: "Healthy"})
        alloc = kubelet.admit("default/p", R3)
        assert alloc.mounts == ((f"/var/run/nvidia-container-devices/{made.uuid}", "/dev/null"),)
    finally:
        plugin.stop()
