"""From a plan to MigLayout spec patches: which nodes change, and the patch bodies.

Every patch carries the ``metadata.resourceVersion`` the plan was made from, so the API server
refuses it (409 Conflict) when the object moved meanwhile; the loop then plans again on the
fresh state. The operator writes ``spec`` (and two annotations) only, never ``status``.

Pure: plan and summaries in, dicts out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from cdmo.api import build_spec, format_time, parse_spec
from cdmo.errors import CdmoError, InvalidLayout
from cdmo.mig.layouts import Instance, sort_layout
from cdmo.operator.snapshot import PLANNED_FOR
from cdmo.operator.stale import SPEC_PATCHED_AT
from cdmo.planner.models import Plan


class SpecRefused(CdmoError):
    """The API server refused a spec write as invalid (400, 422): writing it again cannot help.

    Raised by the writer (cdmo.operator.kube); the loop leaves that node out and tells it why,
    and plans for the others.
    """

    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"the API server refused the spec of MigLayout {node}: {message}")
        self.node = node
        self.reason = message


def current_layouts(ml: Mapping[str, Any]) -> dict[int, tuple[Instance, ...]] | None:
    """The MigLayout's desired layout by GPU; None when it has none yet (or one cdmo cannot read)."""
    if ml.get("specGpus") is None:
        return None
    try:
        return parse_spec({"gpus": ml["specGpus"]})
    except InvalidLayout:
        return None


def desired_layouts(
    current: Mapping[int, tuple[Instance, ...]] | None, planned: Mapping[int, Iterable[Instance]]
) -> dict[int, tuple[Instance, ...]]:
    """The new spec: the plan's GPUs, plus GPUs the spec lists but the plan left out (kept as they are)."""
    result = dict(current or {})
    result.update({index: sort_layout(layout) for index, layout in planned.items()})
    return dict(sorted(result.items()))


def nodes_to_patch(
    plan: Plan, miglayouts: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[int, tuple[Instance, ...]]]:
    """Node -> new desired layout, for the nodes whose spec the plan changes (and only those)."""
    out: dict[str, dict[int, tuple[Instance, ...]]] = {}
    for node in plan.nodes:
        ml = miglayouts.get(node.name)
        if ml is None:
            continue
        current = current_layouts(ml)
        desired = desired_layouts(current, node.layouts)
        if current is None or desired != {k: sort_layout(v) for k, v in current.items()}:
            out[node.name] = desired
    return out


def planned_pods(plan: Plan, node: str) -> list[str]:
    """Pods the plan places on ``node`` (they wait for its agent before being planned again)."""
    return sorted(a.pod for a in plan.assignments if a.node == node)


def build_spec_patch(
    layouts: Mapping[int, Iterable[Instance]], resource_version: str, pods: Iterable[str], now: datetime
) -> dict[str, Any]:
    """A merge patch that sets the complete spec, guarded by ``resource_version``."""
    return {
        "metadata": {
            "resourceVersion": resource_version,
            "annotations": {SPEC_PATCHED_AT: format_time(now), PLANNED_FOR: ",".join(sorted(pods))},
        },
        "spec": build_spec(layouts),
    }


def adopted_layouts(ml: Mapping[str, Any]) -> dict[int, tuple[Instance, ...]] | None:
    """What the GPUs hold, from status, for a MigLayout without a spec yet; None if nothing to adopt.

    Bootstrap: the operator creates a MigLayout without ``spec.gpus`` (the agent changes nothing
    for it), the agent reports the GPUs in status, and the operator makes that the spec before it
    plans for the node. So a node joins with its current layout, whatever was on it.
    """
    if ml.get("specGpus") is not None or not ml.get("statusGpus") or ml.get("deleting"):
        return None
    layouts: dict[int, tuple[Instance, ...]] = {}
    for gpu in ml["statusGpus"]:
        if gpu.get("migEnabled", True) is False:
            continue
        layouts[int(gpu["index"])] = sort_layout(
            Instance(str(i["profile"]), int(i["start"])) for i in gpu.get("instances") or []
        )
    return layouts


def build_adoption_patch(
    layouts: Mapping[int, Iterable[Instance]], resource_version: str, now: datetime
) -> dict[str, Any]:
    return build_spec_patch(layouts, resource_version, (), now)


def describe_layouts(layouts: Mapping[int, Iterable[Instance]]) -> str:
    """``GPU 0: 1g.10gb@0,3g.40gb@4; GPU 1: (empty)`` for Events and logs."""
    parts = []
    for index, layout in sorted(layouts.items()):
        items = ",".join(str(i) for i in sort_layout(layout))
        parts.append(f"GPU {index}: {items or '(empty)'}")
    return "; ".join(parts)
