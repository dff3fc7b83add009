"""Who holds which MIG instance: pod-resources, NVML processes and bound pods, merged.

An instance is in use when a pod holds its MIG UUID (kubelet pod-resources ``List``), when
NVML shows a compute process on it, or when a pod already bound to this node asks for its
profile and has not been admitted yet: such pods are counted as *reservations* of free
instances of that profile, because the kubelet will hand one out to them any moment.

When pod-resources cannot be read, nobody can say which instance a bound pod holds; every
instance of the profiles such pods ask for is then protected (``unknown``).

A pod-resources row holds the devices its ids name, whatever its resource name (a renamed
resource such as ``nvidia.com/mig-1g.10gb.shared`` or a site's own name still holds them). The
ids are the device plugin's: a MIG UUID, a GPU UUID (``nvidia.com/gpu``), or, when NVIDIA's
plugin shares a device by time-slicing or MPS, ``<uuid>::<replica>`` (its ``AnnotatedID``);
:func:`device_uuid` reads the UUID out of each. An id that names no UUID at all (the plugin's
``deviceIDStrategy: index``: ``<gpu>`` for a whole GPU, ``<gpu>:<mig device>`` for a MIG
device) cannot be matched to an instance: under a MIG resource name it protects every instance
of that profile, as an unreadable pod-resources would; a MIG index id under any other name
(``nvidia.com/gpu`` with the plugin's ``migStrategy: single``, a renamed resource) says no
profile, so it protects every instance of the node. The index alone is not trusted to name the
GPU or the instance: MIG device indexes move when instances come and go.

A device a container got through DRA (pod-resources ``dynamic_resources``) holds the MIG or GPU
UUID any of its names carries; one of NVIDIA's GPU driver (``gpu.nvidia.com``) whose names carry
none may be any device of the node, so it keeps every instance and every GPU's MIG mode.

A pod bound to the node may also name devices itself, past the device plugin: a container's
``NVIDIA_VISIBLE_DEVICES`` (NVIDIA's container toolkit) or a pod's CDI annotation
(``cdi.k8s.io/<name>: nvidia.com/gpu=<device>``). The MIG and GPU UUIDs named there are held
until the pod is done; a MIG index id there may be any instance. ``all``, ``none`` and ``void``
name no device of their own (monitoring agents and device plugins run with ``all``).

A bound pod not yet admitted that asks for a resource whose name says no profile (a renamed
resource, ``nvidia.com/gpu`` under ``migStrategy: single``) reserves free instances among the
devices the kubelet lists under that name (pod-resources ``GetAllocatableResources``): the
device plugin will hand it one of those.

Pure: builds frozen data from what the edges read; no I/O here.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdmo.demand import read_demand
from cdmo.mig.resources import parse_mig_resource
from cdmo.node_agent.podresources.client import DRA_PREFIX, AllocatableDevices, PodDevices

_DONE_PHASES = ("Succeeded", "Failed")

#: NVIDIA's device plugin writes a shared replica's id as ``<device id>::<replica>``.
_REPLICA_SEPARATOR = "::"
_UUID_PREFIXES = ("MIG-", "GPU-")
#: ``deviceIDStrategy: index`` names a MIG device ``<gpu index>:<MIG device index>``.
_MIG_INDEX_ID = re.compile(r"\d+:\d+")
#: A MIG or GPU UUID inside a longer name (a CDI device name such as ``nvidia.com/gpu=MIG-...``),
#: also the MIG UUIDs of drivers before R470 (``MIG-GPU-<uuid>/<gi>/<ci>``).
_HEX_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_UUID_IN_NAME = re.compile(rf"MIG-GPU-{_HEX_UUID}/\d+/\d+|(?:MIG|GPU)-{_HEX_UUID}")
#: NVIDIA's DRA driver for GPUs and MIG devices.
NVIDIA_GPU_DRA_DRIVER = "gpu.nvidia.com"

#: No node holds more MIG devices than this; a bound pod's larger count reserves no more
#: (a count of 10**12 must not build a list of 10**12 entries every pass).
MAX_RESERVATIONS_PER_POD = 1024


def device_uuid(device_id: str) -> str | None:
    """The MIG or GPU UUID a pod-resources device id names, or None when it names none.

    ``MIG-<uuid>`` -> itself; ``MIG-<uuid>::3`` (a time-sliced or MPS replica) -> ``MIG-<uuid>``;
    ``GPU-<uuid>`` and its replicas -> the GPU UUID; an index id such as ``0:1`` -> None.
    """
    base = _base_id(device_id)
    return base if base.startswith(_UUID_PREFIXES) else None


def is_mig_index_id(device_id: str) -> bool:
    """Whether a pod-resources device id is a MIG device's index id (``0:1``, ``0:1::3``)."""
    return _MIG_INDEX_ID.fullmatch(_base_id(device_id)) is not None


