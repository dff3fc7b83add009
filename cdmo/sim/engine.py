"""The discrete-event engine: simulated GPUs and instances, a kube-scheduler model, and the event loop.

Time is simulated seconds; nothing sleeps. Events are ordered by (time, sequence number), every
collection that reaches a decision is sorted, and the workload is fixed before the run, so one
scenario, seed and policy always give the same result.

What is modelled, the same for every policy:

- **Instances.** Each GPU holds MIG instances ``(profile, start)``; an instance is *advertised* once
  the device plugin has seen it, and *held* while a running pod uses it. A destroyed instance that a
  pod holds is a **disruption** (the pod dies); the engine counts it whatever the policy intended.
- **Scheduler.** A pending pod is bound to the first node, in name order, that advertises enough
  free instances of its profile (kube-scheduler gives MIG extended resources no score preference, so
  the choice among fitting nodes is arbitrary; name order makes it deterministic). Its devices are
  the free instances with the lowest (GPU index, start). A new pod is tried on arrival; a pod that
  did not fit is *unschedulable* and is tried again ``retry_seconds`` after MIG devices are freed or
  advertised (kube-scheduler's backoff after a cluster event). No preemption.
- **Reconfiguration.** A policy changes a node with :meth:`Simulation.begin_apply`: instances it
  destroys vanish at once, the node takes no new pods until the change is done, and new instances
  are advertised after the policy's computed duration (GI operations plus device-plugin refresh).
"""

from __future__ import annotations

import bisect
import gc
import heapq
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cdmo.mig.catalog import GpuModel
from cdmo.mig.layouts import Instance, check_layout, validate_layout
from cdmo.sim.scenario import Scenario
from cdmo.sim.workload import PodSpec, offered_slice_seconds

_END, _TICK, _TIMER, _READY = 1, 2, 3, 4

#: Buckets of the utilization-over-time series (for the plot).
UTIL_BUCKETS = 240


class SimInstance:
    """A MIG instance on a simulated GPU; ``uid`` is new on every create (like a MIG UUID)."""

    __slots__ = ("advertised", "ext", "gpu", "holder", "profile", "slices", "start", "uid")

    def __init__(
        self, uid: int, gpu: SimGpu, profile: str, start: int, slices: int, advertised: bool
    ) -> None:
        self.uid = uid
        self.gpu = gpu
        self.profile = profile
        self.start = start
        self.slices = slices
        self.advertised = advertised
        self.holder: int | None = None
        #: A policy's own handle for the instance (dynamic: the MIG UUID on the node agent's backend).
        self.ext: str | None = None

    def __repr__(self) -> str:
        return (
            f"SimInstance({self.gpu.node.name}/{self.gpu.index} {self.profile}@{self.start} uid={self.uid})"
        )


class SimGpu:
    __slots__ = ("index", "instances", "model", "node", "version")

    def __init__(self, node: SimNode, index: int, model: GpuModel) -> None:
        self.node = node
        self.index = index
        self.model = model
        self.instances: dict[int, SimInstance] = {}  # start -> instance (starts never overlap)
        #: Bumped when an instance is made or destroyed here, or a pod takes or leaves one.
        self.version = 0

    def layout(self) -> tuple[Instance, ...]:
        return tuple(Instance(i.profile, i.start) for _, i in sorted(self.instances.items()))

    def sorted_instances(self) -> list[SimInstance]:
        return [i for _, i in sorted(self.instances.items())]


class SimNode:
    __slots__ = ("busy", "gpus", "group", "idx", "model", "name", "version")

    def __init__(self, name: str, idx: int, group: str, model: GpuModel, gpus: int) -> None:
        self.name = name
        self.idx = idx
        self.group = group
        self.model = model
        self.gpus = [SimGpu(self, g, model) for g in range(gpus)]
        self.busy = False
        #: Bumped on every change of instances, holders or busy state (lets policies cache views).
        self.version = 0


def build_nodes(scenario: Scenario) -> list[SimNode]:
    """Nodes ``<group>-000`` ... of every group, sorted by name (index = position)."""
    specs = sorted(
        ((f"{g.name}-{i:03d}", g) for g in scenario.fleet for i in range(g.count)),
        key=lambda s: s[0],
    )
    return [SimNode(name, idx, g.name, g.model, g.gpus) for idx, (name, g) in enumerate(specs)]


