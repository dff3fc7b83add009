"""What a caller may ask of a plan beyond the snapshot: pre-warming and draining for large pods.

``cdmo plan`` uses none of it (a plan of the snapshot alone, spec/planner-io.md); the operator and
the simulator pass the operator's settings (cdmo.config.OperatorConfig) and what they keep between
plans: the demand history behind ``prewarm`` and the GPUs the last plan drained.

Pure data: imports nothing of Kubernetes or NVML.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

#: A pod's profile is *large* when it takes at least this share of its GPU's memory slices (3g,
#: 4g and 7g of an 8-unit GPU, as docs/planner.md says; 2g and 4g of an A30): only such pods get
#: a GPU drained for them.
LARGE_SHARE = 0.5


@dataclass(frozen=True)
class PlanOptions:
    """Extra work a plan may do after serving the pending pods (docs/planner.md, "Objective")."""

    #: profile -> free instances to keep ready. After every pod is planned, instances of these
    #: profiles are created on free space only (never destroying anything, free or used) until
    #: the labelled, schedulable GPUs hold this many free ones.
    prewarm: Mapping[str, int] = field(default_factory=dict)
    #: Drain GPUs for large pods that fit nowhere (see Planner._drain): at most this many GPUs at
    #: once, 0 turns draining off.
    drain_max_gpus: int = 0
    #: (node, GPU index) the previous plan drained: kept draining first while a pod still needs it.
    draining: tuple[tuple[str, int], ...] = ()
    #: Pod key -> seconds it has waited so far (the caller's clock; pods not named count as 0).
    waited: Mapping[str, float] = field(default_factory=dict)
    #: Only pods that have waited at least this long get a GPU drained for them: draining leaves
    #: capacity idle until the last pod there ends, so it is kept for the tail of the wait.
    drain_after_seconds: float = 0.0
    #: Only GPUs whose used instances hold at most this share of the placement axis may drain
    #: (1.0: any): the emptier the GPU, the less capacity sits idle while it drains.
    drain_max_used_share: float = 1.0
    #: At most this share of each GPU model's labelled GPUs drain at once (at least one per model;
    #: 1.0: only ``drain_max_gpus`` bounds it). A pod that only one small pool of GPUs can hold
    #: (7g.141gb on the H200s of a mixed fleet) would otherwise idle most of that pool.
    drain_max_model_share: float = 1.0
    #: The bound that keeps small pods from starving in turn: no GPU of a model drains (and a
    #: drained one is let go) while a waiting pod smaller than the large ones, that the model
    #: could hold, has waited at least this long. 0 turns the bound off.
    drain_yield_after_seconds: float = 0.0
    #: Consolidation while large pods wait: free instances on GPUs whose used instances hold at
    #: most this share of the placement axis are destroyed (not held: small pods get new
    #: instances on fuller GPUs), so that nearly empty GPUs can empty. 0 turns it off.
    reclaim_max_used_share: float = 0.0
    #: Idle defragmentation: GPU-instance operations (destroys + creates) this plan may spend
    #: moving free instances together when no pod waits; 0 turns it off. The caller keeps the
    #: hourly budget and passes what is left.
    defrag_ops: int = 0
    #: Profiles whose room defragmentation tries to raise (largest first); empty: every profile
    #: of the GPU's model.
    defrag_profiles: tuple[str, ...] = ()


def kept_draining(
    previous: Sequence[tuple[str, int]], planned_nodes: Sequence[str], now: Sequence[tuple[str, int]]
) -> tuple[tuple[str, int], ...]:
    """The GPUs draining after a plan: those it drained, and earlier ones on nodes it did not see.

    A node that is applying a change is left out of the snapshot; its drain must not be
    forgotten meanwhile (the next plan that sees the node decides again).
    """
    seen = set(planned_nodes)
    return tuple(sorted({*now, *(d for d in previous if d[0] not in seen)}))


def drain_limit(fraction: float, gpus: int) -> int:
    """GPUs that may drain at once: ``fraction`` of ``gpus``, at least 1 when ``fraction`` > 0."""
    if fraction <= 0 or gpus <= 0:
        return 0
    return max(1, math.floor(fraction * gpus))


def model_drain_limits(models: Iterable[str], share: float) -> Counter[str]:
    """GPUs of each model (one entry per GPU in ``models``) that may drain at once: ``share`` of
    them, at least 1."""
    counts = Counter(models)
    return Counter({m: max(1, math.floor(share * n)) for m, n in counts.items()})


def prewarm_targets(
    arrivals: Sequence[tuple[float, str, int]],
    now: float,
    *,
    window_seconds: float,
    horizon_seconds: float,
    max_per_profile: int,
) -> dict[str, int]:
    """Free instances to keep ready per profile, from the demand seen in the last ``window_seconds``.

    ``arrivals`` are (time, profile, devices) of pods that asked, oldest first. A profile's rate
    over the window times ``horizon_seconds`` (about how long a new instance takes to appear:
    batch window, GI create, device-plugin refresh) is how many pods are expected to ask before a
    new instance could be made for them; that, rounded up and capped at ``max_per_profile``, is
    its target. Profiles nobody asked for in the window get none.
    """
    if window_seconds <= 0 or max_per_profile <= 0:
        return {}
    since = now - window_seconds
    counts: dict[str, int] = {}
    for at, profile, devices in arrivals:
        if at >= since:
            counts[profile] = counts.get(profile, 0) + devices
    return targets_from_counts(
        counts,
        window_seconds=window_seconds,
        horizon_seconds=horizon_seconds,
        max_per_profile=max_per_profile,
    )


def targets_from_counts(
    counts: Mapping[str, int], *, window_seconds: float, horizon_seconds: float, max_per_profile: int
) -> dict[str, int]:
    """:func:`prewarm_targets` from devices asked per profile within the window (kept by the caller)."""
    if window_seconds <= 0 or max_per_profile <= 0:
        return {}
    out = {}
    for profile, n in sorted(counts.items()):
        if n > 0:
            expected = n / window_seconds * horizon_seconds
            out[profile] = min(max_per_profile, max(1, math.ceil(expected)))
    return out
