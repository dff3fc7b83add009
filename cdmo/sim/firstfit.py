"""The ``first-fit`` baseline: a model of nebuly-ai/nos' MIG partitioner, as nos publishes it.

Modelled from nos' source (nebuly-ai/nos: ``internal/controllers/gpupartitioner/`` and
``internal/partitioning/mig/`` for the planner, ``pkg/gpu/mig/gpu.go`` for geometry choice,
``internal/controllers/migagent/`` and ``pkg/gpu/nvml/client.go`` for the node agent):

- **Geometry = profile counts, no placements.** Each GPU may take one of a list of allowed
  geometries. nos ships lists for A30, A100-40GB and A100-80GB only (``known_configs.go``); here every
  model gets the maximal profile multisets of its base profiles (``cdmo.mig.layouts.maximal_multisets``,
  28 on 8-unit GPUs), which is nos' kind of list extended to H100/H200. nos initialises every GPU to
  its fewest-instance geometry (one 7g), so this model starts there too.
- **Planner.** Lacking profiles are counted per pending pod against the cluster's free devices. Nodes
  with free capacity are visited in name order (nos iterates a Go map; name order is the deterministic
  stand-in the design notes name). On each node, every GPU in index order takes the allowed geometry
  that adds the most lacking profiles while keeping its used devices (``GPU.UpdateGeometryFor``, ties
  to the first in list order; the 3g+2g+1g+1g geometry only on idle GPUs, as nos does); then the
  pending pods, by priority and smaller profile first, are added where one GPU has the free devices.
  A node that took no pod is reverted.
- **One cluster-wide gate.** While any node has not finished applying its last plan, nos does not plan
  at all: pod events reset the batch and come back after 10 s (``waitingAnyNodeToReportPlan``).
- **Batch window** of 10 s idle / 60 s at most (nos' chart defaults).
- **Node agent.** Free devices of unwanted or surplus profiles are deleted; if a GPU needs new devices,
  its other free devices are deleted too and re-created with them (nos does this so that more creation
  orders can work). Creation uses NVML's auto-placement (``CreateGpuInstance`` with no placement), trying
  creation orders until one fits, at most 21 attempts (``IterPermutations``, ``maxAttempts = 20``); each
  failed attempt destroys what it created. Then the device plugin pod is deleted and re-created
  (``restartNvidiaDevicePlugin``): the pod-restart refresh time.

Where this model is kinder to nos than nos is: the first creation order tried is largest profile
first (nos' order comes from Go map iteration); a pod is placed by the planner at most once per plan
(nos' loop can count a pod on two nodes); the batch fires exactly when ready, and a node's report is
immediate after its device plugin restarts (nos polls). Running pods are never deleted (nos' agent skips
used devices), so first-fit disrupts nothing either; its cost is time and failed creations.

Auto-placement order (shared data notes, ``mig-profiles-notes.md``): on 8-unit GPUs the driver fills
1-unit instances at starts 6, 4, 5, 0, 1, 2, 3; ``-cgi 19,14,5`` gives 1g@6, 2g@4, 4g@0 and
``-cgi 19,19,14,9`` puts 2g at 0 after 1g@6 and 1g@4, so 2-unit instances go 6, 4, 0, 2 (6 first is
assumed by analogy); 4-unit 3g instances go 4 then 0. A30 and RTX PRO fill low to high.
"""

from __future__ import annotations

import functools
import itertools
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdmo.mig.catalog import GpuModel, get_model
from cdmo.mig.layouts import Instance, maximal_multisets, validate_layout
from cdmo.sim.engine import Policy, SimGpu, SimNode
from cdmo.sim.policies import BatchWindow
from cdmo.sim.scenario import BatchSettings, TimeModel

Geometry = Mapping[str, int]

#: nos' ``maxAttempts = 20`` with the check before each attempt: 21 creation orders at most.
MAX_CREATE_ATTEMPTS = 21

