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
``deviceIDStrategy: index``) cannot be matched to an instance: under a MIG resource name it
protects every instance of that profile, as an unreadable pod-resources would.

Pure: builds frozen data from what the edges read; no I/O here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdmo.mig.resources import parse_mig_resource
from cdmo.node_agent.podresources.client import PodDevices

_DONE_PHASES = ("Succeeded", "Failed")

#: NVIDIA's device plugin writes a shared replica's id as ``<device id>::<replica>``.
_REPLICA_SEPARATOR = "::"
_UUID_PREFIXES = ("MIG-", "GPU-")

#: No node holds more MIG devices than this; a bound pod's larger count reserves no more
#: (a count of 10**12 must not build a list of 10**12 entries every pass).
MAX_RESERVATIONS_PER_POD = 1024


def device_uuid(device_id: str) -> str | None:
    """The MIG or GPU UUID a pod-resources device id names, or None when it names none.

    ``MIG-<uuid>`` -> itself; ``MIG-<uuid>::3`` (a time-sliced or MPS replica) -> ``MIG-<uuid>``;
    ``GPU-<uuid>`` and its replicas -> the GPU UUID; an index id such as ``0:1`` -> None.
    """
    base = device_id.split(_REPLICA_SEPARATOR, 1)[0].strip()
    return base if base.startswith(_UUID_PREFIXES) else None


@dataclass(frozen=True, order=True)
class Holder:
    """Something that keeps an instance from being destroyed."""

    #: pod (pod-resources), process (NVML), reservation (bound, not admitted), unknown (no pod-resources)
    kind: str
    #: namespace/name of a pod, or a pid
    name: str

    @property
    def pod(self) -> str | None:
        return None if self.kind == "process" else self.name

    def __str__(self) -> str:
        if self.kind == "process":
            return f"process {self.name}"
        if self.kind == "reservation":
            return f"pod {self.name} (bound to this node, not yet admitted)"
        if self.kind == "unknown":
            return f"pod {self.name} (pod-resources unreadable: it may hold any instance of this profile)"
        return f"pod {self.name}"


@dataclass(frozen=True)
class BoundPod:
    """A pod bound to this node that asks for MIG devices."""

    namespace: str
    name: str
    #: profile -> devices asked for
    requests: Mapping[str, int]
    terminating: bool = False

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
        )


EMPTY_IN_USE = InUse()


def mig_requests(pod: Mapping[str, Any]) -> dict[str, int]:
    """profile -> devices a pod asks for: its containers' limits (or requests) summed, init
    containers counted as Kubernetes does (the largest one, if larger than the sum)."""
    spec = pod.get("spec") or {}

    def per_container(c: Mapping[str, Any]) -> Counter[str]:
        res = c.get("resources") or {}
        amounts = {**(res.get("requests") or {}), **(res.get("limits") or {})}
        out: Counter[str] = Counter()
        for name, value in amounts.items():
            # Shared (renamed) names count too: a pod on a .shared replica reserves the instance.
            res = parse_mig_resource(name)
            if res is None:
                continue  # not a MIG profile cdmo understands: not its business
            try:
                out[res.profile] += int(str(value))
            except ValueError:
                continue
        return out

    total: Counter[str] = Counter()
    for c in spec.get("containers") or []:
        total += per_container(c)
    for c in spec.get("initContainers") or []:
        for profile, n in per_container(c).items():
            total[profile] = max(total[profile], n)
    return {k: v for k, v in sorted(total.items()) if v > 0}


def build_bound_pods(pods: Iterable[Mapping[str, Any]]) -> list[BoundPod]:
    """Pods bound to the node (already filtered by spec.nodeName) that ask for MIG and are not done."""
    result = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        phase = (pod.get("status") or {}).get("phase")
        if phase in _DONE_PHASES:
            continue
        requests = mig_requests(pod)
        if not requests:
            continue
        result.append(
            BoundPod(
                namespace=str(meta.get("namespace", "default")),
                name=str(meta.get("name", "")),
                requests=requests,
                terminating=bool(meta.get("deletionTimestamp")),
            )
        )
    return sorted(result, key=lambda p: p.key)


def build_in_use(
    pod_devices: Sequence[PodDevices] | None,
    bound_pods: Sequence[BoundPod] = (),
    processes: Mapping[str, Sequence[int]] | None = None,
) -> InUse:
    """Merge the three sources. ``pod_devices`` None means pod-resources could not be read."""
    holders: dict[str, list[Holder]] = {}
    held: Counter[tuple[str, str]] = Counter()
    unresolved: dict[str, set[str]] = {}
    for row in pod_devices or ():
        res = parse_mig_resource(row.resource_name)
        for dev in row.device_ids:
            uuid = device_uuid(dev)
            if uuid is None:
                if res is not None:
                    unresolved.setdefault(res.profile, set()).add(row.pod_key)
                continue
            h = Holder("pod", row.pod_key)
            if h not in holders.setdefault(uuid, []):
                holders[uuid].append(h)
        if res is not None:
            # The pod asked for replicas, and got one id per replica.
            held[(row.pod_key, res.profile)] += len(row.device_ids)

    reservations: dict[str, list[str]] = {}
    unknown: dict[str, list[str]] = {}
    for pod in bound_pods:
        for profile, wanted in pod.requests.items():
            if pod_devices is None:
                unknown.setdefault(profile, []).append(pod.key)
                continue
            missing = min(wanted - held[(pod.key, profile)], MAX_RESERVATIONS_PER_POD)
            if missing > 0 and not pod.terminating:
                reservations.setdefault(profile, []).extend([pod.key] * missing)
    for profile, pods in unresolved.items():
        unknown.setdefault(profile, []).extend(pods)

    base = InUse(
        holders={k: tuple(sorted(v)) for k, v in sorted(holders.items())},
        reservations={k: tuple(v) for k, v in sorted(reservations.items())},
        unknown={k: tuple(sorted(set(v))) for k, v in sorted(unknown.items())},
    )
    return base.with_processes(processes or {})
