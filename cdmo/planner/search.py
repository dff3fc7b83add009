"""The planner's search state: GPUs as bit sets, nodes, groups of interchangeable nodes, pods.

Mutable records that :class:`cdmo.planner.algorithm.Planner` builds from a snapshot for one plan
and changes through its journal (so every step can be undone); a node's and its GPUs' records may
be kept by a :class:`cdmo.planner.cache.PlanCache` and set back (``reset``) for the next plan, so
a field added here must be set back there too. They point both ways (GPU <->
node <-> group) for speed; ``Planner.close`` cuts those links when a plan is done.

Pure: imports nothing of Kubernetes or NVML.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cdmo.planner.geometry import Demand, Geometry
from cdmo.planner.models import Node, PendingPod

#: Pressure is kept in whole numbers so that sums are exact (no float order effects).
PRESSURE_SCALE = 1_000_000

#: A GPU's index key: (model ordinal, fixed bits, free bits, GPU touched, node touched).
StateKey = tuple[int, int, int, bool, bool]


class SearchGpu:
    __slots__ = (
        "fixed",
        "fixed0",
        "free",
        "free0",
        "geo",
        "held",
        "id",
        "index",
        "key",
        "node",
        "place",
        "touched",
    )

    def __init__(self, gid: int, node: SearchNode, src_index: int, geo: Geometry, fixed: int, free: int):
        self.id = gid
        self.node = node
        self.index = src_index
        self.geo = geo
        self.fixed0 = self.fixed = fixed
        self.free0 = self.free = free
        #: Whether the layout differs from the snapshot's.
        self.touched = False
        self.key: StateKey = (-1, 0, 0, False, False)
        #: Kept out of reach while pods below a draining pod's priority are planned (Planner._hold).
        self.held = False
        #: Position among the plan's GPUs by (node order, index): what the state heaps hold.
        self.place = gid

    def reset(self, gid: int) -> None:
        """Back to the snapshot's state for a new plan (a PlanCache keeps the record between plans)."""
        self.id = gid
        self.fixed = self.fixed0
        self.free = self.free0
        self.touched = False
        self.key = (-1, 0, 0, False, False)
        self.held = False
        self.place = gid


class SearchNode:
    __slots__ = ("gpus", "group", "name", "order", "pods", "room", "src", "touched", "version")

    def __init__(self, order: int, src: Node) -> None:
        self.order = order
        self.name = src.name
        self.src = src
        self.gpus: list[SearchGpu] = []  # plannable GPUs only
        self.touched = False
        self.group: NodeGroup | None = None
        #: Bumped on every change of the node's GPUs: memoised costs check it.
        self.version = 0
        #: Keys of the pods this plan puts here.
        self.pods: set[str] = set()
        #: Placement units not held by fixed instances, summed over the GPUs, in 1/24ths of a GPU:
        #: a pod whose size exceeds it cannot fit here (a cheap test before a real one).
        self.room = 0

    def reset(self) -> None:
        """Back to the snapshot's state for a new plan, without GPUs (the planner adds them)."""
        self.gpus = []
        self.touched = False
        self.group = None
        self.version = 0
        self.pods = set()
        self.room = 0


class NodeGroup:
    __slots__ = (
        "arrivals",
        "changes",
        "costs",
        "epoch",
        "id",
        "members",
        "mheaps",
        "nodes",
        "pressure",
        "rep",
        "states",
        "touched_nodes",
        "values",
    )

    def __init__(self, gid: int, rep: SearchNode) -> None:
        self.id = gid
        self.rep = rep
        self.nodes: list[SearchNode] = []
        #: state key -> how many GPUs of the group are in it now
        self.states: dict[StateKey, int] = {}
        #: state key -> heap of the GPUs' places (Planner.by_place); stale entries are skipped
        self.members: dict[StateKey, list[int]] = {}
        #: demand -> [heap of (bound or rank, state key, kind), how many arrivals it has seen,
        #: ``changes`` when last answered, that answer] (see Planner._group_best)
        self.mheaps: dict[Demand, list[Any]] = {}
        #: state keys in the order they first became populated
        self.arrivals: list[StateKey] = []
        self.touched_nodes: dict[int, SearchNode] = {}
        #: bumped on every state change in the group (failure memos check it)
        self.epoch = 0
        #: bumped whenever a GPU enters or leaves a state (Planner._group_best's answers check it)
        self.changes = 0
        #: profile -> demand still waiting for nodes of this group (see Planner._begin_level)
        self.pressure: dict[str, int] = {}
        #: model ordinal -> {free-unit mask -> value of that free space to the waiting demand}
        self.values: dict[int, dict[int, int]] = {}
        #: (mode, demand, model ordinal) -> {fixed << len(cands) | free -> the best option's parts}
        #: (see Planner._cost_table)
        self.costs: dict[tuple[Any, ...], dict[int, Any]] = {}


@dataclass(slots=True)
class PodState:
    pod: PendingPod
    key: str
    demand: Demand | None
    #: Resource names that name no profile (only a snapshot built in code can have them).
    bad_resources: tuple[str, ...]
    groups: tuple[NodeGroup, ...] = ()
    #: Share of a GPU the demand takes, in 1/24ths of the placement axis (4, 8 and 12 divide 24).
    size: int = 0
    #: How many plannable GPUs the pod may use.
    reach: int = 0
    #: The ids of ``groups`` (what the failure memo is keyed by).
    group_ids: tuple[int, ...] = ()

    devices: int = 0

    @property
    def plannable(self) -> bool:
        return bool(self.demand and self.groups and self.size > 0 and not self.bad_resources)


#: Where a pod goes: (node order, ((GPU id, candidate bits handed to the pod, of which new), ...)).
#: Plain numbers, not objects: a tuple of numbers is not tracked by the cyclic collector, and a big
#: plan holds one per pod (objects here made the collector scan the whole heap twice a plan).
Placement = tuple[int, tuple[tuple[int, int, int], ...]]