_AUTO_ORDER_8 = {1: (6, 4, 5, 0, 1, 2, 3), 2: (6, 4, 0, 2), 4: (4, 0), 8: (0,)}

#: nos skips this geometry on busy GPUs (``isBusySensitive3211Geometry``), by these exact names.
_BUSY_SENSITIVE = (
    {"3g.20gb": 1, "2g.10gb": 1, "1g.5gb": 2},
    {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 2},
)


@functools.cache
def allowed_geometries(model_key: str) -> tuple[tuple[tuple[str, int], ...], ...]:
    """The geometries a GPU of this model may take (maximal multisets of base profiles), in list order."""
    return maximal_multisets(get_model(model_key))


@functools.cache
def _allowed_set(model_key: str) -> frozenset[tuple[tuple[str, int], ...]]:
    return frozenset(allowed_geometries(model_key))


@functools.cache
def initial_geometry(model_key: str) -> tuple[tuple[str, int], ...]:
    """nos' ``GetFewestSlicesGeometry``: the allowed geometry with the fewest instances (one 7g)."""
    return min(allowed_geometries(model_key), key=lambda g: (sum(n for _, n in g), g))


@functools.cache
def _covering(model_key: str, used: tuple[tuple[str, int], ...]) -> tuple[dict[str, int], ...]:
    """Allowed geometries that keep every used device (``CanApplyGeometry``), in list order."""
    result = []
    for geo in allowed_geometries(model_key):
        d = dict(geo)
        if all(d.get(p, 0) >= n for p, n in used):
            result.append(d)
    return tuple(result)


def _is_busy_sensitive(geometry: Mapping[str, int]) -> bool:
    return any(dict(geometry) == g for g in _BUSY_SENSITIVE)


@dataclass
class GpuGeometry:
    """The planner's view of one GPU: used and free device counts per profile (no placements)."""

    model: GpuModel
    used: dict[str, int]
    free: dict[str, int]

    def geometry(self) -> dict[str, int]:
        g = Counter(self.used)
        g.update(self.free)
        return {p: n for p, n in g.items() if n > 0}

    def copy(self) -> GpuGeometry:
        return GpuGeometry(self.model, dict(self.used), dict(self.free))

    def has_free_capacity(self) -> bool:
        if any(n > 0 for n in self.free.values()):
            return True
        return tuple(sorted(self.geometry().items())) not in _allowed_set(self.model.key)

    def update_geometry_for(self, required: Mapping[str, int]) -> bool:
        """nos' ``GPU.UpdateGeometryFor``: take the allowed geometry that adds the most required devices."""
        current = self.geometry()
        used_key = tuple(sorted((p, n) for p, n in self.used.items() if n > 0))
        idle = not used_key and not any(n > 0 for n in self.free.values())
        best: dict[str, int] | None = None
        best_provided = 0
        for cand in _covering(self.model.key, used_key):
            if not idle and _is_busy_sensitive(cand):
                continue
            provided = 0
            for profile, quantity in required.items():
                have = self.free.get(profile, 0)
                if have >= quantity:
                    continue
                extra = cand.get(profile, 0) - current.get(profile, 0)
                if extra > 0:
                    provided += min(extra, quantity - have)
            if provided > best_provided:
                best, best_provided = cand, provided
        if best is None or best == current:
            return False
        self.free = {p: n - self.used.get(p, 0) for p, n in best.items() if n - self.used.get(p, 0) > 0}
        return True


@dataclass(frozen=True)
class CandidatePod:
    pod: int
    profile: str
    count: int
    priority: int


