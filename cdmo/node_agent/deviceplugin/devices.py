"""What the agent's device plugin advertises and answers: pure decisions, no gRPC, no NVML.

- :func:`build_devices`: the GPUs' truth (as a backend reads it) -> the devices to offer, one
  per whole MIG device under ``nvidia.com/mig-<profile>`` (``+`` written ``.``), and one per
  GPU with MIG off under ``nvidia.com/gpu``;
- :func:`build_inventory`: devices minus the withdrawn ones, grouped by resource; a resource
  that was registered once keeps an (empty) entry so that the kubelet drops its capacity;
- :func:`prefer_devices`: the ``GetPreferredAllocation`` answer;
- :func:`build_container_response`: the ``Allocate`` answer in the form NVIDIA's device plugin
  gives it, so that the NVIDIA container toolkit of the GPU operator understands it.

Device IDs seen by the kubelet are always the NVML UUIDs (``MIG-...`` or ``GPU-...``), as in
NVIDIA's plugin; the device ID strategy changes only what the container is told.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cdmo.errors import InvalidInput
from cdmo.mig.layouts import Instance
from cdmo.mig.resources import resource_from_profile
from cdmo.node_agent.backend import GpuInfo, GpuInstanceInfo

GPU_RESOURCE = "nvidia.com/gpu"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"

DEVICE_LIST_STRATEGIES = ("envvar", "volume-mounts", "cdi-annotations")
DEVICE_ID_STRATEGIES = ("uuid", "index")

#: The variable the NVIDIA container toolkit reads.
VISIBLE_DEVICES_ENV = "NVIDIA_VISIBLE_DEVICES"
#: ``volume-mounts``: the toolkit (with ACCEPT_NVIDIA_VISIBLE_DEVICES_AS_VOLUME_MOUNTS=true)
#: reads the device list from the names of empty mounts under this directory, so that an
#: unprivileged pod cannot ask for other GPUs by setting the variable itself.
VOLUME_MOUNTS_ROOT = "/var/run/nvidia-container-devices"
VOLUME_MOUNTS_HOST_PATH = "/dev/null"
#: ``cdi-annotations``: the CDI annotation prefix the container runtimes read.
CDI_ANNOTATION_PREFIX = "cdi.k8s.io/"
CDI_PLUGIN_NAME = "cdmo-device-plugin"
#: The CDI kind of the spec the GPU operator's toolkit writes (``nvidia-ctk cdi generate``).
DEFAULT_CDI_KIND = "nvidia.com/gpu"


@dataclass(frozen=True, order=True)
class PluginDevice:
    """One device offered to the kubelet."""

    resource: str
    #: The NVML UUID: ``MIG-...`` for a MIG device, ``GPU-...`` for a whole GPU.
    id: str
    gpu: int
    #: NVIDIA's index form: ``<gpu>:<mig device>`` for MIG (NVML's MIG device index), ``<gpu>``
    #: for a whole GPU; None where NVML's MIG device index is unknown (the container is then
    #: told the UUID, see :func:`build_container_response`).
    index: str | None
    healthy: bool = True
    profile: str | None = None
    start: int | None = None
    #: The GPU's NUMA node, for the kubelet's Topology Manager (None: not said).
    numa: int | None = None
    #: The MIG device's GPU and compute instance ids (what an XID event names); None for a GPU.
    gi_id: int | None = None
    ci_id: int | None = None

    @property
    def health(self) -> str:
        return HEALTHY if self.healthy else UNHEALTHY


def build_devices(
    gpus: Sequence[GpuInfo],
    instances: Mapping[int, Sequence[GpuInstanceInfo]],
    *,
    unreadable: Collection[int] = (),
    previous: Sequence[PluginDevice] = (),
    whole_gpus: bool = True,
    mig_wanted: Collection[int] = (),
) -> tuple[PluginDevice, ...]:
    """The devices the GPUs hold now, sorted by (resource, id).

    A MIG device is offered when its GPU instance has a compute instance (it has a UUID);
    it is Healthy only when that compute instance spans the whole GPU instance (NVIDIA's
    plugin refuses others). Its index id is ``<gpu>:<i>`` with ``i`` NVML's own MIG device
    index as the backend read it (``nvmlDeviceGetMigDeviceHandleByIndex(gpu, i)``, what NVIDIA's
    plugin and container toolkit mean by it), not its rank among the GPU instance ids: a driver
    may order MIG devices otherwise and leave holes. Where the backend could not read ``i``,
    the device has no index id (None). ``unreadable`` GPUs (NVML failed on them) keep
    their ``previous`` devices, marked Unhealthy, so that the kubelet stops handing them out.
    With ``whole_gpus``, a GPU with MIG off is offered as ``nvidia.com/gpu``, unless it is in
    ``mig_wanted`` (the plan wants MIG instances on it): no new pod is given a whole GPU that
    the agent is about to switch to MIG.
    """
    out: list[PluginDevice] = []
    for info in sorted(gpus, key=lambda g: g.index):
        if info.index in unreadable:
            out.extend(dataclasses.replace(d, healthy=False) for d in previous if d.gpu == info.index)
            continue
        if not info.mig_current:
            if whole_gpus and info.index not in mig_wanted:
                out.append(
                    PluginDevice(GPU_RESOURCE, info.uuid, info.index, str(info.index), numa=info.numa_node)
                )
            continue
        for inst in instances.get(info.index, ()):
            if not inst.uuid:
                continue  # no compute instance: no MIG device
            # The index is NVML's, never a guess: a position counted here could name another
            # pod's MIG device to the toolkit (build_container_response says what None becomes).
            n = inst.mig_index
            out.append(
                PluginDevice(
                    resource_from_profile(inst.profile),
                    inst.uuid,
                    info.index,
                    None if n is None else f"{info.index}:{n}",
                    inst.healthy,
                    inst.profile,
                    inst.start,
                    info.numa_node,
                    inst.gi_id,
                    inst.ci_id,
                )
            )
    return tuple(sorted(out))


def layout_resources(desired: Mapping[int, Sequence[Instance]]) -> frozenset[str]:
    """The resource names of every profile a desired layout names."""
    return frozenset(resource_from_profile(i.profile) for layout in desired.values() for i in layout)


def build_inventory(
    devices: Iterable[PluginDevice], withdrawn: Collection[str], resources: Iterable[str] = ()
) -> dict[str, tuple[PluginDevice, ...]]:
    """resource -> the devices to list, withdrawn ones left out; every name in ``resources``
    gets an entry, empty when it has no device (the kubelet then drops its capacity at once)."""
    out: dict[str, list[PluginDevice]] = {r: [] for r in resources}
    for dev in devices:
        out.setdefault(dev.resource, [])
        if dev.id not in withdrawn:
            out[dev.resource].append(dev)
    return {r: tuple(sorted(out[r])) for r in sorted(out)}


def prefer_devices(
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
    devices: Mapping[str, PluginDevice],
    kept: Collection[tuple[int, Instance]],
    withdrawn: Collection[str],
) -> tuple[str, ...]:
    """``size`` device IDs out of ``available``, ``must_include`` first.

    Never a withdrawn, unknown or unhealthy device (even if the kubelet offers one). Then
    devices the current plan keeps (``kept``: (gpu, instance) of the desired layout) before
    ones it is about to replace, each group by (gpu, start, id): the same input gives the same
    answer. May be shorter than ``size`` when too few devices qualify.
    """

    def usable(dev_id: str) -> bool:
        dev = devices.get(dev_id)
        return dev is not None and dev.healthy and dev_id not in withdrawn

    chosen = [d for d in dict.fromkeys(must_include) if usable(d)][: max(size, 0)]
    rest = [d for d in dict.fromkeys(available) if d not in chosen and usable(d)]

    def rank(dev_id: str) -> tuple[int, int, int, str]:
        dev = devices[dev_id]
        is_kept = dev.profile is not None and (dev.gpu, Instance(dev.profile, dev.start or 0)) in kept
        return (0 if is_kept else 1, dev.gpu, dev.start or 0, dev_id)

    rest.sort(key=rank)
    return tuple(chosen + rest[: max(size - len(chosen), 0)])


@dataclass(frozen=True)
class ContainerResponse:
    """The parts of a ``ContainerAllocateResponse`` cdmo fills."""

    envs: Mapping[str, str] = field(default_factory=dict)
    #: (container path, host path, read only)
    mounts: tuple[tuple[str, str, bool], ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)


def parse_device_list_strategy(text: str) -> tuple[str, ...]:
    """``volume-mounts`` or a comma-separated list such as ``envvar,cdi-annotations``."""
    names = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    bad = [n for n in names if n not in DEVICE_LIST_STRATEGIES]
    if not names or bad:
        raise InvalidInput(
            f"unknown device list strategy {text!r}",
            hint="use one or more of " + ", ".join(DEVICE_LIST_STRATEGIES) + ", separated by commas",
        )
    return names


def check_device_id_strategy(text: str) -> str:
    if text not in DEVICE_ID_STRATEGIES:
        raise InvalidInput(
            f"unknown device ID strategy {text!r}", hint="use " + " or ".join(DEVICE_ID_STRATEGIES)
        )
    return text


def build_container_response(
    devices: Sequence[PluginDevice],
    list_strategies: Sequence[str],
    id_strategy: str = "uuid",
    cdi_kind: str = DEFAULT_CDI_KIND,
) -> ContainerResponse:
    """The answer to ``Allocate`` for one container, as NVIDIA's device plugin words it.

    - ``envvar``: ``NVIDIA_VISIBLE_DEVICES=<id>,<id>``;
    - ``volume-mounts``: ``NVIDIA_VISIBLE_DEVICES=/var/run/nvidia-container-devices`` and one
      mount of ``/dev/null`` at ``/var/run/nvidia-container-devices/<id>`` per device (wins
      over ``envvar`` when both are given, as in NVIDIA's plugin);
    - ``cdi-annotations``: ``cdi.k8s.io/cdmo-device-plugin_<first id>`` = ``<kind>=<id>,...``.

    ``<id>`` is the UUID (``MIG-...``), or with ``index`` NVIDIA's index form (``0:1``).

    A device whose NVML index is unknown (``index`` None) is named by its UUID even under
    ``index``. The toolkit resolves ``<gpu>:<i>`` when the container starts, with NVML's
    index, so an index that might be wrong could give the container another pod's MIG device;
    a UUID names exactly the device the kubelet handed out. The toolkit takes UUIDs in
    ``NVIDIA_VISIBLE_DEVICES`` and the mounts whatever the strategy; a CDI spec generated with
    index names only fails the container's start loudly (unresolvable CDI device) rather than
    handing it the wrong device. Marking such devices Unhealthy instead would drop them from
    the node's capacity, and where a GPU never numbers its MIG devices (NOT_SUPPORTED) leave
    every pod asking for them pending while the operator keeps making instances for them.
    """
    ids = [d.index if id_strategy == "index" and d.index is not None else d.id for d in devices]
    envs: dict[str, str] = {}
    mounts: tuple[tuple[str, str, bool], ...] = ()
    annotations: dict[str, str] = {}
    if "envvar" in list_strategies:
        envs[VISIBLE_DEVICES_ENV] = ",".join(ids)
    if "volume-mounts" in list_strategies:
        envs[VISIBLE_DEVICES_ENV] = VOLUME_MOUNTS_ROOT
        mounts = tuple((f"{VOLUME_MOUNTS_ROOT}/{i}", VOLUME_MOUNTS_HOST_PATH, False) for i in ids)
    if "cdi-annotations" in list_strategies and devices:
        # The key must be unique per container and a valid annotation name: one container's
        # devices are never another's, so the first UUID (at most 40 characters) does it.
        key = f"{CDI_ANNOTATION_PREFIX}{CDI_PLUGIN_NAME}_{devices[0].id}"
        annotations[key] = ",".join(f"{cdi_kind}={i}" for i in ids)
    return ContainerResponse(envs, mounts, annotations)