def _base_id(device_id: str) -> str:
    """The device id without a shared replica's ``::<replica>``."""
    return device_id.split(_REPLICA_SEPARATOR, 1)[0].strip()


#: How each kind of holder reads in a status message, a condition or an Event.
_HOLDER_WORDS = {
    "process": "process {name}",
    "reservation": "pod {name} (bound to this node, not yet admitted)",
    "unknown": "pod {name} (pod-resources unreadable: it may hold any instance of this profile)",
    "allocated": (
        "the kubelet (it was just handed device {name} for a container; pod-resources does not list it yet)"
    ),
    "dra": "pod {name} (holds an NVIDIA GPU device through a DRA claim that names no UUID)",
    "indexed": (
        "pod {name} (holds a MIG device by an index id under a name that says no profile: "
        "it may hold any instance)"
    ),
}


@dataclass(frozen=True, order=True)
class Holder:
    """Something that keeps an instance from being destroyed."""

    #: pod (pod-resources), process (NVML), reservation (bound, not admitted), unknown (no
    #: pod-resources, or an index id under a MIG name), indexed (a MIG index id under another
    #: name), allocated (handed to the kubelet by the agent's device plugin, not yet in
    #: pod-resources), dra (an NVIDIA GPU device of a DRA claim that names no UUID)
    kind: str
    #: namespace/name of a pod, a pid, or (allocated) a device id
    name: str

    @property
    def pod(self) -> str | None:
        return None if self.kind in ("process", "allocated") else self.name

    def __str__(self) -> str:
        return _HOLDER_WORDS.get(self.kind, "pod {name}").format(name=self.name)


