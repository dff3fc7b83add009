"""The planner's snapshot (spec/planner-io.md), built from what the kopf indexes hold.

``used`` = held or reserved: an instance the agent reports ``allocated`` (a pod holds its UUID
or a process runs on it), or a free instance of a profile that a pod already bound to the node
asks for and does not hold yet (it is about to be admitted there).

Which nodes go in: labelled nodes whose MigLayout is Ready (the agent has reported the GPUs
and observed the last spec). Which pods go in: unbound MIG pods that wait (Unschedulable, or
past the grace), minus those planned for a node whose agent is still applying that plan, and
minus those whose requests no planner could read (see :func:`screen_pods`).

Pure: plain mappings in, a plain dict out; ``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cdmo.api import GPU_PRODUCT_LABEL, PARTITIONING_LABEL_KEY, PARTITIONING_LABEL_VALUE
from cdmo.config import OperatorConfig
from cdmo.errors import InvalidInput
from cdmo.mig.catalog import find_model
from cdmo.mig.resources import RESOURCE_PREFIX, parse_mig_resource, profile_from_resource
from cdmo.operator.demand import is_waiting, pending_entry
from cdmo.operator.stale import NodeState, node_state
from cdmo.planner.parse import parse_snapshot

#: The pods (namespace/name, comma-separated) that the last spec write was made for.
PLANNED_FOR = "cdmo.clear.ml/planned-for"


def summarize_node(node: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator keeps of a labelled node."""
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    return {
        "name": meta.get("name", ""),
        # the MigLayout's owner: a node deleted (or re-created under its name) takes it along
        "uid": meta.get("uid", ""),
        "labels": dict(meta.get("labels") or {}),
        "taints": [
            {k: t[k] for k in ("key", "value", "effect") if t.get(k) is not None}
            for t in spec.get("taints") or []
        ],
        "unschedulable": bool(spec.get("unschedulable")),
        "product": (meta.get("labels") or {}).get(GPU_PRODUCT_LABEL, ""),
        "allocatable": {
            k: v
            for k, v in sorted((status.get("allocatable") or {}).items())
            if k.startswith(RESOURCE_PREFIX)
        },
    }


