"""Critical XID errors: the pure decision (which devices an event makes Unhealthy, the knob) as
tables, and the backends' event watch on the simulated GPUs, on the fake pynvml and on the real
pynvml through the NVML stand-in. The device plugin end to end: test_deviceplugin_xid.py."""

from __future__ import annotations

import time

import pytest
from structlog.testing import capture_logs

from cdmo.config import AgentConfig
from cdmo.errors import InvalidInput, NvmlError
from cdmo.node_agent.backend import GpuBackend, NvmlReturn, XidEvent
from cdmo.node_agent.deviceplugin.devices import GPU_RESOURCE, PluginDevice
from cdmo.node_agent.deviceplugin.health import (
    APPLICATION_XIDS,
    XidMarks,
    XidPolicy,
    apply_marks,
    mark_xid,
    parse_disable_healthchecks,
    xid_targets,
)
from cdmo.node_agent.deviceplugin.plugin import KubeletDevicePlugin, PluginSettings
from cdmo.node_agent.nvml import NvmlBackend
from cdmo.node_agent.simulated import SimulatedBackend, SimulatedNode, dump_state, parse_state
from cdmo.node_agent.wiring import build_device_plugin
from tests.node.fake_pynvml import make_fake_pynvml
from tests.node.nvml_standin.gpus import StandinGpus

R1 = "nvidia.com/mig-1g.10gb"

# --- the knob: CDMO_DISABLE_HEALTHCHECKS reads as NVIDIA's DP_DISABLE_HEALTHCHECKS -----------------


@pytest.mark.parametrize(
    ("text", "watch", "also_ignored"),
    [
        ("", True, set()),
        ("all", False, set()),
        ("xids", False, set()),
        ("XIDs", False, set()),
        ("48", True, {48}),
        (" 48, 63 ,", True, {48, 63}),
        ("48,all", False, set()),
    ],
    ids=["default", "all", "xids", "case", "one", "list-with-spaces", "all-in-a-list"],
)
def test_the_knob_reads_as_nvidias(text: str, watch: bool, also_ignored: set[int]) -> None:
    policy = parse_disable_healthchecks(text)
    assert policy.watch is watch
    if watch:
        assert policy.ignored == APPLICATION_XIDS | also_ignored
    assert policy.ignores(13) and policy.ignores(109)  # application XIDs, always
    assert policy.ignores(48) is (not watch or 48 in also_ignored)


def test_the_application_xids_are_nvidias_list() -> None:
    # NVIDIA/k8s-device-plugin internal/rm/health.go, ignoredXids (and its DRA driver's xidsToSkip)
    assert {13, 31, 43, 45, 68, 109} == APPLICATION_XIDS


def test_a_bad_value_is_refused_at_start_with_a_hint(node: SimulatedNode) -> None:
    with pytest.raises(InvalidInput, match="'abc' is not an XID") as err:
        parse_disable_healthchecks("48,abc")
    for digits in ("\u00b2", "\u0664\u0668"):  # str.isdigit() takes them; int() reads '٤٨' as 48
        with pytest.raises(InvalidInput, match="is not an XID"):
            parse_disable_healthchecks(digits)
    assert "all (or xids)" in (err.value.hint or "")
    with pytest.raises(InvalidInput, match="CDMO_DISABLE_HEALTHCHECKS"):
        KubeletDevicePlugin(SimulatedBackend(node), PluginSettings(disable_healthchecks="-1"))
    with pytest.raises(InvalidInput, match="CDMO_DISABLE_HEALTHCHECKS"):
        build_device_plugin(
            AgentConfig.from_env({"CDMO_DISABLE_HEALTHCHECKS": "ecc"}), SimulatedBackend(node)
        )
    plugin = build_device_plugin(
        AgentConfig.from_env({"CDMO_DISABLE_HEALTHCHECKS": "48"}), SimulatedBackend(node)
    )
    assert plugin.xid_policy == XidPolicy(ignored=APPLICATION_XIDS | {48})


# --- the decision: which devices an event names, what it marks -----------------------------------


def _mig(uuid: str, gpu: int, gi: int, ci: int = 0) -> PluginDevice:
    return PluginDevice(R1, uuid, gpu, f"{gpu}:{gi}", gi_id=gi, ci_id=ci, profile="1g.10gb", start=gi - 7)


#: GPU 0: three MIG devices, two of them compute instances of one GPU instance (GI 9);
#: GPU 1: offered whole (MIG off); GPU 2: one MIG device.
DEVICES = (
    _mig("MIG-a", 0, 7),
    _mig("MIG-b", 0, 8),
    _mig("MIG-c0", 0, 9, 0),
    _mig("MIG-c1", 0, 9, 1),
    PluginDevice(GPU_RESOURCE, "GPU-1", 1, "1"),
    _mig("MIG-z", 2, 7),
)


