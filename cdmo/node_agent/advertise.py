"""How reconcile tells whatever advertises the node's MIG devices about a change.

The agent's own kubelet device plugin implements this (issue 11); the external modes (NVIDIA's
plugin refreshed by SIGHUP or a pod restart) use :class:`NoAdvertiser`. Reconcile calls, in
this order, for every GPU it changes:

1. ``withdraw(uuids)`` with every MIG device UUID (every compute instance) of the GPU instances
   it is about to destroy, *before* it re-checks their holders and destroys them. When it
   returns, the devices are no longer offered to the kubelet and ``Allocate`` refuses them, so
   no pod can be admitted to a device that is about to go.
2. ``refresh()`` once at the end of the pass (also when the pass failed part way): re-read the
   GPUs and advertise exactly what they hold now. A device withdrawn but not destroyed (its
   destroy was refused) is offered again here.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol


class DeviceAdvertiser(Protocol):
    def withdraw(self, uuids: Collection[str]) -> None: ...

    def refresh(self) -> None: ...


class NoAdvertiser:
    """External device-plugin modes: nothing in this process advertises devices."""

    def withdraw(self, uuids: Collection[str]) -> None:
        return None

    def refresh(self) -> None:
        return None
