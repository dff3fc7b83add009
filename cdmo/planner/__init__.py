"""snapshot -> plan: the pure planning function (see docs/planner.md). No Kubernetes, no NVML.

Public entry points (spec/planner-io.md is the contract):

- :func:`parse_snapshot` (dict -> :class:`Snapshot`; raises InvalidSnapshot(path, message)),
- :func:`plan` (pure, deterministic; counts no node can hold are answered before the search,
  see :mod:`cdmo.planner.bounds`; an optional :class:`PlanCache` keeps facts about unchanged
  nodes and pods between the plans of one loop, see :mod:`cdmo.planner.cache`),
- :func:`plan_to_dict` and :func:`snapshot_to_dict` (the contract's dict shapes).
"""

from cdmo.planner.algorithm import demand_of, format_demand
from cdmo.planner.bounds import plan
from cdmo.planner.cache import PlanCache
from cdmo.planner.models import (
    Assignment,
    Device,
    Drain,
    Gpu,
    GpuInstance,
    GpuPlan,
    Node,
    NodePlan,
    NodeSelectorRequirement,
    NodeSelectorTerm,
    PendingPod,
    Plan,
    PlanSummary,
    Snapshot,
    Taint,
    Toleration,
    Unsatisfied,
)
from cdmo.planner.options import PlanOptions
from cdmo.planner.parse import parse_snapshot, snapshot_to_dict
from cdmo.planner.render import plan_to_dict

__all__ = [
    "Assignment",
    "Device",
    "Drain",
    "Gpu",
    "GpuInstance",
    "GpuPlan",
    "Node",
    "NodePlan",
    "NodeSelectorRequirement",
    "NodeSelectorTerm",
    "PendingPod",
    "Plan",
    "PlanCache",
    "PlanOptions",
    "PlanSummary",
    "Snapshot",
    "Taint",
    "Toleration",
    "Unsatisfied",
    "demand_of",
    "format_demand",
    "parse_snapshot",
    "plan",
    "plan_to_dict",
    "snapshot_to_dict",
]