@dataclass(frozen=True)
class BoundPod:
    """A pod bound to this node that asks for MIG devices."""

    namespace: str
    name: str
    #: profile -> devices asked for
    requests: Mapping[str, int]
    terminating: bool = False
    #: asks for whole GPUs (``nvidia.com/gpu``) too: MIG mode must not change under it
    whole_gpu: bool = False
    #: resource name -> devices asked for, for extended resources that name no MIG profile: a
    #: renamed resource may be a pool of MIG devices (GetAllocatableResources tells which)
    others: Mapping[str, int] = field(default_factory=dict)
    #: MIG and GPU UUIDs the pod names itself (NVIDIA_VISIBLE_DEVICES, CDI annotations)
    named: tuple[str, ...] = ()
    #: it names a MIG device by index id there: which instance, nobody can say
    named_index: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class InUse:
    """What holds which instance on this node, as far as the agent can tell."""

    #: MIG UUID -> holders (pods from pod-resources, processes from NVML)
    holders: Mapping[str, tuple[Holder, ...]] = field(default_factory=dict)
    #: profile -> pods bound but not admitted, one entry per device they still wait for
    reservations: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: profile -> pods whose instances cannot be told apart (pod-resources unreadable)
    unknown: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Pods on whole GPUs that cannot be tied to one GPU: index device ids, or bound to the node
    #: and not yet admitted. Any GPU may be theirs, so no GPU's MIG mode may change under them.
    whole_gpus: tuple[Holder, ...] = ()
    #: Pods holding a MIG device by an index id under a resource name that says no profile
    #: (``nvidia.com/gpu`` under ``migStrategy: single``, a renamed resource): any instance of the
    #: node may be theirs, so every instance is protected while they run.
    any_instance: tuple[Holder, ...] = ()
    #: resource name that says no profile -> (the MIG UUIDs the kubelet lists under it, pods
    #: bound but not admitted, one entry per device they still wait for)
    pool_reservations: Mapping[str, tuple[frozenset[str], tuple[str, ...]]] = field(default_factory=dict)

    def holders_of(self, uuid: str | None) -> tuple[Holder, ...]:
        return self.holders.get(uuid, ()) if uuid else ()

    def with_processes(self, processes: Mapping[str, Sequence[int]]) -> InUse:
        """This InUse plus NVML's compute processes, by MIG UUID."""
        merged = {k: list(v) for k, v in self.holders.items()}
        for uuid, pids in processes.items():
            for pid in pids:
                h = Holder("process", str(pid))
                if h not in merged.setdefault(uuid, []):
                    merged[uuid].append(h)
        return InUse(
            holders={k: tuple(sorted(v)) for k, v in sorted(merged.items()) if v},
            reservations=self.reservations,
            unknown=self.unknown,
            whole_gpus=self.whole_gpus,
            any_instance=self.any_instance,
            pool_reservations=self.pool_reservations,
        )


EMPTY_IN_USE = InUse()


#: The resource of a whole GPU (MIG off), as NVIDIA's plugin and cdmo's own advertise it.
WHOLE_GPU_RESOURCE = "nvidia.com/gpu"


def mig_requests(pod: Mapping[str, Any]) -> dict[str, int]:
    """profile -> devices a bound pod may still be handed, for reservations.

    Counted by :func:`cdmo.demand.read_demand` (the operator's reader too): app containers and
    native sidecars summed, plain init containers maxed, shared resource names
    (``nvidia.com/mig-1g.10gb.shared``) as asks for their profile. Counts are cut to
    :data:`MAX_RESERVATIONS_PER_POD`; a value that is not a count still reserves one instance of its
    profile, because the agent cannot tell how many the kubelet will hand out and protecting
    one too many only delays a change, while one too few destroys what a pod is about to get.
    """
    demand = read_demand(pod)
    out = {profile: min(count, MAX_RESERVATIONS_PER_POD) for profile, count in demand.by_profile().items()}
    for bad in demand.bad:
        parsed = parse_mig_resource(bad.resource)
        if parsed is not None:
            least = MAX_RESERVATIONS_PER_POD if bad.too_big else 1
            out[parsed.profile] = min(max(out.get(parsed.profile, 0), least), MAX_RESERVATIONS_PER_POD)
    return dict(sorted(out.items()))


def _other_device_resource(name: str) -> bool:
    """An extended resource (``domain/name``) that names no MIG profile: maybe a renamed MIG pool."""
    return "/" in name and not name.startswith("kubernetes.io/") and parse_mig_resource(name) is None


#: NVIDIA's container toolkit reads the devices of a container from this variable.
VISIBLE_DEVICES_ENV = "NVIDIA_VISIBLE_DEVICES"
#: Pod annotations that ask the container runtime for CDI devices.
CDI_ANNOTATION_PREFIX = "cdi.k8s.io/"