def replay_order(pods: Iterable[PodSpec], horizon: float) -> list[PodSpec]:
    """The pods a run replays, by arrival (stable): a pod is indexed by its position here."""
    return sorted((p for p in pods if p.arrival < horizon), key=lambda p: p.arrival)


#: The cyclic GC's youngest-generation threshold during a run (Python's default is 700).
GC_YOUNG_THRESHOLD = 20_000


@contextmanager
def _collector_set_for_a_run() -> Iterator[None]:
    """The cyclic GC set for a long run, and put back as it was after it.

    Two changes, neither turns the collector off:

    - The objects that exist before the loop (workload, fleet, modules) live for the whole run,
      yet every full collection walked them all: with 200,000 pods that was a quarter of the
      dynamic policy's CPU time on large.yaml. :func:`gc.freeze` moves them to the permanent
      generation (skipped when someone else froze objects already).
    - The planner allocates millions of short-lived containers per simulated day that reference
      counting frees at once; with the default threshold (700) the collector ran about 40,000
      young passes a day to find almost nothing. A larger young threshold makes them rarer;
      cyclic garbage is still collected, in bounded batches.
    """
    frozen = not gc.get_freeze_count()
    if frozen:
        gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], GC_YOUNG_THRESHOLD), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if frozen:
            gc.unfreeze()


class Policy:
    """How a cluster's MIG layouts change; the engine calls these hooks, the policy calls back.

    A policy may call :meth:`Simulation.set_timer`, :meth:`Simulation.unschedulable_pods` and
    :meth:`Simulation.begin_apply`. It must not touch pods or the scheduler.
    """

    name = "policy"

    def initial_layout(self, gpu: SimGpu) -> Sequence[Instance]:
        """What ``gpu`` holds at time 0 (created and advertised before the first pod arrives)."""
        return ()

    def attach(self, sim: Simulation) -> None:
        self.sim = sim

    def on_pod_arrive(self, pod: int) -> None:
        """A pod was submitted (called after its first scheduling attempt; demand history)."""

    def on_unschedulable(self, pod: int) -> None:
        """A pod did not fit on its first scheduling attempt."""

    def on_pod_end(self, pod: int) -> None:
        """A running pod finished and freed its instances."""

    def on_node_ready(self, node: SimNode) -> None:
        """A node finished a change: its new instances are advertised."""

    def on_timer(self, token: int) -> None:
        """A timer set with :meth:`Simulation.set_timer` fired."""

    def stats(self) -> dict[str, Any]:
        """Policy-specific figures for the result (planner calls, planner CPU time, ...)."""
        return {}


class _UtilSeries:
    """Time-weighted integral of held compute slices, total and per bucket."""

    def __init__(self, horizon: float, buckets: int = UTIL_BUCKETS) -> None:
        self.width = horizon / buckets
        self.area = [0.0] * buckets
        self.total = 0.0

    def add(self, t0: float, t1: float, value: float) -> None:
        if value == 0 or t1 <= t0:
            return
        self.total += value * (t1 - t0)
        w = self.width
        b = min(int(t0 / w), len(self.area) - 1)
        while t0 < t1:
            edge = (b + 1) * w if b < len(self.area) - 1 else t1
            seg = min(edge, t1) - t0
            self.area[b] += value * seg
            t0 += seg
            b = min(b + 1, len(self.area) - 1)


@dataclass
class RunResult:
    """What one policy did with one workload (raw data; metrics.py turns it into figures)."""

    policy: str
    horizon: float
    pods: Sequence[PodSpec]
    start_times: list[float | None]
    disrupted: int
    reconfigurations: int
    gi_created: int
    gi_destroyed: int
    total_slices: int
    util_total: float
    #: Compute-slice seconds of work the pods bring (cdmo.sim.workload.offered_slice_seconds).
    offered_slice_seconds: float
    util_series: list[float]
    util_bucket_seconds: float
    wall_seconds: float
    cpu_seconds: float
    policy_stats: dict[str, Any] = field(default_factory=dict)


