"""Counts no node can hold, answered before the search: the public :func:`plan`.

A pod asking ``nvidia.com/mig-1g.10gb: 1000000000000`` cannot be served by any node, and a
search that walks its devices one by one would cost every pass its time and memory (issue 10).
So before :func:`cdmo.planner.algorithm.plan` runs, each pod's device count is compared with
the most MIG devices any labelled node could hold at once (every GPU of a known model filled
with its smallest profile). A pod above that is unsatisfied with the reason ``TooManyDevices``,
decided in constant time per pod; the search then runs on the other pods only, so they are
served exactly as if the big ones were not there, and the planner's time and memory do not
depend on the size of any requested count.

Pure: imports nothing of Kubernetes or NVML.
"""

from __future__ import annotations

from dataclasses import replace

from cdmo.demand import MAX_COUNT
from cdmo.mig.catalog import find_model
from cdmo.mig.resources import RESOURCE_PREFIX
from cdmo.planner.algorithm import plan as search
from cdmo.planner.cache import PlanCache
from cdmo.planner.models import Node, PendingPod, Plan, Snapshot, Unsatisfied
from cdmo.planner.options import PlanOptions

TOO_MANY_DEVICES = "TooManyDevices"


def node_capacity(node: Node) -> int:
    """The most MIG devices ``node`` could hold at once: per GPU of a known model, the largest
    ``max_count`` of its profiles (the smallest profile, e.g. 7 x 1g.10gb on an H100)."""
    total = 0
    for gpu in node.gpus:
        model = find_model(gpu.model)
        if model is not None and model.profiles:
            total += max(p.max_count for p in model.profiles)
    return total


def _devices(pod: PendingPod) -> int:
    """The pod's MIG device count over all its MIG resources (values that are not counts: 0)."""
    total = 0
    for resource, count in pod.requests.items():
        if resource.startswith(RESOURCE_PREFIX) and isinstance(count, int) and not isinstance(count, bool):
            total += max(count, 0)
    return total


def _reason(pod: PendingPod, devices: int, most: int, where: str) -> str:
    mig = sorted(
        (r, c) for r, c in pod.requests.items() if r.startswith(RESOURCE_PREFIX) and isinstance(c, int)
    )
    if devices > MAX_COUNT:
        # str() of an int past 4300 digits raises, and no one reads such a number: say it in words.
        names = ", ".join(r for r, c in mig if c > MAX_COUNT) or ", ".join(r for r, _ in mig)
        return (
            f"the pod asks for more {names} devices than Kubernetes can count (at most {MAX_COUNT}); "
            f"no labelled node holds more than {most} MIG devices{where}; ask for fewer devices"
        )
    asks = ", ".join(f"{r}: {c}" for r, c in mig)
    return (
        f"the pod asks for {devices} devices ({asks}), more than any labelled node can hold at once: "
        f"at most {most}{where}; ask for fewer devices, or spread the work over several pods"
    )


def screen_counts(
    snapshot: Snapshot, cache: PlanCache | None = None
) -> tuple[Snapshot, tuple[Unsatisfied, ...]]:
    """The snapshot without the pods whose device count no labelled node can hold, and those pods
    as :class:`Unsatisfied` (code ``TooManyDevices``). Linear in nodes + pods, whatever the counts.
    With ``cache``, each node's capacity comes from its facts (cdmo.planner.cache)."""
    best: Node | None = None
    most = 0
    for node in sorted(snapshot.nodes, key=lambda n: n.name):
        if not node.labelled:
            continue
        cap = cache.node(node, find_model).capacity if cache is not None else node_capacity(node)
        if cap > most:
            best, most = node, cap
    where = f" (node {best.name})" if best is not None else ""
    kept: list[PendingPod] = []
    refused: list[Unsatisfied] = []
    # parse_snapshot hands equal requests over as one mapping: each is counted once.
    counted: dict[int, int] = {}
    for pod in snapshot.pending:
        devices = counted.get(id(pod.requests), -1)
        if devices < 0:
            devices = counted[id(pod.requests)] = _devices(pod)
        # Pods that ask for nothing, or whose requests the planner cannot read, keep their
        # own reasons (NoMigRequest, UnknownProfile): only a count too big is decided here.
        if (most > 0 and devices > most) or devices > MAX_COUNT:
            refused.append(
                Unsatisfied(pod.key, _reason(pod, devices, most, where), TOO_MANY_DEVICES, pod.priority)
            )
        else:
            kept.append(pod)
    if not refused:
        return snapshot, ()
    return replace(snapshot, pending=tuple(kept)), tuple(refused)


def plan(snapshot: Snapshot, options: PlanOptions | None = None, *, cache: PlanCache | None = None) -> Plan:
    """The plan for ``snapshot``: pure and deterministic (see :func:`cdmo.planner.algorithm.plan`).

    Pods asking for more devices than any labelled node can hold are unsatisfied with
    ``TooManyDevices`` without entering the search; every other pod is planned as if they were
    not there. ``cache``: a :class:`~cdmo.planner.cache.PlanCache` passed to every plan of one
    planning loop keeps facts about the node and pod objects that stay the same from one
    snapshot to the next (the plan is the same with or without it).
    """
    cache = cache if cache is not None else PlanCache()
    cache.begin()
    try:
        searched, refused = screen_counts(snapshot, cache)
        result = search(searched, options, cache)
    finally:
        cache.end()
    if not refused:
        return result
    levels = {prio: [served, total] for prio, served, total in result.summary.served_by_priority}
    for u in refused:
        levels.setdefault(u.priority, [0, 0])[1] += 1
    summary = replace(
        result.summary,
        served_by_priority=tuple((p, c[0], c[1]) for p, c in sorted(levels.items(), reverse=True)),
    )
    return replace(
        result,
        unsatisfied=tuple(sorted((*result.unsatisfied, *refused), key=lambda u: u.pod)),
        summary=summary,
    )


__all__ = ["TOO_MANY_DEVICES", "node_capacity", "plan", "screen_counts"]
