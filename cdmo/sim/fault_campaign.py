"""A randomized fault campaign against the node agent on simulated GPUs (issue 10, item 9).

Each run is one seed: a node with random GPUs and random layouts, pods holding instances in
every form a real node presents, and a sequence of steps that mixes new desired layouts, agent
passes and faults. The agent is driven through its public entry point (:class:`Agent` and
``sync_once``) with in-memory stand-ins for the Kubernetes API, the kubelet's pod-resources
and the device plugin; the GPUs are :class:`SimulatedNode`, which enforces NVML's rules.

Holders: pods admitted on a plain MIG UUID, on ``MIG-<uuid>::N`` (a time-sliced or MPS
replica), on a ``nvidia.com/mig-<profile>.shared`` resource, on the second compute instance of
a GPU instance split by another tool, by an index id (``0:1``) under ``nvidia.com/gpu`` (the
plugin's ``migStrategy: single`` with ``deviceIDStrategy: index``), by ``NVIDIA_VISIBLE_DEVICES``
alone (no resource, nothing in pod-resources); NVML processes; pods bound to the node but not yet
admitted, some with a native sidecar that asks for a device too; pods bound in the middle of a
pass (between the agent's first read and its re-check); bound pods asking 10^12 or 2^70 devices.

Faults: NVML calls failing (transient, IN_USE, unknown), pod-resources unreadable, Kubernetes
API errors (read, list pods, status patch), the agent dying between a GPU instance and its
compute instance, a GPU instance whose destroy is refused after its compute instance went, and
node reboots (instances gone; Hopper also loses MIG mode).

Invariants, checked after every step:

1. no held or reserved instance destroyed: every MIG device a pod or a process held before a
   pass still exists after it, and of the free instances of a profile, at least as many as
   bound pods wait for survive the pass (reboots excepted: they take everything);
2. a pass raises nothing but cdmo's own errors (a crash of the simulated process excepted);
3. after every successful pass, the status lists exactly the GPU instances the GPUs hold;
4. after a quiet phase (faults off, pods admitted or gone, index-id holders gone as they keep
   every instance of the node, a layout that keeps every held instance), every GPU holds a
   valid layout, equal to the desired one, and every GPU instance has a compute instance
   spanning it.

``run_campaign(seeds)`` returns figures (runs, steps, faults by kind, violations by kind).
``broken=True`` runs an agent with its protections switched off (it sees no pod and no
process), ``broken="stale"`` one whose re-check before a destroy reads nothing new, so that
tests can show the checker catches them.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import random
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from cdmo.api import build_miglayout
from cdmo.config import AgentConfig
from cdmo.errors import CdmoError
from cdmo.mig.catalog import GpuModel, Profile
from cdmo.mig.layouts import Instance, sort_layout, validate_layout
from cdmo.mig.resources import resource_from_profile
from cdmo.node_agent.agent import Agent
from cdmo.node_agent.backend import NO_WAIT_RETRY, NvmlReturn
from cdmo.node_agent.inuse import EMPTY_IN_USE, InUse
from cdmo.node_agent.kube import KubeError
from cdmo.node_agent.podresources.client import AllocatableDevices, PodDevices, PodResourcesUnavailable
from cdmo.node_agent.refresh import RefreshOutcome
from cdmo.node_agent.simulated import SimGpuInstance, SimulatedBackend, SimulatedCrash, SimulatedNode

NODE = "campaign-node"
NAMESPACE = "campaign"
MODELS = ("h100-80gb", "a100-40gb", "a100-80gb", "a30-24gb", "h200-141gb")
#: NVML calls the campaign fails, and the return codes it fails them with.
NVML_FAULT_CALLS = (
    "nvmlDeviceCreateGpuInstanceWithPlacement",
    "nvmlGpuInstanceCreateComputeInstance",
    "nvmlComputeInstanceDestroy",
    "nvmlGpuInstanceDestroy",
    "nvmlDeviceGetGpuInstances",
    "nvmlDeviceGetComputeRunningProcesses",
)
NVML_FAULT_CODES = (NvmlReturn.GPU_IS_LOST, NvmlReturn.IN_USE, NvmlReturn.UNKNOWN, NvmlReturn.TIMEOUT)
HOLDER_FORMS = (
    "plain",
    "replica",
    "shared",
    "split",
    "process",
    "bound",
    "sidecar",
    "huge",
    "indexed",
    "named",
)
_NOW = datetime(2026, 1, 1, tzinfo=UTC)


# --- the world around the agent ------------------------------------------------------------


@dataclass
class WorldPod:
    """A pod bound to the node: admitted (holds ``uuids``) or waiting for the kubelet."""

    name: str
    profile: str
    form: str
    #: devices the pod asks for (a native sidecar asks for one of them)
    count: int = 1
    uuids: list[str] = field(default_factory=list)

    @property
    def admitted(self) -> bool:
        return bool(self.uuids)

    @property
    def resource(self) -> str:
        if self.form == "indexed":
            return "nvidia.com/gpu"  # NVIDIA's migStrategy single: MIG devices under the GPU's name
        base = resource_from_profile(self.profile)
        return base + ".shared" if self.form == "shared" else base

    def body(self) -> dict[str, Any]:
        main = self.count - 1 if self.form == "sidecar" else self.count
        spec: dict[str, Any] = {
            "nodeName": NODE,
            "containers": [{"name": "main", "resources": {"limits": {self.resource: str(main)}}}],
        }
        if self.form == "named":  # the device by NVIDIA_VISIBLE_DEVICES alone, no resource asked
            env = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": ",".join(self.uuids)}]
            spec["containers"] = [{"name": "main", "env": env}]
        if self.form == "sidecar":
            spec["initContainers"] = [
                {"name": "proxy", "restartPolicy": "Always", "resources": {"limits": {self.resource: "1"}}}
            ]
        phase = "Running" if self.admitted else "Pending"
        return {
            "metadata": {"name": self.name, "namespace": NAMESPACE},
            "spec": spec,
            "status": {"phase": phase},
        }

    def rows(self) -> list[PodDevices]:
        if not self.uuids or self.form == "named":
            return []  # a device named past the device plugin is not in pod-resources
        if self.form == "replica":
            ids = tuple(f"{u}::{i + 1}" for i, u in enumerate(self.uuids))
        elif self.form == "indexed":
            ids = tuple(f"0:{i}" for i in range(len(self.uuids)))  # deviceIDStrategy: index
        else:
            ids = tuple(self.uuids)
        return [PodDevices(NAMESPACE, self.name, "main", self.resource, ids)]


class CampaignKube:
    """The agent's Kubernetes API: its MigLayout, the pods bound to the node, injected errors."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.obj: dict[str, Any] | None = None
        self.rv = 0
        self.fail: Counter[str] = Counter()

    def set_layout(self, layouts: dict[int, tuple[Instance, ...]]) -> None:
        self.rv += 1
        generation = (self.obj or {}).get("metadata", {}).get("generation", 0) + 1
        status = (self.obj or {}).get("status")
        obj = build_miglayout(NODE, layouts)
        obj["metadata"].update(generation=generation, resourceVersion=str(self.rv))
        if status is not None:
            obj["status"] = status
        self.obj = obj

    def _maybe_fail(self, call: str) -> None:
        if self.fail[call] > 0:
            self.fail[call] -= 1
            raise KubeError(f"{call}: Kubernetes API answered 503 (injected)")

    def read_miglayout(self, name: str) -> tuple[dict[str, Any] | None, str | None]:
        self._maybe_fail("read")
        return copy.deepcopy(self.obj), str(self.rv)

    def watch_miglayout(
        self, name: str, *, resource_version: str | None, timeout_seconds: float
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        return iter(())

    def interrupt(self) -> None:
        return None

    def patch_miglayout_status(self, name: str, status: dict[str, Any]) -> None:
        self._maybe_fail("patch")
        assert self.obj is not None
        merged = dict(self.obj.get("status") or {})
        for k, v in status.items():
            if v is None:
                merged.pop(k, None)
            else:
                merged[k] = v
        self.obj["status"] = merged
        self.world.status_written = True

    def create_miglayout_event(
        self, layout: dict[str, Any], *, reason: str, message: str, event_type: str = "Normal"
    ) -> None:
        self._maybe_fail("event")
        self.world.figures.events[reason] += 1

    def list_node_pods(self, node: str) -> list[dict[str, Any]]:
        self._maybe_fail("list")
        self.world.on_list_pods()
        return [p.body() for p in self.world.pods]


class CampaignPodResources:
    """The kubelet's pod-resources List: the admitted pods' devices, or unreadable when told."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.fail = 0

    def available(self) -> bool:
        return True

    def list(self) -> list[PodDevices]:
        if self.fail > 0:
            self.fail -= 1
            raise PodResourcesUnavailable("pod-resources List failed (injected)")
        return [row for p in self.world.pods for row in p.rows()]

    def allocatable(self) -> builtins.list[AllocatableDevices]:
        # What the plugin offers under nvidia.com/gpu for the "indexed" pods (migStrategy single,
        # deviceIDStrategy index): every MIG device, by index id. Other pods ask by profile name.
        count = sum(len(gi.cis) for _, gi in self.world.all_gis())
        return [AllocatableDevices("nvidia.com/gpu", tuple(f"0:{i}" for i in range(count)))]


class CampaignRefresher:
    strategy = "none"

    def refresh(self, stop: threading.Event) -> RefreshOutcome:
        return RefreshOutcome(True, "Refreshed", "campaign: nothing to refresh")


class _BlindAgent(Agent):
    """The agent with its protections switched off: it sees no pod (the checker's own test)."""

    def read_in_use(self) -> InUse:
        return EMPTY_IN_USE


class _StaleAgent(Agent):
    """The agent whose re-check before a destroy reuses the pass's first read of who holds what."""

    _first: InUse | None = None
    _seen_pass = -1

    def read_in_use(self) -> InUse:
        if self._seen_pass != self.passes or self._first is None:
            self._seen_pass = self.passes
            self._first = super().read_in_use()
        return self._first


class _BlindBackend(SimulatedBackend):
    """NVML processes hidden from the agent (the simulated GPUs still refuse to destroy them)."""

    def list_processes(self, gpu: int) -> dict[str, tuple[int, ...]]:
        return {}


# --- the world ---------------------------------------------------------------------------


def _count(n: int) -> str:
    return str(n) if n < 10**6 else f"~10^{len(str(n)) - 1}"


@dataclass
class Figures:
    """What a campaign did and found."""

    runs: int = 0
    steps: int = 0
    passes: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    holders: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    #: Events the agent posted on its MigLayout, by reason
    events: Counter[str] = field(default_factory=Counter)
    #: GPU instances found without a compute instance when the quiet phase began (to repair)
    half_made: int = 0
    #: the first few violations in words, with their seed
    examples: list[str] = field(default_factory=list)

    def add(self, other: Figures) -> None:
        self.runs += other.runs
        self.steps += other.steps
        self.passes += other.passes
        self.half_made += other.half_made
        self.events.update(other.events)
        self.faults.update(other.faults)
        self.holders.update(other.holders)
        self.violations.update(other.violations)
        self.examples.extend(other.examples[: max(0, 10 - len(self.examples))])


class World:
    """One seed's node, pods and agent, with the checks after every step."""

    def __init__(self, seed: int, *, broken: bool | str = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.broken = broken
        models = [self.rng.choice(MODELS) for _ in range(self.rng.randint(1, 3))]
        self.node = SimulatedNode.from_models(models, seed=f"campaign-{seed}")
        self.kube = CampaignKube(self)
        self.pod_resources = CampaignPodResources(self)
        self.pods: list[WorldPod] = []
        self.pod_serial = 0
        self.pid_serial = 1000
        #: MIG UUID -> pids started on it by the campaign
        self.processes: dict[str, list[int]] = {}
        #: GPU instances split by "another tool": (gpu, gi_id) (exempt from the full-CI rule while split)
        self.split: set[tuple[int, int]] = set()
        #: pods to bind on the agent's next read of the node's pods (mid-pass)
        self.bind_mid_pass: list[WorldPod] = []
        self.status_written = False
        self._reads_this_pass = 0
        self.figures = Figures(runs=1)
        self.agent = self._new_agent()

    # --- set-up --------------------------------------------------------------------------

    def _new_agent(self) -> Agent:
        # The chart's defaults: MIG is not switched on by --enable-mig, only restored after a
        # reboot where cdmo managed the GPU (autoEnableMig).
        config = AgentConfig(node_name=NODE, refresh_strategy="none")
        blind = self.broken in (True, "blind")
        backend = _BlindBackend(self.node) if blind else SimulatedBackend(self.node)
        cls = _BlindAgent if blind else _StaleAgent if self.broken == "stale" else Agent
        return cls(
            config,
            backend,
            self.kube,
            CampaignRefresher(),
            pod_resources=self.pod_resources,
            retry=NO_WAIT_RETRY,
            clock=lambda: _NOW,
        )

    def model(self, gpu: int) -> GpuModel:
        return self.node.gpus[gpu].model

    def random_layout(self, gpu: int, keep: Sequence[Instance] = ()) -> tuple[Instance, ...]:
        """A random valid layout of GPU ``gpu`` that holds ``keep``."""
        model = self.model(gpu)
        chosen = list(keep)
        profiles = [p for p in model.profiles if not p.is_variant]
        for _ in range(self.rng.randint(0, 8)):
            p = self.rng.choice(profiles)
            inst = Instance(p.name, self.rng.choice(p.starts))
            if not validate_layout(model, [*chosen, inst]):
                chosen.append(inst)
        return sort_layout(chosen)

    def build(self) -> None:
        """Random layouts made directly on the GPUs, then holders in every form."""
        backend = SimulatedBackend(self.node)
        for g in range(len(self.node.gpus)):
            for inst in self.random_layout(g):
                backend.create_instance(g, inst.profile, inst.start)
            if self.rng.random() < 0.4:
                self._split_one(g)
        for _ in range(self.rng.randint(1, 5)):
            self.add_holder(self.rng.choice(HOLDER_FORMS))
        self.kube.set_layout(
            {g: self.random_layout(g, self.held_instances(g)) for g in range(len(self.node.gpus))}
        )

    def _overlaps(self, g: int, profile: Profile, start: int) -> bool:
        """Whether ``profile``@``start`` cannot join GPU ``g``'s present instances."""
        gpu = self.node.gpus[g]
        current = [Instance(gi.profile.name, gi.start) for gi in gpu.gis.values()]
        return bool(validate_layout(gpu.model, [*current, Instance(profile.name, start)]))

    def _split_one(self, g: int) -> None:
        """Another tool made a GPU instance with two small compute instances."""
        gpu = self.node.gpus[g]
        for p in gpu.model.profiles:
            if p.compute_slices < 2 or p.is_variant:
                continue
            for start in p.starts:
                if self._overlaps(g, p, start):
                    continue
                gi = self.node.create_gpu_instance(g, p.profile_id, start, p.placement_size)
                # CI profile ids equal NVML's constants in the simulator: 0 is the 1-slice profile.
                self.node.create_compute_instance(g, gi.gi_id, 0)
                self.node.create_compute_instance(g, gi.gi_id, 0)
                self.split.add((g, gi.gi_id))
                return

    # --- holders -------------------------------------------------------------------------

    def all_gis(self) -> list[tuple[int, SimGpuInstance]]:
        return [(g.index, gi) for g in self.node.gpus for gi in g.gis.values()]

    def held_uuids(self) -> set[str]:
        held = {u for p in self.pods for u in p.uuids}
        held |= {u for u, pids in self.processes.items() if pids}
        return held

    def held_instances(self, gpu: int) -> list[Instance]:
        held = self.held_uuids()
        return [
            Instance(gi.profile.name, gi.start)
            for g, gi in self.all_gis()
            if g == gpu and any(ci.uuid in held for ci in gi.cis.values())
        ]

    def free_instances(self, profile: str | None = None) -> list[tuple[int, SimGpuInstance]]:
        held = self.held_uuids()
        return [
            (g, gi)
            for g, gi in self.all_gis()
            if (profile is None or gi.profile.name == profile)
            and gi.cis
            and (g, gi.gi_id) not in self.split
            and not any(ci.uuid in held for ci in gi.cis.values())
        ]

    def _new_pod(self, profile: str, form: str, count: int = 1) -> WorldPod:
        self.pod_serial += 1
        return WorldPod(f"pod-{self.pod_serial}", profile, form, count)

    def add_holder(self, form: str) -> None:
        self.figures.holders[form] += 1
        if form == "split":
            if not self.split:
                return
            g, gi_id = self.rng.choice(sorted(self.split))
            gi = self.node.gpus[g].gis.get(gi_id)
            if gi is None or len(gi.cis) < 2:
                return
            second = sorted(gi.cis.items())[1][1]
            pod = self._new_pod(gi.profile.name, form)
            pod.uuids = [second.uuid]
            self.pods.append(pod)
            return
        if form in ("bound", "sidecar", "huge"):
            profiles = sorted(
                {gi.profile.name for _, gi in self.all_gis()} or {self.model(0).profiles[0].name}
            )
            count = {"sidecar": 2, "huge": self.rng.choice((10**12, 2**70))}.get(form, 1)
            pod = self._new_pod(self.rng.choice(profiles), form, count)
            self.pods.append(pod)
            return
        free = self.free_instances()
        if not free:
            return
        g, gi = self.rng.choice(free)
        ci = sorted(gi.cis.items())[0][1]
        if form == "process":
            self.pid_serial += 1
            self.node.add_process(ci.uuid, self.pid_serial)
            self.processes.setdefault(ci.uuid, []).append(self.pid_serial)
            return
        pod = self._new_pod(gi.profile.name, form)
        pod.uuids = [ci.uuid]
        self.pods.append(pod)

    def admit_waiting(self) -> None:
        """The kubelet admits a waiting pod onto free instances of its profile, if there are enough."""
        waiting = [p for p in self.pods if not p.admitted]
        if not waiting:
            return
        pod = self.rng.choice(waiting)
        free = self.free_instances(pod.profile)
        if len(free) >= pod.count:
            pod.uuids = [sorted(gi.cis.items())[0][1].uuid for _, gi in free[: pod.count]]

    def release_one(self) -> None:
        if self.pods and self.rng.random() < 0.7:
            self.pods.remove(self.rng.choice(self.pods))
        elif self.processes:
            uuid = self.rng.choice(sorted(self.processes))
            for pid in self.processes.pop(uuid):
                with contextlib.suppress(CdmoError):  # its instance may be gone already
                    self.node.remove_process(uuid, pid)

    def on_list_pods(self) -> None:
        """Pods scheduled to bind mid-pass become visible after the agent's first read."""
        if self.bind_mid_pass and self._reads_this_pass >= 1:
            self.pods.extend(self.bind_mid_pass)
            self.bind_mid_pass = []
        self._reads_this_pass += 1

    # --- faults --------------------------------------------------------------------------

    def inject(self, kind: str) -> None:
        self.figures.faults[kind] += 1
        if kind == "nvml":
            call = self.rng.choice(NVML_FAULT_CALLS)
            self.node.inject_fault(call, int(self.rng.choice(NVML_FAULT_CODES)), self.rng.randint(1, 2))
        elif kind == "gi-destroy-refused":
            self.node.inject_fault("nvmlGpuInstanceDestroy", int(NvmlReturn.IN_USE), 1)
        elif kind == "pod-resources":
            self.pod_resources.fail = 1
        elif kind.startswith("api-"):
            self.kube.fail[kind[4:]] += 1
        elif kind == "crash-between-gi-and-ci":
            self.node.crash_before_next_compute_instance = True
        elif kind == "reboot":
            self.node.reboot()
            self.split.clear()
            self.processes.clear()
            for pod in self.pods:
                pod.uuids = []  # the pods restart and wait to be admitted again
        elif kind == "bind-mid-pass":
            # A pod for the profile of a free instance that the new desired layout drops: the
            # agent's first read does not see the pod, its re-check before the destroy must.
            free = self.free_instances()
            if free:
                g, gi = self.rng.choice(free)
                form = self.rng.choice(("bound", "sidecar"))
                self.bind_mid_pass.append(self._new_pod(gi.profile.name, form, 2 if form == "sidecar" else 1))
                dropped = Instance(gi.profile.name, gi.start)
                layout = tuple(i for i in self.random_layout(g, self.held_instances(g)) if i != dropped)
                self._set_gpu_layout(g, layout)

    def _set_gpu_layout(self, g: int, layout: tuple[Instance, ...]) -> None:
        """A new desired layout for GPU ``g``; the other GPUs keep theirs."""
        spec = {
            i["index"]: tuple(Instance(x["profile"], x["start"]) for x in i.get("instances") or [])
            for i in (self.kube.obj or {}).get("spec", {}).get("gpus", [])
        }
        spec[g] = layout
        self.kube.set_layout(spec)

    # --- one pass and its checks ---------------------------------------------------------

    def agent_pass(self) -> None:
        held = self.held_uuids()
        reserved_free = self._reserved_free()
        self._reads_this_pass = 0
        self.status_written = False
        self.figures.passes += 1
        ok = False
        try:
            self.agent.sync_once()
            ok = True
        except SimulatedCrash:
            self.agent = self._new_agent()  # the process died; the DaemonSet starts a new one
        except CdmoError:
            pass  # the agent's loop logs it and backs off; the next pass retries
        except Exception as exc:
            self.violate("unexpected-error", f"pass raised {type(exc).__name__}: {exc}")
        # mid-pass binds that the agent never read still happen (the scheduler does not wait)
        self.pods.extend(self.bind_mid_pass)
        self.bind_mid_pass = []
        self.check_held(held)
        self.check_reserved(reserved_free)
        if ok:
            self.check_status()

    def _reserved_free(self) -> dict[str, tuple[int, set[str], str]]:
        """profile -> (devices waiting pods need, UUIDs of free instances now, the pods), incl. mid-pass binds."""
        need: Counter[str] = Counter()
        who: dict[str, list[str]] = {}
        for pod in self.pods:
            if not pod.admitted:
                need[pod.profile] += pod.count
                who.setdefault(pod.profile, []).append(f"{pod.name} ({pod.form})")
        for pod in self.bind_mid_pass:
            need[pod.profile] += pod.count
            who.setdefault(pod.profile, []).append(f"{pod.name} ({pod.form}, bound mid-pass)")
        out: dict[str, tuple[int, set[str], str]] = {}
        for profile, n in need.items():
            free = {sorted(gi.cis.items())[0][1].uuid for _, gi in self.free_instances(profile)}
            out[profile] = (n, free, ", ".join(who[profile]))
        return out

    def existing_uuids(self) -> set[str]:
        return {ci.uuid for _, gi in self.all_gis() for ci in gi.cis.values()}

    def check_held(self, held: set[str]) -> None:
        gone = held - self.existing_uuids()
        for uuid in sorted(gone):
            by = [f"pod {p.name} ({p.form})" for p in self.pods if uuid in p.uuids]
            by += [f"process {pid}" for pid in self.processes.get(uuid, [])]
            self.violate("held-destroyed", f"MIG device {uuid} held by {', '.join(by)} was destroyed")
        # the campaign's own record follows the hardware (a destroyed device frees nobody's pod here)
        for pod in self.pods:
            pod.uuids = [u for u in pod.uuids if u not in gone]
        # a pod that named its device itself does not wait for the kubelet: with it gone, it is done
        self.pods = [p for p in self.pods if p.admitted or p.form != "named"]

    def check_reserved(self, before: dict[str, tuple[int, set[str], str]]) -> None:
        now = self.existing_uuids()
        for profile, (need, free, pods) in sorted(before.items()):
            kept = len(free & now)
            if kept < min(need, len(free)):
                self.violate(
                    "reserved-destroyed",
                    f"{_count(need)} {profile} device(s) awaited by {pods}, {len(free)} free before the pass, "
                    f"{kept} left after it",
                )

    def check_status(self) -> None:
        status = (self.kube.obj or {}).get("status") or {}
        reported = {
            (g["index"], i["profile"], i["start"], i.get("giId"))
            for g in status.get("gpus") or []
            for i in g.get("instances") or []
        }
        actual = {(g, gi.profile.name, gi.start, gi.gi_id) for g, gi in self.all_gis()}
        if reported != actual:
            self.violate(
                "status-differs",
                f"status lists {sorted(reported - actual)} not on the GPUs, misses {sorted(actual - reported)}",
            )

    def check_converged(self) -> None:
        desired = {g["index"]: g for g in (self.kube.obj or {}).get("spec", {}).get("gpus", [])}
        for gpu in self.node.gpus:
            layout = sort_layout(Instance(gi.profile.name, gi.start) for gi in gpu.gis.values())
            if validate_layout(gpu.model, layout):
                self.violate("invalid-layout", f"GPU {gpu.index} holds an invalid layout {layout}")
            want = desired.get(gpu.index)
            if want is not None:
                wanted = sort_layout(Instance(i["profile"], i["start"]) for i in want.get("instances") or [])
                if layout != wanted:
                    self.violate(
                        "not-converged",
                        f"GPU {gpu.index} holds {layout} after the quiet phase, desired {wanted}",
                    )
            for gi in gpu.gis.values():
                if (gpu.index, gi.gi_id) in self.split and len(gi.cis) > 1:
                    continue  # another tool's split, still held: not cdmo's to change
                full = [c for c in gi.cis.values() if c.profile_id == gi.profile.default_ci.value]
                if not gi.cis or not full:
                    self.violate(
                        "gi-without-full-ci",
                        f"GPU {gpu.index} {gi.profile.name}@{gi.start} has {len(gi.cis)} compute instance(s), "
                        "none spanning it",
                    )

    def violate(self, kind: str, message: str) -> None:
        self.figures.violations[kind] += 1
        if len(self.figures.examples) < 10:
            self.figures.examples.append(f"seed {self.seed}: {kind}: {message}")

    # --- the run -------------------------------------------------------------------------

    def step(self) -> None:
        self.figures.steps += 1
        roll = self.rng.random()
        if roll < 0.35:
            self.agent_pass()
            return
        if roll < 0.5:
            g = self.rng.randrange(len(self.node.gpus))
            self._set_gpu_layout(
                g, self.random_layout(g, self.held_instances(g) if self.rng.random() < 0.7 else ())
            )
        elif roll < 0.6:
            self.add_holder(self.rng.choice(HOLDER_FORMS))
        elif roll < 0.67:
            self.admit_waiting()
        elif roll < 0.72:
            self.release_one()
        else:
            kinds = (
                "nvml",
                "nvml",
                "gi-destroy-refused",
                "pod-resources",
                "api-read",
                "api-list",
                "api-patch",
                "api-event",
                "crash-between-gi-and-ci",
                "bind-mid-pass",
                "bind-mid-pass",
                "reboot",
            )
            self.inject(self.rng.choice(kinds))
        # every fault and change is followed by a pass, so each is seen by the agent
        self.agent_pass()

    def quiet(self) -> None:
        """Faults off, waiting pods admitted or gone, a layout that keeps what is held: converge."""
        self.node.faults.clear()
        self.node.crash_before_next_compute_instance = False
        self.pod_resources.fail = 0
        self.kube.fail.clear()
        self.pods.extend(self.bind_mid_pass)
        self.bind_mid_pass = []
        for pod in [p for p in self.pods if not p.admitted or p.form == "indexed"]:
            self.pods.remove(pod)  # an index-id holder keeps every instance: none could change
        # One more GPU instance left without its compute instance, as a death between the two
        # creates leaves it, on a GPU with MIG on and room (the faults above leave such GIs too,
        # but the passes right after them usually repair or replace them already).
        for g in self.rng.sample(range(len(self.node.gpus)), len(self.node.gpus)):
            gpu = self.node.gpus[g]
            if not gpu.mig_current:
                continue
            spots = [(p, st) for p in gpu.model.profiles if not p.is_variant for st in p.starts]
            spots = [(p, st) for p, st in spots if not self._overlaps(g, p, st)]
            if spots:
                p, st = self.rng.choice(spots)
                self.node.create_gpu_instance(g, p.profile_id, st, p.placement_size)
                break
        # GPU instances without a compute instance stay wanted: the agent must repair them in place.
        half_made = {
            g: [Instance(gi.profile.name, gi.start) for gg, gi in self.all_gis() if gg == g and not gi.cis]
            for g in range(len(self.node.gpus))
        }
        self.figures.half_made += sum(len(v) for v in half_made.values())
        self.kube.set_layout(
            {
                g: self.random_layout(g, [*self.held_instances(g), *half_made[g]])
                for g in range(len(self.node.gpus))
            }
        )
        for _ in range(4):
            self.agent_pass()
        self.check_converged()

    def run(self, steps: int) -> Figures:
        self._reads_this_pass = 0
        self.build()
        self.agent_pass()
        for _ in range(steps):
            self.step()
        self.quiet()
        return self.figures


def run_campaign(seeds: Sequence[int], *, steps: int = 25, broken: bool | str = False) -> Figures:
    """Run one world per seed; figures summed over all of them.

    ``broken``: True or "blind", an agent that sees no pod and no process; "stale", an agent
    whose re-check before a destroy does not read again (for the checker's own tests).
    """
    total = Figures()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(50))  # quiet: CRITICAL only
    try:
        for seed in seeds:
            total.add(World(seed, broken=broken).run(steps))
    finally:
        structlog.reset_defaults()
    return total


__all__ = ["HOLDER_FORMS", "Figures", "World", "run_campaign"]
