"""Simulated cluster parts around the API double: scheduler, device plugin, kubelet, GPUs.

Each part is a level-triggered controller that runs on the API double's event loop after
every committed change (coalesced), reading and writing the store directly, as if it were a
component talking to the API server:

- **scheduler**: binds an unbound pending pod to the first node (by name) whose advertised
  ``allocatable`` MIG resources, minus what the pods already bound there ask for, fit its
  requests, honouring nodeSelector, NoSchedule taints and cordons; otherwise it sets
  PodScheduled=False/Unschedulable, as kube-scheduler does.
- **device plugin**, two modes. ``builtin`` (the default): the node agent's own plugin, reached
  over the real device-plugin protocol by a :class:`tests.harness.kubelet.SimKubelet` per node
  (Registration on ``kubelet.sock`` in ``<workdir>/<node>/dp``, ListAndWatch, preferred
  allocation, Allocate); the node's capacity and allocatable follow its lists. ``nvidia``: a
  simulated NVIDIA plugin, one pod per node in its namespace (a DaemonSet); a (re)started pod
  reads the node's simulated GPUs and advertises their whole MIG devices, then turns Ready;
  until then the node keeps advertising what it had (it enumerates devices only at start).
- **kubelet**: admits pods bound to its node and marks them Running. ``builtin``: only with
  devices the plugin allocated (``GetPreferredAllocation`` + ``Allocate``); a refused or missing
  device fails the pod (``UnexpectedAdmissionError``). ``nvidia``: with advertised MIG devices
  that exist. It serves the pod-resources gRPC API (``List``, ``GetAllocatableResources``) on a
  unix socket in a temp dir, so the node agent reads who holds what exactly as on a real node.

A guard checks the one safety rule of cdmo continuously: a device held by a pod is never
destroyed (every destroy goes through :class:`GuardedBackend`), and every Running pod's UUIDs
still exist after each change.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from cdmo.api import GPU_PRODUCT_LABEL, PARTITIONING_LABEL_KEY, PARTITIONING_LABEL_VALUE
from cdmo.mig.catalog import get_model, gfd_label
from cdmo.mig.layouts import Instance
from cdmo.mig.resources import RESOURCE_PREFIX, resource_from_profile
from cdmo.node_agent.backend import GpuInfo, GpuInstanceInfo, MigModeChange, XidWatch
from cdmo.node_agent.podresources import api_pb2, api_pb2_grpc
from cdmo.node_agent.simulated import SimulatedBackend
from tests.harness.kube_api import KubeApiDouble, ResourceType, Store, StoreEvent, now_rfc3339
from tests.harness.kubelet import AdmissionError, SimKubelet

DEVICE_PLUGIN_NAMESPACE = "gpu-operator"
DEVICE_PLUGIN_LABELS = {"app": "nvidia-device-plugin-daemonset"}
DEVICE_PLUGIN_SELECTOR = "app=nvidia-device-plugin-daemonset"


class GuardedBackend:
    """A GpuBackend that records any destroy of an instance a pod holds (cdmo must never do it)."""

    def __init__(self, node: str, inner: SimulatedBackend, cluster: SimCluster) -> None:
        self.node, self.inner, self.cluster = node, inner, cluster

    def list_gpus(self) -> list[GpuInfo]:
        return self.inner.list_gpus()

    def list_instances(self, gpu: int) -> list[GpuInstanceInfo]:
        return self.inner.list_instances(gpu)

    def list_processes(self, gpu: int) -> dict[str, tuple[int, ...]]:
        return self.inner.list_processes(gpu)

    def create_instance(self, gpu: int, profile: str, start: int) -> GpuInstanceInfo:
        return self.inner.create_instance(gpu, profile, start)

    def create_compute_instance(self, gpu: int, gi_id: int) -> GpuInstanceInfo:
        return self.inner.create_compute_instance(gpu, gi_id)

    def destroy_instance(self, gpu: int, gi_id: int) -> None:
        victim = next((i for i in self.inner.list_instances(gpu) if i.gi_id == gi_id), None)
        if victim is not None:
            for uuid in victim.uuids:  # every compute instance of the GI
                holder = self.cluster.holder_of(self.node, uuid)
                if holder is not None:
                    self.cluster.violations.append(
                        f"{self.node}: destroyed {victim.profile}@{victim.start} on GPU {gpu} ({uuid}) held by {holder}"
                    )
        self.inner.destroy_instance(gpu, gi_id)

    def set_mig_mode(self, gpu: int, enabled: bool) -> MigModeChange:
        return self.inner.set_mig_mode(gpu, enabled)

    def watch_xid_events(self) -> XidWatch:
        return self.inner.watch_xid_events()  # events change nothing a pod holds

    def close(self) -> None:
        self.inner.close()


class _PodResources(api_pb2_grpc.PodResourcesListerServicer):
    """The kubelet's pod-resources API for one simulated node."""

    def __init__(self, cluster: SimCluster, node: str) -> None:
        self.cluster, self.node = cluster, node

    def List(self, request: Any, context: Any) -> Any:
        pods = []
        for (namespace, name), devices in sorted(self.cluster.allocations(self.node).items()):
            by_resource: dict[str, list[str]] = {}
            for resource, uuid in devices:
                by_resource.setdefault(resource, []).append(uuid)
            container = api_pb2.ContainerResources(
                name="main",
                devices=[
                    api_pb2.ContainerDevices(resource_name=r, device_ids=ids)
                    for r, ids in sorted(by_resource.items())
                ],
            )
            pods.append(api_pb2.PodResources(name=name, namespace=namespace, containers=[container]))
        return api_pb2.ListPodResourcesResponse(pod_resources=pods)

    def GetAllocatableResources(self, request: Any, context: Any) -> Any:
        advertised = self.cluster.advertised(self.node)
        return api_pb2.AllocatableResourcesResponse(
            devices=[
                api_pb2.ContainerDevices(resource_name=r, device_ids=ids)
                for r, ids in sorted(advertised.items())
            ]
        )


