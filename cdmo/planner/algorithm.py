"""snapshot -> plan: priority-first greedy placement with exact per-GPU moves (docs/planner.md).

Outline:

1. Labelled nodes with at least one GPU of a known model, that are not cordoned, are grouped by
   what the pods' filters can see of them (the label keys some pod selects on, blocking taints;
   the name too of a node that some pod's ``matchFields`` lists). Pods with the same selector,
   affinity and tolerations share one list of eligible groups.
2. Pods are served one priority level at a time, highest first; lower levels only get what
   higher ones leave. Within a level, largest demand first. If that leaves pods of the level
   waiting that could fit, the level is planned again smallest first with fragmentation ranked
   first, the better pass is kept, and bounded repairs (re-pack a node, move a planned pod) and
   swaps (one served pod for two waiting ones of the level) try to serve more.
3. A pod goes where adding its demand ranks lowest: (free instances destroyed, instances
   created, GPUs newly touched, node newly touched, demand-weighted fragmentation, loss of large
   free blocks then best fit, see fragmentation.frag_vector), ties to the first node by name
   and the lowest GPU index. Per group and demand a heap holds the distinct GPU states by that
   rank (entered with a cheap lower bound, searched when it tops the heap), so a pod looks at
   states, not at GPUs. A pod that asks for several devices may span the GPUs of one node; that
   is searched per node. The ranking itself lives in objective.py.
4. Polish: for waiting pods, highest priority first, single nodes are re-packed exactly and a
   change is kept only if the pods served, level by level from the highest, improve.
5. Only if the caller asks (options.PlanOptions): GPUs drained for large pods that waited long,
   idle defragmentation of free instances, then pre-warmed free instances on free space.

The search's objects point both ways (GPU <-> node <-> group); :func:`plan` cuts those links when
it is done, so a plan leaves no cyclic garbage.

Everything is sorted before it is decided; no set or dict order reaches the plan, and every
bound counts work, never time. Pure: imports nothing of Kubernetes or NVML.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable
from fractions import Fraction
from operator import attrgetter
from typing import Any

from cdmo.mig.catalog import GpuModel, find_model
from cdmo.mig.layouts import Instance
from cdmo.planner.cache import KeptKey, PlanCache, PodFacts, kept_gpu_plan
from cdmo.planner.demand import demand_of, format_demand
from cdmo.planner.eligibility import name_in_signature, named_nodes, names_told_apart, node_admits
from cdmo.planner.fragmentation import FRAG_LEN
from cdmo.planner.geometry import AddOption, Demand, Geometry, bits_of
from cdmo.planner.models import (
    Assignment,
    Device,
    Drain,
    GpuPlan,
    NodePlan,
    PendingPod,
    Plan,
    PlanSummary,
    Snapshot,
    Unsatisfied,
)
from cdmo.planner.objective import COUNT, STANDARD, Rank, gpu_option_rank, lower_bound, rank
from cdmo.planner.options import LARGE_SHARE, PlanOptions, model_drain_limits
from cdmo.planner.reasons import explain
from cdmo.planner.repair import RepairSteps
from cdmo.planner.search import (
    PRESSURE_SCALE,
    NodeGroup,
    Placement,
    PodState,
    SearchGpu,
    SearchNode,
    StateKey,
)
from cdmo.planner.view import RunView, WaitingPod

#: When one GPU could take a multi-device pod, at most this many nodes holding free instances of
#: its profiles are costed for spreading it over GPUs instead (small clusters: all of them).
SPLIT_SCAN_LIMIT = 8
#: When no GPU can take it alone (or when counting), the search over nodes (touched first, then
#: by name) stops at this many nodes that can take it (small clusters: all of them).
SPLIT_FEASIBLE_LIMIT = 16
#: Kinds of lower-priority pods, and nodes per kind, probed to break ties between two passes.
ROOM_PROBES = 64
#: A pod that may use more groups than this finds its best group in a heap kept for its kind
#: (demand and groups) instead of asking every group (Planner._best_of_many): nodes a pod's
#: matchFields lists are groups of their own, so one kind of pod can see hundreds of groups.
MANY_GROUPS = 16
_UNITS_LCM = 24  # placement axes are 4, 8 or 12 units
#: Entries kept by Planner._node_room before it starts over (a node's states within one plan).
_ROOM_MEMO_LIMIT = 50_000

#: A node's totals beside its fixed instances (Planner._node_room): per profile the most devices
#: of it, the free units, per profile its smallest size (units in 24ths of a GPU).
NodeRoom = tuple[dict[str, int], int, dict[str, int]]
#: An option's cached parts: (destroyed, created, changes the layout, dloss, loss, which option).
OptionParts = tuple[int, int, bool, int, tuple[int, ...], int]
#: ``fixed << len(cands) | free`` -> the best option's parts (None: the demand does not fit).
CostTable = dict[int, OptionParts | None]
#: Kinds of state-heap entries (Planner._group_best): a state by its bound, a state costed. For
#: one state and equal numbers the bound pops first, so the state is costed before it answers.
_STATE, _COSTED = 1, 2
#: Read from a cost table, compared by identity: not costed yet (None is a cached answer).
_UNCOSTED: OptionParts = (-1, -1, False, -1, (), -1)
#: A group's value table before it has one (never written: Planner._value makes the real one).
_NO_VALUES: dict[int, int] = {}


class Planner(RepairSteps):
    """One planning run over one snapshot; :meth:`run` returns the plan."""

    def __init__(
        self, snapshot: Snapshot, options: PlanOptions | None = None, cache: PlanCache | None = None
    ) -> None:
        self.snapshot = snapshot
        self.options = options or PlanOptions()
        #: Facts derived from single nodes and pods, kept between plans by the caller's cache.
        self.cache = cache if cache is not None else PlanCache()
        #: GPU id -> key of the pod it drains for (set by _drain)
        self.drains: dict[int, str] = {}
        self.src_nodes = tuple(sorted(snapshot.nodes, key=lambda n: n.name))
        self.nodes: list[SearchNode] = []
        self.gpus: list[SearchGpu] = []
        #: (node, GPU index) of GPUs left exactly as they are: unknown model, or an invalid layout
        self.frozen: dict[tuple[str, int], str] = {}
        self.geos: dict[int, Geometry] = {}
        self.journal: list[tuple[Any, ...]] = []
        self.assigned: dict[str, Placement] = {}
        #: priority -> pods of that priority in ``assigned`` (the polish compares these per move)
        self.served: dict[int, int] = {}
        self.mode = STANDARD
        self._bounds = _Bounds(STANDARD)
        self.fail_memo: dict[tuple[Demand, tuple[int, ...]], tuple[int, ...]] = {}
        self.node_memo: dict[tuple[int, Demand], tuple[int, tuple[Any, ...] | None]] = {}
        self.used_fit_memo: dict[tuple[int, Demand], bool] = {}
        self._room_memo: dict[tuple[int, tuple[int, ...]], NodeRoom] = {}
        #: node order -> (its version, its NodeRoom as it is now)
        self._room_now: dict[int, tuple[int, NodeRoom]] = {}
        self.empty_fit_memo: dict[tuple[tuple[int, ...], Demand], bool] = {}
        #: _option_parts for GPUs outside any group (reasons look at cordoned nodes' GPUs too)
        self._loose_costs: dict[tuple[Any, ...], CostTable] = {}
        self._neg_largest_memo: dict[str, Fraction] = {}
        #: node evaluations so far (the repairs' budget counts them)
        self._walks = 0
        #: walks over a node's GPUs really made (the screen answers some evaluations without one)
        self._walked = 0
        self._budget_end = 0
        self._group_nodes: dict[tuple[int, ...], list[SearchNode]] = {}
        #: ids of the groups whose GPUs entered a state, one per entry (Planner._enter): what a
        #: kind's heap of group answers reads to know which answers to look at again
        self._group_log: list[int] = []
        #: (demand, group ids) -> [heap of (answer[:3], group id, group.changes, answer), position
        #: in _group_log read up to, the group ids as a set] (Planner._best_of_many)
        self._many: dict[tuple[Demand, tuple[int, ...]], list[Any]] = {}
        #: kinds asked once: a kind gets its heap the second time (most kinds that see many
        #: groups have one pod, which one pass over the groups serves)
        self._many_once: set[tuple[Demand, tuple[int, ...]]] = set()
        self._free_orders: dict[tuple[tuple[int, ...], tuple[str, ...]], list[int]] = {}
        #: profile -> orders of nodes that hold free instances of it in the snapshot
        self.free_nodes: dict[str, list[int]] = {}
        self._models: dict[str, GpuModel | None] = {}
        self.facts = [self.cache.node(n, self.model_of) for n in self.src_nodes]
        self._build_nodes()
        #: The GPUs by (node order, index, id): a GPU's ``place`` is its position here. They are
        #: made node by node, so only a node whose GPUs are not listed by index needs sorting.
        self.by_place: list[SearchGpu] = []
        for node in self.nodes:
            gpus = node.gpus
            if any(gpus[i].index > gpus[i + 1].index for i in range(len(gpus) - 1)):
                gpus = sorted(gpus, key=lambda g: (g.index, g.id))
            for gpu in gpus:
                gpu.place = len(self.by_place)
                self.by_place.append(gpu)
        #: Catalog keys of the known GPU models on labelled nodes.
        self.cluster_models = tuple(sorted({m for f in self.facts for m in f.models}))
        pods = sorted(snapshot.pending, key=attrgetter("namespace", "name"))
        self._pod_facts: list[PodFacts] = self.cache.pods(pods)
        self._build_groups(pods)
        self.pods = self._pod_states(pods)
        self.pods_by_key = {p.key: p for p in self.pods}

    # --- set-up ------------------------------------------------------------------------------

    def close(self) -> None:
        """Cut the indexes that point both ways (GPU <-> node <-> group).

        They make the search fast, but as cycles they would outlive the plan until the cyclic
        collector found them (about 12,000 objects per 100 nodes). Cut, reference counting frees
        every object of the run as soon as the planner goes. The planner is unusable afterwards.
        """
        for group in self.groups:
            group.nodes = []
            group.touched_nodes = {}
            group.mheaps = {}
        for node in self.nodes:
            node.gpus = []
            node.group = None
        self.journal = []
        self.assigned = {}
        self.served = {}
        self._group_nodes = {}
        self._many = {}
        self._group_log = []

    def _drop_search_indexes(self) -> None:
        """Free the heaps, memos and journal once every placement is decided.

        The explanations and the plan's output do not read them; freed before those build the
        plan's many objects, they are not walked by the full collection those objects trigger.
        """
        for group in self.groups:
            group.mheaps = {}
            group.members = {}
            group.arrivals = []
        self.journal = []
        self.fail_memo = {}
        self.node_memo = {}
        self._free_orders = {}

    def model_of(self, text: str) -> GpuModel | None:
        """The catalog model for a snapshot's model string (looked up once per distinct string)."""
        if text not in self._models:
            self._models[text] = find_model(text)
        return self._models[text]

    def _build_nodes(self) -> None:
        """Search state from each node's facts (cdmo.planner.cache: derived once per node object)."""
        gpus = self.gpus
        geos = self.geos
        free_nodes = self.free_nodes
        stamp = self.cache.stamp
        for order, facts in enumerate(self.facts):
            kept = facts.search
            if kept is not None and facts.claimed != stamp:
                # The node's search records from an earlier plan, set back to the snapshot's state.
                node, node_gpus = kept
                node.order = order
                node.reset()
                for gpu in node_gpus:
                    gpu.reset(len(gpus))
                    gpus.append(gpu)
                    node.gpus.append(gpu)
            else:
                node = SearchNode(order, facts.node)
                for (index, fixed, free), geo in zip(facts.gpus, facts.geos, strict=True):
                    gpu = SearchGpu(len(gpus), node, index, geo, fixed, free)
                    gpus.append(gpu)
                    node.gpus.append(gpu)
                if kept is None:
                    facts.search = (node, tuple(node.gpus))
            # Claimed for this plan: a snapshot that lists one Node object twice gets new records.
            facts.claimed = stamp
            self.nodes.append(node)
            for index, reason in facts.frozen:
                self.frozen[(node.name, index)] = reason
            for geo in facts.geos:
                geos[geo.ordinal] = geo
            node.room = facts.room
            for profile in facts.free_profiles:
                free_nodes.setdefault(profile, []).append(order)

    def _pod_states(self, pods: list[PendingPod]) -> list[PodState]:
        """The search state of each pod, from its facts and the node groups.

        Pods with the same filters see the same groups, and pods with the same demand take the
        same share of a GPU: both are worked out once per distinct filters or demand, not once
        per pod (a big cluster's 10,000 pods have a few dozen of each).
        """
        by_sig: dict[int, tuple[tuple[NodeGroup, ...], tuple[int, ...], int]] = {}
        reach: dict[tuple[int, ...], int] = {}
        sizes: dict[Demand | None, int] = {}
        offered: dict[str, int] = {}
        for geo in self.geos.values():
            for name, frac in geo.fraction.items():
                units = int(frac * _UNITS_LCM)
                offered[name] = min(units, offered.get(name, units))
        states = []
        by_rep_name: dict[str, NodeGroup] | None = None
        for pod, (demand, bad, devices, _, _, pod_sig) in zip(pods, self._pod_facts, strict=True):
            seen = by_sig.get(pod_sig)
            if seen is None:
                named = named_nodes(pod.node_affinity)
                if named is None:
                    groups = tuple(g for g in self.groups if node_admits(g.rep.src, pod))
                else:  # pinned by name: only the groups those nodes represent can admit it
                    if by_rep_name is None:
                        by_rep_name = {g.rep.src.name: g for g in self.groups}
                    found = (by_rep_name.get(name) for name in named)
                    candidates = sorted((g for g in found if g is not None), key=lambda g: g.id)
                    groups = tuple(g for g in candidates if node_admits(g.rep.src, pod))
                gkey = tuple(g.id for g in groups)
                if gkey not in reach:
                    reach[gkey] = sum(len(n.gpus) for g in groups for n in g.nodes)
                seen = by_sig[pod_sig] = (groups, gkey, reach[gkey])
            size = sizes.get(demand)
            if size is None:
                size = sizes[demand] = (
                    sum(offered[name] * c for name, c in demand)
                    if demand and all(name in offered for name, _ in demand)
                    else 0
                )
            states.append(
                PodState(
                    pod=pod,
                    key=pod.key,
                    demand=demand,
                    bad_resources=bad,
                    groups=seen[0],
                    size=size,
                    reach=seen[2],
                    group_ids=seen[1],
                    devices=devices,
                )
            )
        return states

    def _build_groups(self, pods: list[PendingPod]) -> None:
        keys = frozenset(k for f in self._pod_facts for k in f[3])
        told_apart = names_told_apart(p for p, f in zip(pods, self._pod_facts, strict=True) if f[4])
        # What a node's cached signature was made for (strings only: not tracked by the collector).
        sig_for = tuple(sorted(keys))
        groups: dict[tuple[Any, ...], NodeGroup] = {}
        self.groups: list[NodeGroup] = []
        for node, facts in zip(self.nodes, self.facts, strict=True):
            if not node.gpus or node.src.unschedulable:
                continue
            cached = facts.sig
            if cached is not None and cached[0] == sig_for:
                seen = cached[1]
            else:
                seen = (
                    tuple((k, v) for k, v in node.src.labels.items() if k in keys),
                    tuple(
                        sorted(
                            (t.key, t.value, t.effect)
                            for t in node.src.taints
                            if t.effect != "PreferNoSchedule"
                        )
                    ),
                )
                facts.sig = (sig_for, seen)
            sig = (seen, name_in_signature(node.name, told_apart))
            group = groups.get(sig)
            if group is None:
                group = groups[sig] = NodeGroup(len(self.groups), node)
                self.groups.append(group)
            group.nodes.append(node)
            node.group = group
        # Every GPU enters its state (as _enter does, in bulk: one heap per state, made at once).
        for group in self.groups:
            states, members, arrivals = group.states, group.members, group.arrivals
            for node in group.nodes:
                for gpu in node.gpus:
                    key = gpu.key = (gpu.geo.ordinal, gpu.fixed, gpu.free, gpu.touched, node.touched)
                    count = states.get(key, 0)
                    states[key] = count + 1
                    if count == 0:
                        arrivals.append(key)
                        members[key] = [gpu.place]
                    else:
                        members[key].append(gpu.place)
            for places in members.values():
                heapq.heapify(places)

    # --- state and indexes -------------------------------------------------------------------

    def _key(self, gpu: SearchGpu) -> StateKey:
        return (gpu.geo.ordinal, gpu.fixed, gpu.free, gpu.touched, gpu.node.touched)

    def _enter(self, gpu: SearchGpu, key: StateKey) -> None:
        group = gpu.node.group
        assert group is not None
        gpu.key = key
        group.changes += 1
        self._group_log.append(group.id)
        count = group.states.get(key, 0)
        group.states[key] = count + 1
        members = group.members.get(key)
        if members is None:
            group.members[key] = [gpu.place]
        else:
            heapq.heappush(members, gpu.place)
        if count == 0:
            group.arrivals.append(key)

    def _rekey(self, gpu: SearchGpu) -> None:
        group = gpu.node.group
        if group is None or gpu.held:
            return
        new = (gpu.geo.ordinal, gpu.fixed, gpu.free, gpu.touched, gpu.node.touched)  # _key, inline
        if new == gpu.key:
            return
        group.states[gpu.key] -= 1
        group.epoch += 1
        self._enter(gpu, new)

    @staticmethod
    def _room_of(geo: Geometry, fixed: int) -> int:
        return geo.room(fixed)

    def _set_gpu(self, gpu: SearchGpu, fixed: int, free: int) -> None:
        self.journal.append(("gpu", gpu.id, gpu.fixed, gpu.free, gpu.touched))
        if fixed != gpu.fixed:
            gpu.node.room += gpu.geo.room(fixed) - gpu.geo.room(gpu.fixed)
        gpu.fixed, gpu.free = fixed, free
        gpu.touched = (fixed | free) != (gpu.fixed0 | gpu.free0)
        gpu.node.version += 1
        self._rekey(gpu)

    def _refresh_node(self, node: SearchNode) -> None:
        touched = False
        for g in node.gpus:
            if g.touched:
                touched = True
                break
        if touched != node.touched:
            self.journal.append(("node", node.order, node.touched))
            self._flag_node(node, touched)

    def _flag_node(self, node: SearchNode, touched: bool) -> None:
        node.touched = touched
        node.version += 1
        if node.group is not None:
            if touched:
                node.group.touched_nodes[node.order] = node
            else:
                node.group.touched_nodes.pop(node.order, None)
        for gpu in node.gpus:
            self._rekey(gpu)

    def _undo(self, mark: int) -> None:
        while len(self.journal) > mark:
            entry = self.journal.pop()
            kind = entry[0]
            if kind == "gpu":
                _, gid, fixed, free, touched = entry
                gpu = self.gpus[gid]
                gpu.node.room += self._room_of(gpu.geo, fixed) - self._room_of(gpu.geo, gpu.fixed)
                gpu.fixed, gpu.free, gpu.touched = fixed, free, touched
                gpu.node.version += 1
                self._rekey(gpu)
            elif kind == "node":
                self._flag_node(self.nodes[entry[1]], entry[2])
            elif kind == "assign":
                order, _ = self.assigned.pop(entry[1])
                self.nodes[order].pods.discard(entry[1])
                self.served[self.pods_by_key[entry[1]].pod.priority] -= 1
            else:  # unassign
                self.assigned[entry[1]] = entry[2]
                self.nodes[entry[2][0]].pods.add(entry[1])
                self.served[self.pods_by_key[entry[1]].pod.priority] += 1

    def _set_mode(self, mode: int) -> None:
        """Switch how placements are ranked; costs cached under the other ranking are dropped.

        The state heaps stay when the ranking does not change (each level starts in STANDARD):
        they follow every state change, undo included, so their answers are the same as a new
        heap's, and building them again cost a third of a 1000-node plan's placing. The node memo
        is cleared all the same: the repairs' budget counts the node walks it saves.
        """
        self.node_memo.clear()
        if mode == self.mode:
            return
        self.mode = mode
        self._bounds = _Bounds(mode)
        for group in self.groups:
            group.mheaps.clear()
        self._many.clear()  # their answers were ranked the other way

    def _measure_pressure(self) -> None:
        """Measure, per group, how much of the pending demand may go to it.

        A pod adds count / reach per profile to every group it may use, so demand that can go
        to few GPUs weighs more. Placements then prefer to use up free space that is wanted less.
        """
        for group in self.groups:
            group.pressure = {}
            group.values = {}
            group.costs = {}
        # Pods alike (same groups, demand and reach) add alike: counted first, added once per kind
        # (whole numbers, so the sums are exactly those of adding pod by pod).
        kinds: dict[tuple[tuple[int, ...], Demand | None, int], int] = {}
        for pod in self.pods:
            if pod.plannable:
                kind = (pod.group_ids, pod.demand, pod.reach)
                kinds[kind] = kinds.get(kind, 0) + 1
        groups = self.groups
        for (group_ids, demand, reach), pods in kinds.items():
            share = PRESSURE_SCALE // max(reach, 1) * pods
            for gid in group_ids:
                pressure = groups[gid].pressure
                for profile, count in demand or ():
                    pressure[profile] = pressure.get(profile, 0) + count * share

    def _value(self, group: NodeGroup | None, geo: Geometry, free_mask: int) -> int:
        """How much of the waiting demand the free units ``free_mask`` of a GPU could still hold."""
        if group is None or not group.pressure:
            return 0
        table = group.values.get(geo.ordinal)
        if table is None:
            table = group.values[geo.ordinal] = {}
        value = table.get(free_mask)
        if value is None:
            caps = geo.cap[free_mask]
            value = 0
            for i, name in enumerate(geo.profile_names):
                weight = group.pressure.get(name)
                if weight and caps[i]:
                    value += weight * caps[i] * geo.size[name] * (_UNITS_LCM // geo.axis)
            table[free_mask] = value
        return value

    # --- costs -------------------------------------------------------------------------------

    def _best_option(
        self, group: NodeGroup | None, geo: Geometry, fixed: int, free: int, demand: Demand
    ) -> AddOption | None:
        """The best way to add ``demand`` to one GPU under the current ranking (its rank:
        :meth:`_best_rank`).

        Among one GPU's options the touched flags never change the order (options that destroy
        and create alike change the layout alike), so the choice is cached per group without them.
        """
        parts = self._option_parts(group, geo, fixed, free, demand)
        if parts is None:
            return None
        return geo.options(fixed, free, demand)[parts[5]]

    def _best_rank(
        self,
        group: NodeGroup | None,
        geo: Geometry,
        fixed: int,
        free: int,
        touched: bool,
        node_touched: bool,
        demand: Demand,
    ) -> Rank | None:
        """The rank of :meth:`_best_option` alone."""
        parts = self._option_parts(group, geo, fixed, free, demand)
        if parts is None:
            return None
        return self._rank_of(parts, touched, node_touched)

    def _rank_of(self, parts: OptionParts, touched: bool, node_touched: bool) -> Rank:
        """The rank of an option from its cached parts and whether its GPU and node are touched."""
        destroyed, created, change, dloss, loss, _ = parts
        gpus = int(change and not touched)
        nodes = int(change and not node_touched)
        return rank(self.mode, destroyed, created, gpus, nodes, dloss, loss)

    def _cost_table(self, group: NodeGroup | None, geo: Geometry, demand: Demand) -> CostTable:
        """The cache of :meth:`_option_parts` for ``demand`` on ``geo``'s GPUs of ``group`` under
        the current ranking: ``fixed << len(geo.cands) | free`` -> the parts.

        Keyed by one int per state: the costing loop reads it by the ten thousand, and a key
        tuple holding the demand cost more to hash than the lookup it served.
        """
        costs = group.costs if group is not None else self._loose_costs
        key = (self.mode, demand, geo.ordinal)
        table = costs.get(key)
        if table is None:
            table = costs[key] = {}
        return table

    def _option_parts(
        self,
        group: NodeGroup | None,
        geo: Geometry,
        fixed: int,
        free: int,
        demand: Demand,
        table: CostTable | None = None,
    ) -> OptionParts | None:
        """(destroyed, created, changes the layout, dloss, loss, which of ``geo.options``) of the
        best option, cached per group (``table``: :meth:`_cost_table`, when the caller has it).
        Numbers only: the cache holds thousands and the cyclic collector skips tuples of numbers."""
        if table is None:
            table = self._cost_table(group, geo, demand)
        key = fixed << len(geo.cands) | free
        # Not try/except: most callers come here on a miss, and raising costs more than looking.
        cached = table.get(key, _UNCOSTED)
        if cached is not _UNCOSTED:
            return cached
        result = None
        options = geo.options(fixed, free, demand)
        if options:
            full = geo.full
            mode = self.mode
            # _value's cache, read here first (_value fills it): asked once per option costed.
            values = group.values.get(geo.ordinal, _NO_VALUES) if group is not None else _NO_VALUES
            mask = full & ~geo.units_of(fixed)
            before = values.get(mask)
            if before is None:
                before = self._value(group, geo, mask)
            best = None
            first = options[0]
            for which, opt in enumerate(options):
                if mode == STANDARD and (opt.destroyed != first.destroyed or opt.created != first.created):
                    break  # sorted: nothing later ranks better under the standard ranking
                mask = full & ~opt.units
                after = values.get(mask)
                if after is None:
                    after = self._value(group, geo, mask)
                dloss = before - after
                order = gpu_option_rank(mode, dloss, opt.destroyed, opt.created, opt.loss)
                if best is None or order < best[0]:
                    best = (order, dloss, which)
            assert best is not None
            opt = options[best[2]]
            result = (
                opt.destroyed,
                opt.created,
                bool(opt.created or opt.destroyed),
                best[1],
                opt.loss,
                best[2],
            )
        table[key] = result
        return result

    def _group_best(self, group: NodeGroup, demand: Demand) -> tuple[tuple[Any, ...], int, int, int] | None:
        """The cheapest GPU state of ``group`` for ``demand``, and its first GPU (by node, index).

        States are ranked by a cheap lower bound first (nothing destroyed, only what existing free
        instances cannot cover created, no fragmentation); a state is costed for real only when
        its bound reaches the top of the demand's heap, so states that cannot beat the best one
        (typically untouched GPUs once touched ones have room) are never searched. The answer is
        the least (rank, state key) over the populated states that can take the demand.

        The demand's heap holds (bound, key) for states not costed yet and (rank, key) for those
        costed; a state that empties stays until it surfaces, one that comes back enters again.
        (Grouping the states by bound into one entry per bound, as this once did, kept the heap
        small but cost more heap steps per placement than it saved.)
        """
        entry = group.mheaps.get(demand)
        if entry is None:
            entry = group.mheaps[demand] = [[], 0, -1, None]
        elif entry[2] == group.changes:
            kept: tuple[tuple[Any, ...], int, int, int] | None = entry[3]
            return kept  # no GPU of the group entered or left a state since the last answer
        heap, seen = entry[0], entry[1]
        arrivals = group.arrivals
        states = group.states
        push = heapq.heappush
        if seen < len(arrivals):
            bounds = self._bounds
            geos = self.geos
            tables: dict[int, tuple[Geometry, dict[int, int], int]] = {}
            # A new heap takes the populated states, each once (arrivals repeat states that left
            # and came back; which of them enter first does not change any answer); an older one
            # the states that arrived since.
            todo = states if seen == 0 else arrivals[seen:]
            for key in todo:
                if states.get(key, 0) <= 0:
                    continue
                ordinal, fixed, free, touched, node_touched = key
                # Geometry.creates_at_least, its cache read here (called for every state and demand)
                found = tables.get(ordinal)
                if found is None:
                    geo = geos[ordinal]
                    found = tables[ordinal] = (geo, geo.bound_table(demand), len(geo.cands))
                create = found[1].get(fixed << found[2] | free)
                if create is None:
                    create = found[0].creates_at_least(fixed, free, demand)
                if create < 0:
                    continue  # this model lacks a profile, or the free units cannot hold it
                lb = bounds[(create, create > 0 and not touched, create > 0 and not node_touched)]
                if seen:
                    push(heap, (lb, key, _STATE))
                else:
                    heap.append((lb, key, _STATE))  # heapified below
            if not seen:
                heapq.heapify(heap)
            entry[1] = len(arrivals)
        pop = heapq.heappop
        cost_tables: dict[int, tuple[Geometry, CostTable, int]] = {}
        mode = self.mode
        while heap:
            head, key, kind = heap[0]
            if kind != _COSTED:
                pop(heap)
                if states.get(key, 0) <= 0:
                    continue
                ordinal, fixed, free, touched, node_touched = key
                # _best_rank, unrolled, its cache read here: nearly every state is costed here.
                costing = cost_tables.get(ordinal)
                if costing is None:
                    geo = self.geos[ordinal]
                    costing = cost_tables[ordinal] = (
                        geo,
                        self._cost_table(group, geo, demand),
                        len(geo.cands),
                    )
                parts = costing[1].get(fixed << costing[2] | free, _UNCOSTED)
                if parts is _UNCOSTED:
                    parts = self._option_parts(group, costing[0], fixed, free, demand, costing[1])
                if parts is not None:
                    change = parts[2]
                    costed_rank = rank(
                        mode,
                        parts[0],
                        parts[1],
                        int(change and not touched),
                        int(change and not node_touched),
                        parts[3],
                        parts[4],
                    )
                    push(heap, (costed_rank, key, _COSTED))
                continue
            if states.get(key, 0) <= 0:
                pop(heap)
                continue
            members = group.members[key]
            by_place = self.by_place
            while by_place[members[0]].key != key:
                pop(members)
            gpu = by_place[members[0]]
            answer = (head, gpu.node.order, gpu.index, gpu.id)
            entry[2], entry[3] = group.changes, answer
            return answer
        entry[2], entry[3] = group.changes, None
        return None

    def _need(self, geo: Geometry, demand: Demand) -> tuple[tuple[int, int], ...] | None:
        """(profile index in ``geo.cap``, count) per profile of ``demand``; None if no GPU of
        this model could ever hold all of it."""
        return geo.need(demand)

    def _node_option(self, node: SearchNode, demand: Demand) -> tuple[tuple[Any, ...], list[Any]] | None:
        """The cheapest way found to put ``demand`` on ``node``, spanning its GPUs if need be."""
        memo_key = (node.order, demand)
        hit = self.node_memo.get(memo_key)
        if hit is not None and hit[0] == node.version:
            return hit[1]
        result = self.node_option(node, demand)
        self.node_memo[memo_key] = (node.version, result)
        return result

    def node_option(
        self, node: SearchNode, demand: Demand, state: dict[int, tuple[int, int, bool]] | None = None
    ) -> tuple[tuple[Any, ...], list[Any]] | None:
        """Best of: all of ``demand`` on one GPU, or device by device (largest first) over the GPUs.

        ``state`` (GPU id -> fixed, free, touched) replaces the GPUs' current state when given.
        """
        several = sum(c for _, c in demand) > 1
        if not self._may_hold(node, demand, state):
            # Counted as the walks it spares: the repairs' budget counts node evaluations, and
            # a plan must not depend on how cheaply one was answered.
            self._walks += 2 if several else 1
            return None
        if state is None:
            state = {g.id: (g.fixed, g.free, g.touched) for g in node.gpus}
        best = self._walk(node, demand, dict(state), whole_first=True)
        if several:
            other = self._walk(node, demand, dict(state), whole_first=False)
            if other is not None and (best is None or other[0] < best[0]):
                best = other
        return best

    def _may_hold(self, node: SearchNode, demand: Demand, state: dict[int, Any] | None) -> bool:
        """False when ``node`` (its GPUs in ``state``, else as they are now) cannot hold ``demand`` however it is placed:
        some profile asks more devices than the GPUs' units beside their fixed instances hold
        of it, or the devices together take more units than those GPUs have free.

        A necessary condition, read from the node's totals per state of its fixed instances
        (:meth:`_node_room`): the walks it spares (two per node, each trying every GPU per
        device) are what made pods that ask several profiles at once cost seconds per plan.
        """
        if state is None:  # the node as it is now: its totals kept while it does not change
            hit = self._room_now.get(node.order)
            if hit is None or hit[0] != node.version:
                hit = self._room_now[node.order] = (node.version, self._node_room(node, None))
            hosts, room, smallest = hit[1]
        else:
            hosts, room, smallest = self._node_room(node, state)
        units = 0
        for name, count in demand:
            if hosts.get(name, 0) < count:
                return False
            units += smallest[name] * count
        return units <= room

    def _node_room(self, node: SearchNode, state: dict[int, Any] | None) -> NodeRoom:
        """For ``node``'s GPUs (in ``state``, else as they are now) beside their fixed instances: per profile, how many
        devices of it they hold at most; the free units (24ths of a GPU); per profile, its
        smallest size on the node's models (24ths). Cached per node and fixed instances."""
        fixed_of = [-1 if g.held else (g.fixed if state is None else state[g.id][0]) for g in node.gpus]
        key = (node.order, tuple(fixed_of))
        found = self._room_memo.get(key)
        if found is not None:
            return found
        hosts: dict[str, int] = {}
        smallest: dict[str, int] = {}
        room = 0
        for gpu, fixed in zip(node.gpus, fixed_of, strict=True):
            if gpu.held:  # kept out of reach (Planner._hold): the walks skip it too
                continue
            geo = gpu.geo
            room += geo.room(fixed)
            for name, caps in zip(geo.profile_names, geo.caps_beside(fixed), strict=True):
                hosts[name] = hosts.get(name, 0) + caps
                size = geo.size[name] * geo.unit_scale
                smallest[name] = min(size, smallest.get(name, size))
        if len(self._room_memo) >= _ROOM_MEMO_LIMIT:
            self._room_memo.clear()
        found = self._room_memo[key] = (hosts, room, smallest)
        return found

    def _walk(
        self, node: SearchNode, demand: Demand, state: dict[int, Any], *, whole_first: bool
    ) -> tuple[tuple[Any, ...], list[Any]] | None:
        self._walks += 1
        self._walked += 1
        remaining = Counter(dict(demand))
        node_touched = node.touched
        steps: list[tuple[SearchGpu, AddOption]] = []
        destroyed = created = new_gpus = dloss = 0
        loss = [0] * FRAG_LEN
        while remaining:
            part = tuple(sorted(remaining.items()))
            pick = self._pick_gpu(node, state, part, node_touched) if whole_first else None
            if pick is None:
                # One device at a time: first the profile the fewest GPUs here can still take,
                # then the largest, so that a device only one GPU fits is not crowded out.
                if len(part) == 1:  # one profile left (most multi-device pods): nothing to weigh
                    first = part[0][0]
                else:
                    names = [p for p, _ in part]
                    hosts = self._hosts(node, state, names)
                    first = min(zip(hosts, (self._neg_largest(p) for p in names), names, strict=True))[2]
                part = ((first, 1),)
                pick = self._pick_gpu(node, state, part, node_touched)
                if pick is None:
                    return None
            gpu, opt = pick
            fixed, _, touched = state[gpu.id]
            change = bool(opt.created or opt.destroyed)
            destroyed += opt.destroyed
            created += opt.created
            if change and not touched:
                new_gpus += 1
            full = gpu.geo.full
            dloss += self._value(node.group, gpu.geo, full & ~gpu.geo.units_of(fixed)) - self._value(
                node.group, gpu.geo, full & ~opt.units
            )
            for i, v in enumerate(opt.loss):
                loss[i] += v
            state[gpu.id] = (opt.fixed, opt.free, touched or change)
            node_touched = node_touched or change
            steps.append((gpu, opt))
            for p, c in part:
                remaining[p] -= c
                if remaining[p] <= 0:
                    del remaining[p]
        found = rank(
            self.mode,
            destroyed,
            created,
            new_gpus,
            int(node_touched and not node.touched),
            dloss,
            tuple(loss),
        )
        return found, steps

    def _hosts(self, node: SearchNode, state: dict[int, Any], profiles: list[str]) -> list[int]:
        """How many GPUs of ``node`` (in ``state``) have free units for one device of each of
        ``profiles`` (one pass over the GPUs for all of them: a walk asks at every step)."""
        counts = [0] * len(profiles)
        last: Geometry | None = None
        index: list[int | None] = []
        for gpu in node.gpus:
            if gpu.held:
                continue
            geo = gpu.geo
            if geo is not last:  # a node's GPUs are mostly of one model
                last = geo
                index = []
                for name in profiles:
                    need = self._need(geo, ((name, 1),))
                    index.append(None if need is None else need[0][0])
            caps = geo.caps_beside(state[gpu.id][0])
            for k, i in enumerate(index):
                if i is not None and caps[i] > 0:
                    counts[k] += 1
        return counts

    def _neg_largest(self, profile: str) -> Fraction:
        """Minus the largest share of a GPU ``profile`` takes on the cluster's models (cached:
        devices are taken largest first, and a walk weighs it at every step)."""
        found = self._neg_largest_memo.get(profile)
        if found is None:
            found = self._neg_largest_memo[profile] = -max(
                (g.fraction[profile] for g in self.geos.values() if profile in g.fraction),
                default=Fraction(0),
            )
        return found

    def _pick_gpu(
        self, node: SearchNode, state: dict[int, Any], demand: Demand, node_touched: bool
    ) -> tuple[SearchGpu, AddOption] | None:
        best = None
        last: Geometry | None = None
        need = None
        for gpu in node.gpus:
            if gpu.held:
                continue
            fixed, free, touched = state[gpu.id]
            geo = gpu.geo
            if geo is not last:  # a node's GPUs are mostly of one model
                last = geo
                need = self._need(geo, demand)
            if need is None:
                continue
            caps = geo.caps_beside(fixed)
            for i, c in need:
                if caps[i] < c:
                    break
            else:
                found = self._best_rank(node.group, geo, fixed, free, touched, node_touched, demand)
                if found is not None and (best is None or (found, gpu.index) < best[0]):
                    best = ((found, gpu.index), gpu)
        if best is None:
            return None
        gpu = best[1]
        fixed, free, _ = state[gpu.id]
        chosen = self._best_option(node.group, gpu.geo, fixed, free, demand)
        assert chosen is not None
        return gpu, chosen

    # --- placing one pod ---------------------------------------------------------------------

    def _place(self, pod: PodState) -> bool:
        """Put ``pod`` where it costs least; False (and nothing changed) if it fits nowhere."""
        demand = pod.demand
        assert demand is not None
        memo_key = (demand, pod.group_ids)
        failed = self.fail_memo.get(memo_key)
        if failed is not None and failed == tuple(g.epoch for g in pod.groups):
            return False
        best: tuple[Any, ...] | None = None  # (rank, node order, gpu index, payload)
        perfect = False
        if len(pod.groups) > MANY_GROUPS and memo_key in self._many_once:
            best = self._best_of_many(pod.groups, memo_key)
        else:
            if len(pod.groups) > MANY_GROUPS:
                self._many_once.add(memo_key)
            for group in pod.groups:
                # _group_best's own check, read here first: most groups did not change since the
                # last pod (only the group that got it did), and this runs per pod and group.
                entry = group.mheaps.get(demand)
                if entry is not None and entry[2] == group.changes:
                    found = entry[3]
                else:
                    found = self._group_best(group, demand)
                if found is not None and (best is None or found[:3] < best[:3]):
                    best = found
        if best is not None:
            gpu = self.gpus[best[3]]
            chosen = self._best_option(gpu.node.group, gpu.geo, gpu.fixed, gpu.free, demand)
            assert chosen is not None
            perfect = not chosen.destroyed and not chosen.created
            exhaustive = bool(chosen.destroyed) or self.mode == COUNT
            best = (best[0], best[1], best[2], (gpu.node, [(gpu, chosen)]))
        else:
            exhaustive = True
        if pod.devices >= 2 and not perfect:
            feasible = 0
            memo = self.node_memo
            for node in self._split_candidates(pod, exhaustive=exhaustive):
                # _node_option's memo, read here first: an exhaustive scan meets the same full
                # nodes pod after pod.
                hit = memo.get((node.order, demand))
                option = (
                    hit[1] if hit is not None and hit[0] == node.version else self._node_option(node, demand)
                )
                if option is None:
                    continue
                cand = (option[0], node.order, -1, (node, option[1]))
                if best is None or cand[:3] < best[:3]:
                    best = cand
                feasible += 1
                if exhaustive and feasible >= SPLIT_FEASIBLE_LIMIT:
                    break
        if best is None:
            self.fail_memo[memo_key] = tuple(g.epoch for g in pod.groups)
            return False
        node, steps = best[3]
        self._apply(pod, node, steps)
        return True

    def _group_answer(self, group: NodeGroup, demand: Demand) -> tuple[Any, ...] | None:
        """:meth:`_group_best`, its answer reused while no GPU of the group changed state."""
        entry = group.mheaps.get(demand)
        if entry is not None and entry[2] == group.changes:
            answer: tuple[Any, ...] | None = entry[3]
            return answer
        return self._group_best(group, demand)

    def _best_of_many(
        self, groups: tuple[NodeGroup, ...], kind: tuple[Demand, tuple[int, ...]]
    ) -> tuple[Any, ...] | None:
        """The least answer of ``groups`` for the demand of ``kind``, as the loop over the groups
        in :meth:`_place` finds it, from a heap of the groups' answers kept for the kind.

        Only the groups that changed since the kind last asked (read from _group_log) are asked
        again; their new answers are pushed, and an answer whose group changed after it was
        pushed is dropped when it comes to the top. Answers are distinct in (rank, node order,
        GPU index), so the heap's least is the loop's.
        """
        demand = kind[0]
        log = self._group_log
        entry = self._many.get(kind)
        if entry is None:
            heap = []
            for group in groups:
                found = self._group_answer(group, demand)
                if found is not None:
                    heap.append((found[:3], group.id, group.changes, found))
            heapq.heapify(heap)
            entry = self._many[kind] = [heap, len(log), frozenset(kind[1])]
        else:
            heap, seen, members = entry
            if seen < len(log):
                entry[1] = len(log)
                by_id = self.groups
                for gid in {g for g in log[seen:] if g in members}:
                    group = by_id[gid]
                    found = self._group_answer(group, demand)
                    if found is not None:
                        heapq.heappush(heap, (found[:3], gid, group.changes, found))
                if len(heap) > 4 * len(members):  # dropped answers pile up deep in the heap
                    heap[:] = [e for e in heap if e[2] == by_id[e[1]].changes]
                    heapq.heapify(heap)
        by_id = self.groups
        while heap:
            top = heap[0]
            if top[2] == by_id[top[1]].changes:
                answer: tuple[Any, ...] = top[3]
                return answer
            heapq.heappop(heap)
        return None

    def _place_on(self, pod: PodState, node: SearchNode) -> bool:
        assert pod.demand is not None
        option = self._node_option(node, pod.demand)
        if option is None:
            return False
        self._apply(pod, node, option[1])
        return True

    def _split_candidates(self, pod: PodState, *, exhaustive: bool) -> Iterable[SearchNode]:
        """Nodes worth costing for a multi-GPU placement of ``pod``, best bets first.

        Exhaustive (no single GPU can take the pod without destroying, or counting): touched
        nodes, then every eligible node by name. Otherwise only spreading over existing free
        instances could beat one GPU, so only nodes that still hold free instances of the pod's
        profiles, at most SPLIT_SCAN_LIMIT of them.
        """
        group_ids = {g.id for g in pod.groups}
        if exhaustive:
            done: set[int] = set()
            for group in pod.groups:
                for order in sorted(group.touched_nodes):
                    if order not in done:
                        done.add(order)
                        yield group.touched_nodes[order]
            for node in self._nodes_of(pod.groups):
                if node.order not in done and node.room >= pod.size:
                    yield node
            return
        profiles = tuple(p for p, _ in pod.demand or ())
        key = (tuple(sorted(group_ids)), profiles)
        orders = self._free_orders.get(key)
        if orders is None:
            orders = self._free_orders[key] = [
                o
                for o in sorted({o for p in profiles for o in self.free_nodes.get(p, ())})
                if self.nodes[o].group is not None and self.nodes[o].group.id in group_ids  # type: ignore[union-attr]
            ]
        seen = 0
        keep: list[int] = []
        masks: dict[int, int] = {}  # model ordinal -> candidate bits of the pod's profiles
        for pos, order in enumerate(orders):
            node = self.nodes[order]
            for gpu in node.gpus:
                mask = masks.get(gpu.geo.ordinal)
                if mask is None:
                    mask = 0
                    for p in profiles:
                        mask |= gpu.geo.profile_bits.get(p, 0)
                    masks[gpu.geo.ordinal] = mask
                if gpu.free & mask:
                    break
            else:
                continue  # handed out or destroyed: dropped from the list below
            keep.append(order)
            if seen >= SPLIT_SCAN_LIMIT:
                keep.extend(orders[pos + 1 :])
                break
            seen += 1
            yield node
        # Free instances rarely come back within one plan (only through undo), so a node that
        # has none left is not looked at again for this kind of pod.
        orders[:] = keep

    def _nodes_of(self, groups: tuple[NodeGroup, ...]) -> list[SearchNode]:
        key = tuple(g.id for g in groups)
        nodes = self._group_nodes.get(key)
        if nodes is None:
            nodes = self._group_nodes[key] = sorted(
                (n for g in groups for n in g.nodes), key=lambda n: n.order
            )
        return nodes

    def _apply(self, pod: PodState, node: SearchNode, steps: list[tuple[SearchGpu, AddOption]]) -> None:
        parts = []
        for gpu, opt in steps:
            new = opt.assigned & ~gpu.free
            self._set_gpu(gpu, opt.fixed, opt.free)
            parts.append((gpu.id, opt.assigned, new))
        if not node.touched or not gpu.touched:
            # Otherwise the node stays touched: its GPU just set is (most pods land on a node
            # that is touched already, and this saves looking at its other GPUs).
            self._refresh_node(node)
        self._record_assign(pod, node, tuple(parts))

    def _record_assign(
        self, pod: PodState, node: SearchNode, parts: tuple[tuple[int, int, int], ...]
    ) -> None:
        """Note ``pod`` as placed on ``node`` with ``parts`` (GPU id, device bits, new bits), for
        the plan, the undo journal and the served counts: the one place an assignment is made."""
        self.assigned[pod.key] = (node.order, parts)
        node.pods.add(pod.key)
        self.journal.append(("assign", pod.key))
        self.served[pod.pod.priority] = self.served.get(pod.pod.priority, 0) + 1

    def _unassign(self, key: str) -> None:
        """Take a pod's devices back; free instances of the snapshot come back where they still fit."""
        placement = self.assigned.pop(key)
        self.served[self.pods_by_key[key].pod.priority] -= 1
        node = self.nodes[placement[0]]
        node.pods.discard(key)
        self.journal.append(("unassign", key, placement))
        for gid, bits, _ in reversed(placement[1]):
            gpu = self.gpus[gid]
            geo = gpu.geo
            fixed = gpu.fixed & ~bits
            free = gpu.free | (bits & gpu.free0)
            occupied = geo.units_of(fixed | free)
            for i in bits_of(gpu.free0 & ~fixed & ~free):
                u = geo.units[i]
                if not u & occupied and (fixed | free | (1 << i)) in geo.valid:
                    free |= 1 << i
                    occupied |= u
            self._set_gpu(gpu, fixed, free)
        self._refresh_node(node)

    # --- levels and repairs ------------------------------------------------------------------

    def _serve(self, pods: list[PodState]) -> int:
        return sum(1 for p in pods if self._place(p))

    def _score(self) -> tuple[int, int, int, int]:
        destroyed = created = gpus = 0
        for gpu in self.gpus:
            if gpu.touched:
                now = gpu.fixed | gpu.free
                before = gpu.fixed0 | gpu.free0
                destroyed += (before & ~now).bit_count()
                created += (now & ~before).bit_count()
                gpus += 1
        nodes = sum(1 for n in self.nodes if n.touched)
        return destroyed, created, gpus, nodes

    def fits(self, node: SearchNode, demand: Demand, state: dict[int, tuple[int, int, bool]]) -> bool:
        """Whether ``demand`` fits on ``node`` if its GPUs were in ``state`` (GPU id -> fixed, free, touched)."""
        return self.node_option(node, demand, state) is not None

    def fits_used_only(self, node: SearchNode, demand: Demand) -> bool:
        """Whether ``demand`` fits on ``node`` beside the snapshot's used instances alone (cached)."""
        key = (node.order, demand)
        hit = self.used_fit_memo.get(key)
        if hit is None:
            state = {g.id: (g.fixed0, 0, False) for g in node.gpus}
            hit = self.used_fit_memo[key] = self.fits(node, demand, state)
        return hit

    def fits_empty(self, node: SearchNode, demand: Demand) -> bool:
        """Whether ``demand`` fits on ``node`` with all its GPUs empty (cached per GPU models)."""
        key = (tuple(g.geo.ordinal for g in node.gpus), demand)
        hit = self.empty_fit_memo.get(key)
        if hit is None:
            hit = self.empty_fit_memo[key] = self.fits(node, demand, {g.id: (0, 0, False) for g in node.gpus})
        return hit

    def top_priority_on(self, node: SearchNode) -> int | None:
        """The highest priority among the pods this plan puts on ``node`` (None: none)."""
        top = None
        for key in node.pods:
            prio = self.pods_by_key[key].pod.priority
            if top is None or prio > top:
                top = prio
        return top

    def _room_for(self, pods: list[PodState]) -> int:
        """How many of ``pods`` could each fit, alone, beside everything planned so far.

        Pods with the same demand and eligibility count once each; at most ROOM_PROBES kinds and
        ROOM_PROBES nodes per kind are looked at (a tie-break between two passes, not a plan).
        """
        kinds: Counter[tuple[Demand, tuple[int, ...]]] = Counter()
        groups: dict[tuple[int, ...], tuple[NodeGroup, ...]] = {}
        for pod in pods:
            assert pod.demand is not None
            key = pod.group_ids
            groups[key] = pod.groups
            kinds[(pod.demand, key)] += 1
        room = 0
        for demand, key in sorted(kinds)[:ROOM_PROBES]:
            nodes = self._nodes_of(groups[key])[:ROOM_PROBES]
            if any(self.node_option(n, demand) is not None for n in nodes):
                room += kinds[(demand, key)]
        return room

    def _could_fit(self, pod: PodState) -> bool:
        assert pod.demand is not None
        return any(self.fits_used_only(n, pod.demand) for n in self._nodes_of(pod.groups))

    def run(self) -> Plan:
        levels: dict[int, list[PodState]] = {}
        for p in self.pods:
            levels.setdefault(p.pod.priority, []).append(p)
        order = sorted(levels, reverse=True)
        self._levels = order
        self._measure_pressure()
        holds = self._holds()
        for i, priority in enumerate(order):
            for gpu, pod in list(holds.items()):
                if pod.pod.priority < priority:
                    continue  # drains for a lower level: open to this one
                del holds[gpu]
                if pod.key in self.assigned or (
                    pod.pod.priority == priority and self._place_on_gpu(pod, gpu)
                ):
                    continue
                self._hold(gpu)
            todo = [p for p in levels[priority] if p.plannable and p.key not in self.assigned]
            if not todo:
                continue
            largest = sorted(todo, key=lambda p: (-p.size, p.demand, p.reach, p.key))
            mark = len(self.journal)
            self._set_mode(STANDARD)
            served = self._serve(largest)
            if served == len(todo) or not any(self._could_fit(p) for p in todo if p.key not in self.assigned):
                continue
            lower = [p for lvl in order[i + 1 :] for p in levels[lvl] if p.plannable]
            first = (served, self._room_for(lower), *(-v for v in self._score()))
            self._undo(mark)
            self._set_mode(COUNT)
            smallest = sorted(todo, key=lambda p: (p.size, p.demand, p.reach, p.key))
            served = self._serve(smallest)
            second = (served, self._room_for(lower), *(-v for v in self._score()))
            if first >= second:
                self._undo(mark)
                self._set_mode(STANDARD)
                self._serve(largest)
            self._set_mode(COUNT)
            self._repair([p for p in todo if p.key not in self.assigned])
            self._swap(
                [p for p in todo if p.key in self.assigned], [p for p in todo if p.key not in self.assigned]
            )
        self._release_holds()
        self._polish()
        self._drain()
        self._reclaim()
        self._defragment()
        self._prewarm()
        self._drop_search_indexes()
        waiting = [
            WaitingPod(p.pod, p.key, p.demand, p.bad_resources)
            for p in self.pods
            if p.key not in self.assigned
        ]
        unsatisfied = explain(_View(self), waiting)
        drained = {pod: self.gpus[g] for g, pod in self.drains.items()}
        for n, u in enumerate(unsatisfied):
            kept = drained.get(u.pod)
            if kept is not None:
                unsatisfied[n] = Unsatisfied(
                    pod=u.pod,
                    reason=(
                        f"GPU {kept.index} of node {kept.node.name} is drained for it: no new pod gets it and "
                        f"its free instances are destroyed; it runs there once the "
                        f"{kept.fixed0.bit_count()} instance(s) in use finish"
                    ),
                    code="Draining",
                    priority=u.priority,
                )
        return self._build_plan(unsatisfied)

    # --- draining for large pods and pre-warming (after the pods) -----------------------------

    def _large_waiting(self) -> list[PodState]:
        """Waiting single-device pods of a large profile (LARGE_SHARE) that have waited at least
        ``options.drain_after_seconds``: highest priority first, then longest waiting."""
        large = int(LARGE_SHARE * _UNITS_LCM)
        waited = self.options.waited
        after = self.options.drain_after_seconds
        pods = [
            p
            for p in self.pods
            if p.plannable
            and p.devices == 1
            and p.size >= large
            and p.key not in self.assigned
            and waited.get(p.key, 0.0) >= after
        ]
        return sorted(pods, key=lambda p: (-p.pod.priority, -waited.get(p.key, 0.0), -p.size, p.key))

    def _starved_models(self) -> set[str]:
        """GPU models that a waiting pod smaller than the large ones could use and that it has
        waited for at least ``options.drain_yield_after_seconds``: draining there would starve it.

        The bound on draining (docs/planner.md): a GPU is kept idle for a large pod only while the
        smaller pods its model serves are not waiting long themselves; otherwise, under a load the
        model's GPUs cannot carry, draining would turn their small instances into large ones for good.
        """
        large = int(LARGE_SHARE * _UNITS_LCM)
        waited = self.options.waited
        after = self.options.drain_yield_after_seconds
        starved: set[str] = set()
        if after <= 0:
            return starved
        for p in self.pods:
            if not p.plannable or p.size >= large or p.key in self.assigned or waited.get(p.key, 0.0) < after:
                continue
            assert p.demand is not None
            for geo in self.geos.values():
                if geo.key not in starved and self._need(geo, p.demand) is not None:
                    starved.add(geo.key)
        return starved

    def _holds(self) -> dict[SearchGpu, PodState]:
        """GPUs the last plan drained, with the waiting large pod each may still be kept for.

        Levels above the pod's priority may use the GPU. At the pod's own level it is offered to
        that pod first; if the pod does not fit yet, the GPU is out of reach of every other pod of
        that level and below, so that pods arriving later do not take the room it waits for.
        """
        wanted = {tuple(k) for k in self.options.draining}
        if not wanted or self.options.drain_max_gpus <= 0:
            return {}
        starved = self._starved_models()
        gpus = [
            g
            for g in self.gpus
            if (g.node.name, g.index) in wanted and g.node.group is not None and g.geo.key not in starved
        ]
        holds: dict[SearchGpu, PodState] = {}
        for pod in self._large_waiting():
            assert pod.demand is not None
            for gpu in gpus:
                if gpu not in holds and gpu.node.group in pod.groups and self._need(gpu.geo, pod.demand):
                    holds[gpu] = pod
                    break
        return holds

    def _place_on_gpu(self, pod: PodState, gpu: SearchGpu) -> bool:
        assert pod.demand is not None
        found = self._best_option(gpu.node.group, gpu.geo, gpu.fixed, gpu.free, pod.demand)
        if found is None:
            return False
        self._apply(pod, gpu.node, [(gpu, found)])
        return True

    def _hold(self, gpu: SearchGpu) -> None:
        group = gpu.node.group
        assert group is not None
        group.states[gpu.key] -= 1
        group.epoch += 1
        group.changes += 1
        gpu.held = True
        gpu.key = (-1, 0, 0, False, False)  # its heap entries are stale now
        gpu.node.version += 1  # in or out of reach: what is cached of the node as it is goes stale
        self.node_memo.clear()
        self.used_fit_memo.clear()

    def _release_holds(self) -> None:
        for gpu in self.gpus:
            if gpu.held:
                gpu.held = False
                gpu.node.version += 1  # in or out of reach: what is cached of the node as it is goes stale
                self._enter(gpu, self._key(gpu))
                self.node_memo.clear()
                self.used_fit_memo.clear()

    def _drain(self) -> None:
        """Keep GPUs for large pods that fit nowhere: destroy their free instances, hand out none.

        For each waiting large pod (highest priority, then largest first), the eligible GPU
        closest to draining: the one the last plan drained, then the fewest placement units held,
        then the fewest used instances (pods to wait for), then node and index. Only GPUs this
        plan left as they are, whose model can hold the pod when empty. At most
        ``options.drain_max_gpus`` GPUs at once; the caller keeps pods off a draining GPU until
        it is empty (the node agent destroys instances there as their pods end).
        """
        limit = self.options.drain_max_gpus
        if limit <= 0:
            return
        before = {tuple(k) for k in self.options.draining}
        most_used = self.options.drain_max_used_share
        per_model = model_drain_limits(
            (g.geo.key for g in self.gpus if g.node.group is not None), self.options.drain_max_model_share
        )
        drained: Counter[str] = Counter()
        starved = self._starved_models()
        for pod in self._large_waiting():
            if len(self.drains) >= limit:
                break
            assert pod.demand is not None
            best: tuple[Any, ...] | None = None
            for node in self._nodes_of(pod.groups):
                for gpu in node.gpus:
                    if (
                        gpu.id in self.drains
                        or drained[gpu.geo.key] >= per_model[gpu.geo.key]
                        or gpu.geo.key in starved
                        or gpu.fixed != gpu.fixed0
                        or not self._need(gpu.geo, pod.demand)
                        or gpu.geo.units_of(gpu.fixed0).bit_count() > most_used * gpu.geo.axis
                    ):
                        continue
                    rank = (
                        (node.name, gpu.index) not in before,
                        gpu.geo.units_of(gpu.fixed0).bit_count() * gpu.geo.unit_scale,
                        gpu.fixed0.bit_count(),
                        node.order,
                        gpu.index,
                    )
                    if best is None or rank < best[0]:
                        best = (rank, gpu)
            if best is None:
                continue
            gpu = best[1]
            self.drains[gpu.id] = pod.key
            drained[gpu.geo.key] += 1
            if gpu.free:
                self._set_gpu(gpu, gpu.fixed, 0)
                self._refresh_node(gpu.node)

    def _reclaim(self) -> None:
        """While large pods wait long, destroy the free instances of nearly empty GPUs they could use.

        Only for the pods draining is for (large, single-device, waited at least
        ``options.drain_after_seconds``). Free instances only (no pod notices) on GPUs this plan
        left as they are, whose used
        instances hold at most ``options.reclaim_max_used_share`` of the GPU: left there, the
        scheduler hands them to new small pods and the GPU never empties; gone, the next small
        pods get instances made where the fragmentation measure puts them, on fuller GPUs.
        Nothing is held: unlike draining, no capacity waits idle for a pod. The drain's bound holds
        here too: no model whose smaller pods have waited long loses free instances.
        """
        share = self.options.reclaim_max_used_share
        if share <= 0:
            return
        wanted = self._large_waiting()
        if not wanted:
            return
        starved = self._starved_models()
        for gpu in self.gpus:
            if (
                gpu.node.group is None
                or not gpu.free
                or gpu.id in self.drains
                or gpu.geo.key in starved
                or gpu.fixed != gpu.fixed0
                or gpu.free != gpu.free0
                or gpu.geo.units_of(gpu.fixed).bit_count() > share * gpu.geo.axis
            ):
                continue
            if any(
                gpu.node.group in p.groups and self._need(gpu.geo, p.demand) is not None  # type: ignore[arg-type]
                for p in wanted
            ):
                self._set_gpu(gpu, gpu.fixed, 0)
                self._refresh_node(gpu.node)

    def _defragment(self) -> None:
        """While no pod waits, re-create a GPU's free instances where they leave larger free blocks.

        Touches free instances only (used ones never move, so no pod notices): the same profiles
        are destroyed and made again at the placements that keep the most room for the largest
        profiles in demand (the fragmentation measure), and only where that raises how many of
        the largest such profile the GPU could still take. Fullest gain first, within
        ``options.defrag_ops`` operations (each destroy or create counts one).
        """
        budget = self.options.defrag_ops
        if budget <= 0 or any(p.plannable for p in self.pods if p.key not in self.assigned):
            return
        wanted = self.options.defrag_profiles
        moves: list[tuple[tuple[int, ...], int, int, SearchGpu, AddOption]] = []
        for gpu in self.gpus:
            if gpu.node.group is None or gpu.id in self.drains or gpu.fixed != gpu.fixed0 or not gpu.free:
                continue
            geo = gpu.geo
            demand = tuple(sorted(Counter(geo.cands[i].profile for i in bits_of(gpu.free)).items()))
            opt = geo.best_add(gpu.fixed, 0, demand)
            if opt is None or opt.assigned == gpu.free:
                continue
            names = [p for p in wanted if p in geo.by_profile] or list(geo.profile_names)
            names.sort(key=lambda p: (-geo.fraction[p], p))
            before_caps = geo.cap[geo.full & ~geo.units_of(gpu.fixed | gpu.free)]
            after_caps = geo.cap[geo.full & ~opt.units]
            gain = tuple(
                after_caps[geo.profile_names.index(p)] - before_caps[geo.profile_names.index(p)]
                for p in names
            )
            if gain <= (0,) * len(gain):
                continue
            ops = (gpu.free & ~opt.assigned).bit_count() + (opt.assigned & ~gpu.free).bit_count()
            moves.append((tuple(-g for g in gain), ops, gpu.id, gpu, opt))
        for _, ops, _, gpu, opt in sorted(moves, key=lambda m: m[:3]):
            if ops > budget:
                continue
            budget -= ops
            self._set_gpu(gpu, gpu.fixed, opt.assigned)
            self._refresh_node(gpu.node)

    def _prewarm(self) -> None:
        """Create free instances of ``options.prewarm``'s profiles on free space, destroying nothing.

        Largest profile first; each instance goes where it costs least: a node this plan changes
        anyway, then the least loss of large free blocks (fragmentation.frag_vector), then
        node and index. GPUs that drain are left alone; while a pod waits, only nodes this plan
        changes anyway get any.
        """
        wants = {p: n for p, n in self.options.prewarm.items() if n > 0}
        if not wants:
            return
        # While pods wait, only nodes this plan changes anyway get pre-warmed instances: another
        # node would apply a change (and take no pod meanwhile) for an instance nobody asked for.
        waiting = any(p.plannable for p in self.pods if p.key not in self.assigned)
        have: Counter[str] = Counter()
        for gpu in self.gpus:
            if gpu.node.group is None or gpu.id in self.drains:
                continue
            for i in bits_of(gpu.free):
                have[gpu.geo.cands[i].profile] += 1
        for profile in sorted(wants, key=lambda p: (self._neg_largest(p), p)):
            one = ((profile, 1),)
            for _ in range(wants[profile] - have[profile]):
                # GPUs in one state cost alike: look at distinct states, each by its first GPU.
                best: tuple[Any, ...] | None = None
                for group in self.groups:
                    for key, count in group.states.items():
                        if count <= 0:
                            continue
                        ordinal, fixed, free, _, node_touched = key
                        geo = self.geos[ordinal]
                        if profile not in geo.by_profile or (waiting and not node_touched):
                            continue
                        opt = geo.best_add(fixed | free, 0, one)
                        if opt is None:
                            continue
                        first = self._first_in_state(group, key)
                        if first is None:
                            continue
                        rank = (not node_touched, opt.loss, first.node.order, first.index)
                        if best is None or rank < best[0]:
                            best = (rank, first, opt)
                if best is None:
                    break
                _, chosen, opt = best
                self._set_gpu(chosen, chosen.fixed, chosen.free | opt.assigned)
                self._refresh_node(chosen.node)

    def _first_in_state(self, group: NodeGroup, key: StateKey) -> SearchGpu | None:
        """The GPU of ``group`` in state ``key`` first by node and index that does not drain."""
        members = group.members[key]
        by_place = self.by_place
        while members and by_place[members[0]].key != key:
            heapq.heappop(members)
        if not members:
            return None
        first = by_place[members[0]]
        if first.id not in self.drains:
            return first
        for place in sorted(members):
            gpu = by_place[place]
            if gpu.key == key and gpu.id not in self.drains:
                return gpu
        return None

    # --- output ------------------------------------------------------------------------------

    def _build_plan(self, unsatisfied: list[Unsatisfied]) -> Plan:
        node_plans = []
        created_total = destroyed_total = 0
        gpus_touched = nodes_touched = 0
        # Entries of GPUs left as they are, one per distinct (index, model, instances): the plan
        # lists every GPU of every labelled node, and most stay as they are.
        shared: dict[KeptKey, GpuPlan] = {}
        model_of = self.model_of
        for node, facts in zip(self.nodes, self.facts, strict=True):
            if not node.src.labelled:
                continue
            changed = [g for g in node.gpus if (g.fixed | g.free) != (g.fixed0 | g.free0)]
            if not changed:
                # Left as it is: the same entry every plan that leaves this node object alone.
                node_plans.append(facts.unchanged_plan(model_of, shared))
                continue
            by_gpu = {gpu.index: gpu for gpu in changed}
            gpu_plans = []
            for g in node.src.gpus:
                gpu = by_gpu.get(g.index)
                if gpu is None:
                    kept = shared.get((g.index, g.model, id(g.instances)))
                    gpu_plans.append(kept or kept_gpu_plan(g, model_of, shared))
                    continue
                geo = gpu.geo
                now = gpu.fixed | gpu.free
                before = gpu.fixed0 | gpu.free0
                created = geo.instances(now & ~before)
                destroyed = geo.instances(before & ~now)
                created_total += len(created)
                destroyed_total += len(destroyed)
                gpus_touched += 1
                gpu_plans.append(
                    GpuPlan(g.index, g.model, geo.key, g.instances, geo.instances(now), created, destroyed)
                )
            nodes_touched += 1
            node_plans.append(NodePlan(node.name, tuple(gpu_plans)))
        assignments = []
        handed = 0
        # Devices are values: equal ones (same GPU index, instance, newness) are one object, and
        # so are equal tuples of them (most pods get one device, and many get the same one).
        made: dict[tuple[int, int, int, bool], Device] = {}
        tuples: dict[tuple[tuple[int, int, int, bool], ...], tuple[Device, ...]] = {}
        nodes = self.nodes
        gpus = self.gpus
        pods_by_key = self.pods_by_key
        assigned = self.assigned
        geos = self.geos
        for key in sorted(assigned):
            order, parts = assigned[key]
            tkey: tuple[tuple[int, int, int, bool], ...]
            if len(parts) == 1 and not parts[0][1] & (parts[0][1] - 1):
                # One device (most pods): its bit without walking the bits.
                gpu = gpus[parts[0][0]]
                i = parts[0][1].bit_length() - 1
                # New means: not in the snapshot (an instance destroyed and made again is not new).
                is_new = not (gpu.free0 >> i) & 1
                handed += not is_new
                tkey = ((gpu.geo.ordinal, gpu.index, i, is_new),)
            else:
                dkeys = []
                for gid, bits, _ in parts:
                    gpu = gpus[gid]
                    for i in bits_of(bits):
                        is_new = not (gpu.free0 >> i) & 1
                        handed += not is_new
                        dkeys.append((gpu.geo.ordinal, gpu.index, i, is_new))
                tkey = tuple(dkeys)
            devices = tuples.get(tkey)
            if devices is None:
                found = []
                for dkey in tkey:
                    device = made.get(dkey)
                    if device is None:
                        inst: Instance = geos[dkey[0]].cands[dkey[2]]
                        device = made[dkey] = Device(dkey[1], inst.profile, inst.start, dkey[3])
                    found.append(device)
                if len(found) > 1:
                    found.sort(key=lambda d: (d.gpu, d.start, d.profile))
                devices = tuples[tkey] = tuple(found)
            assignments.append(Assignment(key, nodes[order].name, devices, pods_by_key[key].pod.priority))
        levels: dict[int, list[int]] = {}
        for p in self.pods:
            counts = levels.setdefault(p.pod.priority, [0, 0])
            counts[1] += 1
            counts[0] += p.key in self.assigned
        summary = PlanSummary(
            served_by_priority=tuple((prio, c[0], c[1]) for prio, c in sorted(levels.items(), reverse=True)),
            destroyed=destroyed_total,
            created=created_total,
            handed_out=handed,
            gpus_touched=gpus_touched,
            nodes_touched=nodes_touched,
        )
        drains = tuple(
            sorted(Drain(self.gpus[g].node.name, self.gpus[g].index, pod) for g, pod in self.drains.items())
        )
        return Plan(
            draining=drains,
            nodes=tuple(node_plans),
            assignments=tuple(assignments),
            unsatisfied=tuple(sorted(unsatisfied, key=lambda u: u.pod)),
            summary=summary,
        )


class _Bounds(dict[tuple[int, bool, bool], Rank]):
    """(instances created, GPU newly touched, node newly touched) -> the lower bound of a rank
    under one ranking mode, made once per plan (the heaps compare these tuples by the thousand)."""

    def __init__(self, mode: int) -> None:
        super().__init__()
        self.mode = mode

    def __missing__(self, key: tuple[int, bool, bool]) -> Rank:
        created, gpus, nodes = key
        found = self[key] = lower_bound(self.mode, created, int(gpus), int(nodes))
        return found


class _View:
    """The finished run as :class:`cdmo.planner.view.RunView` (what the explanations may read)."""

    def __init__(self, planner: Planner) -> None:
        self._planner = planner
        self.src_nodes = planner.src_nodes
        self.cluster_models = planner.cluster_models
        self._nodes = {n.name: n for n in planner.nodes}

    def pending_pods(self) -> list[PendingPod]:
        return [p.pod for p in self._planner.pods]

    def gpu_models(self, node: str) -> tuple[str, ...]:
        found = self._nodes.get(node)
        return tuple(g.geo.key for g in found.gpus) if found is not None else ()

    def offers(self, node: str, profile: str) -> bool:
        found = self._nodes.get(node)
        return found is not None and any(profile in g.geo.by_profile for g in found.gpus)

    def fits_empty(self, node: str, demand: Demand) -> bool:
        return self._planner.fits_empty(self._nodes[node], demand)

    def fits_used_only(self, node: str, demand: Demand) -> bool:
        return self._planner.fits_used_only(self._nodes[node], demand)

    def top_priority_on(self, node: str) -> int | None:
        return self._planner.top_priority_on(self._nodes[node])

    def work_done(self) -> int:
        return self._planner._walked


_: type[RunView] = _View  # the interface is checked against its one implementation by mypy


def plan(snapshot: Snapshot, options: PlanOptions | None = None, cache: PlanCache | None = None) -> Plan:
    """The plan for ``snapshot``: pure and deterministic (the same snapshot gives the same plan).

    Invariants: every desired layout is valid for its model; every used instance stays, same
    profile and start; unlabelled nodes and GPUs of unknown model are left as they are; every
    pending pod is in exactly one of assignments and unsatisfied. ``cache`` (optional) keeps
    facts about unchanged node and pod objects for the next plan; the plan is the same without it.
    """
    planner = Planner(snapshot, options, cache)
    try:
        return planner.run()
    finally:
        planner.close()


__all__ = ["Planner", "demand_of", "format_demand", "plan"]
