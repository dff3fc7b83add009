"""How reconcile tells whatever advertises the node's MIG devices about a change.

The agent's own kubelet device plugin implements this (issue 11); the external modes (NVIDIA's
plugin refreshed by SIGHUP or a pod restart) use :class:`NoAdvertiser`. Reconcile calls, in
this order, for every GPU it changes:

1. ``withdraw(uuids)`` with every MIG device UUID (every compute instance) of the GPU instances
   it is about to destroy, *before* it re-checks their holders and destroys them. When it
   returns, the devices are no longer offered to the kubelet and ``Allocate`` refuses them, so
   no pod can be admitted to a device that is about to go. It returns those of them that the
   kubelet was handed (``Allocate``) in the last :data:`HANDED_OUT_GRACE_SECONDS`: the kubelet
   records an allocation in pod-resources only after ``Allocate`` returns, so a container may be
   starting on such a device although pod-resources does not list it yet. Reconcile keeps them
   this pass.
2. ``refresh()`` once at the end of the pass (also when the pass failed part way): re-read the
   GPUs and advertise exactly what they hold now. A device withdrawn but not destroyed (its
   destroy was refused) is offered again here.

The agent also tells it, around the pass: ``set_desired(desired)`` before reconcile (the plan's
resources are registered, its instances preferred), ``settle()`` once the devices are
advertised again (the external modes lift the reconfiguring taint), and asks ``advertised()``
for the status document (None where nothing in this process advertises).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from cdmo.mig.layouts import Instance

#: How long a device handed to the kubelet counts as held without pod-resources listing it. The
#: kubelet records it right after ``Allocate`` returns (in the same admission step); ten seconds
#: leave a wide margin and delay a destroy only as long when nothing took the device after all.
HANDED_OUT_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class Unhealthy:
    """Devices a device plugin withholds as broken: whole GPUs (NVML index) and MIG devices (UUID)."""

    gpus: frozenset[int] = frozenset()
    uuids: frozenset[str] = frozenset()


NOTHING_UNHEALTHY = Unhealthy()


class DeviceAdvertiser(Protocol):
    def withdraw(self, uuids: Collection[str]) -> frozenset[str]: ...

    def refresh(self) -> None: ...


class AgentAdvertiser(DeviceAdvertiser, Protocol):
    """What the agent itself drives (reconcile needs only :class:`DeviceAdvertiser`)."""

    def set_desired(self, desired: Mapping[int, Sequence[Instance]]) -> None: ...

    def settle(self) -> None: ...

    def advertised(self) -> dict[str, list[str]] | None: ...

    def unhealthy(self) -> Unhealthy:
        """What the advertiser withholds as broken (critical XIDs), for the status: the
        operator plans around it."""
        ...


class NoAdvertiser:
    """External device-plugin modes: nothing in this process advertises devices."""

    def withdraw(self, uuids: Collection[str]) -> frozenset[str]:
        return frozenset()  # nothing here hands devices to the kubelet

    def refresh(self) -> None:
        return None

    def set_desired(self, desired: Mapping[int, Sequence[Instance]]) -> None:
        return None

    def settle(self) -> None:
        return None

    def advertised(self) -> dict[str, list[str]] | None:
        return None

    def unhealthy(self) -> Unhealthy:
        return NOTHING_UNHEALTHY