@pytest.mark.parametrize(
    ("event", "scope", "devices", "gpus"),
    [
        (XidEvent(0, 48, 7, 0), "device", {"MIG-a"}, set()),
        (XidEvent(0, 94, 9, 1), "device", {"MIG-c1"}, set()),
        (XidEvent(0, 48, 9, None), "gpu-instance", {"MIG-c0", "MIG-c1"}, set()),
        (XidEvent(0, 79), "gpu", {"MIG-a", "MIG-b", "MIG-c0", "MIG-c1"}, {0}),
        (XidEvent(1, 48), "gpu", {"GPU-1"}, {1}),
        (XidEvent(1, 48, 3, 0), "device", {"GPU-1"}, set()),
        (XidEvent(None, 48), "node", {d.id for d in DEVICES}, set()),
        (XidEvent(0, 48, 10, 0), "device", set(), set()),
        (XidEvent(2, 48, 7, 1), "device", set(), set()),
        (XidEvent(0, 13, 7, 0), "device", set(), set()),
        (XidEvent(0, 109), "gpu", set(), set()),
        (XidEvent(5, 48), "gpu", set(), {5}),
    ],
    ids=[
        "one-mig-device",
        "one-compute-instance-of-a-split-gi",
        "every-ci-of-a-gpu-instance",
        "whole-gpu",
        "whole-gpu-offered-whole",
        "mig-ids-on-a-gpu-offered-whole",
        "device-nvml-could-not-tell",
        "gpu-instance-gone-since",
        "compute-instance-not-offered",
        "application-xid",
        "application-xid-whole-gpu",
        "gpu-without-devices-yet",
    ],
)
def test_an_event_marks_what_it_names(event: XidEvent, scope: str, devices: set[str], gpus: set[int]) -> None:
    assert event.scope == scope
    marks = mark_xid(XidMarks(), event, DEVICES, XidPolicy())
    # a whole GPU is marked as the GPU alone (no device of it is worth making again), any other
    # event by the devices it names
    assert marks == XidMarks(frozenset(gpus), frozenset() if gpus else frozenset(devices))
    after = apply_marks(DEVICES, marks)
    assert {d.id for d in after if not d.healthy} == devices
    if not XidPolicy().ignores(event.xid):
        assert xid_targets(event, DEVICES) == devices


def test_a_configured_xid_is_ignored_like_an_application_one() -> None:
    policy = parse_disable_healthchecks("48")
    assert mark_xid(XidMarks(), XidEvent(0, 48, 7, 0), DEVICES, policy) == XidMarks()
    assert mark_xid(XidMarks(), XidEvent(0, 94, 7, 0), DEVICES, policy).devices == {"MIG-a"}
    off = parse_disable_healthchecks("all")
    assert mark_xid(XidMarks(), XidEvent(0, 79), DEVICES, off) == XidMarks()


def test_marks_last_a_mig_device_by_uuid_and_a_whole_gpu_for_every_later_device() -> None:
    marks = mark_xid(XidMarks(), XidEvent(0, 48, 7, 0), DEVICES, XidPolicy())
    marks = mark_xid(marks, XidEvent(2, 79), DEVICES, XidPolicy())
    # GPU instance 7 of GPU 0 made again: a new UUID at the same place is a new, Healthy device;
    # on GPU 2, whose whole GPU reported an error, a new device is not trusted either
    later = (_mig("MIG-a2", 0, 7), _mig("MIG-b", 0, 8), _mig("MIG-y", 2, 8))
    assert [(d.id, d.healthy) for d in apply_marks(later, marks)] == [
        ("MIG-a2", True),
        ("MIG-b", True),
        ("MIG-y", False),
    ]
    # already Unhealthy (a partial compute instance) stays as it is
    partial = PluginDevice(R1, "MIG-p", 2, None, False)
    assert apply_marks([partial], marks) == (partial,)


# --- the backends: an event set, XIDs after it, GPUs NVML will not register ------------------------


@pytest.fixture(params=["simulated", "nvml-fake", "nvml-standin"])
def gpus(request: pytest.FixtureRequest, node: SimulatedNode) -> SimulatedNode | StandinGpus:
    if request.param == "nvml-standin":
        standin: StandinGpus = request.getfixturevalue("standin")
        return standin
    return node


@pytest.fixture
def backend(request: pytest.FixtureRequest, gpus: SimulatedNode | StandinGpus) -> GpuBackend:
    if isinstance(gpus, StandinGpus):
        return NvmlBackend()
    if "nvml-fake" in request.node.callspec.id:
        return NvmlBackend(make_fake_pynvml(gpus))
    return SimulatedBackend(gpus)


def raise_xid(
    gpus: SimulatedNode | StandinGpus, gpu: int, xid: int, gi: int | None = None, ci: int | None = None
) -> None:
    if isinstance(gpus, StandinGpus):
        gpus.raise_xid(gpu, xid, gi, ci)
    else:
        gpus.inject_xid(gpu, xid, gi, ci)


