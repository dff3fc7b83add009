"""The device plugin's pure decisions: what to offer, what to prefer, how to answer Allocate."""

from __future__ import annotations

import dataclasses

import pytest

from cdmo.errors import InvalidInput
from cdmo.mig.layouts import Instance
from cdmo.node_agent.backend import ComputeInstanceInfo, GpuInfo, GpuInstanceInfo
from cdmo.node_agent.deviceplugin.devices import (
    GPU_RESOURCE,
    PluginDevice,
    build_container_response,
    build_devices,
    build_inventory,
    layout_resources,
    parse_device_list_strategy,
    prefer_devices,
)

MIG_ON = GpuInfo(0, "GPU-0", "NVIDIA H100 80GB HBM3", "h100-80gb", True, True)
MIG_OFF = GpuInfo(1, "GPU-1", "NVIDIA H100 80GB HBM3", "h100-80gb", False, False)


def inst(
    profile: str, start: int, gi: int, uuid: str | None, *, full: bool = True, mig: int | None = None
) -> GpuInstanceInfo:
    """``mig``: NVML's MIG device index of its compute instance (None: unknown)."""
    size = int(profile[0]) if profile[0] != "7" else 8
    cis = (ComputeInstanceInfo(0, uuid, full, mig),) if uuid is not None else ()
    return GpuInstanceInfo(
        0, profile, start, size, gi, None if uuid is None else 0, uuid, full, compute_instances=cis
    )


def test_devices_are_whole_mig_devices_and_mig_off_gpus() -> None:
    instances = {
        0: [
            inst("3g.40gb", 4, gi=2, uuid="MIG-b", mig=4),
            inst("1g.10gb", 0, gi=9, uuid="MIG-a", mig=0),
            inst("1g.10gb", 1, gi=10, uuid=None),  # no compute instance: no device
            inst("2g.20gb", 2, gi=5, uuid="MIG-c", full=False),  # partial CI: offered, unhealthy
        ]
    }
    devs = build_devices([MIG_ON, MIG_OFF], instances)
    by_id = {d.id: d for d in devs}
    assert set(by_id) == {"MIG-a", "MIG-b", "MIG-c", "GPU-1"}
    assert by_id["MIG-a"].resource == "nvidia.com/mig-1g.10gb"
    assert by_id["GPU-1"].resource == GPU_RESOURCE and by_id["GPU-1"].index == "1"
    # the MIG device index is NVML's (its order and holes), not the rank of the GI id; unknown: none
    assert (by_id["MIG-b"].index, by_id["MIG-c"].index, by_id["MIG-a"].index) == ("0:4", None, "0:0")
    assert not by_id["MIG-c"].healthy and by_id["MIG-c"].health == "Unhealthy"
    assert build_devices([MIG_ON, MIG_OFF], instances, whole_gpus=False) == tuple(
        d for d in devs if d.resource != GPU_RESOURCE
    )
    # a MIG-off GPU the plan wants MIG instances on is not offered whole
    assert build_devices([MIG_ON, MIG_OFF], instances, mig_wanted={1}) == tuple(
        d for d in devs if d.resource != GPU_RESOURCE
    )


def test_unreadable_gpu_keeps_its_devices_as_unhealthy() -> None:
    prev = build_devices([MIG_ON], {0: [inst("1g.10gb", 0, 9, "MIG-a")]})
    again = build_devices([MIG_ON], {}, unreadable={0}, previous=prev)
    assert [(d.id, d.health) for d in again] == [("MIG-a", "Unhealthy")]


def test_inventory_drops_withdrawn_and_keeps_empty_resources() -> None:
    devs = build_devices([MIG_ON], {0: [inst("1g.10gb", 0, 9, "MIG-a"), inst("1g.10gb", 1, 10, "MIG-b")]})
    inv = build_inventory(devs, {"MIG-a"}, ["nvidia.com/mig-3g.40gb"])
    assert {r: [d.id for d in v] for r, v in inv.items()} == {
        "nvidia.com/mig-1g.10gb": ["MIG-b"],
        "nvidia.com/mig-3g.40gb": [],
    }
    assert layout_resources({0: [Instance("1g.10gb+me", 0)]}) == {"nvidia.com/mig-1g.10gb.me"}