def plan_first_fit(
    nodes: Sequence[tuple[str, Sequence[GpuGeometry]]], pods: Sequence[CandidatePod]
) -> dict[str, list[dict[str, int]]]:
    """nos' planner over ``nodes`` (name, GPUs) in the given order; returns changed nodes' geometries.

    Pure: the inputs are never changed (a visited node is tried on a copy), the result maps a node
    name to one geometry per GPU. Work beyond the cluster's free counts is spent only on the nodes
    visited before the lacking devices are covered: in a large fleet most nodes are never looked at.
    """
    # Copies only of the nodes whose trial was kept; every other node stays the caller's object.
    forks: dict[str, list[GpuGeometry]] = {}
    free_sum: dict[str, int] = {}
    for _, gpus in nodes:
        for g in gpus:
            for p, n in g.free.items():
                free_sum[p] = free_sum.get(p, 0) + n
    cluster_free: Counter[str] = Counter(free_sum)

    lacking_by_pod: dict[int, dict[str, int]] = {}
    lacking: Counter[str] = Counter()
    for pod in pods:
        short = pod.count - cluster_free.get(pod.profile, 0)
        if short > 0:
            lacking_by_pod[pod.pod] = {pod.profile: short}
            lacking[pod.profile] += short
    if not lacking:
        return {}

    # nos' sorter: priority first, then the smaller profile first; stable, so arrival order breaks ties.
    ordered = sorted(pods, key=lambda p: (-p.priority, _profile_rank(p.profile)))
    placed: set[int] = set()
    for name, gpus in nodes:
        if not +lacking:
            break
        # nos lists the nodes with free capacity first; asking as each is visited gives the same
        # answer (a node's GPUs change only once it has been visited) without asking all of them.
        if not any(g.has_free_capacity() for g in gpus):
            continue
        fork = [g.copy() for g in gpus]
        before_free: Counter[str] = Counter()
        for g in fork:
            before_free.update(g.free)
        required = Counter({p: n for p, n in lacking.items() if n > 0})
        for g in fork:
            g.update_geometry_for(required)
            for p, n in g.free.items():
                required[p] -= n
                if required[p] <= 0:
                    del required[p]
        after_free: Counter[str] = Counter()
        for g in fork:
            after_free.update(g.free)
        trial_free = cluster_free.copy()
        trial_free.subtract(before_free)
        trial_free.update(after_free)
        added = []
        for pod in ordered:
            if pod.pod in placed or trial_free.get(pod.profile, 0) < pod.count:
                continue
            gpu = next((g for g in fork if g.free.get(pod.profile, 0) >= pod.count), None)
            if gpu is None:
                continue
            gpu.free[pod.profile] -= pod.count
            if gpu.free[pod.profile] == 0:
                del gpu.free[pod.profile]
            gpu.used[pod.profile] = gpu.used.get(pod.profile, 0) + pod.count
            trial_free[pod.profile] -= pod.count
            added.append(pod)
        if not added:
            continue
        forks[name] = fork
        cluster_free = trial_free
        for pod in added:
            placed.add(pod.pod)
            for p, n in lacking_by_pod.get(pod.pod, {}).items():
                lacking[p] -= n
    result = {}
    for name, gpus in nodes:
        if name not in forks:
            continue
        geos = [g.geometry() for g in forks[name]]
        if geos != [g.geometry() for g in gpus]:
            result[name] = geos
    return result


_PROFILE_RE = re.compile(r"^(\d+)g\.(\d+)gb")


def _profile_rank(profile: str) -> tuple[int, int, str]:
    # nos' Profile.SmallerThan; profiles of different models compare by compute slices, then memory.
    m = _PROFILE_RE.match(profile)
    return (int(m[1]), int(m[2]), profile) if m else (99, 0, profile)


# --- the node agent -------------------------------------------------------------------------------


def auto_place_order(model: GpuModel, profile: str) -> tuple[int, ...]:
    """The starts NVML's auto-placement tries for ``profile``, in the order it tries them."""
    prof = model.profile(profile)
    if model.placement_axis_size == 8 and prof.placement_size in _AUTO_ORDER_8:
        preferred = [s for s in _AUTO_ORDER_8[prof.placement_size] if s in prof.starts]
        return tuple(preferred + [s for s in prof.starts if s not in preferred])
    return tuple(sorted(prof.starts))