def named_devices(pod: Mapping[str, Any]) -> tuple[tuple[str, ...], bool]:
    """(MIG and GPU UUIDs, names a MIG index id) that ``pod`` names past the device plugin: each
    container's ``NVIDIA_VISIBLE_DEVICES`` (its literal ``value``) and the pod's CDI annotations."""
    texts: list[str] = []
    spec = pod.get("spec") or {}
    for key in ("initContainers", "containers", "ephemeralContainers"):
        items = spec.get(key) if isinstance(spec, Mapping) else None
        for c in items if isinstance(items, list) else ():
            env = c.get("env") if isinstance(c, Mapping) else None
            for var in env if isinstance(env, list) else ():
                if isinstance(var, Mapping) and var.get("name") == VISIBLE_DEVICES_ENV:
                    value = var.get("value")
                    if isinstance(value, str):
                        texts.extend(value.split(","))
    notes = (pod.get("metadata") or {}).get("annotations") or {}
    if isinstance(notes, Mapping):
        for key, value in notes.items():
            if str(key).startswith(CDI_ANNOTATION_PREFIX) and isinstance(value, str):
                texts.extend(v.split("=", 1)[-1] for v in value.split(","))
    uuids = sorted({m.group(0) for t in texts for m in _UUID_IN_NAME.finditer(t)})
    return tuple(uuids), any(is_mig_index_id(t) for t in texts)


def build_bound_pods(pods: Iterable[Mapping[str, Any]]) -> list[BoundPod]:
    """Pods bound to the node (already filtered by spec.nodeName) that ask for MIG, a whole GPU or
    another extended resource, and are not done."""
    result = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        phase = (pod.get("status") or {}).get("phase")
        if phase in _DONE_PHASES:
            continue
        requests = mig_requests(pod)
        whole_gpu = bool(read_demand(pod, lambda name: name == WHOLE_GPU_RESOURCE).requests)
        others = {
            name: min(count, MAX_RESERVATIONS_PER_POD)
            for name, count in read_demand(pod, _other_device_resource).requests.items()
        }
        named, named_index = named_devices(pod)
        if not requests and not whole_gpu and not others and not named and not named_index:
            continue
        result.append(
            BoundPod(
                namespace=str(meta.get("namespace", "default")),
                name=str(meta.get("name", "")),
                requests=requests,
                terminating=bool(meta.get("deletionTimestamp")),
                whole_gpu=whole_gpu,
                others=others,
                named=named,
                named_index=named_index,
            )
        )
    return sorted(result, key=lambda p: p.key)


