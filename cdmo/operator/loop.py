"""The planning loop: one per operator, batched, level-triggered.

Any change to MIG pods, labelled nodes or MigLayouts nudges the loop. It then waits for a batch
window (quiet for ``batch_idle_seconds``, at most ``batch_max_seconds`` after the first
change), reads the kopf indexes, and makes one pass:

1. every labelled node has a MigLayout (created without ``spec.gpus``);
2. a MigLayout without ``spec.gpus`` whose agent reported the GPUs adopts that layout as spec;
3. snapshot -> planner -> merge-patch the spec of the nodes the plan changes, each guarded by
   the resourceVersion the plan saw (409: plan again on the fresh state);
4. Events on pods and MigLayouts, metrics.

It also wakes every ``resync_seconds`` without a change, for the time-based rules (pending
grace, Stale timeout). A pass reads everything afresh, so a missed nudge costs a delay, never
a wrong plan.

kopf runs daemons per object, so the loop is carried by the daemons of the MigLayouts: the
first one to start runs it, the others wait their turn (see :meth:`PlanningLoop.carry`). kopf
stops daemons when peering pauses the operator, so only the active replica plans.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, cast

import structlog

from cdmo.config import OperatorConfig
from cdmo.errors import InvalidInput
from cdmo.mig.layouts import Instance
from cdmo.operator.demand import is_waiting, profile_counts
from cdmo.operator.events import (
    PodEvent,
    build_pod_event,
    dedup_unsatisfied,
    miglayout_ref,
    repartition_message,
)
from cdmo.operator.metrics import OperatorMetrics
from cdmo.operator.publish import (
    SpecRefused,
    adopted_layouts,
    build_adoption_patch,
    build_spec_patch,
    describe_layouts,
    nodes_to_patch,
    planned_pods,
)
from cdmo.operator.snapshot import build_snapshot, held_pods, node_states, screen_pods, status_problem
from cdmo.operator.stale import NodeState
from cdmo.operator.trust import untrusted_nodes
from cdmo.operator.warmth import DemandHistory, count_gpus, free_instances
from cdmo.planner import Node, Plan, PlanOptions, Snapshot, parse_snapshot, plan
from cdmo.planner.cache import PlanCache

log = structlog.get_logger("cdmo.operator")


@dataclass(frozen=True)
class Indexes:
    """A consistent read of the kopf indexes, as plain data."""

    #: labelled nodes by name (summaries, see snapshot.summarize_node)
    nodes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: MigLayouts by name (snapshot.summarize_miglayout)
    miglayouts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: unbound MIG pods (demand.summarize_pod)
    pending: tuple[Mapping[str, Any], ...] = ()
    #: MIG pods bound to nodes
    bound: tuple[Mapping[str, Any], ...] = ()


class Writer(Protocol):
    async def create_miglayout(self, node_name: str, node_uid: str = "") -> bool: ...

    async def set_owner(self, node_name: str, node_uid: str, resource_version: str) -> bool: ...

    async def patch_spec(self, node_name: str, body: dict[str, Any]) -> dict[str, Any] | None: ...


@dataclass
class PassResult:
    """What one pass did (for logs and tests)."""

    planned: bool = False
    patched: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    #: nodes whose spec write the API server refused as invalid (left out until their object changes)
    refused: list[str] = field(default_factory=list)
    #: nodes whose status the operator cannot read (left out until it can)
    unreadable: list[str] = field(default_factory=list)
    events: list[PodEvent] = field(default_factory=list)
    plan: Plan | None = None


def _post_with_kopf(event: PodEvent) -> None:
    import kopf  # at the edge: the pure modules above never see kopf

    # kopf reads only apiVersion, kind and metadata of the object; a plain dict ref is enough.
    ref = cast("kopf.Body", dict(event.ref))
    kopf.event(ref, type=event.type, reason=event.reason, message=event.message)


def plan_snapshot(snapshot: Mapping[str, Any], options: PlanOptions | None = None) -> Plan:
    """The planner on a live-cluster snapshot (unknown GPU models are left alone, not refused)."""
    return plan(parse_snapshot(snapshot, allow_unknown_models=True), options)


class SnapshotPlanner:
    """:func:`plan_snapshot` that keeps planner state between the passes of one loop.

    A node whose snapshot entry equals the one the last pass gave under its name is passed to the
    planner as the same parsed :class:`~cdmo.planner.Node` object, so the planner's
    :class:`~cdmo.planner.cache.PlanCache` keeps what it derived from it (its GPUs as bit sets, its
    entry in a plan that leaves it alone). Comparing two entries (plain dicts and lists) costs far
    less than parsing one; the plan is the same as :func:`plan_snapshot`'s. Pods are parsed every
    pass (few, and their order and waits change). One pass at a time (the loop's lock).
    """

    def __init__(self) -> None:
        self.cache = PlanCache()
        #: node name -> (its entry in the last snapshot, the Node parsed from it)
        self._nodes: dict[str, tuple[Mapping[str, Any], Node]] = {}

    def __call__(self, snapshot: Mapping[str, Any], options: PlanOptions | None = None) -> Plan:
        entries = snapshot.get("nodes")
        if not isinstance(entries, list) or not all(
            isinstance(e, Mapping) and isinstance(e.get("name"), str) for e in entries
        ):
            return plan_snapshot(snapshot, options)  # parse_snapshot says what is wrong
        names = [e["name"] for e in entries]
        if len(set(names)) != len(names):
            return plan_snapshot(snapshot, options)
        changed = [e for e in entries if (old := self._nodes.get(e["name"])) is None or old[0] != e]
        try:
            parsed = parse_snapshot(
                {"nodes": changed, "pending": snapshot.get("pending")}, allow_unknown_models=True
            )
        except InvalidInput:
            return plan_snapshot(snapshot, options)  # its message names the entry in the whole snapshot
        fresh = {n.name: n for n in parsed.nodes}
        nodes = {}
        for entry in entries:
            name = entry["name"]
            node = fresh.get(name)
            nodes[name] = (entry, node) if node is not None else self._nodes[name]
        self._nodes = nodes  # nodes no longer in the snapshot are forgotten
        return plan(
            Snapshot(nodes=tuple(n for _, n in nodes.values()), pending=parsed.pending),
            options,
            cache=self.cache,
        )


class PlanningLoop:
    def __init__(
        self,
        config: OperatorConfig,
        writer: Writer,
        metrics: OperatorMetrics | None = None,
        *,
        post_event: Callable[[PodEvent], None] = _post_with_kopf,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        planner: Callable[[Mapping[str, Any], PlanOptions], Plan] | None = None,
    ) -> None:
        self.config = config
        self.writer = writer
        self.metrics = metrics if metrics is not None else OperatorMetrics()
        self._post = post_event
        self._clock = clock
        self._planner = planner if planner is not None else SnapshotPlanner()
        self._wake: asyncio.Event | None = None
        self._first_change: float | None = None
        self._last_change = 0.0
        self._carrier: asyncio.Lock | None = None
        #: pod uid -> last unsatisfied message posted
        self._unsatisfied: dict[str, str] = {}
        #: node -> generation written by this operator and not yet seen applied
        self._published: dict[str, int] = {}
        #: (node, generation) already reported Stale
        self._stale_reported: set[tuple[str, int]] = set()
        #: (node, generation) whose contradicting report was already told
        self._untrusted_reported: set[tuple[str, int]] = set()
        #: node -> the resourceVersion of its MigLayout when the API server refused a spec write
        #: for it: the node stays out until the object changes (the same write would be refused)
        self._refused: dict[str, str] = {}
        #: node -> the last refusal (or unreadable status) told in an Event, so each is told once
        self._refusals_told: dict[str, str] = {}
        self._unreadable_told: dict[str, str] = {}
        self._unplannable_told: dict[str, str] = {}
        self.passes = 0
        #: demand history (pre-warming) and the GPUs the last plan drained
        self._history = DemandHistory(config)

    # -- waking ------------------------------------------------------------------------------
    def _event(self) -> asyncio.Event:
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    def nudge(self) -> None:
        """Something changed: plan after the batch window. Cheap; call it from any handler."""
        now = time.monotonic()
        self._last_change = now
        if self._first_change is None:
            self._first_change = now
        self._event().set()

    async def _wait_for_batch(self) -> None:
        """Return when a batch of changes is complete, or after resync_seconds without any."""
        wake = self._event()
        try:
            await asyncio.wait_for(wake.wait(), self.config.resync_seconds)
        except TimeoutError:
            return
        while True:
            now = time.monotonic()
            first = self._first_change if self._first_change is not None else now
            left = min(
                self._last_change + self.config.batch_idle_seconds - now,
                first + self.config.batch_max_seconds - now,
            )
            if left <= 0:
                break
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), left)
        self._first_change = None
        wake.clear()

    # -- running -----------------------------------------------------------------------------
    async def carry(self, stopped: Any, read: Callable[[], Indexes]) -> None:
        """Run the loop if no other daemon does; otherwise wait to take over until ``stopped``."""
        if self._carrier is None:
            self._carrier = asyncio.Lock()
        async with self._carrier:
            await self.run(stopped, read)

    async def run(self, stopped: Any, read: Callable[[], Indexes]) -> None:
        log.info("Started planning loop")
        self.nudge()  # a first pass right away: the indexes are complete when daemons start
        while not stopped:
            await self._wait_for_batch()
            if stopped:
                break
            try:
                await self.run_pass(read())
            except asyncio.CancelledError:
                raise
            except Exception:
                # One bad pass (an API outage, a bug on odd input) must not end planning for good.
                log.exception("Planning pass failed")
        log.info("Stopped planning loop")

    async def run_pass(self, idx: Indexes) -> PassResult:
        """One pass over a read of the indexes: create, adopt, plan, patch, tell."""
        self.passes += 1
        now = self._clock()
        result = PassResult()
        await self._ensure_miglayouts(idx, result)
        left_out = self._report_unreadable(idx, result) | self._still_refused(idx)
        await self._adopt(idx, now, result, left_out)
        states = node_states(idx.nodes, idx.miglayouts, self.config, now)
        self._report_states(idx, states, result)

        waiting = [p for p in idx.pending if is_waiting(p, now, self.config.pending_grace_seconds)]
        held = held_pods(idx.miglayouts, states)
        plannable, rejected = screen_pods(p for p in waiting if p["key"] not in held)
        self.metrics.set_pending(profile_counts(waiting))
        asked = self._history.observe(idx.pending, now, idx.bound)
        unsatisfied: list[tuple[Mapping[str, Any], str, str]] = [(r.pod, r.code, r.message) for r in rejected]

        untrusted = untrusted_nodes(idx.miglayouts, self.config.status_writers_verified)
        self._report_untrusted(idx, untrusted, result)
        ready = {
            n: s
            for n, s in states.items()
            if s is NodeState.READY
            and n not in result.adopted
            and n not in untrusted
            and n not in left_out
            and n not in result.refused
        }
        # While a node is still joining or applying, the planner sees fewer nodes than there are:
        # its reasons (NoLabelledNode, NoRoom, ...) would be wrong for a moment, so they wait.
        settled = all(
            states.get(n) in (NodeState.READY, NodeState.STALE) and n not in result.adopted for n in idx.nodes
        )
        deferred: list[str] = []
        planned_out: list[tuple[Mapping[str, Any], str, str]] = []
        # While no pod waits, plan now and then all the same: idle defragmentation.
        idle = not idx.pending and all(s is NodeState.READY for s in states.values()) and bool(ready)
        idle = idle and self._history.defrag_budget(now) > 0
        # New pods took pre-warmed instances: plan to make more although no pod waits (as the
        # simulator), for their profiles only (one that free space cannot hold must not make every
        # pass plan).
        refill = not plannable and not idle and self.config.prewarm and bool(ready) and bool(asked)
        if refill:
            refill = self._history.prewarm_short(
                free_instances(
                    build_snapshot(
                        {n: idx.nodes[n] for n in ready},
                        {n: idx.miglayouts[n] for n in ready},
                        [],
                        idx.bound,
                        self.config,
                        now,
                    )
                ),
                now,
                asked,
            )
        if plannable or idle or refill:
            unplannable: dict[str, str] = {}
            snapshot = build_snapshot(
                {n: idx.nodes[n] for n in ready},
                {n: idx.miglayouts[n] for n in ready},
                plannable,
                idx.bound,
                self.config,
                now,
                left_out=unplannable,
            )
            self._report_unplannable(idx, unplannable, result)
            started = time.monotonic()
            gpus = count_gpus(snapshot)
            options = (
                self._history.options(plannable, gpus, now)
                if plannable or refill
                else self._history.idle_options(gpus, now)
            )
            the_plan = await asyncio.to_thread(self._planner, snapshot, options)
            self._history.remember(the_plan, now, idle=idle and not plannable)
            result.plan, result.planned = the_plan, True
            self.metrics.plans.inc()
            by_key = {p["key"]: p for p in plannable}
            await self._publish(the_plan, idx, by_key, now, result)
            self.metrics.planning_seconds.observe(time.monotonic() - started)
            planned_out = [(by_key[u.pod], u.code, u.reason) for u in the_plan.unsatisfied if u.pod in by_key]
        codes: dict[str, int] = {}
        for _, code, _ in unsatisfied + planned_out:
            codes[code] = codes.get(code, 0) + 1
        self.metrics.set_unsatisfied(codes)
        if settled:
            unsatisfied += planned_out
        else:
            deferred = [p.get("uid") or p["key"] for p, _, _ in planned_out]

        events, memory = dedup_unsatisfied(self._unsatisfied, unsatisfied)
        memory.update({i: self._unsatisfied[i] for i in deferred if i in self._unsatisfied})
        self._unsatisfied = memory
        for ev in events:
            log.info(
                "Pod cannot be served", pod=ev.ref["metadata"]["name"], reason=ev.reason, message=ev.message
            )
        self._emit(events, result)
        return result

    async def _ensure_miglayouts(self, idx: Indexes, result: PassResult) -> None:
        """Every labelled node has a MigLayout, owned by the node (so it goes with the node)."""
        for name in sorted(idx.nodes):
            uid = str(idx.nodes[name].get("uid") or "")
            ml = idx.miglayouts.get(name)
            if ml is None:
                if await self.writer.create_miglayout(name, uid):
                    result.created.append(name)
            elif uid and not ml.get("owned") and not ml.get("deleting"):
                # An owner that names another uid is left alone: the garbage collector deletes
                # that MigLayout (its node is gone), and the next pass makes a new one.
                await self.writer.set_owner(name, uid, str(ml.get("resourceVersion", "")))

    async def _adopt(self, idx: Indexes, now: datetime, result: PassResult, left_out: set[str]) -> None:
        for name in sorted(idx.nodes):
            ml = idx.miglayouts.get(name)
            layouts = adopted_layouts(ml) if ml is not None and name not in left_out else None
            if ml is None or layouts is None:
                continue
            written = await self._write_spec(
                name, ml, build_adoption_patch(layouts, ml["resourceVersion"], now), result
            )
            if written is not None:
                log.info("Adopted GPU layout as MigLayout spec", node=name, layout=describe_layouts(layouts))
            result.adopted.append(name)

    async def _write_spec(
        self, name: str, ml: Mapping[str, Any], body: dict[str, Any], result: PassResult
    ) -> dict[str, Any] | None:
        """Patch the spec; on a refusal, leave the node out (told once) and return None."""
        try:
            written = await self.writer.patch_spec(name, body)
        except SpecRefused as exc:
            self._refused[name] = str(ml.get("resourceVersion", ""))
            result.refused.append(name)
            log.error("MigLayout spec refused", node=name, reason=exc.reason)
            if self._refusals_told.get(name) != exc.reason:
                self._refusals_told[name] = exc.reason
                message = (
                    f"The API server refused the spec cdmo wrote for MigLayout {name}: {exc.reason}. "
                    "cdmo plans without this node until its MigLayout changes; check what its agent reports."
                )
                self._emit([PodEvent(miglayout_ref(ml), "Warning", "SpecRefused", message)], result)
            return None
        if written is not None:
            self._refusals_told.pop(name, None)
        return written

    def _still_refused(self, idx: Indexes) -> set[str]:
        """Nodes whose last spec write was refused and whose MigLayout has not changed since."""
        self._refused = {
            name: rv
            for name, rv in self._refused.items()
            if name in idx.nodes
            and name in idx.miglayouts
            and str(idx.miglayouts[name].get("resourceVersion", "")) == rv
        }
        self._refusals_told = {n: m for n, m in self._refusals_told.items() if n in idx.nodes}
        return set(self._refused)

    def _report_unreadable(self, idx: Indexes, result: PassResult) -> set[str]:
        """Nodes whose reported status the operator cannot read: left out, each told once per problem."""
        problems = {
            name: problem
            for name in sorted(idx.nodes)
            if name in idx.miglayouts and (problem := status_problem(idx.miglayouts[name])) is not None
        }
        for name, problem in problems.items():
            result.unreadable.append(name)
            if self._unreadable_told.get(name) != problem:
                log.error("Ignored unreadable MigLayout status", node=name, reason=problem)
        self._unreadable_told = self._warn_once(
            idx,
            problems,
            self._unreadable_told,
            "UnreadableStatus",
            lambda name, problem: (
                f"cdmo cannot read the status of MigLayout {name}: {problem}. cdmo plans without this "
                "node until it can; check the version of the cdmo agent on the node."
            ),
            result,
        )
        return set(problems)

    def _report_unplannable(self, idx: Indexes, problems: Mapping[str, str], result: PassResult) -> None:
        """Ready nodes the planner cannot read (an instance of a profile cdmo's catalog lacks,
        made with nvidia-smi, say): left out of this plan, each problem told once in an Event.
        They were left out with a log line that did not say why."""
        for name, problem in sorted(problems.items()):
            log.warning("Left node out of the plan", node=name, reason=problem)
        self._unplannable_told = self._warn_once(
            idx,
            problems,
            self._unplannable_told,
            "UnplannableNode",
            lambda name, problem: (
                f"cdmo plans without node {name}: {problem}. Its GPUs stay as they are; "
                "remove what cdmo cannot read (or upgrade cdmo) to have it planned again."
            ),
            result,
        )

    def _warn_once(
        self,
        idx: Indexes,
        problems: Mapping[str, str],
        told: Mapping[str, str],
        reason: str,
        message: Callable[[str, str], str],
        result: PassResult,
    ) -> dict[str, str]:
        """A Warning Event on each node's MigLayout whose problem was not told already; returns
        what is told now (nodes without a problem are forgotten, so one that comes back is told
        again, and the memory is bounded by the nodes that have one)."""
        for name, problem in sorted(problems.items()):
            if told.get(name) != problem:
                ref = miglayout_ref(idx.miglayouts[name])
                self._emit([PodEvent(ref, "Warning", reason, message(name, problem))], result)
        return dict(problems)

    def _report_states(self, idx: Indexes, states: Mapping[str, NodeState], result: PassResult) -> None:
        counts: dict[str, int] = {}
        for name, state in states.items():
            counts[state.value] = counts.get(state.value, 0) + 1
            ml = idx.miglayouts[name]
            generation = int(ml.get("generation") or 1)
            if state is NodeState.STALE and (name, generation) not in self._stale_reported:
                self._stale_reported.add((name, generation))
                message = (
                    f"The node agent on {name} has not applied generation {generation} of this MigLayout "
                    f"within {self.config.stale_timeout_seconds:g} s; cdmo plans without this node until it does. "
                    "Check the cdmo agent pod on the node."
                )
                log.warning("Node agent is stale", node=name, generation=generation)
                self._emit([PodEvent(miglayout_ref(ml), "Warning", "AgentStale", message)], result)
            wanted = self._published.get(name)
            if (
                state is NodeState.READY
                and wanted is not None
                and int(ml.get("observedGeneration") or 0) >= wanted
            ):
                del self._published[name]
                message = f"The node agent applied the plan: {describe_layouts(_status_layouts(ml))}"
                self._emit([PodEvent(miglayout_ref(ml), "Normal", "PlanApplied", message)], result)
        self.metrics.set_node_states(counts)
        # Remember only what can still matter: a node's current generation, and only while it is
        # managed. Otherwise the set grows with every Stale generation of every node ever seen.
        self._stale_reported = prune_stale_reported(self._stale_reported, idx.miglayouts, states)

    def _report_untrusted(self, idx: Indexes, untrusted: set[str], result: PassResult) -> None:
        current = {(n, int(idx.miglayouts[n].get("generation") or 1)) for n in untrusted}
        for name, generation in sorted(current - self._untrusted_reported):
            ml = idx.miglayouts[name]
            message = (
                f"The status of MigLayout {name} says generation {generation} is applied but lists other "
                "instances than its spec; cdmo plans without this node until they agree. Check the agent "
                "on the node, and enforce the chart's admission policy so that only that agent writes it."
            )
            log.warning("Ignored contradicting MigLayout status", node=name, generation=generation)
            self._emit([PodEvent(miglayout_ref(ml), "Warning", "ReportContradictsSpec", message)], result)
        self._untrusted_reported = current  # bounded: one entry per node that contradicts now

    async def _publish(
        self,
        the_plan: Plan,
        idx: Indexes,
        pods: Mapping[str, Mapping[str, Any]],
        now: datetime,
        result: PassResult,
    ) -> None:
        for name, layouts in sorted(nodes_to_patch(the_plan, idx.miglayouts).items()):
            ml = idx.miglayouts[name]
            body = build_spec_patch(layouts, ml["resourceVersion"], planned_pods(the_plan, name), now)
            written = await self._write_spec(name, ml, body, result)
            if name in result.refused:
                continue
            if written is None:
                result.conflicts.append(name)
                self.metrics.conflicts.inc()
                self.nudge()  # plan again on what the object holds now
                continue
            result.patched.append(name)
            self.metrics.nodes_changed.inc()
            self._published[name] = int((written.get("metadata") or {}).get("generation") or 0)
            log.info("Published MigLayout spec", node=name, layout=describe_layouts(layouts))
            events = [
                PodEvent(miglayout_ref(ml), "Normal", "PlanPublished", f"Planned {describe_layouts(layouts)}")
            ]
            for a in the_plan.assignments:
                if a.node == name and a.pod in pods and (message := repartition_message(name, a.devices)):
                    events.append(build_pod_event(pods[a.pod], "Normal", "Repartitioning", message))
            self._emit(events, result)

    def _emit(self, events: list[PodEvent], result: PassResult) -> None:
        for ev in events:
            result.events.append(ev)
            try:
                self._post(ev)
            except Exception:
                # Events help people; they never decide anything, so a failure only gets logged.
                log.exception("Posting event failed", reason=ev.reason)


def prune_stale_reported(
    reported: set[tuple[str, int]],
    miglayouts: Mapping[str, Mapping[str, Any]],
    states: Mapping[str, NodeState],
) -> set[tuple[str, int]]:
    """The (node, generation) pairs still Stale at that generation: at most one per managed node."""
    return {
        (name, generation)
        for name, generation in reported
        if states.get(name) is NodeState.STALE
        and name in miglayouts
        and int(miglayouts[name].get("generation") or 1) == generation
    }


def _status_layouts(ml: Mapping[str, Any]) -> dict[int, tuple[Instance, ...]]:
    if status_problem(ml) is not None:
        return {}
    return {
        int(g["index"]): tuple(Instance(str(i["profile"]), int(i["start"])) for i in g.get("instances") or [])
        for g in ml.get("statusGpus") or []
    }
