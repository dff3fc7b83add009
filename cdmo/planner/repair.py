"""The planner's repair steps: bounded local search that serves more pods than the greedy pass.

- *repairs* (per level): re-pack a node with its planned pods plus a waiting one, or move one
  planned pod elsewhere to make room;
- *swaps* (per level): trade one served pod for two or more waiting ones of its level;
- *polish* (after every level): an exact re-pack of single nodes for waiting pods, kept only if
  the pods served, level by level from the highest, improve (strict priority).

Mixed into :class:`cdmo.planner.algorithm.Planner`, whose placement and journal methods they
call (declared below for the type checker). Every bound counts work, never time. Pure: imports
nothing of Kubernetes or NVML.
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING, Any

from cdmo.planner.geometry import Demand
from cdmo.planner.search import PRESSURE_SCALE, NodeGroup, Placement, PodState, SearchGpu, SearchNode

#: Repairs: waiting pods per priority level that get one, and nodes tried per pod.
REPAIR_POD_LIMIT = 200
REPAIR_NODE_LIMIT = 6
#: How deep a moved pod may itself be repaired, and how many node evaluations (walks) the
#: repairs of one level may spend (work, not time, so that plans stay deterministic).
REPAIR_DEPTH = 1
REPAIR_WORK = 5_000
#: Served pods per level that the swap step tries to trade for two waiting ones.
SWAP_POD_LIMIT = 50
#: Polish (exact re-pack of one node for a waiting pod, after every level is planned): waiting
#: pods tried, nodes per pod, device placements searched per node and in all.
POLISH_POD_LIMIT = 100
POLISH_NODE_LIMIT = 4
#: Kept pods per node that the polish tries moving to another node to make room.
POLISH_EVICT = 3
POLISH_NODE_WORK = 3_000
POLISH_WORK = 60_000


class RepairSteps:
    """Repairs, swaps and the polish, on the planner's state."""

    if TYPE_CHECKING:
        assigned: dict[str, Placement]
        served: dict[int, int]
        journal: list[tuple[Any, ...]]
        pods: list[PodState]
        pods_by_key: dict[str, PodState]
        node_memo: dict[tuple[int, Demand], tuple[int, tuple[Any, ...] | None]]
        _walks: int
        _budget_end: int
        _levels: list[int]
        _polish_state: dict[int, tuple[int, int]]

        def _place(self, pod: PodState) -> bool: ...
        def _place_on(self, pod: PodState, node: SearchNode) -> bool: ...
        def _unassign(self, key: str) -> None: ...
        def _record_assign(
            self, pod: PodState, node: SearchNode, parts: tuple[tuple[int, int, int], ...]
        ) -> None: ...
        def _undo(self, mark: int) -> None: ...
        def _set_gpu(self, gpu: SearchGpu, fixed: int, free: int) -> None: ...
        def _refresh_node(self, node: SearchNode) -> None: ...
        def _nodes_of(self, groups: tuple[NodeGroup, ...]) -> list[SearchNode]: ...
        def fits_used_only(self, node: SearchNode, demand: Demand) -> bool: ...
        def _could_fit(self, pod: PodState) -> bool: ...
        def _neg_largest(self, profile: str) -> Fraction: ...

    def _repair(self, waiting: list[PodState]) -> None:
        """Serve waiting pods by moving pods this plan placed, never leaving one of them unserved.

        Per waiting pod and per eligible node where it would fit beside the used instances:
        re-pack the node with its planned pods plus this one (a few orders), or move one planned
        pod away to make room, where that pod may in turn be repaired one level deeper.
        Bounded by REPAIR_POD_LIMIT pods and REPAIR_WORK node evaluations per level.
        """
        self._budget_end = self._walks + REPAIR_WORK
        for pod in sorted(waiting, key=lambda p: (p.size, p.reach, p.key))[:REPAIR_POD_LIMIT]:
            if self._walks >= self._budget_end:
                break
            if pod.key not in self.assigned and not self._place(pod):
                self._repair_one(pod, REPAIR_DEPTH, None)

    def _repair_one(self, pod: PodState, depth: int, avoid: SearchNode | None) -> bool:
        assert pod.demand is not None
        tried = 0
        for node in self._nodes_of(pod.groups):
            if node is avoid or not self.fits_used_only(node, pod.demand):
                continue
            if self._repack(node, pod) or self._move_one(node, pod, depth):
                return True
            tried += 1
            if tried >= REPAIR_NODE_LIMIT or self._walks >= self._budget_end:
                break
        return False

    def _swap(self, served: list[PodState], waiting: list[PodState]) -> None:
        """Trade one served pod for two or more waiting pods of the same priority.

        A big pod may hold the room that two small ones of its priority need; taking it back,
        serving whoever fits, then placing it again where it can, keeps the trade only when more
        pods of the level are served than before. Bounded like the repairs.
        """
        waiting = [p for p in waiting if self._could_fit(p)]
        if len(waiting) < 2:
            return
        self._budget_end = self._walks + REPAIR_WORK
        order = sorted(waiting, key=lambda p: (p.size, p.reach, p.key))
        for pod in sorted(served, key=lambda p: (-p.size, p.key))[:SWAP_POD_LIMIT]:
            if self._walks >= self._budget_end or sum(1 for w in order if w.key not in self.assigned) < 2:
                return
            if pod.key not in self.assigned:
                continue
            mark = len(self.journal)
            self._unassign(pod.key)
            gained = sum(1 for w in order if w.key not in self.assigned and self._place(w))
            if gained + self._place(pod) <= 1:
                self._undo(mark)

    def _repack(self, node: SearchNode, pod: PodState) -> bool:
        mark = len(self.journal)
        others = [self.pods_by_key[k] for k in sorted(node.pods)]
        for key in sorted(node.pods):
            self._unassign(key)
        by_priority = sorted(others, key=lambda p: (-p.pod.priority, -p.size, p.key))
        everyone = [*others, pod]
        orders = [
            [pod, *by_priority],
            [*by_priority, pod],
            sorted(everyone, key=lambda p: (-p.size, p.key)),
            sorted(everyone, key=lambda p: (p.size, p.key)),
        ]
        # While packing, weigh free space by what exactly these pods ask for.
        group = node.group
        assert group is not None
        saved = group.pressure, group.values
        group.pressure, group.values, saved_costs = {}, {}, group.costs
        group.costs = {}
        for p in everyone:
            for profile, count in p.demand or ():
                group.pressure[profile] = group.pressure.get(profile, 0) + count * PRESSURE_SCALE
        self.node_memo.clear()
        try:
            tried: set[tuple[str, ...]] = set()
            for order in orders:
                sig = tuple(p.key for p in order)
                if sig in tried or self._walks >= self._budget_end:
                    continue
                tried.add(sig)
                step = len(self.journal)
                if all(self._place_on(p, node) for p in order):
                    return True
                self._undo(step)
            self._undo(mark)
            return False
        finally:
            group.pressure, group.values = saved
            group.costs = saved_costs
            self.node_memo.clear()

    def _move_one(self, node: SearchNode, pod: PodState, depth: int) -> bool:
        keys = sorted(
            node.pods, key=lambda k: (self.pods_by_key[k].pod.priority, -self.pods_by_key[k].size, k)
        )
        for key in keys:
            if self._walks >= self._budget_end:
                return False
            mark = len(self.journal)
            self._unassign(key)
            moved = self.pods_by_key[key]
            if self._place_on(pod, node) and (
                self._place(moved) or (depth > 0 and self._repair_one(moved, depth - 1, node))
            ):
                return True
            self._undo(mark)
        return False

    # --- polish: exact re-packs of single nodes for waiting pods ------------------------------

    def _polish(self) -> None:
        """Serve waiting pods by re-packing one node exactly, highest priority first.

        For a waiting pod W and an eligible node where W fits beside the used instances, search
        every placement of W's devices and those of the node's planned pods of W's priority or
        higher (device by device, each on any GPU at any legal start, existing free instances
        first); pods of lower priority on the node are re-placed there or anywhere after, or wait.
        Kept only when the pods served, compared level by level from the highest, improve: so a
        pod never waits while lower-priority pods hold room it could have, and within a level a
        better packing serves one more. Bounded by POLISH_* counts of work, never time.
        """
        waiting = [p for p in self.pods if p.plannable and p.key not in self.assigned]
        if not waiting:
            return
        budget = [POLISH_WORK]
        hopeless: set[tuple[Demand, tuple[int, ...]]] = set()
        for pod in sorted(waiting, key=lambda p: (-p.pod.priority, p.size, p.key))[:POLISH_POD_LIMIT]:
            if budget[0] <= 0:
                break
            if pod.key in self.assigned:
                continue
            assert pod.demand is not None
            kind = (pod.demand, pod.group_ids)
            if kind in hopeless:
                continue
            tried = 0
            for node in self._nodes_of(pod.groups):
                if tried >= POLISH_NODE_LIMIT or budget[0] <= 0:
                    break
                if not node.pods or not self.fits_used_only(node, pod.demand):
                    continue
                tried += 1
                if self._exact_repack(node, pod, budget):
                    break
            if not tried:
                # No node with planned pods could hold it beside its used instances, and a node
                # without any would have taken it in its level: pods of this kind are skipped.
                hopeless.add(kind)

    def _served_vector(self) -> tuple[int, ...]:
        served = self.served  # kept as pods are assigned: counting them here was the polish's cost
        return tuple(served.get(p, 0) for p in self._levels)

    def _exact_repack(self, node: SearchNode, pod: PodState, budget: list[int]) -> bool:
        prio = pod.pod.priority
        keep = sorted(
            (self.pods_by_key[k] for k in node.pods if self.pods_by_key[k].pod.priority >= prio),
            key=lambda p: p.key,
        )
        moved = sorted(
            (self.pods_by_key[k] for k in node.pods if self.pods_by_key[k].pod.priority < prio),
            key=lambda p: (-p.pod.priority, -p.size, p.key),
        )
        before = self._served_vector()
        mark = len(self.journal)
        for p in [*keep, *moved]:
            self._unassign(p.key)
        # All of them on this node; else one of the kept pods (lowest priority, largest first)
        # goes to another node.
        evict = sorted(keep, key=lambda p: (p.pod.priority, -p.size, p.key))[:POLISH_EVICT]
        for out in [None, *evict]:
            if budget[0] <= 0:
                break
            step = len(self.journal)
            found = self._search_node(node, [*(p for p in keep if p is not out), pod], budget)
            if found is None:
                continue
            self._apply_packing(node, found)
            if out is not None:
                self._place(out)
            for p in moved:
                if not self._place_on(p, node):
                    self._place(p)
            if self._served_vector() > before:
                return True
            self._undo(step)
        self._undo(mark)
        return False

    def _search_node(
        self, node: SearchNode, pods: list[PodState], budget: list[int]
    ) -> dict[str, list[tuple[SearchGpu, int]]] | None:
        """Every device of ``pods`` on ``node``'s GPUs, or None within POLISH_NODE_WORK steps.

        Devices go largest first; each tries every GPU (not held) and every option of one device
        there, cheapest first (an existing free instance before a new one). Returns pod key ->
        [(GPU, candidate bit)].
        """
        devices: list[tuple[Fraction, str, int]] = []  # (-share of a GPU, profile, pod index)
        for n, p in enumerate(pods):
            for profile, count in p.demand or ():
                devices.extend([(self._neg_largest(profile), profile, n)] * count)
        devices.sort()
        gpus = [g for g in node.gpus if not g.held]
        state = {g.id: (g.fixed, g.free) for g in gpus}
        chosen: list[tuple[SearchGpu, int]] = []
        work = [min(POLISH_NODE_WORK, budget[0])]

        def place(k: int) -> bool:
            if k == len(devices):
                return True
            _, profile, _ = devices[k]
            one = ((profile, 1),)
            seen: set[tuple[int, int, int]] = set()
            for gpu in gpus:
                if profile not in gpu.geo.by_profile:
                    continue
                fixed, free = state[gpu.id]
                for opt in gpu.geo.options(fixed, free, one):
                    work[0] -= 1
                    if work[0] <= 0:
                        return False
                    # Two empty GPUs of one model in the same state are the same choice.
                    empty = not fixed and not free
                    sig = (gpu.geo.ordinal, 0, opt.assigned) if empty else (gpu.id, 1, opt.assigned)
                    if sig in seen:
                        continue
                    seen.add(sig)
                    state[gpu.id] = (opt.fixed, opt.free)
                    chosen.append((gpu, opt.assigned))
                    if place(k + 1):
                        return True
                    chosen.pop()
                    state[gpu.id] = (fixed, free)
            return False

        ok = place(0)
        budget[0] -= min(POLISH_NODE_WORK, budget[0]) - max(work[0], 0)
        if not ok:
            return None
        out: dict[str, list[tuple[SearchGpu, int]]] = {p.key: [] for p in pods}
        for (_, _, n), (gpu, bit) in zip(devices, chosen, strict=True):
            out[pods[n].key].append((gpu, bit))
        self._polish_state = state
        return out

    def _apply_packing(self, node: SearchNode, found: dict[str, list[tuple[SearchGpu, int]]]) -> None:
        """Set the node's GPUs to the searched state and record each pod's devices."""
        state = self._polish_state
        for gpu in node.gpus:
            if gpu.id in state and state[gpu.id] != (gpu.fixed, gpu.free):
                self._set_gpu(gpu, *state[gpu.id])
        self._refresh_node(node)
        for key, devices in found.items():
            by_gpu: dict[int, tuple[SearchGpu, int]] = {}
            for gpu, bit in devices:
                old = by_gpu.get(gpu.id, (gpu, 0))
                by_gpu[gpu.id] = (gpu, old[1] | bit)
            parts = tuple((gpu.id, bits, bits & ~gpu.free0) for gpu, bits in by_gpu.values())
            self._record_assign(self.pods_by_key[key], node, parts)