def _dev(i: str, start: int, gpu: int = 0, healthy: bool = True) -> PluginDevice:
    return PluginDevice("nvidia.com/mig-1g.10gb", i, gpu, f"{gpu}:{start}", healthy, "1g.10gb", start)


@pytest.mark.parametrize(
    ("available", "must", "size", "kept", "withdrawn", "expected"),
    [
        (["a", "b", "c"], [], 1, {(0, Instance("1g.10gb", 2))}, set(), ("c",)),
        (["a", "b", "c"], [], 2, set(), set(), ("a", "b")),
        (["a", "b", "c"], [], 2, set(), {"a"}, ("b", "c")),
        (["a", "b", "c"], ["c"], 2, set(), set(), ("c", "a")),
        (["a", "b", "c"], ["b"], 1, set(), {"b"}, ("a",)),
        (["a", "zz", "u"], [], 3, set(), set(), ("a",)),
    ],
    ids=["kept-first", "by-start", "never-withdrawn", "must-include", "withdrawn-must", "unknown-unhealthy"],
)
def test_preferred_allocation(available, must, size, kept, withdrawn, expected) -> None:  # type: ignore[no-untyped-def]
    devices = {d.id: d for d in (_dev("a", 0), _dev("b", 1), _dev("c", 2), _dev("u", 3, healthy=False))}
    assert prefer_devices(available, must, size, devices, kept, withdrawn) == expected


def test_allocate_answers_in_nvidia_plugin_forms() -> None:
    devs = [_dev("MIG-aaa", 0), _dev("MIG-bbb", 1)]
    env = build_container_response(devs, ("envvar",))
    assert env.envs == {"NVIDIA_VISIBLE_DEVICES": "MIG-aaa,MIG-bbb"} and not env.mounts
    vol = build_container_response(devs, ("volume-mounts",))
    assert vol.envs == {"NVIDIA_VISIBLE_DEVICES": "/var/run/nvidia-container-devices"}
    assert vol.mounts == (
        ("/var/run/nvidia-container-devices/MIG-aaa", "/dev/null", False),
        ("/var/run/nvidia-container-devices/MIG-bbb", "/dev/null", False),
    )
    idx = build_container_response(devs, ("envvar",), "index")
    assert idx.envs == {"NVIDIA_VISIBLE_DEVICES": "0:0,0:1"}
    # a device without NVML's index is named by its UUID, never by a guessed index
    unknown = dataclasses.replace(devs[1], index=None)
    idx = build_container_response([devs[0], unknown], ("envvar", "cdi-annotations"), "index")
    assert idx.envs == {"NVIDIA_VISIBLE_DEVICES": "0:0,MIG-bbb"}
    assert idx.annotations == {
        "cdi.k8s.io/cdmo-device-plugin_MIG-aaa": "nvidia.com/gpu=0:0,nvidia.com/gpu=MIG-bbb"
    }
    cdi = build_container_response(devs, ("cdi-annotations",))
    assert cdi.annotations == {
        "cdi.k8s.io/cdmo-device-plugin_MIG-aaa": "nvidia.com/gpu=MIG-aaa,nvidia.com/gpu=MIG-bbb"
    }
    assert not cdi.envs


def test_device_list_strategy_parsing() -> None:
    assert parse_device_list_strategy("envvar, cdi-annotations") == ("envvar", "cdi-annotations")
    with pytest.raises(InvalidInput, match="unknown device list strategy"):
        parse_device_list_strategy("env")
    with pytest.raises(InvalidInput):
        parse_device_list_strategy("")