@dataclass
class SimNode:
    name: str
    models: tuple[str, ...]
    backend: SimulatedBackend
    guarded: GuardedBackend
    socket: Path
    server: grpc.Server | None = None
    #: resource -> MIG UUIDs the device plugin advertised at its last start
    advertised: dict[str, list[str]] = field(default_factory=dict)
    #: (namespace, pod) -> [(resource, uuid)] that the kubelet handed out
    allocated: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    plugin_generation: int = 0
    #: builtin mode: the kubelet's device manager, and the directory the agent's plugin serves in
    kubelet: SimKubelet | None = None
    plugin_dir: Path | None = None


def _requests(pod: Mapping[str, Any]) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        for k, v in {**(res.get("requests") or {}), **(res.get("limits") or {})}.items():
            if k.startswith(RESOURCE_PREFIX):
                total[k] = total.get(k, 0) + int(str(v))
    return total


def _tolerated(pod: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    tolerations = (pod.get("spec") or {}).get("tolerations") or []
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(
            (t.get("operator") == "Exists" and (not t.get("key") or t.get("key") == taint.get("key")))
            or (t.get("key") == taint.get("key") and t.get("value", "") == taint.get("value", ""))
            for t in tolerations
            if not t.get("effect") or t.get("effect") == taint.get("effect")
        ):
            return False
    return True


def _set_condition(conditions: list[dict[str, Any]], cond: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in conditions if c.get("type") != cond["type"]] + [cond]


class SimCluster:
    """Simulated nodes with GPUs, and the scheduler / device plugin / kubelet controllers."""

    def __init__(
        self,
        api: KubeApiDouble,
        workdir: Path,
        *,
        plugin_start_delay: float = 0.05,
        device_plugin: str = "builtin",
    ) -> None:
        assert device_plugin in ("builtin", "nvidia")
        self.device_plugin = device_plugin
        self.api = api
        self.workdir = workdir
        self.plugin_start_delay = plugin_start_delay
        self.nodes: dict[str, SimNode] = {}
        self.violations: list[str] = []
        self._lock = threading.RLock()
        self._scheduled = False
        self._unsubscribe: Any = None
        #: scheduling decisions, in order: (pod key, node)
        self.bindings: list[tuple[str, str]] = []

    # -- set-up --------------------------------------------------------------------------------
    def add_node(
        self,
        name: str,
        models: Sequence[str] = ("h100-80gb",),
        *,
        labelled: bool = True,
        layout: Mapping[int, Iterable[Instance]] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> SimNode:
        """A node with simulated GPUs (MIG on), optional starting layout, its kubelet socket and plugin pod."""
        backend = SimulatedBackend.from_models(list(models), seed=name)
        for gpu, instances in (layout or {}).items():
            for inst in instances:
                backend.create_instance(gpu, inst.profile, inst.start)
        sock_dir = self.workdir / name
        sock_dir.mkdir(parents=True, exist_ok=True)
        node = SimNode(
            name, tuple(models), backend, GuardedBackend(name, backend, self), sock_dir / "kubelet.sock"
        )
        self.nodes[name] = node
        if self.device_plugin == "builtin":
            node.plugin_dir = sock_dir / "dp"
            node.kubelet = SimKubelet(
                node.plugin_dir, on_change=lambda: self.api.call_soon(lambda: self._sync_capacity(name))
            ).start()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(_PodResources(self, name), server)
        server.add_insecure_port(f"unix://{node.socket}")
        server.start()
        node.server = server
        product = get_model(models[0]).product_names[0]
        all_labels = {"kubernetes.io/hostname": name, GPU_PRODUCT_LABEL: gfd_label(product), **(labels or {})}
        if labelled:
            all_labels[PARTITIONING_LABEL_KEY] = PARTITIONING_LABEL_VALUE
        self.api.create(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": all_labels},
                "spec": {},
                "status": {
                    "capacity": {"cpu": "64"},
                    "allocatable": {"cpu": "64"},
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }
        )
        if self.device_plugin == "nvidia":
            self.api.call(lambda: self._start_plugin(name))
        return node

    def start(self) -> SimCluster:
        self._unsubscribe = self.api.subscribe(self._on_change)
        self.api.call_soon(self._run)
        return self

    def stop(self) -> None:
        if self._unsubscribe is not None:
            with contextlib.suppress(Exception):
                self._unsubscribe()
        for node in self.nodes.values():
            if node.server is not None:
                node.server.stop(0)
            if node.kubelet is not None:
                node.kubelet.stop()

    # -- views for the guard and the pod-resources server --------------------------------------
    def allocations(self, node: str) -> dict[tuple[str, str], list[tuple[str, str]]]:
        with self._lock:
            return {k: list(v) for k, v in self.nodes[node].allocated.items()}

    def advertised(self, node: str) -> dict[str, list[str]]:
        with self._lock:
            return {k: list(v) for k, v in self.nodes[node].advertised.items()}

    def holder_of(self, node: str, uuid: str) -> str | None:
        with self._lock:
            for (ns, name), devices in self.nodes[node].allocated.items():
                if any(u == uuid for _, u in devices):
                    return f"{ns}/{name}"
        return None

    def existing_uuids(self, node: str) -> set[str]:
        backend = self.nodes[node].backend
        return {
            i.uuid
            for g in backend.list_gpus()
            for i in backend.list_instances(g.index)
            if i.uuid and i.healthy
        }

    def check_running_pods_keep_devices(self) -> list[str]:
        """Every Running pod's MIG UUIDs still exist on its node's GPUs; returns the problems."""
        problems = []
        for name in self.nodes:
            existing = self.existing_uuids(name)
            for (ns, pod), devices in self.allocations(name).items():
                lost = [u for _, u in devices if u not in existing]
                if lost:
                    problems.append(f"{ns}/{pod} on {name} lost {', '.join(lost)}")
        return problems

    # -- controllers (run on the API double's loop) --------------------------------------------
    def _on_change(self, ev: StoreEvent) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.api.loop.call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        store = self.api.store
        self._device_plugins(store)
        self._kubelets(store)
        self._scheduler(store)
        problems = self.check_running_pods_keep_devices()
        for p in problems:
            if p not in self.violations:
                self.violations.append(p)

    def _pods(self, store: Store) -> ResourceType:
        return store.type_of("pods", "")

    def _device_plugins(self, store: Store) -> None:
        if self.device_plugin != "nvidia":
            return
        pods = self._pods(store)
        for name in self.nodes:
            mine = [
                p
                for p in store.list(pods, DEVICE_PLUGIN_NAMESPACE, DEVICE_PLUGIN_SELECTOR)
                if p["spec"].get("nodeName") == name and not p["metadata"].get("deletionTimestamp")
            ]
            if not mine:
                # the DaemonSet controller replaces a deleted pod; the plugin needs a moment to start
                self.nodes[name].plugin_generation += 1
                gen = self.nodes[name].plugin_generation
                store.create(
                    pods,
                    DEVICE_PLUGIN_NAMESPACE,
                    {
                        "metadata": {
                            "name": f"nvidia-device-plugin-{name}-{gen}",
                            "namespace": DEVICE_PLUGIN_NAMESPACE,
                            "labels": dict(DEVICE_PLUGIN_LABELS),
                        },
                        "spec": {
                            "nodeName": name,
                            "containers": [{"name": "plugin", "image": "nvidia/k8s-device-plugin"}],
                        },
                    },
                )
                self.api.loop.call_later(self.plugin_start_delay, self._start_plugin, name)

    def _sync_capacity(self, name: str) -> None:
        """builtin: the node's MIG capacity and allocatable are the healthy devices the kubelet got."""
        node = self.nodes[name]
        assert node.kubelet is not None
        lists = {
            r: sorted(i for i, h in node.kubelet.devices(r).items() if h == "Healthy")
            for r in node.kubelet.resources()
        }
        with self._lock:
            node.advertised = lists
        self._write_capacity(self.api.store, name, lists)

    def _write_capacity(self, store: Store, name: str, advertised: Mapping[str, list[str]]) -> None:
        nodes = store.type_of("nodes", "")
        obj = store.get(nodes, None, name)
        if obj is None:
            return
        status = dict(obj.get("status") or {})
        for key in ("capacity", "allocatable"):
            kept = {k: v for k, v in (status.get(key) or {}).items() if not k.startswith(RESOURCE_PREFIX)}
            status[key] = {**kept, **{r: str(len(ids)) for r, ids in advertised.items()}}
        if status != obj.get("status"):
            store.write(nodes, None, name, {**obj, "status": status}, subresource="status")

    def _start_plugin(self, name: str) -> None:
        """The plugin (re)starts: enumerate whole MIG devices, advertise them, turn Ready."""
        store = self.api.store
        node = self.nodes[name]
        advertised: dict[str, list[str]] = {}
        backend = node.backend
        for gpu in backend.list_gpus():
            for inst in backend.list_instances(gpu.index):
                if inst.healthy and inst.uuid:
                    advertised.setdefault(resource_from_profile(inst.profile), []).append(inst.uuid)
        with self._lock:
            node.advertised = {k: sorted(v) for k, v in sorted(advertised.items())}
        self._write_capacity(store, name, node.advertised)
        pods = self._pods(store)
        for p in store.list(pods, DEVICE_PLUGIN_NAMESPACE, DEVICE_PLUGIN_SELECTOR):
            if p["spec"].get("nodeName") == name and (p.get("status") or {}).get("phase") != "Running":
                status = {
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now_rfc3339()}],
                }
                store.write(
                    pods, p["metadata"]["namespace"], p["metadata"]["name"], {**p, "status": status}, "status"
                )

    def _kubelets(self, store: Store) -> None:
        pods = self._pods(store)
        present: set[tuple[str, str]] = set()
        for pod in store.list(pods):
            node_name = (pod.get("spec") or {}).get("nodeName")
            meta = pod["metadata"]
            key = (meta["namespace"], meta["name"])
            if (
                node_name in self.nodes
                and meta.get("deletionTimestamp")
                and meta.get("deletionGracePeriodSeconds")
            ):
                # graceful deletion: the kubelet stops the containers at once, then deletes for good
                store.delete(pods, meta["namespace"], meta["name"], grace_period=0)
                continue
            if node_name not in self.nodes or meta["namespace"] == DEVICE_PLUGIN_NAMESPACE:
                continue
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                continue
            present.add(key)
            node = self.nodes[node_name]
            if phase == "Running" or key in node.allocated:
                continue
            self._admit(store, pods, pod, node)
        with self._lock:
            for node in self.nodes.values():
                for key in [k for k in node.allocated if k not in present]:
                    del node.allocated[key]  # the pod is gone or finished: its devices are free
                    if node.kubelet is not None:
                        node.kubelet.release(f"{key[0]}/{key[1]}")

    def _fail_admission(self, store: Store, pods: ResourceType, pod: dict[str, Any], message: str) -> None:
        """What a real kubelet does when the device plugin cannot hand out a device."""
        meta = pod["metadata"]
        status = {
            **(pod.get("status") or {}),
            "phase": "Failed",
            "reason": "UnexpectedAdmissionError",
            "message": message,
        }
        store.write(pods, meta["namespace"], meta["name"], {**pod, "status": status}, "status")

    def _admit_builtin(self, store: Store, pods: ResourceType, pod: dict[str, Any], node: SimNode) -> bool:
        """Devices from the agent's plugin over gRPC (the device manager's path); False: Failed."""
        assert node.kubelet is not None
        meta = pod["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        chosen: list[tuple[str, str]] = []
        try:
            for resource, count in sorted(_requests(pod).items()):
                alloc = node.kubelet.admit(key, resource, count)
                chosen += [(resource, u) for u in alloc.ids]
        except AdmissionError as exc:
            node.kubelet.release(key)
            self._fail_admission(store, pods, pod, f"Allocate failed: {exc}")
            return False
        with self._lock:
            node.allocated[(meta["namespace"], meta["name"])] = chosen
        return True

    def _admit(self, store: Store, pods: ResourceType, pod: dict[str, Any], node: SimNode) -> None:
        if node.kubelet is not None:
            if self._admit_builtin(store, pods, pod, node):
                self._mark_running(store, pods, pod)
            return
        wanted = _requests(pod)
        existing = self.existing_uuids(node.name)
        with self._lock:
            taken = {u for devices in node.allocated.values() for _, u in devices}
            chosen: list[tuple[str, str]] = []
            missing = []
            for resource, count in sorted(wanted.items()):
                free = [u for u in node.advertised.get(resource, []) if u in existing and u not in taken]
                if len(free) < count:
                    missing.append(resource)
                chosen += [(resource, u) for u in free[:count]]
            meta = pod["metadata"]
            if missing:
                self._fail_admission(
                    store, pods, pod, f"Allocate failed: no free device of {', '.join(missing)}"
                )
                return
            node.allocated[(meta["namespace"], meta["name"])] = chosen
        self._mark_running(store, pods, pod)

    def _mark_running(self, store: Store, pods: ResourceType, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        conditions = _set_condition(
            list((pod.get("status") or {}).get("conditions") or []),
            {"type": "Ready", "status": "True", "lastTransitionTime": now_rfc3339()},
        )
        status = {**(pod.get("status") or {}), "phase": "Running", "conditions": conditions}
        store.write(pods, meta["namespace"], meta["name"], {**pod, "status": status}, "status")

    def _scheduler(self, store: Store) -> None:
        pods = self._pods(store)
        nodes = {n["metadata"]["name"]: n for n in store.list(store.type_of("nodes", ""))}
        used: dict[str, dict[str, int]] = {}
        for pod in store.list(pods):
            node_name = (pod.get("spec") or {}).get("nodeName")
            if node_name and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                for r, n in _requests(pod).items():
                    used.setdefault(node_name, {})[r] = used.setdefault(node_name, {}).get(r, 0) + n
        pending = [
            p
            for p in store.list(pods)
            if not (p.get("spec") or {}).get("nodeName")
            and (p.get("status") or {}).get("phase", "Pending") == "Pending"
            and not p["metadata"].get("deletionTimestamp")
        ]
        for pod in sorted(
            pending,
            key=lambda p: (
                -int((p.get("spec") or {}).get("priority") or 0),
                p["metadata"]["creationTimestamp"],
                p["metadata"]["name"],
            ),
        ):
            wanted = _requests(pod)
            target = None
            for name in sorted(nodes):
                node = nodes[name]
                if (node.get("spec") or {}).get("unschedulable"):
                    continue
                labels = node["metadata"].get("labels") or {}
                selector = (pod.get("spec") or {}).get("nodeSelector") or {}
                if any(labels.get(k) != v for k, v in selector.items()) or not _tolerated(pod, node):
                    continue
                allocatable = (node.get("status") or {}).get("allocatable") or {}
                if all(
                    int(str(allocatable.get(r, "0"))) - used.get(name, {}).get(r, 0) >= n
                    for r, n in wanted.items()
                ):
                    target = name
                    break
            meta = pod["metadata"]
            if target is not None:
                store.bind(meta["namespace"], meta["name"], {"target": {"kind": "Node", "name": target}})
                self.bindings.append((f"{meta['namespace']}/{meta['name']}", target))
                for r, n in wanted.items():
                    used.setdefault(target, {})[r] = used.setdefault(target, {}).get(r, 0) + n
                continue
            conds = (pod.get("status") or {}).get("conditions") or []
            current = next((c for c in conds if c.get("type") == "PodScheduled"), None)
            if current is None or current.get("reason") != "Unschedulable":
                message = f"0/{len(nodes)} nodes are available: insufficient " + ", ".join(
                    sorted(wanted) or ["resources"]
                )
                cond = {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                    "lastTransitionTime": now_rfc3339(),
                }
                status = {**(pod.get("status") or {}), "conditions": _set_condition(list(conds), cond)}
                store.write(pods, meta["namespace"], meta["name"], {**pod, "status": status}, "status")


def mig_pod(
    name: str,
    requests: Mapping[str, int],
    *,
    namespace: str = "default",
    labels: Mapping[str, str] | None = None,
    priority: int | None = None,
    node_selector: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A pod that asks for MIG devices the usual way (limits), e.g. ``{"1g.10gb": 1}``."""
    limits = {
        (k if k.startswith(RESOURCE_PREFIX) else resource_from_profile(k)): str(v)
        for k, v in requests.items()
    }
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": "worker", "resources": {"limits": limits}}]
    }
    if priority is not None:
        spec["priority"] = priority
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "spec": spec,
    }