class Simulation:
    """One run of one policy over one workload on a fresh fleet."""

    def __init__(
        self,
        scenario: Scenario,
        pods: Sequence[PodSpec],
        policy: Policy,
        *,
        horizon: float | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        self.scenario = scenario
        self.horizon = scenario.duration if horizon is None else horizon
        self.pods = replay_order(pods, self.horizon)
        self.policy = policy
        self.retry = scenario.retry_seconds
        self.time_model = scenario.time_model
        self._progress = progress
        self.now = 0.0
        self.nodes = build_nodes(scenario)
        self.node_by_name = {n.name: n for n in self.nodes}
        self.total_slices = sum(n.model.compute_slices_total * len(n.gpus) for n in self.nodes)
        self._slices: dict[tuple[str, str], int] = {}

        n = len(self.pods)
        self.start_times: list[float | None] = [None] * n
        self.pod_node: list[int] = [-1] * n
        self.pod_devices: dict[int, list[SimInstance]] = {}
        self._pending: dict[str, list[tuple[int, float, int]]] = {}  # profile -> sorted (-prio, arrival, id)
        self._unschedulable: set[int] = set()
        self._free: dict[str, dict[int, int]] = {}  # profile -> node idx -> free advertised count
        self._free_total: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._tick_at: float | None = None

        self._events: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._uid = 0
        self._apply_id = 0
        self._node_apply: dict[int, int] = {}

        self.disrupted = 0
        self.reconfigurations = 0
        self.gi_created = 0
        self.gi_destroyed = 0
        self._held = 0
        self._last_t = 0.0
        self._util = _UtilSeries(self.horizon)

        policy.attach(self)
        for node in self.nodes:
            for gpu in node.gpus:
                for inst in check_layout(gpu.model, policy.initial_layout(gpu)):
                    self._add_instance(gpu, inst.profile, inst.start, advertised=True)
                    self._index(node, inst.profile, +1)

    # --- helpers for policies -------------------------------------------------------------------

    def set_timer(self, at: float, token: int) -> None:
        """Call ``policy.on_timer(token)`` at simulated time ``at`` (not before now)."""
        self._push(max(at, self.now), _TIMER, token)

    def unschedulable_pods(self) -> list[int]:
        """Pending pods that failed a scheduling attempt, by priority (high first), then arrival."""
        pods = self.pods
        return sorted(self._unschedulable, key=lambda i: (-pods[i].priority, pods[i].arrival, i))

    def has_unschedulable(self) -> bool:
        return bool(self._unschedulable)

    def free_instances(self, profile: str) -> int:
        """Advertised free instances of ``profile`` on nodes that are not applying a change."""
        return self._free_total.get(profile, 0)

    def unschedulable_set(self) -> frozenset[int] | set[int]:
        """The unschedulable pods, unordered (read only; cheaper than :meth:`unschedulable_pods`)."""
        return self._unschedulable

    def slices_of(self, model: GpuModel, profile: str) -> int:
        key = (model.key, profile)
        if key not in self._slices:
            self._slices[key] = model.profile(profile).compute_slices
        return self._slices[key]

    def begin_apply(
        self,
        node: SimNode,
        destroy: Iterable[SimInstance],
        create: Iterable[tuple[int, str, int]],
        *,
        duration: float,
        gi_created: int | None = None,
        gi_destroyed: int | None = None,
    ) -> list[SimInstance]:
        """Change ``node`` now: destroy instances, create ``(gpu, profile, start)``; ready after ``duration``.

        The node takes no new pods until ready; new instances are advertised then. ``gi_created`` and
        ``gi_destroyed`` count GI operations when a policy made more than the net change (retries).
        Destroying a held instance kills its pod and counts as a disruption.
        """
        if node.busy:
            raise RuntimeError(f"policy {self.policy.name} changed {node.name} while it was still applying")
        destroy = list(destroy)
        create = list(create)
        self._set_busy(node)
        for inst in destroy:
            gpu = inst.gpu
            if gpu.instances.get(inst.start) is not inst:
                raise RuntimeError(f"policy {self.policy.name} destroyed {inst!r}, which does not exist")
            if inst.holder is not None:
                self._disrupt(inst.holder)
            del gpu.instances[inst.start]
            gpu.version += 1
        made = [
            self._add_instance(node.gpus[g], profile, start, advertised=False) for g, profile, start in create
        ]
        for gpu in {inst.gpu.index: inst.gpu for inst in [*destroy, *made]}.values():
            problems = validate_layout(gpu.model, gpu.layout())
            if problems:
                raise RuntimeError(
                    f"policy {self.policy.name} left {node.name}/{gpu.index} invalid: {problems}"
                )
        self.gi_destroyed += len(destroy) if gi_destroyed is None else gi_destroyed
        self.gi_created += len(made) if gi_created is None else gi_created
        if destroy or made or gi_created or gi_destroyed:
            self.reconfigurations += 1
        self._apply_id += 1
        self._node_apply[node.idx] = self._apply_id
        self._push(self.now + max(duration, 0.0), _READY, (node.idx, self._apply_id))
        return made

    # --- internals ----------------------------------------------------------------------------------

    def _push(self, at: float, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, kind, payload))

    def _add_instance(self, gpu: SimGpu, profile: str, start: int, *, advertised: bool) -> SimInstance:
        if start in gpu.instances:
            raise RuntimeError(f"{gpu.node.name}/{gpu.index} already has an instance at {start}")
        self._uid += 1
        inst = SimInstance(self._uid, gpu, profile, start, self.slices_of(gpu.model, profile), advertised)
        gpu.instances[start] = inst
        gpu.version += 1
        return inst

    def _index(self, node: SimNode, profile: str, delta: int) -> None:
        per_node = self._free.setdefault(profile, {})
        count = per_node.get(node.idx, 0) + delta
        if count:
            per_node[node.idx] = count
        else:
            per_node.pop(node.idx, None)
        self._free_total[profile] = self._free_total.get(profile, 0) + delta
        if delta > 0:
            self._dirty.add(profile)

    def _set_busy(self, node: SimNode) -> None:
        node.version += 1
        for gpu in node.gpus:
            for inst in gpu.instances.values():
                if inst.holder is None and inst.advertised:
                    self._index(node, inst.profile, -1)
        node.busy = True

    def _set_ready(self, node: SimNode) -> None:
        node.version += 1
        node.busy = False
        for gpu in node.gpus:
            for inst in gpu.instances.values():
                inst.advertised = True
                if inst.holder is None:
                    self._index(node, inst.profile, +1)
        self._request_tick()

    def _request_tick(self) -> None:
        if self._tick_at is None and self._unschedulable and self._dirty:
            self._tick_at = self.now + self.retry
            self._push(self._tick_at, _TICK, None)

    def _advance(self, t: float) -> None:
        if t > self._last_t:
            self._util.add(self._last_t, t, self._held)
            self._last_t = t
        self.now = t

    def _try_bind(self, pid: int) -> bool:
        spec = self.pods[pid]
        profile, count = spec.profile, spec.count
        if self._free_total.get(profile, 0) < count:
            return False
        per_node = self._free[profile]
        if count == 1:
            node_idx = min(per_node)
        else:
            fits = [i for i, c in per_node.items() if c >= count]
            if not fits:
                return False
            node_idx = min(fits)
        node = self.nodes[node_idx]
        node.version += 1
        devices: list[SimInstance] = []
        for gpu in node.gpus:
            for _, inst in sorted(gpu.instances.items()):
                if inst.profile == profile and inst.holder is None and inst.advertised:
                    devices.append(inst)
                    if len(devices) == count:
                        break
            if len(devices) == count:
                break
        for inst in devices:
            inst.holder = pid
            inst.gpu.version += 1
            self._held += inst.slices
        self._index(node, profile, -count)
        self.start_times[pid] = self.now
        self.pod_node[pid] = node_idx
        self.pod_devices[pid] = devices
        self._unschedulable.discard(pid)
        self._push(self.now + spec.duration, _END, pid)
        return True

    def _pending_key(self, pid: int) -> tuple[int, float, int]:
        p = self.pods[pid]
        return (-p.priority, p.arrival, pid)

    def _arrive(self, pid: int) -> None:
        bound = self._try_bind(pid)
        self.policy.on_pod_arrive(pid)
        if bound:
            return
        queue = self._pending.setdefault(self.pods[pid].profile, [])
        key = self._pending_key(pid)
        # Arrivals come in time order, so the new key usually goes last; insort keeps priorities right.
        if not queue or queue[-1] < key:
            queue.append(key)
        else:
            bisect.insort(queue, key)
        self._unschedulable.add(pid)
        self.policy.on_unschedulable(pid)

    def _tick(self) -> None:
        self._tick_at = None
        dirty, self._dirty = sorted(self._dirty), set()
        for profile in dirty:
            queue = self._pending.get(profile)
            if not queue:
                continue
            kept = []
            for i, key in enumerate(queue):
                if self._free_total.get(profile, 0) <= 0:
                    kept.extend(queue[i:])
                    break
                if not self._try_bind(key[2]):
                    kept.append(key)
            self._pending[profile] = kept

    def _release(self, pid: int) -> None:
        devices = self.pod_devices.pop(pid)
        node = self.nodes[self.pod_node[pid]]
        node.version += 1
        for inst in devices:
            inst.holder = None
            inst.gpu.version += 1
            self._held -= inst.slices
            if inst.advertised and not node.busy and inst.gpu.instances.get(inst.start) is inst:
                self._index(node, inst.profile, +1)

    def _end(self, pid: int) -> None:
        if pid not in self.pod_devices:
            return  # disrupted earlier
        self._release(pid)
        self.policy.on_pod_end(pid)
        self._request_tick()

    def _disrupt(self, pid: int) -> None:
        if pid not in self.pod_devices:
            return
        self.disrupted += 1
        devices = self.pod_devices.pop(pid)
        self.nodes[self.pod_node[pid]].version += 1
        for inst in devices:
            inst.holder = None
            inst.gpu.version += 1
            self._held -= inst.slices
            # The surviving devices of a killed pod are free again.
            if inst.advertised and not inst.gpu.node.busy and inst.gpu.instances.get(inst.start) is inst:
                self._index(inst.gpu.node, inst.profile, +1)

    # --- the loop ----------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        with _collector_set_for_a_run():
            self._loop()
        self._advance(self.horizon)
        if self._progress is not None:
            self._progress(1.0)
        return RunResult(
            policy=self.policy.name,
            horizon=self.horizon,
            pods=self.pods,
            start_times=self.start_times,
            disrupted=self.disrupted,
            reconfigurations=self.reconfigurations,
            gi_created=self.gi_created,
            gi_destroyed=self.gi_destroyed,
            total_slices=self.total_slices,
            util_total=self._util.total,
            offered_slice_seconds=offered_slice_seconds(self.pods, self.scenario.models, self.horizon),
            util_series=list(self._util.area),
            util_bucket_seconds=self._util.width,
            wall_seconds=time.perf_counter() - wall0,
            cpu_seconds=time.process_time() - cpu0,
            policy_stats=self.policy.stats(),
        )

    def _loop(self) -> None:
        pods = self.pods
        events = self._events
        horizon = self.horizon
        next_arrival = 0
        n_pods = len(pods)
        report_every = max(1, n_pods // 200)
        while True:
            t_event = events[0][0] if events else math.inf
            t_arrival = pods[next_arrival].arrival if next_arrival < n_pods else math.inf
            if t_arrival <= t_event:
                if t_arrival >= horizon:
                    break
                self._advance(t_arrival)
                self._arrive(next_arrival)
                next_arrival += 1
                if self._progress is not None and next_arrival % report_every == 0:
                    self._progress(t_arrival / horizon)
                continue
            if t_event >= horizon:
                break
            at, _, kind, payload = heapq.heappop(events)
            self._advance(at)
            if kind == _END:
                self._end(payload)
            elif kind == _TICK:
                self._tick()
            elif kind == _TIMER:
                self.policy.on_timer(payload)
            elif kind == _READY:
                node_idx, apply_id = payload
                if self._node_apply.get(node_idx) == apply_id:
                    node = self.nodes[node_idx]
                    self._set_ready(node)
                    self.policy.on_node_ready(node)
