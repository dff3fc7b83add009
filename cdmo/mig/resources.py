"""Kubernetes resource names <-> MIG profile names, and ClearML queue names -> profiles.

The NVIDIA device plugin (mixed strategy) advertises ``nvidia.com/mig-<profile>`` with ``+``
written as ``.``: ``1g.10gb+me`` <-> ``nvidia.com/mig-1g.10gb.me``.

Pure: imports nothing of Kubernetes or NVML.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cdmo.errors import InvalidInput
from cdmo.mig.catalog import GpuModel

RESOURCE_PREFIX = "nvidia.com/mig-"

#: What NVIDIA's device plugin appends to a resource it shares by time-slicing or MPS when
#: ``renameByDefault`` is on: ``nvidia.com/mig-1g.10gb.shared``.
SHARED_SUFFIX = ".shared"

# <N>g.<M>gb, then an optional suffix written with '.' (me, gfx, me.all) or '-me'.
_RESOURCE_RE = re.compile(r"^(?P<base>[0-9]+g\.[0-9]+gb)(?:\.(?P<plus>me\.all|me|gfx)|(?P<minus>-me))?$")

#: ClearML-style queue names and the compute slices they ask for.
QUEUE_SLICES = {"slice-1": 1, "slice-2": 2, "slice-3": 3, "slice-4": 4, "slice-7": 7}


def is_mig_resource(resource: str) -> bool:
    return resource.startswith(RESOURCE_PREFIX)


def profile_from_resource(resource: str) -> str:
    """``nvidia.com/mig-1g.10gb.me`` -> ``1g.10gb+me``; raises InvalidInput for other names."""
    if not is_mig_resource(resource):
        raise InvalidInput(
            f"{resource!r} is not a MIG resource name",
            hint="MIG resources look like nvidia.com/mig-1g.10gb",
        )
    m = _RESOURCE_RE.match(resource[len(RESOURCE_PREFIX) :])
    if not m:
        raise InvalidInput(
            f"{resource!r} does not name a MIG profile",
            hint="MIG resources look like nvidia.com/mig-3g.40gb or nvidia.com/mig-1g.10gb.me",
        )
    if m["plus"]:
        return f"{m['base']}+{m['plus']}"
    if m["minus"]:
        return f"{m['base']}-me"
    return m["base"]


@dataclass(frozen=True)
class MigResource:
    """A MIG resource name read: the profile it is for, and whether it is a shared (renamed) one."""

    profile: str
    shared: bool = False


def parse_mig_resource(resource: str) -> MigResource | None:
    """Any name under which a MIG device of a profile is advertised, or None if it is not one.

    Accepts cdmo's and NVIDIA's names (``nvidia.com/mig-1g.10gb``) and the names NVIDIA's plugin
    gives to shared replicas (``nvidia.com/mig-1g.10gb.shared``). Never raises: the safety code
    asks this for every resource a node reports, and an unknown name is simply not a MIG device.
    """
    if not is_mig_resource(resource):
        return None
    shared = resource.endswith(SHARED_SUFFIX)
    name = resource[: -len(SHARED_SUFFIX)] if shared else resource
    try:
        return MigResource(profile_from_resource(name), shared)
    except InvalidInput:
        return None


def resource_from_profile(profile: str) -> str:
    """``1g.10gb+me`` -> ``nvidia.com/mig-1g.10gb.me``."""
    return RESOURCE_PREFIX + profile.replace("+", ".")


def queue_profile(model: GpuModel, queue: str) -> str:
    """The profile a ClearML-style queue (``slice-1``, ``slice-2``, ``slice-4``, ``slice-7``) uses on ``model``.

    The smallest base profile with that many compute slices (slice-1 on H100 is 1g.10gb).
    """
    if queue not in QUEUE_SLICES:
        raise InvalidInput(f"unknown queue {queue!r}", hint="queues are " + ", ".join(QUEUE_SLICES))
    slices = QUEUE_SLICES[queue]
    fits = [p for p in model.base_profiles if p.compute_slices == slices]
    if not fits:
        raise InvalidInput(f"{model.key} has no {slices}-slice profile for queue {queue}")
    return min(fits, key=lambda p: (p.placement_size, p.name)).name