def summarize_miglayout(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator keeps of a MigLayout: enough to plan, patch with concurrency and judge staleness."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    return {
        "name": meta.get("name", ""),
        "uid": meta.get("uid", ""),
        "resourceVersion": meta.get("resourceVersion", ""),
        "generation": meta.get("generation") or 1,
        "created": meta.get("creationTimestamp", ""),
        "deleting": bool(meta.get("deletionTimestamp")),
        "annotations": dict(meta.get("annotations") or {}),
        "labels": dict(meta.get("labels") or {}),
        # made by an older cdmo operator, without an owner: the loop adds one
        "owned": bool(meta.get("ownerReferences")),
        # None: no desired layout yet (bootstrap); [] would mean "every listed GPU empty"
        "specGpus": list(spec["gpus"]) if isinstance(spec.get("gpus"), list) else None,
        "statusGpus": list(status.get("gpus") or []),
        "observedGeneration": status.get("observedGeneration"),
        "phase": status.get("phase", ""),
        "lastError": status.get("lastError", ""),
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def status_problem(ml: Mapping[str, Any]) -> str | None:
    """Why the operator cannot read the GPUs this MigLayout's status reports, or None.

    The CRD requires only ``index`` of a reported GPU and nothing of a reported instance (a newer
    or foreign agent may report more, or less), so the API server accepts a status that the
    operator cannot plan on. Such a node is left out, alone: one odd report must not stop the
    planning of every other node.
    """
    gpus = ml.get("statusGpus") or []
    if not isinstance(gpus, list):
        return "status.gpus is not a list"
    for g, gpu in enumerate(gpus):
        if not isinstance(gpu, Mapping) or not _is_int(gpu.get("index")):
            return f"status.gpus[{g}] has no whole-number index"
        instances = gpu.get("instances") or []
        if not isinstance(instances, list):
            return f"status.gpus[{g}].instances is not a list"
        for i, inst in enumerate(instances):
            where = f"status.gpus[{g}].instances[{i}]"
            if not isinstance(inst, Mapping):
                return f"{where} is not an object"
            if not isinstance(inst.get("profile"), str) or not inst["profile"]:
                return f"{where} has no profile"
            if not _is_int(inst.get("start")):
                return f"{where} has no whole-number start"
    return None


@dataclass(frozen=True)
class Rejection:
    """A pod no plan can serve because of how it asks: reason code and message for its Event."""

    pod: Mapping[str, Any]
    code: str
    message: str


def screen_pods(pods: Iterable[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[Rejection]]:
    """Split pod summaries into those the planner can read and those it never could.

    One pod with a typo in a resource name must not stop every other pod from being served, so
    each pod is checked on its own with the planner's own reader.
    """
    ok: list[Mapping[str, Any]] = []
    rejected: list[Rejection] = []
    for pod in pods:
        if pod.get("badCounts"):
            rejected.append(
                Rejection(
                    pod,
                    "InvalidCount",
                    f"Pod {pod['key']} cannot be planned: {'; '.join(pod['badCounts'])}; "
                    "ask for a whole number of devices, such as nvidia.com/mig-1g.10gb: 1",
                )
            )
            continue
        bad = []
        for resource in pod.get("requests") or {}:
            try:
                profile_from_resource(resource)
            except InvalidInput:
                bad.append(resource)
        if bad:
            rejected.append(
                Rejection(
                    pod,
                    "UnknownProfile",
                    f"Pod {pod['key']} asks for {', '.join(bad)}, which does not name a MIG profile; "
                    "MIG resources look like nvidia.com/mig-1g.10gb (see cdmo profiles)",
                )
            )
            continue
        try:
            parse_snapshot({"nodes": [], "pending": [pending_entry(pod)]}, allow_unknown_models=True)
        except InvalidInput as exc:
            rejected.append(Rejection(pod, "InvalidPodSpec", f"Pod {pod['key']} cannot be planned: {exc}"))
            continue
        ok.append(pod)
    return ok, rejected


def node_states(
    nodes: Mapping[str, Mapping[str, Any]],
    miglayouts: Mapping[str, Mapping[str, Any]],
    config: OperatorConfig,
    now: datetime,
) -> dict[str, NodeState]:
    """The state of every labelled node that has a MigLayout."""
    return {
        name: node_state(miglayouts[name], now, config.stale_timeout_seconds)
        for name in sorted(nodes)
        if name in miglayouts and not miglayouts[name].get("deleting")
    }


def held_pods(miglayouts: Mapping[str, Mapping[str, Any]], states: Mapping[str, NodeState]) -> dict[str, str]:
    """Pod key -> node, for pods whose plan waits on a node that is still applying it."""
    held: dict[str, str] = {}
    for name, state in sorted(states.items()):
        if state is NodeState.APPLYING:
            planned = (miglayouts[name].get("annotations") or {}).get(PLANNED_FOR, "")
            for pod in filter(None, planned.split(",")):
                held[pod] = name
    return held


def _gpu_model(gpu: Mapping[str, Any], node: Mapping[str, Any]) -> str:
    """The agent's per-GPU model wins; else the product it read; else the node's GFD label."""
    for candidate in (gpu.get("model"), gpu.get("product"), node.get("product")):
        if candidate and find_model(str(candidate)) is not None:
            return str(candidate)
    return str(gpu.get("model") or gpu.get("product") or node.get("product") or "unknown")


def _reserved(
    node_name: str, gpus: list[Mapping[str, Any]], bound_pods: Iterable[Mapping[str, Any]]
) -> set[tuple[int, int]]:
    """(gpu, start) of free instances that pods bound to the node will take once admitted."""
    taken: set[tuple[int, int]] = set()
    free: list[tuple[int, int, str]] = []
    held: dict[tuple[str, str], int] = {}
    for gpu in gpus:
        for inst in gpu.get("instances") or []:
            if inst.get("allocated"):
                if inst.get("pod"):
                    k = (str(inst["pod"]), str(inst.get("profile")))
                    held[k] = held.get(k, 0) + 1
            else:
                free.append((int(gpu["index"]), int(inst["start"]), str(inst.get("profile"))))
    free.sort()
    for pod in sorted((p for p in bound_pods if p.get("node") == node_name), key=lambda p: p["key"]):
        for resource, count in sorted((pod.get("requests") or {}).items()):
            # A shared name (nvidia.com/mig-1g.10gb.shared) asks for an instance of its profile
            # too, as the node agent counts it (cdmo.demand).
            parsed = parse_mig_resource(resource)
            if parsed is None:
                continue
            profile = parsed.profile
            need = count - held.get((pod["key"], profile), 0)
            for gpu_index, start, prof in free:
                if need <= 0:
                    break
                if prof == profile and (gpu_index, start) not in taken:
                    taken.add((gpu_index, start))
                    need -= 1
    return taken


def mig_plannable(gpu: Mapping[str, Any]) -> bool:
    """Whether the planner may place instances on a reported GPU: MIG on, not switched off
    pending a reset (``migPending: false``, Ampere), where the agent creates nothing because the
    reset would take the instance from its pod (MigDisablePending), and not withheld by the
    agent's device plugin after a critical XID of the whole GPU (``healthy: false``), whose
    devices, new ones too, the kubelet would hand to no pod. A status without the fields (a
    foreign or older agent) counts as MIG on and healthy."""
    return (
        gpu.get("migEnabled", True) is not False
        and gpu.get("migPending", True) is not False
        and gpu.get("healthy", True) is not False
    )


def _plannable_instance(instance: Mapping[str, Any], used: bool) -> bool:
    """Whether an instance goes into the snapshot. A free one the device plugin withholds
    (``healthy: false``: a critical XID on its device, or a compute instance that does not span
    it) is left out: the planner then sees its space as free, and the spec it writes without
    it has the agent destroy it (it is free and held by no pod) and make what the plan puts
    there, with a new, healthy device. One in use stays, as used: nothing destroys it."""
    return used or instance.get("healthy", True) is not False


def build_node_entry(
    node: Mapping[str, Any], ml: Mapping[str, Any], bound_pods: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """One ``nodes[]`` entry: labels, taints and the GPUs as the agent last reported them."""
    gpus = [
        g
        for g in sorted(ml.get("statusGpus") or [], key=lambda g: int(g.get("index", 0)))
        if mig_plannable(g)
    ]
    reserved = _reserved(node["name"], gpus, bound_pods)
    entry: dict[str, Any] = {
        "name": node["name"],
        # The planner knows the canonical label; the operator's label may be configured otherwise.
        "labels": {**node.get("labels", {}), PARTITIONING_LABEL_KEY: PARTITIONING_LABEL_VALUE},
        "taints": list(node.get("taints") or []),
        "unschedulable": bool(node.get("unschedulable")),
        "gpus": [
            {
                "index": int(g["index"]),
                "model": _gpu_model(g, node),
                "instances": [
                    {"profile": i["profile"], "start": int(i["start"]), "used": used}
                    for i in sorted(g.get("instances") or [], key=lambda i: int(i["start"]))
                    for used in [bool(i.get("allocated")) or (int(g["index"]), int(i["start"])) in reserved]
                    if _plannable_instance(i, used)
                ],
            }
            for g in gpus
        ],
    }
    return entry


def build_snapshot(
    nodes: Mapping[str, Mapping[str, Any]],
    miglayouts: Mapping[str, Mapping[str, Any]],
    pending_pods: Iterable[Mapping[str, Any]],
    bound_pods: Iterable[Mapping[str, Any]],
    config: OperatorConfig,
    now: datetime,
    left_out: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The snapshot of spec/planner-io.md: Ready labelled nodes, and the pods to plan for.

    ``nodes``: labelled node summaries by name; ``miglayouts``: MigLayout summaries by name;
    ``pending_pods``: unbound MIG pod summaries; ``bound_pods``: summaries of MIG pods on nodes.
    Deterministic: nodes and pods are sorted by name. A Ready node the planner cannot read
    (:func:`node_problem`) is left out; ``left_out``, when given, gets its name -> why.
    """
    bound = list(bound_pods)
    states = node_states(nodes, miglayouts, config, now)
    held = held_pods(miglayouts, states)
    waiting = [
        p for p in pending_pods if is_waiting(p, now, config.pending_grace_seconds) and p["key"] not in held
    ]
    plannable, _ = screen_pods(waiting)
    entries = [
        build_node_entry(nodes[name], miglayouts[name], bound)
        for name, state in sorted(states.items())
        if state is NodeState.READY
    ]
    kept = []
    for entry in entries:
        problem = node_problem(entry)
        if problem is None:
            kept.append(entry)
        elif left_out is not None:
            left_out[entry["name"]] = problem
    return {
        "nodes": kept,
        "pending": [pending_entry(p) for p in sorted(plannable, key=lambda p: p["key"])],
    }


def node_problem(entry: Mapping[str, Any]) -> str | None:
    """Why the planner could not read this node entry (then the node is left out), or None.

    A node with odd data (a taint effect from a newer Kubernetes, say) must not stop the
    planning of every other node.
    """
    try:
        parse_snapshot({"nodes": [entry], "pending": []}, allow_unknown_models=True)
    except InvalidInput as exc:
        return str(exc)
    return None
