"""A pod's MIG demand: the profiles and counts it asks for, read from its resource requests.

Pure: imports nothing of Kubernetes or NVML.
"""

from __future__ import annotations

import functools
from collections import Counter

from cdmo.errors import InvalidInput
from cdmo.mig.resources import RESOURCE_PREFIX, profile_from_resource
from cdmo.planner.geometry import Demand
from cdmo.planner.models import PendingPod


def demand_of(pod: PendingPod) -> tuple[Demand, tuple[str, ...]]:
    """The pod's MIG demand as sorted (profile, count), and any resource names that name no profile."""
    return _demand(tuple(sorted(pod.requests.items())))


@functools.lru_cache(maxsize=4096)
def _demand(requests: tuple[tuple[str, object], ...]) -> tuple[Demand, tuple[str, ...]]:
    counts: Counter[str] = Counter()
    bad = []
    for resource, raw in requests:
        if not resource.startswith(RESOURCE_PREFIX):
            continue
        # Kubernetes quantities may arrive as strings ("2"); anything else that is not a whole
        # number (only a snapshot built in code can carry one) asks for nothing.
        count = int(raw) if isinstance(raw, str) and raw.isascii() and raw.isdigit() else raw
        if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
            continue
        try:
            counts[profile_from_resource(resource)] += count
        except InvalidInput:
            bad.append(resource)
    return tuple(sorted(counts.items())), tuple(bad)


def format_demand(demand: Demand) -> str:
    """``7g.80gb`` or ``2 x 1g.10gb + 3g.40gb``."""
    return " + ".join(p if c == 1 else f"{c} x {p}" for p, c in demand)
