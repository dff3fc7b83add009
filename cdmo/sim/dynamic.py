"""The ``dynamic`` policy: cdmo itself, the real planner and the real node agent on simulated GPUs.

What runs for real: :func:`cdmo.planner.parse_snapshot` and :func:`cdmo.planner.plan` on a snapshot
dict in the format of spec/planner-io.md, and :func:`cdmo.node_agent.reconcile.reconcile_node` on a
:class:`cdmo.node_agent.simulated.SimulatedBackend` per node (NVML's behaviour per catalog model),
with the pods that hold instances passed in as pod-resources holders.

What the simulator stands in for: the operator's batch window (cdmo.config.OperatorConfig's idle 5 s,
at most 30 s), the MigLayout round trip (instant), and time: GI creates and destroys take the time
model's seconds each, then the device plugin's advertisement (the built-in plugin's ~0.2 s by
default; ``dynamic-sighup`` waits for a SIGHUP refresh instead), before the new instances are
advertised. As the operator does (cdmo.operator.snapshot.build_snapshot), a node that is still
applying is left out of the snapshot (one node waiting holds back only that node), the pods the last
plan gave to it are not planned again until it is ready, and pending pods are listed by name.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from cdmo.api import PARTITIONING_LABEL_KEY, PARTITIONING_LABEL_VALUE
from cdmo.config import OperatorConfig
from cdmo.mig.layouts import Instance
from cdmo.mig.resources import resource_from_profile
from cdmo.node_agent.backend import NO_WAIT_RETRY
from cdmo.node_agent.inuse import Holder, InUse
from cdmo.node_agent.reconcile import ReconcileResult, reconcile_node
from cdmo.node_agent.simulated import SimulatedBackend, SimulatedNode
from cdmo.planner import Gpu, Node, NodePlan, PendingPod, PlanOptions, Snapshot, parse_snapshot, plan
from cdmo.planner.cache import PlanCache
from cdmo.planner.history import DemandHistory
from cdmo.sim.engine import Policy, SimGpu, SimInstance, SimNode
from cdmo.sim.policies import BatchWindow
from cdmo.sim.scenario import BatchSettings, TimeModel

NAMESPACE = "default"
_LABELS = {PARTITIONING_LABEL_KEY: PARTITIONING_LABEL_VALUE}
#: Parsed GPUs kept by content (model, index, instances with their used flags); cleared past this.
_GPU_MEMO_LIMIT = 200_000


class _NullLog:
    """The node agent logs every NVML change; a simulation of thousands of them stays quiet."""

    def _drop(self, *args: Any, **kwargs: Any) -> None:
        return None

    debug = info = warning = error = exception = _drop

    def bind(self, **kwargs: Any) -> _NullLog:
        return self


class DynamicPolicy(Policy):
    """cdmo's planner and node agent, driven by the simulator's clock (see the module docstring)."""

    name = "dynamic"

    def __init__(
        self, settings: BatchSettings, time_model: TimeModel, operator: OperatorConfig | None = None
    ) -> None:
        self.settings = settings
        #: Pre-warming and draining as the operator does them, with the operator's defaults.
        self.operator = operator or OperatorConfig()
        #: Demand history, drained GPUs and the idle-defragmentation budget: the operator's own
        #: (cdmo.planner.history), fed each pod as it arrives (when the operator's watch sees it).
        self.history = DemandHistory(self.operator)
        #: The GPUs the last plan drained, as node idx -> GPU indexes
        self._drain_gpus: dict[int, set[int]] = {}
        self._defrag_token: int | None = None
        self.time_model = time_model
        self.window = BatchWindow(settings.batch_idle_seconds, settings.batch_max_seconds)
        self.backends: dict[int, SimulatedBackend] = {}
        self._by_uuid: dict[str, SimInstance] = {}
        self._pod_by_key: dict[str, int] = {}
        #: pod -> node the last plan gave it to, while that node is applying
        self._promised: dict[int, int] = {}
        #: node idx -> (node version, parsed planner Node); pod -> parsed PendingPod
        self._node_cache: dict[int, tuple[int, Node]] = {}
        self._pod_cache: dict[int, PendingPod] = {}
        #: The planner's facts about the unchanged Node and PendingPod objects above, between plans.
        self._plan_cache = PlanCache()
        self._gpu_memo: dict[tuple[str, int, tuple[tuple[str, int, bool], ...]], Gpu] = {}
        #: node idx -> GPU index -> (GPU version, parsed GPU) as of the last rebuild of the node
        self._gpu_seen: dict[int, dict[int, tuple[int, Gpu]]] = {}
        #: (defrag budget, profiles) -> id of a parsed GPU -> (that GPU, whether defragmenting it
        #: alone changes it); see _idle_plan_is_void
        self._void_memo: dict[tuple[int, tuple[str, ...]], dict[int, tuple[Gpu, bool]]] = {}
        self._log = _NullLog()
        #: Negative timer tokens are this policy's own (the batch window counts up from 0).
        self._timer_token = -1
        self.plans = 0
        self.planner_cpu = 0.0
        self.snapshot_cpu = 0.0
        self.agent_cpu = 0.0
        self.agent_blocked = 0
        self.agent_errors = 0
        self.unsatisfied = 0
        self.drain_destroys = 0
        self.idle_plans = 0
        self.idle_plans_skipped = 0
        self.idle_ops = 0

    def attach(self, sim: Any) -> None:
        super().attach(sim)
        for node in sim.nodes:
            models = [gpu.model.key for gpu in node.gpus]
            self.backends[node.idx] = SimulatedBackend(SimulatedNode.from_models(models, seed=node.name))
        self._pod_by_key = {f"{NAMESPACE}/{p.name}": i for i, p in enumerate(sim.pods)}

    # --- demand ----------------------------------------------------------------------------------

    def _demand(self) -> None:
        at, token = self.window.touch(self.sim.now)
        self.sim.set_timer(at, token)

    def _has_demand(self) -> bool:
        return any(p not in self._promised for p in self.sim.unschedulable_set())

    def on_unschedulable(self, pod: int) -> None:
        self._demand()

    def on_pod_arrive(self, pod: int) -> None:
        spec = self.sim.pods[pod]
        now = self.sim.now
        self.history.observe(self._key(pod), ((spec.profile, spec.count),), now)
        # A pod that took a ready instance leaves fewer than the target: the operator's next pass
        # (after the batch window) plans to make another of its profile.
        free = {spec.profile: self.sim.free_instances(spec.profile)}
        if self.operator.prewarm and self.history.prewarm_short(free, now, (spec.profile,)):
            self._demand()

    def _key(self, pod: int) -> str:
        return f"{NAMESPACE}/{self.sim.pods[pod].name}"

    def on_pod_end(self, pod: int) -> None:
        self.history.forget_pod(self._key(pod))
        if self._drain_gpus:
            self._destroy_drained()
        # A freed instance may let the planner make room: the operator sees the pod go.
        if self._has_demand():
            self._demand()
        elif self._defrag_token is None and self.history.defrag_budget(self.sim.now) > 0:
            # Nobody waits: look at the free space once the interval has passed.
            self._defrag_token = self._timer_token = self._timer_token - 1
            self.sim.set_timer(self.sim.now, self._defrag_token)

    def _free_counts(self) -> dict[str, int]:
        return {p: self.sim.free_instances(p) for p in self.history.targets(self.sim.now)}

    def _prewarm_short(self) -> bool:
        return self.operator.prewarm and self.history.prewarm_short(self._free_counts(), self.sim.now)

    def _destroy_drained(self) -> None:
        """The node agent on a draining GPU destroys each instance as soon as its pod ends.

        The operator's spec marks the GPU as draining; the agent's level-triggered pass sees the
        instance free and destroys it before any pod can be bound to it (the simulator calls
        this as the pod ends, before the scheduler's next retry).
        """
        for idx, indexes in sorted(self._drain_gpus.items()):
            node = self.sim.nodes[idx]
            if node.busy:
                continue
            free = [
                inst
                for gpu in node.gpus
                if gpu.index in indexes
                for inst in gpu.instances.values()
                if inst.holder is None
            ]
            if not free:
                continue
            desired = {
                gpu.index: [
                    Instance(i.profile, i.start) for i in gpu.sorted_instances() if i.holder is not None
                ]
                for gpu in node.gpus
                if gpu.index in indexes
            }
            if self._reconcile(node, desired):
                self.drain_destroys += len(free)

    def on_node_ready(self, node: SimNode) -> None:
        for pod in [p for p, n in self._promised.items() if n == node.idx]:
            del self._promised[pod]
        if self.sim.has_unschedulable() or self._prewarm_short():
            self._demand()

    def on_timer(self, token: int) -> None:
        if token < 0:
            if token == self._defrag_token:
                self._defrag_token = None
                if not self._has_demand() and not self.window.is_open:
                    self._plan(idle=True)
            return
        if token != self.window.token or not self.window.is_open:
            return
        self.window.close()
        self._plan()

    # --- plan and apply -----------------------------------------------------------------------------

    def node_dict(self, node: SimNode) -> dict[str, Any]:
        """One node as spec/planner-io.md writes it."""
        return {"name": node.name, "labels": dict(_LABELS), "gpus": [self._gpu_dict(g) for g in node.gpus]}

    @staticmethod
    def _gpu_dict(gpu: SimGpu) -> dict[str, Any]:
        return {
            "index": gpu.index,
            "model": gpu.model.key,
            "instances": [
                {"profile": i.profile, "start": i.start, "used": i.holder is not None}
                for i in gpu.sorted_instances()
            ],
        }

    def pod_dict(self, pod: int) -> dict[str, Any]:
        spec = self.sim.pods[pod]
        return {
            "name": spec.name,
            "namespace": NAMESPACE,
            "requests": {resource_from_profile(spec.profile): spec.count},
            "priority": spec.priority,
        }

    def _pods_by_name(self, pods: Sequence[int]) -> list[int]:
        specs = self.sim.pods
        return sorted(pods, key=lambda p: specs[p].name)

    def build_snapshot(self, pods: Sequence[int]) -> dict[str, Any]:
        """The planner-io snapshot dict: nodes that are not applying, and ``pods`` pending (by name)."""
        return {
            "nodes": [self.node_dict(n) for n in self.sim.nodes if not n.busy],
            "pending": [self.pod_dict(p) for p in self._pods_by_name(pods)],
        }

    def parsed_snapshot(self, pods: Sequence[int]) -> Snapshot:
        """What ``parse_snapshot(build_snapshot(pods))`` gives, parsing only what changed since the last plan.

        Each GPU's dict and each pod's dict go through the real :func:`parse_snapshot` once per
        distinct content: a node whose version moved (a pod started or ended on one of its GPUs) is
        rebuilt from its GPUs' parsed parts, and only a GPU whose instances or holders are new to
        the memo is parsed again (a pod's start touches one GPU of eight). Unchanged nodes keep
        their parsed object, so the planner sees the same objects from plan to plan.
        """
        nodes = []
        cache = self._node_cache
        for node in self.sim.nodes:
            if node.busy:
                continue
            cached = cache.get(node.idx)
            if cached is None or cached[0] != node.version:
                cached = (node.version, self._parse_node(node, None if cached is None else cached[1]))
                cache[node.idx] = cached
            nodes.append(cached[1])
        pending = []
        for pid in self._pods_by_name(pods):
            pod = self._pod_cache.get(pid)
            if pod is None:
                pod = parse_snapshot({"nodes": [], "pending": [self.pod_dict(pid)]}).pending[0]
                self._pod_cache[pid] = pod
            pending.append(pod)
        return Snapshot(nodes=tuple(nodes), pending=tuple(pending))

    def _parse_node(self, node: SimNode, last: Node | None) -> Node:
        """``node`` as parse_snapshot gives it: the whole dict the first time, then GPU by GPU."""
        if last is None:
            return parse_snapshot({"nodes": [self.node_dict(node)], "pending": []}).nodes[0]
        memo = self._gpu_memo
        if len(memo) > _GPU_MEMO_LIMIT:
            memo.clear()  # bounded memory; a miss only costs one GPU's parse
        seen = self._gpu_seen.setdefault(node.idx, {})
        gpus = []
        for gpu in node.gpus:
            last_seen = seen.get(gpu.index)
            if last_seen is not None and last_seen[0] == gpu.version:
                gpus.append(last_seen[1])  # this GPU did not change, only another of the node
                continue
            key = (
                gpu.model.key,
                gpu.index,
                tuple((i.profile, i.start, i.holder is not None) for _, i in sorted(gpu.instances.items())),
            )
            parsed = memo.get(key)
            if parsed is None:
                raw = {"name": node.name, "labels": _LABELS, "gpus": [self._gpu_dict(gpu)]}
                parsed = memo[key] = parse_snapshot({"nodes": [raw], "pending": []}).nodes[0].gpus[0]
            seen[gpu.index] = (gpu.version, parsed)
            gpus.append(parsed)
        # parse_snapshot sorts a node's GPUs by index; the simulator keeps them in index order.
        return dataclasses.replace(last, gpus=tuple(gpus))

    def plan_options(self, pods: Sequence[int]) -> PlanOptions:
        """The operator's pre-warming targets, drain limits and the pods' waits for the next plan."""
        sim = self.sim
        gpus = sum(len(n.gpus) for n in sim.nodes)
        waited = {self._key(p): sim.now - sim.pods[p].arrival for p in pods}
        return self.history.options(waited, gpus, sim.now)

    def _plan(self, *, idle: bool = False) -> None:
        sim = self.sim
        pods = [p for p in sim.unschedulable_pods() if p not in self._promised]
        if not pods and not self._prewarm_short() and not idle:
            return
        cpu0 = time.process_time()
        snapshot = self.parsed_snapshot(pods)
        cpu1 = time.process_time()
        gpus = sum(len(n.gpus) for n in sim.nodes)
        # As the operator: an idle plan (nobody waits) defragments within the hour's budget.
        options = self.history.idle_options(gpus, sim.now) if idle else self.plan_options(pods)
        if idle and self._idle_plan_is_void(snapshot, options):
            # It would drain nothing and spend no operations: the history is as it would leave it.
            self.idle_plans_skipped += 1
            self.snapshot_cpu += cpu1 - cpu0
            self.planner_cpu += time.process_time() - cpu1
            return
        result = plan(snapshot, options, cache=self._plan_cache)
        self.history.remember(result, sim.now, idle=idle)
        if idle:
            self.idle_plans += 1
            self.idle_ops += result.summary.created + result.summary.destroyed
        self._drain_gpus = {}
        for name, index in self.history.draining:
            self._drain_gpus.setdefault(sim.node_by_name[name].idx, set()).add(index)
        cpu2 = time.process_time()
        self.snapshot_cpu += cpu1 - cpu0
        self.planner_cpu += cpu2 - cpu1
        self.plans += 1
        self.unsatisfied += len(result.unsatisfied)
        changed: set[str] = set()
        for node_plan in result.nodes:
            if node_plan.changed and self._apply(sim.node_by_name[node_plan.name], node_plan):
                changed.add(node_plan.name)
        for a in result.assignments:
            if a.node in changed and a.pod in self._pod_by_key:
                self._promised[self._pod_by_key[a.pod]] = sim.node_by_name[a.node].idx
        self.agent_cpu += time.process_time() - cpu2

    def _idle_plan_is_void(self, snapshot: Snapshot, options: PlanOptions) -> bool:
        """Whether this idle plan provably changes nothing, so that running it can be left out.

        With no pod pending, no GPU draining and every pre-warming target met, an idle plan can
        only defragment, and defragmentation decides GPU by GPU (docs/planner.md): it re-places a
        GPU's free instances only where that raises the room on that GPU, within the budget. So
        each GPU state with free instances is put to the real planner once, alone, with the same
        budget and profiles, and the answer kept by state; when no GPU would change alone, the
        whole plan changes nothing. A test runs the whole plan each time this says void and checks
        that it changed nothing.
        """
        if snapshot.pending or options.draining or self._prewarm_short():
            return False
        alone_options = dataclasses.replace(options, prewarm={}, draining=(), waited={})
        memo = self._void_memo.setdefault((options.defrag_ops, options.defrag_profiles), {})
        if len(memo) > _GPU_MEMO_LIMIT:
            memo.clear()
        for node in snapshot.nodes:
            for gpu in node.gpus:
                # Parsed GPUs come from the memo by content: the same state is the same object.
                known = memo.get(id(gpu))
                if known is None:
                    changes = False
                    if not all(i.used for i in gpu.instances):  # it touches free instances only
                        alone = Snapshot(nodes=(dataclasses.replace(node, gpus=(gpu,)),), pending=())
                        changes = any(n.changed for n in plan(alone, alone_options).nodes)
                    known = memo[id(gpu)] = (gpu, changes)  # the entry keeps the id's object alive
                if known[1]:
                    return False
        return True

    def _in_use(self, node: SimNode) -> InUse:
        pods = self.sim.pods
        holders = {}
        for gpu in node.gpus:
            for inst in gpu.instances.values():
                if inst.holder is not None and inst.ext is not None:
                    holders[inst.ext] = (Holder("pod", f"{NAMESPACE}/{pods[inst.holder].name}"),)
        return InUse(holders=dict(sorted(holders.items())))

    def _apply(self, node: SimNode, node_plan: NodePlan) -> bool:
        """Run the real agent on ``node`` for the planned layouts; True if the node changed."""
        return self._reconcile(node, {g.index: list(g.after) for g in node_plan.gpus if g.changed})

    def _reconcile(self, node: SimNode, desired: dict[int, list[Instance]]) -> bool:
        backend = self.backends[node.idx]
        result: ReconcileResult = reconcile_node(
            backend, desired, self._in_use(node), retry=NO_WAIT_RETRY, log=self._log
        )
        backend.node.calls.clear()  # the agent's call log is a test aid; keep memory flat
        self.agent_blocked += len(result.blocked)
        self.agent_errors += len(result.errors)
        destroyed = [self._by_uuid.pop(info.uuid) for info in result.destroyed if info.uuid in self._by_uuid]
        created = [info for info in result.created if info.uuid is not None]
        if not destroyed and not created:
            return False
        tm = self.time_model
        duration = (
            len(created) * tm.gi_create_seconds
            + len(result.destroyed) * tm.gi_destroy_seconds
            + tm.refresh_seconds(self.settings.refresh)
        )
        made = self.sim.begin_apply(
            node,
            destroyed,
            [(info.gpu, info.profile, info.start) for info in created],
            duration=duration,
            gi_destroyed=len(result.destroyed),
        )
        for inst, info in zip(made, created, strict=True):
            inst.ext = info.uuid
            self._by_uuid[info.uuid] = inst  # type: ignore[index]
        return True

    def backend_mismatches(self) -> list[str]:
        """Where the node agent's simulated GPUs and the simulator's instances disagree (empty: in step)."""
        problems = []
        for node in self.sim.nodes:
            backend = self.backends[node.idx]
            for gpu in node.gpus:
                real = sorted((i.start, i.profile, i.uuid) for i in backend.list_instances(gpu.index))
                ours = sorted((i.start, i.profile, i.ext) for i in gpu.instances.values())
                if real != ours:
                    problems.append(f"{node.name}/{gpu.index}: agent has {real}, simulator has {ours}")
        return problems

    def stats(self) -> dict[str, Any]:
        return {
            "plans": self.plans,
            "planner_cpu_seconds": self.planner_cpu,
            "snapshot_cpu_seconds": self.snapshot_cpu,
            "agent_cpu_seconds": self.agent_cpu,
            "agent_blocked_gpus": self.agent_blocked,
            "agent_errors": self.agent_errors,
            "unsatisfied_in_plans": self.unsatisfied,
            "drain_destroys": self.drain_destroys,
            "idle_plans": self.idle_plans,
            "idle_plans_skipped": self.idle_plans_skipped,
            "idle_plan_operations": self.idle_ops,
        }
