"""Kubernetes Events the operator posts: what each says, to whom, and when not to repeat it.

- Normal ``Repartitioning`` on a pod whose plan creates instances for it.
- Warning ``<code>`` on a pod no plan can serve (UnknownProfile, NoFittingNode, ...), posted
  again only when the reason changes.
- Normal ``PlanPublished`` on a MigLayout when its spec is written, ``PlanApplied`` when its
  agent has applied it, Warning ``AgentStale`` when the agent has not for too long.

Pure: builds dicts; the loop hands them to kopf.event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cdmo.api import API_VERSION, KIND
from cdmo.planner.models import Device


@dataclass(frozen=True)
class PodEvent:
    """One Event to post: the object it is about, Normal or Warning, a CamelCase reason, a sentence."""

    ref: Mapping[str, Any]
    type: str
    reason: str
    message: str


def pod_ref(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The minimal body kopf.event needs to reference a pod."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod["name"], "namespace": pod["namespace"], "uid": pod.get("uid", "")},
    }


def miglayout_ref(ml: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": ml["name"], "uid": ml.get("uid", "")},
    }


def repartition_message(node: str, devices: Iterable[Device]) -> str | None:
    """``Repartitioning gpu-node-1 GPU 0: creating 1g.10gb@3 for this pod``; None if nothing is created."""
    by_gpu: dict[int, list[str]] = {}
    for d in devices:
        if d.new:
            by_gpu.setdefault(d.gpu, []).append(f"{d.profile}@{d.start}")
    if not by_gpu:
        return None
    parts = [f"GPU {gpu}: creating {', '.join(sorted(items))}" for gpu, items in sorted(by_gpu.items())]
    return f"Repartitioning {node} {'; '.join(parts)} for this pod"


def build_pod_event(pod: Mapping[str, Any], type_: str, reason: str, message: str) -> PodEvent:
    return PodEvent(pod_ref(pod), type_, reason, message)


def dedup_unsatisfied(
    previous: Mapping[str, str],
    unsatisfied: Iterable[tuple[Mapping[str, Any], str, str]],
) -> tuple[list[PodEvent], dict[str, str]]:
    """Warning Events for unsatisfiable pods whose reason is new; and the memory for next time.

    ``previous`` maps pod uid (or key) -> the last message posted. ``unsatisfied`` yields
    (pod summary, code, message). Pods no longer unsatisfied are forgotten, so a pod that
    becomes unsatisfiable again later gets a new Event.
    """
    memory: dict[str, str] = {}
    events: list[PodEvent] = []
    for pod, code, message in unsatisfied:
        ident = pod.get("uid") or pod["key"]
        said = f"{code}: {message}"
        memory[ident] = said
        if previous.get(ident) != said:
            events.append(build_pod_event(pod, "Warning", code, message))
    return events, memory