def auto_place(model: GpuModel, occupied: Sequence[Instance], profile: str) -> int | None:
    """Where ``CreateGpuInstance`` (no placement) would put ``profile`` next to ``occupied``; None if nowhere."""
    for start in auto_place_order(model, profile):
        if not validate_layout(model, (*occupied, Instance(profile, start))):
            return start
    return None


@dataclass
class GpuApply:
    """What nos' agent does on one GPU: net instances destroyed and created, and GI operations made."""

    destroy: list[Any] = field(default_factory=list)
    create: list[Instance] = field(default_factory=list)
    gi_created: int = 0
    gi_destroyed: int = 0
    failed: bool = False


def apply_geometry(
    model: GpuModel, instances: Sequence[tuple[Instance, bool, Any]], desired: Mapping[str, int]
) -> GpuApply:
    """nos' agent on one GPU: ``instances`` are (instance, used, handle); returns the ops it makes.

    Used devices are never deleted. Creation tries orders of the profiles to create, largest first,
    each with auto-placement, until one order fits all (at most 21 tries).
    """
    out = GpuApply()
    used = [(inst, h) for inst, is_used, h in instances if is_used]
    free = [(inst, h) for inst, is_used, h in instances if not is_used]
    current = Counter(inst.profile for inst, _, _ in instances)
    keep_free: list[tuple[Instance, Any]] = []
    surplus = {p: current[p] - desired.get(p, 0) for p in current}
    for inst, h in free:
        if surplus.get(inst.profile, 0) > 0:
            surplus[inst.profile] -= 1
            out.destroy.append(h)
        else:
            keep_free.append((inst, h))
    to_create: list[str] = []
    for profile, n in sorted(desired.items()):
        to_create.extend([profile] * max(0, n - current.get(profile, 0)))
    if not to_create:
        out.gi_destroyed = len(out.destroy)
        return out
    # Re-create the remaining free devices together with the new ones (more orders can then work).
    for inst, h in keep_free:
        out.destroy.append(h)
        to_create.append(inst.profile)
    out.gi_destroyed = len(out.destroy)
    occupied = [inst for inst, _ in used]
    first = sorted(
        to_create, key=lambda p: (-model.profile(p).placement_size, -model.profile(p).compute_slices, p)
    )
    for attempt, order in enumerate(itertools.permutations(first)):
        if attempt >= MAX_CREATE_ATTEMPTS:
            out.failed = True
            break
        made: list[Instance] = []
        for profile in order:
            start = auto_place(model, occupied + made, profile)
            if start is None:
                break
            made.append(Instance(profile, start))
        out.gi_created += len(made)
        if len(made) == len(order):
            out.create = made
            break
        out.gi_destroyed += len(made)  # the failed attempt cleans up what it created
    else:
        out.failed = True
    return out


