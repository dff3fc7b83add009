"""The planner's data: a snapshot of the cluster in, a plan out (spec/planner-io.md).

Frozen dataclasses only. Mappings are stored as plain dicts in key order so that two equal
snapshots compare equal; nothing here is hashed. Pure: imports nothing of Kubernetes or NVML.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field

from cdmo.api import PARTITIONING_LABEL_KEY, PARTITIONING_LABEL_VALUE
from cdmo.mig.layouts import Instance, sort_layout

#: Taint effects that keep a pod off a node (PreferNoSchedule only steers the scheduler).
BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
TOLERATION_OPERATORS = ("Equal", "Exists")
AFFINITY_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt")


# --- snapshot --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuInstance:
    """A MIG instance that exists on a GPU now; ``used`` ones must survive every plan."""

    profile: str
    start: int
    used: bool

    @property
    def instance(self) -> Instance:
        return Instance(self.profile, self.start)

    def __str__(self) -> str:
        return f"{self.profile}@{self.start}"


@dataclass(frozen=True)
class Gpu:
    index: int
    #: As the snapshot wrote it: a catalog key or an NVML product name.
    model: str
    instances: tuple[GpuInstance, ...] = ()

    @property
    def layout(self) -> tuple[Instance, ...]:
        return sort_layout(i.instance for i in self.instances)

    @property
    def used(self) -> tuple[Instance, ...]:
        return sort_layout(i.instance for i in self.instances if i.used)

    @property
    def free(self) -> tuple[Instance, ...]:
        return sort_layout(i.instance for i in self.instances if not i.used)


@dataclass(frozen=True)
class Taint:
    key: str
    effect: str
    value: str = ""

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"


@dataclass(frozen=True)
class Node:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    unschedulable: bool = False
    gpus: tuple[Gpu, ...] = ()

    @property
    def labelled(self) -> bool:
        """Whether cdmo may partition this node (the partitioning label says ``mig``)."""
        return self.labels.get(PARTITIONING_LABEL_KEY) == PARTITIONING_LABEL_VALUE


@dataclass(frozen=True)
class Toleration:
    """Kubernetes shape; an empty key with operator Exists tolerates every taint."""

    key: str = ""
    operator: str = "Equal"
    value: str = ""
    #: Empty: every effect.
    effect: str = ""


@dataclass(frozen=True)
class NodeSelectorRequirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.operator in ("Exists", "DoesNotExist"):
            return f"{self.key} {self.operator}"
        if self.operator in ("Gt", "Lt"):
            return f"{self.key} {self.operator} {self.values[0]}"
        return f"{self.key} {self.operator} [{', '.join(self.values)}]"


@dataclass(frozen=True)
class NodeSelectorTerm:
    """Requirements that must all hold; a term without any matches no node (as in Kubernetes)."""

    match_expressions: tuple[NodeSelectorRequirement, ...] = ()
    #: Only ``metadata.name`` is a field Kubernetes lets a pod select on.
    match_fields: tuple[NodeSelectorRequirement, ...] = ()

    def __str__(self) -> str:
        parts = [str(r) for r in self.match_expressions]
        parts += [str(r) for r in self.match_fields]
        return " and ".join(parts) or "(empty term)"


@dataclass(frozen=True)
class PendingPod:
    name: str
    namespace: str = "default"
    #: Resource name -> count, as the pod asks (``nvidia.com/mig-1g.10gb: 2``); others are kept.
    requests: Mapping[str, int] = field(default_factory=dict)
    priority: int = 0
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    #: requiredDuringSchedulingIgnoredDuringExecution terms (any one must hold); None: no rule.
    node_affinity: tuple[NodeSelectorTerm, ...] | None = None

    @property
    def key(self) -> str:
        """``namespace/name``: how plans and messages name the pod."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Snapshot:
    nodes: tuple[Node, ...] = ()
    pending: tuple[PendingPod, ...] = ()


# --- plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """One MIG device handed to a pod: an instance of the desired layout."""

    gpu: int
    profile: str
    start: int
    #: True: the plan creates this instance; False: it exists free in the snapshot.
    new: bool

    @property
    def instance(self) -> Instance:
        return Instance(self.profile, self.start)


@dataclass(frozen=True)
class Assignment:
    pod: str
    node: str
    devices: tuple[Device, ...]
    priority: int = 0


@dataclass(frozen=True)
class Unsatisfied:
    pod: str
    #: A sentence for people: what stops the pod and what to do.
    reason: str
    #: Stable CamelCase for Kubernetes Events (UnknownProfile, NoMatchingNode, NoRoom, ...).
    code: str
    priority: int = 0


@dataclass(frozen=True)
class GpuPlan:
    index: int
    model: str
    #: The catalog key; None for a model cdmo does not know (such a GPU is left as it is).
    model_key: str | None
    before: tuple[GpuInstance, ...]
    #: The complete desired layout, canonical order.
    after: tuple[Instance, ...]
    created: tuple[Instance, ...] = ()
    destroyed: tuple[Instance, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.created or self.destroyed)


@dataclass(frozen=True)
class NodePlan:
    name: str
    gpus: tuple[GpuPlan, ...]

    @functools.cached_property
    def changed(self) -> bool:
        # Cached (a frozen value): a planning loop reuses unchanged nodes' entries plan after plan.
        return any(g.changed for g in self.gpus)

    @property
    def layouts(self) -> dict[int, tuple[Instance, ...]]:
        """GPU index -> desired layout: what :func:`cdmo.api.build_spec` takes."""
        return {g.index: g.after for g in self.gpus}


@dataclass(frozen=True)
class PlanSummary:
    """The plan's score on each objective, in the order the planner weighs them."""

    #: (priority, pods served, pods pending at that priority), highest priority first.
    served_by_priority: tuple[tuple[int, int, int], ...]
    destroyed: int
    created: int
    handed_out: int
    gpus_touched: int
    nodes_touched: int


@dataclass(frozen=True, order=True)
class Drain:
    """A GPU kept for a large pod until the pods on it finish (PlanOptions.drain_max_gpus)."""

    node: str
    gpu: int
    pod: str


@dataclass(frozen=True)
class Plan:
    #: Every labelled node, by name.
    nodes: tuple[NodePlan, ...]
    #: By pod name.
    assignments: tuple[Assignment, ...]
    #: By pod name.
    unsatisfied: tuple[Unsatisfied, ...]
    summary: PlanSummary
    #: GPUs drained for large pods, by node and index (empty unless the caller asks for draining).
    draining: tuple[Drain, ...] = ()

    def node(self, name: str) -> NodePlan:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def assignment(self, pod: str) -> Assignment | None:
        return next((a for a in self.assignments if a.pod == pod), None)

    def unsatisfied_pod(self, pod: str) -> Unsatisfied | None:
        return next((u for u in self.unsatisfied if u.pod == pod), None)