def test_a_watch_gets_the_xids_raised_after_it_with_their_ids(backend: GpuBackend, gpus) -> None:  # type: ignore[no-untyped-def]
    made = backend.create_instance(0, "3g.40gb", 4)
    assert made.ci_id is not None
    raise_xid(gpus, 0, 48, made.gi_id, made.ci_id)  # before the watch: NVML records none
    watch = backend.watch_xid_events()
    try:
        assert watch.gpus == {0, 1}
        assert watch.wait(0.05) is None
        raise_xid(gpus, 0, 48, made.gi_id, made.ci_id)
        raise_xid(gpus, 1, 79)
        raise_xid(gpus, 0, 94, made.gi_id, None)
        assert watch.wait(5) == XidEvent(0, 48, made.gi_id, made.ci_id)
        assert watch.wait(5) == XidEvent(1, 79, None, None)
        assert watch.wait(5) == XidEvent(0, 94, made.gi_id, None)
        started = time.monotonic()
        assert watch.wait(0.2) is None
        assert time.monotonic() - started < 2.0  # bounded: the caller's thread gets back
        # a second event set gets its own copy of what comes after it
        other = backend.watch_xid_events()
        try:
            raise_xid(gpus, 1, 48)
            assert watch.wait(5) == other.wait(5) == XidEvent(1, 48)
        finally:
            other.close()
    finally:
        watch.close()


def test_a_gpu_nvml_will_not_register_is_not_watched_and_one_warning_says_so(
    backend: GpuBackend, gpus
) -> None:  # type: ignore[no-untyped-def]
    gpus.inject_fault("nvmlDeviceRegisterEvents", NvmlReturn.NOT_SUPPORTED, 1)  # GPU 0 registers first
    with capture_logs() as logs:
        watch = backend.watch_xid_events()
    try:
        assert watch.gpus == {1}
        warned = [e for e in logs if e["log_level"] == "warning"]
        assert [(e["event"], e["gpu"], e["nvml_rc"]) for e in warned] == [
            ("Skipped watching GPU for XID errors", 0, NvmlReturn.NOT_SUPPORTED)
        ]
        raise_xid(gpus, 0, 48)
        raise_xid(gpus, 1, 94)
        assert watch.wait(5) == XidEvent(1, 94)
    finally:
        watch.close()


def test_a_failed_wait_raises_and_the_next_one_waits_again(backend: GpuBackend, gpus) -> None:  # type: ignore[no-untyped-def]
    watch = backend.watch_xid_events()
    try:
        gpus.inject_fault("nvmlEventSetWait", NvmlReturn.UNKNOWN, 1)
        with pytest.raises(NvmlError) as err:
            watch.wait(0.05)
        assert err.value.rc == NvmlReturn.UNKNOWN
        assert watch.wait(0.05) is None
    finally:
        watch.close()


def test_no_event_set_is_an_error_of_the_whole_watch(backend: GpuBackend, gpus) -> None:  # type: ignore[no-untyped-def]
    gpus.inject_fault("nvmlEventSetCreate", NvmlReturn.UNKNOWN, 1)
    with pytest.raises(NvmlError):
        backend.watch_xid_events()


def test_the_state_file_keeps_xid_events_and_takes_one_written_by_hand() -> None:
    node = SimulatedNode.from_models(["h100-80gb"], seed="xid")
    node.inject_xid(0, 48, 7, 0)
    doc = dump_state(node)
    assert doc["xid_events"] == [{"seq": 1, "gpu": 0, "xid": 48, "gi_id": 7, "ci_id": 0}]
    assert dump_state(parse_state(doc)) == doc
    doc["xid_events"].append({"gpu": 0, "xid": 79})  # by hand: no seq, raised when read
    again = parse_state(doc)
    assert again.next_xid({0: 1}) is not None and again.xid_serial == 2
    with pytest.raises(InvalidInput, match=r"xid_events\[1\].gpu 3"):
        parse_state({**doc, "xid_events": [doc["xid_events"][0], {"gpu": 3, "xid": 48}]})


def test_the_agents_metrics_count_each_xid_and_what_it_did(node: SimulatedNode) -> None:
    """cdmo_agent_xid_errors_total, to alert on: by XID, marked or ignored."""
    from cdmo.node_agent.metrics import AgentMetrics

    metrics = AgentMetrics()
    plugin = build_device_plugin(
        AgentConfig.from_env({"CDMO_DISABLE_HEALTHCHECKS": "63"}), SimulatedBackend(node), metrics
    )
    for xid in (48, 48, 13, 63):
        plugin.on_xid(XidEvent(0, xid))
    text = metrics.render().decode()
    assert 'cdmo_agent_xid_errors_total{action="marked",xid="48"} 2.0' in text
    assert 'cdmo_agent_xid_errors_total{action="ignored",xid="13"} 1.0' in text
    assert 'cdmo_agent_xid_errors_total{action="ignored",xid="63"} 1.0' in text