class FirstFitPolicy(Policy):
    """nos' approach on the simulated cluster (see the module docstring for what is modelled)."""

    name = "first-fit"
    _REQUEUE = -1

    def __init__(self, settings: BatchSettings, time_model: TimeModel) -> None:
        self.settings = settings
        self.time_model = time_model
        self.window = BatchWindow(settings.batch_idle_seconds, settings.batch_max_seconds)
        self.in_flight: set[int] = set()
        self._requeue_armed = False
        #: node idx -> (node version, GPU views) as of the last plan that looked at the node
        self._views: dict[int, tuple[int, list[GpuGeometry]]] = {}
        self.plans = 0
        self.planner_cpu = 0.0
        self.failed_creations = 0

    def initial_layout(self, gpu: SimGpu) -> Sequence[Instance]:
        geo = dict(initial_geometry(gpu.model.key))
        occupied: list[Instance] = []
        for profile in sorted(geo, key=lambda p: -gpu.model.profile(p).placement_size):
            for _ in range(geo[profile]):
                start = auto_place(gpu.model, occupied, profile)
                if start is None:
                    raise RuntimeError(f"first-fit: cannot initialise {gpu.model.key} with {geo}")
                occupied.append(Instance(profile, start))
        return occupied

    def on_unschedulable(self, pod: int) -> None:
        self._demand()

    def on_pod_end(self, pod: int) -> None:
        if self.sim.has_unschedulable():
            self._demand()

    def on_node_ready(self, node: SimNode) -> None:
        self.in_flight.discard(node.idx)
        if self.sim.has_unschedulable():
            self._demand()

    def _demand(self) -> None:
        if self.in_flight:
            # nos: "last partitioning plan has not been reported by all nodes yet": reset the batch,
            # requeue the pod reconcile after 10 s.
            self.window.close()
            if not self._requeue_armed:
                self._requeue_armed = True
                self.sim.set_timer(self.sim.now + self.settings.requeue_seconds, self._REQUEUE)
            return
        at, token = self.window.touch(self.sim.now)
        self.sim.set_timer(at, token)

    def on_timer(self, token: int) -> None:
        if token == self._REQUEUE:
            self._requeue_armed = False
            if self.sim.has_unschedulable():
                self._demand()
            return
        if token != self.window.token or not self.window.is_open:
            return
        self.window.close()
        self._plan()

    def _plan(self) -> None:
        sim = self.sim
        pods = sim.pods
        candidates = [
            CandidatePod(i, pods[i].profile, pods[i].count, pods[i].priority)
            for i in sim.unschedulable_pods()
        ]
        if not candidates:
            return
        cpu0 = time.process_time()
        view = [(node.name, self._gpu_view(node)) for node in sim.nodes]
        changes = plan_first_fit(view, candidates)
        self.plans += 1
        for name in sorted(changes):
            node = sim.node_by_name[name]
            self._apply(node, changes[name])
        self.planner_cpu += time.process_time() - cpu0

    def _gpu_view(self, node: SimNode) -> list[GpuGeometry]:
        """The planner's view of ``node``'s GPUs, rebuilt only when the node changed since the last plan.

        plan_first_fit never changes its inputs, so the same objects serve plan after plan.
        """
        cached = self._views.get(node.idx)
        if cached is None or cached[0] != node.version:
            gpus = []
            for gpu in node.gpus:
                used: dict[str, int] = {}
                free: dict[str, int] = {}
                for i in gpu.instances.values():
                    counts = free if i.holder is None else used
                    counts[i.profile] = counts.get(i.profile, 0) + 1
                gpus.append(GpuGeometry(gpu.model, used, free))
            cached = self._views[node.idx] = (node.version, gpus)
        return cached[1]

    def _apply(self, node: SimNode, geometries: Sequence[Mapping[str, int]]) -> None:
        destroy = []
        create: list[tuple[int, str, int]] = []
        gi_created = gi_destroyed = 0
        for gpu, desired in zip(node.gpus, geometries, strict=True):
            instances = [
                (Instance(i.profile, i.start), i.holder is not None, i) for i in gpu.sorted_instances()
            ]
            result = apply_geometry(gpu.model, instances, desired)
            destroy.extend(result.destroy)
            create.extend((gpu.index, inst.profile, inst.start) for inst in result.create)
            gi_created += result.gi_created
            gi_destroyed += result.gi_destroyed
            self.failed_creations += int(result.failed)
        if not (gi_created or gi_destroyed):
            return
        tm = self.time_model
        duration = (
            gi_created * tm.gi_create_seconds
            + gi_destroyed * tm.gi_destroy_seconds
            + tm.refresh_seconds(self.settings.refresh)
        )
        self.sim.begin_apply(
            node, destroy, create, duration=duration, gi_created=gi_created, gi_destroyed=gi_destroyed
        )
        self.in_flight.add(node.idx)

    def stats(self) -> dict[str, Any]:
        return {
            "plans": self.plans,
            "planner_cpu_seconds": self.planner_cpu,
            "failed_gpu_creations": self.failed_creations,
        }