def build_in_use(
    pod_devices: Sequence[PodDevices] | None,
    bound_pods: Sequence[BoundPod] = (),
    processes: Mapping[str, Sequence[int]] | None = None,
    allocatable: Sequence[AllocatableDevices] | None = None,
) -> InUse:
    """Merge the sources. ``pod_devices`` None means pod-resources could not be read;
    ``allocatable`` (GetAllocatableResources) None that it could not, or was not asked."""
    holders: dict[str, list[Holder]] = {}
    held: Counter[tuple[str, str]] = Counter()
    held_other: Counter[tuple[str, str]] = Counter()
    unresolved: dict[str, set[str]] = {}
    whole_gpus: set[Holder] = set()
    any_instance: set[Holder] = set()
    admitted: set[str] = set()
    for row in pod_devices or ():
        admitted.add(row.pod_key)
        if row.resource_name.startswith(DRA_PREFIX):
            _read_dra_row(row, holders, any_instance, whole_gpus)
            continue
        res = parse_mig_resource(row.resource_name)
        for dev in row.device_ids:
            uuid = device_uuid(dev)
            if uuid is None:
                if res is not None:
                    unresolved.setdefault(res.profile, set()).add(row.pod_key)
                elif is_mig_index_id(dev):  # a MIG device, but of which profile nobody says
                    any_instance.add(Holder("indexed", row.pod_key))
                elif row.resource_name.startswith(WHOLE_GPU_RESOURCE):  # incl. nvidia.com/gpu.shared
                    whole_gpus.add(Holder("pod", row.pod_key))  # an index id: which GPU is unknown
                continue
            h = Holder("pod", row.pod_key)
            if h not in holders.setdefault(uuid, []):
                holders[uuid].append(h)
        if res is not None:
            # The pod asked for replicas, and got one id per replica.
            held[(row.pod_key, res.profile)] += len(row.device_ids)
        else:
            held_other[(row.pod_key, row.resource_name)] += len(row.device_ids)
    pools, index_pools = _mig_pools(allocatable or ())

    reservations: dict[str, list[str]] = {}
    pool_pods: dict[str, list[str]] = {}
    unknown: dict[str, list[str]] = {}
    for pod in bound_pods:
        # Devices a pod names itself are held until it is done, terminating or not.
        for uuid in pod.named:
            h = Holder("pod", pod.key)
            if h not in holders.setdefault(uuid, []):
                holders[uuid].append(h)
        if pod.named_index:
            any_instance.add(Holder("indexed", pod.key))
        if pod.whole_gpu and not pod.terminating and (pod_devices is None or pod.key not in admitted):
            whole_gpus.add(Holder("reservation", pod.key))
        for profile, wanted in pod.requests.items():
            if pod_devices is None:
                unknown.setdefault(profile, []).append(pod.key)
                continue
            missing = min(wanted - held[(pod.key, profile)], MAX_RESERVATIONS_PER_POD)
            if missing > 0 and not pod.terminating:
                reservations.setdefault(profile, []).extend([pod.key] * missing)
        for resource, wanted in pod.others.items():
            missing = min(wanted - held_other[(pod.key, resource)], MAX_RESERVATIONS_PER_POD)
            if missing <= 0 or pod.terminating:
                continue
            if resource in pools:
                pool_pods.setdefault(resource, []).extend([pod.key] * missing)
            elif resource in index_pools:  # its devices have index ids: any instance may be the one
                any_instance.add(Holder("reservation", pod.key))
    for profile, pods in unresolved.items():
        unknown.setdefault(profile, []).extend(pods)

    base = InUse(
        holders={k: tuple(sorted(v)) for k, v in sorted(holders.items())},
        reservations={k: tuple(v) for k, v in sorted(reservations.items())},
        unknown={k: tuple(sorted(set(v))) for k, v in sorted(unknown.items())},
        whole_gpus=tuple(sorted(whole_gpus)),
        any_instance=tuple(sorted(any_instance)),
        pool_reservations={r: (pools[r], tuple(pods)) for r, pods in sorted(pool_pods.items())},
    )
    return base.with_processes(processes or {})


def _read_dra_row(
    row: PodDevices,
    holders: dict[str, list[Holder]],
    any_instance: set[Holder],
    whole_gpus: set[Holder],
) -> None:
    """A DRA device: held by the UUIDs its names carry, or, of NVIDIA's GPU driver, anywhere."""
    uuids = sorted({m.group(0) for name in row.device_ids for m in _UUID_IN_NAME.finditer(name)})
    for uuid in uuids:
        h = Holder("pod", row.pod_key)
        if h not in holders.setdefault(uuid, []):
            holders[uuid].append(h)
    if not uuids and row.resource_name == DRA_PREFIX + NVIDIA_GPU_DRA_DRIVER:
        any_instance.add(Holder("dra", row.pod_key))
        whole_gpus.add(Holder("dra", row.pod_key))


def _mig_pools(allocatable: Sequence[AllocatableDevices]) -> tuple[dict[str, frozenset[str]], set[str]]:
    """Resource names that say no profile but list MIG devices: name -> their MIG UUIDs, and the
    names whose MIG devices have index ids (which instance each is, nobody can say)."""
    pools: dict[str, frozenset[str]] = {}
    index_pools: set[str] = set()
    for entry in allocatable:
        if parse_mig_resource(entry.resource_name) is not None:
            continue  # a profile's own name: reserved by profile
        uuids = frozenset(
            u for u in (device_uuid(d) for d in entry.device_ids) if u is not None and u.startswith("MIG-")
        )
        if uuids:
            pools[entry.resource_name] = pools.get(entry.resource_name, frozenset()) | uuids
        if any(is_mig_index_id(d) for d in entry.device_ids):
            index_pools.add(entry.resource_name)
    return pools, index_pools
