"""Which devices a critical XID error makes Unhealthy: pure decisions, no NVML, no gRPC.

NVIDIA's device plugin watches NVML for ``nvmlEventTypeXidCriticalError`` and marks the device
an event names Unhealthy, ignoring XIDs that say an application failed rather than the GPU
(internal/rm/health.go of NVIDIA/k8s-device-plugin). cdmo's plugin does the same, fitted to MIG
devices that come and go while it runs:

- :func:`parse_disable_healthchecks`: ``CDMO_DISABLE_HEALTHCHECKS`` (NVIDIA's
  ``DP_DISABLE_HEALTHCHECKS``) -> :class:`XidPolicy`;
- :func:`xid_targets`: the devices offered now that an event names;
- :func:`mark_xid`: the marks (:class:`XidMarks`) after an event; :func:`apply_marks`: the
  devices with the marked ones Unhealthy.

A mark lasts as long as the agent runs, as in NVIDIA's plugin (where a device is Unhealthy until
the plugin restarts). What it holds is what the event named: a MIG device by its UUID (an
instance made again at that placement has a new UUID, and starts Healthy), a whole GPU by its
index (every device on it, those made later too, until the agent restarts: a GPU that reported
an error of its own is not trusted with new instances either).

Must not import pynvml, grpc or structlog.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cdmo.errors import InvalidInput
from cdmo.node_agent.backend import XidEvent
from cdmo.node_agent.deviceplugin.devices import PluginDevice

#: The knob, named after NVIDIA's DP_DISABLE_HEALTHCHECKS (same values).
DISABLE_HEALTHCHECKS_ENV = "CDMO_DISABLE_HEALTHCHECKS"

#: XIDs an application causes, after which the GPU is still healthy: NVIDIA's device plugin
#: ignores exactly these (internal/rm/health.go, ``ignoredXids``; its DRA driver's
#: ``xidsToSkip`` the same), after NVIDIA's XID catalog, https://docs.nvidia.com/deploy/xid-errors/.
APPLICATION_XIDS: frozenset[int] = frozenset(
    {
        13,  # Graphics Engine Exception
        31,  # GPU memory page fault
        43,  # GPU stopped processing
        45,  # Preemptive cleanup, due to previous errors
        68,  # Video processor exception
        109,  # Context Switch Timeout Error
    }
)


@dataclass(frozen=True)
class XidPolicy:
    """Which critical XIDs make a device Unhealthy: every one but ``ignored``; none when not
    ``watch`` (then NVML's events are not even registered)."""

    watch: bool = True
    ignored: frozenset[int] = APPLICATION_XIDS

    def ignores(self, xid: int) -> bool:
        return not self.watch or xid in self.ignored


def parse_disable_healthchecks(text: str) -> XidPolicy:
    """``CDMO_DISABLE_HEALTHCHECKS`` as NVIDIA's plugin reads ``DP_DISABLE_HEALTHCHECKS``: empty
    (the default) watches every XID but the application ones; ``all`` or ``xids`` turns XID health
    checks off; otherwise a comma-separated list of XIDs to ignore too (``48,63``).

    Unlike NVIDIA's plugin, which skips a malformed entry, a bad one is refused (InvalidInput):
    a typo must not leave a node watching an XID its operator meant to ignore, or the reverse.
    """
    words = [w.strip().lower() for w in text.split(",") if w.strip()]
    if any(w in ("all", "xids") for w in words):
        return XidPolicy(watch=False)
    bad = [w for w in words if not (w.isascii() and w.isdigit())]  # str.isdigit: '²' and '٤' too
    if bad:
        raise InvalidInput(
            f"{DISABLE_HEALTHCHECKS_ENV}={text!r}: {', '.join(map(repr, bad))} is not an XID",
            hint="give all (or xids) to turn XID health checks off, or XID numbers separated by commas",
        )
    return XidPolicy(ignored=APPLICATION_XIDS | {int(w) for w in words})


@dataclass(frozen=True)
class XidMarks:
    """What critical XIDs marked Unhealthy so far: whole GPUs (NVML index) and devices (ID)."""

    gpus: frozenset[int] = frozenset()
    devices: frozenset[str] = frozenset()

    def covers(self, device: PluginDevice) -> bool:
        return device.gpu in self.gpus or device.id in self.devices


def xid_targets(event: XidEvent, devices: Iterable[PluginDevice]) -> frozenset[str]:
    """The IDs of the devices offered now that ``event`` names.

    - no GPU (NVML named a device that could not be told): every device, as NVIDIA's plugin does;
    - no GPU instance id (NVML's 0xFFFFFFFF): every device of the GPU;
    - a GPU instance id without a compute instance id: every device of that GPU instance;
    - both: the MIG device with those ids (NVIDIA's plugin matches both, after its fix for MIG
      devices that share a GPU, NVIDIA/k8s-device-plugin#1930).

    A GPU offered whole (``nvidia.com/gpu``, MIG off) is named by any event of its GPU.
    """

    def named(d: PluginDevice) -> bool:
        if event.gpu is None:
            return True
        if d.gpu != event.gpu:
            return False
        if event.gi_id is None or d.gi_id is None:
            return True
        return d.gi_id == event.gi_id and (event.ci_id is None or d.ci_id == event.ci_id)

    return frozenset(d.id for d in devices if named(d))


def mark_xid(
    marks: XidMarks, event: XidEvent, devices: Sequence[PluginDevice], policy: XidPolicy
) -> XidMarks:
    """The marks after ``event``, given the devices offered now; ``marks`` itself for an XID the
    policy ignores. An event of a whole GPU marks the GPU alone (it covers its devices now and
    later, and no device of it is worth making again); any other marks the devices it names now
    (:func:`xid_targets`), which the agent makes again with new UUIDs once they are free."""
    if policy.ignores(event.xid):
        return marks
    if event.gpu is not None and event.gi_id is None:
        return XidMarks(marks.gpus | {event.gpu}, marks.devices)
    return XidMarks(marks.gpus, marks.devices | xid_targets(event, devices))


def apply_marks(devices: Iterable[PluginDevice], marks: XidMarks) -> tuple[PluginDevice, ...]:
    """``devices`` with every one the marks cover Unhealthy (order kept)."""
    return tuple(
        dataclasses.replace(d, healthy=False) if d.healthy and marks.covers(d) else d for d in devices
    )
