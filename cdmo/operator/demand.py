"""MIG demand from pod objects: which pods wait for MIG devices, and what they ask for.

Pure: takes pod bodies (plain mappings, as the API returns them) and ``now``; no kopf, no
Kubernetes client. The kopf indexes call :func:`summarize_pod`; the planning loop calls
:func:`is_waiting` with the clock it was given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from cdmo.demand import read_demand

#: Phases after which a pod holds no device any more.
TERMINAL_PHASES = ("Succeeded", "Failed")


def pod_key(pod: Mapping[str, Any]) -> str:
    """``namespace/name``: how plans, MigLayout status and messages name a pod."""
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name', '')}"


def mig_requests(pod: Mapping[str, Any]) -> dict[str, int]:
    """Resource name -> count of MIG devices the pod needs at once, as the scheduler counts them.

    See :func:`cdmo.demand.read_demand` (the one reader the node agent uses too); values that
    are not a count are left out here and reported by :func:`bad_counts`.
    """
    return dict(read_demand(pod).requests)


def bad_counts(pod: Mapping[str, Any]) -> list[str]:
    """Sentences for the MIG resource values of the pod that are not a count of devices."""
    return [str(b) for b in read_demand(pod).bad]


def asks_for_mig(pod: Mapping[str, Any]) -> bool:
    """Asks for a MIG device, even with a value that is not a count (it is then told why)."""
    demand = read_demand(pod)
    return bool(demand.requests or demand.bad)


def _condition(pod: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def is_unschedulable(pod: Mapping[str, Any]) -> bool:
    """kube-scheduler said so: PodScheduled=False with reason Unschedulable."""
    cond = _condition(pod, "PodScheduled")
    return bool(cond and cond.get("status") == "False" and cond.get("reason") == "Unschedulable")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


def is_unbound_mig_pod(pod: Mapping[str, Any]) -> bool:
    """Phase Pending, no node, not being deleted, asks for MIG devices: a candidate for planning."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    return (
        status.get("phase", "Pending") == "Pending"
        and not spec.get("nodeName")
        and not meta.get("deletionTimestamp")
        and asks_for_mig(pod)
    )


def is_bound_mig_pod(pod: Mapping[str, Any]) -> bool:
    """On a node, not finished, asks for MIG devices: it holds (or will hold) instances there."""
    spec = pod.get("spec") or {}
    phase = (pod.get("status") or {}).get("phase", "Pending")
    return bool(spec.get("nodeName")) and phase not in TERMINAL_PHASES and asks_for_mig(pod)


def summarize_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator keeps of a MIG pod: enough to plan, reserve and post Events. Small and flat."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    affinity = spec.get("affinity") or {}
    demand = read_demand(pod)
    return {
        "key": pod_key(pod),
        "name": meta.get("name", ""),
        "namespace": meta.get("namespace") or "default",
        "uid": meta.get("uid", ""),
        "created": meta.get("creationTimestamp", ""),
        "node": spec.get("nodeName", ""),
        "phase": (pod.get("status") or {}).get("phase", "Pending"),
        "unschedulable": is_unschedulable(pod),
        "requests": dict(demand.requests),
        # values that are not a count: the pod is told why, never planned (see snapshot.screen_pods)
        "badCounts": [str(b) for b in demand.bad],
        "priority": spec.get("priority") or 0,
        "nodeSelector": dict(spec.get("nodeSelector") or {}),
        "tolerations": list(spec.get("tolerations") or []),
        # Only required node affinity can keep a pod off a node; the rest only steers.
        "affinity": {"nodeAffinity": affinity["nodeAffinity"]} if affinity.get("nodeAffinity") else {},
    }


def is_waiting(summary: Mapping[str, Any], now: datetime, grace_seconds: float) -> bool:
    """A pod to plan for: the scheduler found it unschedulable, or it has waited past the grace.

    The grace covers batch schedulers (Kueue, Volcano) that hold pods without ever setting
    PodScheduled=False.
    """
    if summary.get("unschedulable"):
        return True
    created = parse_time(summary.get("created"))
    return created is not None and (now - created).total_seconds() >= grace_seconds


def pending_entry(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The ``pending[]`` entry of spec/planner-io.md for a pod summary."""
    entry: dict[str, Any] = {
        "name": summary["name"],
        "namespace": summary["namespace"],
        "requests": dict(summary["requests"]),
        "priority": summary.get("priority") or 0,
    }
    if summary.get("nodeSelector"):
        entry["nodeSelector"] = dict(summary["nodeSelector"])
    if summary.get("tolerations"):
        entry["tolerations"] = list(summary["tolerations"])
    if summary.get("affinity"):
        entry["affinity"] = dict(summary["affinity"])
    return entry


def profile_counts(summaries: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Resource name -> number of pods asking for it (for the pending-pods metric)."""
    counts: dict[str, int] = {}
    for s in summaries:
        for resource in s.get("requests") or {}:
            counts[resource] = counts.get(resource, 0) + 1
    return dict(sorted(counts.items()))
