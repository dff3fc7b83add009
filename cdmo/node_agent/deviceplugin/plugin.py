"""The agent's kubelet device plugin: one gRPC endpoint per resource, over unix sockets.

:class:`KubeletDevicePlugin` is the node agent's :class:`~cdmo.node_agent.advertise.DeviceAdvertiser`
in the ``builtin`` mode. It serves the kubelet's device-plugin API ``v1beta1`` for every MIG
resource of the GPUs it manages (and ``nvidia.com/gpu`` for GPUs with MIG off):

- each resource has its own socket ``cdmo-<name>.sock`` in the device-plugins directory and
  registers itself over ``kubelet.sock`` there; a resource stays registered once it has been,
  with an empty list when it has no device, so that the kubelet drops its capacity at once;
- ``ListAndWatch`` sends the whole list again whenever it changes: at once after
  ``withdraw``/``refresh``, and within ``poll_seconds`` of a change made outside the agent
  (a background thread re-reads NVML); health comes from NVML: a device whose GPU NVML cannot
  read, or whose compute instance does not span its GPU instance, is Unhealthy while that lasts;
- critical XID errors: a second thread waits on an NVML event set (bounded waits of
  ``event_wait_seconds``) and, on an XID the policy does not ignore (``health.py``: NVIDIA's
  list of application XIDs, ``CDMO_DISABLE_HEALTHCHECKS``), marks the MIG device it names, or
  every device of its GPU, Unhealthy and sends the lists at once; such a mark lasts until the
  agent restarts (a re-made instance has a new UUID and starts Healthy);
- ``withdraw`` returns only after every open ``ListAndWatch`` stream of the affected resources
  has sent the list without the withdrawn devices (or after ``ack_timeout``); ``Allocate``
  refuses withdrawn devices from the moment ``withdraw`` is called;
- the kubelet deletes the sockets in the directory when it starts and re-creates its own: the
  background thread notices a new ``kubelet.sock`` or a vanished endpoint, serves again and
  registers again. A refused or timed-out ``Register`` is tried again after
  ``register_backoff``, doubled on each failure up to ``register_backoff_max``, and at once
  when a new ``kubelet.sock`` appears.

Threads: the gRPC servers' workers, one background thread and the XID watcher; all shared
state is behind one lock (a condition variable wakes the streams). No reconcile pass waits on
the XID watcher.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog

from cdmo.errors import CdmoError, InvalidInput
from cdmo.mig.layouts import Instance
from cdmo.node_agent.advertise import HANDED_OUT_GRACE_SECONDS, Unhealthy
from cdmo.node_agent.backend import GpuBackend, GpuInstanceInfo, XidEvent, XidWatch
from cdmo.node_agent.backoff import doubling_delay
from cdmo.node_agent.deviceplugin import api_pb2, api_pb2_grpc
from cdmo.node_agent.deviceplugin.devices import (
    DEFAULT_CDI_KIND,
    PluginDevice,
    build_container_response,
    build_devices,
    build_inventory,
    check_device_id_strategy,
    layout_resources,
    parse_device_list_strategy,
    prefer_devices,
)
from cdmo.node_agent.deviceplugin.health import (
    XidMarks,
    apply_marks,
    mark_xid,
    parse_disable_healthchecks,
    xid_targets,
)

log = structlog.get_logger("cdmo.node_agent.deviceplugin")

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
DEFAULT_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
#: A unix socket path is at most 107 bytes (sun_path); the longest endpoint name we make is
#: about 30 ("cdmo-mig-1g.10gb.me.all.sock").
_MAX_DIR_LEN = 70


def endpoint_name(resource: str) -> str:
    """``nvidia.com/mig-1g.10gb`` -> ``cdmo-mig-1g.10gb.sock`` (NVIDIA's plugin uses ``nvidia-``)."""
    return "cdmo-" + resource.split("/", 1)[-1] + ".sock"


@dataclass(frozen=True)
class PluginSettings:
    plugin_dir: str = DEFAULT_PLUGIN_DIR
    #: envvar | volume-mounts | cdi-annotations, comma-separated
    device_list_strategy: str = "volume-mounts"
    #: uuid | index
    device_id_strategy: str = "uuid"
    cdi_kind: str = DEFAULT_CDI_KIND
    #: Offer GPUs with MIG off as nvidia.com/gpu.
    whole_gpus: bool = True
    #: How often NVML and kubelet.sock are looked at.
    poll_seconds: float = 0.5
    #: How long withdraw waits for the streams to send the new list.
    ack_timeout: float = 1.0
    register_timeout: float = 5.0
    #: After a failed Register, the next try waits this long, doubled on each failure up to
    #: ``register_backoff_max`` (NVIDIA's plugin retries after 30 s); a new kubelet.sock is
    #: tried at once.
    register_backoff: float = 0.5
    register_backoff_max: float = 30.0
    #: CDMO_DISABLE_HEALTHCHECKS (NVIDIA's DP_DISABLE_HEALTHCHECKS): "" watches every critical
    #: XID but the application ones; ``all`` or ``xids``: none; else XIDs to ignore too, "48,63".
    disable_healthchecks: str = ""
    #: One NVML event wait lasts at most this long (NVIDIA's plugin: 5 s); stop() waits for it.
    event_wait_seconds: float = 1.0
    #: After NVML failed to make the event set or to wait on it, it is made again after this
    #: long, doubled on each failure in a row up to ``event_backoff_max``.
    event_backoff: float = 1.0
    event_backoff_max: float = 60.0


def _socket_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_ctime_ns)


class _Endpoint:
    """One resource's gRPC server on its socket."""

    def __init__(self, plugin: KubeletDevicePlugin, resource: str, path: Path) -> None:
        self.resource = resource
        self.path = path
        self.server: grpc.Server | None = None
        self.registered_with: tuple[int, int] | None = None
        #: the kubelet the last Register failed with, how often in a row, and when to try again
        self.failed_with: tuple[int, int] | None = None
        self.failures = 0
        self.retry_at = 0.0
        self.plugin = plugin

    def serve(self) -> None:
        self.stop()
        self.path.unlink(missing_ok=True)
        # Every open ListAndWatch stream holds a worker thread; the kubelet opens one.
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="cdmo-dp"))
        api_pb2_grpc.add_DevicePluginServicer_to_server(_Servicer(self.plugin, self.resource), server)
        server.add_insecure_port(f"unix:{self.path}")
        server.start()
        self.server = server
        self.registered_with = None
        self.failed_with = None  # a new endpoint is registered at once

    def serving(self) -> bool:
        return self.server is not None and self.path.exists()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=None)
            self.server = None
        self.registered_with = None


class _Servicer(api_pb2_grpc.DevicePluginServicer):
    def __init__(self, plugin: KubeletDevicePlugin, resource: str) -> None:
        self.plugin = plugin
        self.resource = resource

    def GetDevicePluginOptions(self, request: Any, context: Any) -> Any:
        return api_pb2.DevicePluginOptions(get_preferred_allocation_available=True)

    def ListAndWatch(self, request: Any, context: Any) -> Iterator[Any]:
        return self.plugin._stream(self.resource, context)

    def GetPreferredAllocation(self, request: Any, context: Any) -> Any:
        answers = [
            api_pb2.ContainerPreferredAllocationResponse(
                deviceIDs=self.plugin.preferred(
                    self.resource,
                    list(r.available_deviceIDs),
                    list(r.must_include_deviceIDs),
                    r.allocation_size,
                )
            )
            for r in request.container_requests
        ]
        return api_pb2.PreferredAllocationResponse(container_responses=answers)

    def Allocate(self, request: Any, context: Any) -> Any:
        responses = []
        for req in request.container_requests:
            try:
                devices = self.plugin.allocate(self.resource, list(req.devices_ids))
            except CdmoError as exc:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            answer = self.plugin.container_response(devices)
            responses.append(
                api_pb2.ContainerAllocateResponse(
                    envs=dict(answer.envs),
                    mounts=[
                        api_pb2.Mount(container_path=c, host_path=h, read_only=ro)
                        for c, h, ro in answer.mounts
                    ],
                    annotations=dict(answer.annotations),
                )
            )
        return api_pb2.AllocateResponse(container_responses=responses)

    def PreStartContainer(self, request: Any, context: Any) -> Any:
        return api_pb2.PreStartContainerResponse()


class KubeletDevicePlugin:
    """The built-in device plugin (see the module docstring). ``start()``, then ``stop()``."""

    strategy = "builtin"

    def __init__(
        self,
        backend: GpuBackend,
        settings: PluginSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        observe_xid: Callable[[XidEvent, bool], None] | None = None,
    ) -> None:
        self.backend = backend
        self.settings = settings or PluginSettings()
        #: Told of every critical XID and whether it marked devices (the agent's metrics).
        self._observe_xid = observe_xid
        self.list_strategies = parse_device_list_strategy(self.settings.device_list_strategy)
        self.id_strategy = check_device_id_strategy(self.settings.device_id_strategy)
        self.xid_policy = parse_disable_healthchecks(self.settings.disable_healthchecks)
        self.dir = Path(self.settings.plugin_dir)
        if len(str(self.dir.absolute())) > _MAX_DIR_LEN:
            raise InvalidInput(
                f"device-plugins directory {self.dir} is too long for unix sockets",
                hint=f"use a directory path of at most {_MAX_DIR_LEN} characters",
            )
        self._cond = threading.Condition(threading.RLock())
        self._devices: tuple[PluginDevice, ...] = ()
        self._withdrawn: set[str] = set()
        self._clock = clock
        #: device id -> when Allocate handed it to the kubelet (the last HANDED_OUT_GRACE_SECONDS)
        self._handed: dict[str, float] = {}
        self._resources: set[str] = set()
        self._kept: frozenset[tuple[int, Instance]] = frozenset()
        self._mig_wanted: frozenset[int] = frozenset()
        self._lists: dict[str, tuple[PluginDevice, ...]] = {}
        self._versions: dict[str, int] = {}
        #: open streams: id -> (resource, last version sent)
        self._streams: dict[int, tuple[str, int]] = {}
        self._next_stream = 0
        self._endpoints: dict[str, _Endpoint] = {}
        self._kubelet_id: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._io = threading.Lock()  # one NVML read + publish at a time
        self._warned_nvidia = False
        self._started = False
        self._ticking = threading.Lock()
        #: What critical XID errors marked Unhealthy (for the agent's life), and the watch
        self._marks = XidMarks()
        self._watched: frozenset[int] = frozenset()
        self._xid_thread: threading.Thread | None = None

    # --- the DeviceAdvertiser contract ---------------------------------------------------------

    def withdraw(self, uuids: Collection[str]) -> frozenset[str]:
        """Stop offering ``uuids`` and refuse them in Allocate; return once the streams sent it,
        with those of them handed to the kubelet in the last HANDED_OUT_GRACE_SECONDS."""
        wanted = set(uuids)
        if not wanted:
            return frozenset()
        with self._cond:
            self._withdrawn |= wanted
            changed = self._publish()
            targets = {r: self._versions[r] for r in changed}
            since = self._clock() - HANDED_OUT_GRACE_SECONDS
            handed = frozenset(u for u in wanted if self._handed.get(u, since) > since)
        log.info("Withdrew devices", uuids=sorted(wanted), resources=sorted(changed), handed=sorted(handed))
        self._wait_sent(targets)
        return handed

    def refresh(self) -> None:
        """Read the GPUs again and offer exactly what they hold (withdrawn devices included)."""
        with self._io:
            devices, unreadable = self._read()
            with self._cond:
                self._withdrawn.clear()
                self._set_devices(devices, unreadable)
                self._publish()
        if self._started:
            self._tick_now()  # a new resource is served and registered now, not on the next tick

    # --- what the agent tells it ---------------------------------------------------------------

    def set_desired(self, desired: Mapping[int, Sequence[Instance]]) -> None:
        """The current plan: its resources are registered, its instances preferred."""
        with self._cond:
            self._kept = frozenset((int(g), i) for g, layout in desired.items() for i in layout)
            self._mig_wanted = frozenset(int(g) for g, layout in desired.items() if layout)
            self._resources |= layout_resources(desired)
            self._publish()
        if self._started:
            self._tick_now()

    def registration(self) -> tuple[bool, str]:
        """(every resource registered with the current kubelet, a sentence saying so)."""
        kubelet = _socket_id(self.dir / KUBELET_SOCKET)
        if kubelet is None:
            return (
                False,
                f"no kubelet socket in {self.dir}: the agent's device plugin cannot register; "
                "mount the kubelet's device-plugins directory (agent.devicePluginDir)",
            )
        with self._cond:
            resources = sorted(self._lists)
        missing = [
            r for r in resources if (ep := self._endpoints.get(r)) is None or ep.registered_with != kubelet
        ]
        if missing:
            return False, "not registered with the kubelet yet: " + ", ".join(missing)
        return True, f"the agent's device plugin advertises {len(resources)} resources to the kubelet"

    def settle(self) -> None:
        return None  # the lists were sent during the pass: nothing waits on the kubelet here

    def unhealthy(self) -> Unhealthy:
        """What critical XIDs marked (see ``on_xid``), for the agent's status."""
        with self._cond:
            return Unhealthy(self._marks.gpus, self._marks.devices)

    def advertised(self) -> dict[str, list[str]] | None:
        """resource -> device IDs listed now (for the status document)."""
        with self._cond:
            return {r: [d.id for d in devs] for r, devs in self._lists.items()}

    @property
    def watched_gpus(self) -> frozenset[int]:
        """The GPUs whose critical XID errors the plugin receives now."""
        with self._cond:
            return self._watched

    # --- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Watch XID errors, read the GPUs, serve every resource, register with the kubelet."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInput(
                f"cannot use the device-plugins directory {self.dir}: {exc.strerror or exc}",
                hint="mount the kubelet's device-plugins directory or pass --device-plugin-dir",
            ) from None
        self._started = True
        if self.id_strategy == "index":
            # The toolkit resolves <gpu>:<i> when the container starts (and again when it
            # restarts, from the kubelet's kept answer); the agent creates and destroys instances
            # meanwhile, which may renumber NVML's MIG devices. A UUID never moves.
            log.warning(
                "Device ids are MIG device indexes, which move as the agent creates and destroys "
                "instances; prefer --device-id-strategy uuid (CDMO_DEVICE_ID_STRATEGY=uuid)"
            )
        if self.xid_policy.watch:
            # Registered before the first read, as NVIDIA's plugin does before it serves: an XID
            # from then on is not lost (NVML keeps none from before the registration).
            watch = self._open_watch()
            self._xid_thread = threading.Thread(
                target=self._watch_xids, args=(watch,), name="cdmo-xid-watch", daemon=True
            )
            self._xid_thread.start()
        else:
            log.info("Skipped watching XID errors: health checks are disabled")
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="cdmo-device-plugin", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._xid_thread is not None:  # its wait ends within event_wait_seconds
            self._xid_thread.join(timeout=self.settings.event_wait_seconds + 5)
        for ep in self._endpoints.values():
            ep.stop()
            ep.path.unlink(missing_ok=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.poll_seconds):
            try:
                self._poll()
                self._tick()
            except Exception as exc:  # the thread's edge: log and look again next tick
                log.warning("Failed device plugin pass", error=str(exc))

    def _poll(self) -> None:
        """Re-read NVML (changes made outside the agent, health) and send what changed."""
        with self._io:
            devices, unreadable = self._read()
            with self._cond:
                self._set_devices(devices, unreadable)
                self._publish()

    # --- critical XID errors -------------------------------------------------------------------

    def _open_watch(self) -> XidWatch | None:
        try:
            watch = self.backend.watch_xid_events()
        except Exception as exc:  # the watch's edge: NVML reads still give health meanwhile
            log.warning("Failed to watch XID errors; will retry", error=str(exc))
            return None
        with self._cond:
            self._watched = watch.gpus
        log.info(
            "Watching GPUs for XID errors",
            gpus=sorted(watch.gpus),
            ignored_xids=sorted(self.xid_policy.ignored),
        )
        return watch

    def _watch_xids(self, watch: XidWatch | None) -> None:
        """The XID thread: bounded waits, so that stop() is prompt; a failed watch is made again
        with a backoff (events meanwhile are lost: NVML records none for a set not registered)."""
        failures = 0 if watch is not None else 1
        while not self._stop.is_set():
            if watch is None:
                delay = doubling_delay(
                    self.settings.event_backoff, failures - 1, self.settings.event_backoff_max
                )
                if self._stop.wait(delay):
                    break
                watch = self._open_watch()
                if watch is None:
                    failures += 1
                    continue
            try:
                event = watch.wait(self.settings.event_wait_seconds)
            except Exception as exc:  # the thread's edge
                log.warning("Failed to wait for XID errors; will watch again", error=str(exc))
                watch.close()
                watch = None
                with self._cond:
                    self._watched = frozenset()
                failures += 1
                continue
            failures = 0
            if event is not None and not self._stop.is_set():
                try:
                    self.on_xid(event)
                except Exception as exc:  # the thread's edge: the next event is handled alike
                    log.warning("Failed to handle XID error", xid=event.xid, gpu=event.gpu, error=str(exc))
        if watch is not None:
            watch.close()

    def on_xid(self, event: XidEvent) -> None:
        """Mark what a critical XID names Unhealthy (unless the policy ignores it) and send the
        lists at once. The GPUs are read again first, so that an instance made since the last
        poll is found by its GI and CI ids."""
        fields = {"gpu": event.gpu, "xid": event.xid, "gi_id": event.gi_id, "ci_id": event.ci_id}
        if self.xid_policy.ignores(event.xid):
            log.info("Ignored XID error", **fields)
            if self._observe_xid is not None:
                self._observe_xid(event, False)
            return
        with self._io:
            devices, unreadable = self._read()
            with self._cond:
                self._marks = mark_xid(self._marks, event, devices, self.xid_policy)
                self._set_devices(devices, unreadable)
                changed = self._publish()
        if self._observe_xid is not None:
            self._observe_xid(event, True)
        log.warning(
            "Marked devices unhealthy after XID error",
            **fields,
            scope=event.scope,
            uuids=sorted(xid_targets(event, devices)),
            resources=sorted(changed),
        )

    def _tick_now(self) -> None:
        """A tick from a reconcile pass: a failure here must not fail the pass (the background
        thread tries again within ``poll_seconds``)."""
        try:
            self._tick()
        except Exception as exc:  # the pass's edge: serving or registering is retried by the thread
            log.warning("Failed to serve or register device plugin; will retry", error=str(exc))

    def _tick(self) -> None:
        """Serve every resource; register endpoints the current kubelet does not know."""
        with self._ticking:  # the background thread and a reconcile pass may both get here
            self._tick_locked()

    def _tick_locked(self) -> None:
        self._ensure_endpoints()
        self._check_nvidia_plugin()
        kubelet = _socket_id(self.dir / KUBELET_SOCKET)
        if kubelet != self._kubelet_id:
            if kubelet is not None:
                log.info("Found kubelet socket", path=str(self.dir / KUBELET_SOCKET))
            self._kubelet_id = kubelet
        if kubelet is None:
            return
        for ep in list(self._endpoints.values()):
            if ep.registered_with == kubelet:
                continue
            now = self._clock()
            if ep.failed_with == kubelet and now < ep.retry_at:
                continue  # backing off: the same kubelet refused it a moment ago
            try:
                self._register(ep)
            except grpc.RpcError as exc:
                ep.failures = ep.failures + 1 if ep.failed_with == kubelet else 1
                ep.failed_with = kubelet
                delay = doubling_delay(
                    self.settings.register_backoff, ep.failures - 1, self.settings.register_backoff_max
                )
                ep.retry_at = now + delay
                log.warning(
                    "Failed to register with kubelet",
                    resource=ep.resource,
                    error=str(exc),
                    retry_in=delay,
                )
            else:
                ep.registered_with = kubelet
                ep.failed_with = None
                ep.failures = 0

    def nvidia_sockets(self) -> list[str]:
        """Sockets of NVIDIA's device plugin in the directory: it should be off on this node."""
        return sorted(p.name for p in self.dir.glob("nvidia-*.sock"))

    def _check_nvidia_plugin(self) -> None:
        found = self.nvidia_sockets()
        if found and not self._warned_nvidia:
            log.warning(
                "Found NVIDIA's device plugin on this node; it registers the same resources: label the node "
                "nvidia.com/gpu.deploy.device-plugin=false, or use an external refresh strategy",
                sockets=found,
            )
        self._warned_nvidia = bool(found)

    def _ensure_endpoints(self) -> None:
        with self._cond:
            resources = sorted(self._lists)
        for resource in resources:
            if self._stop.is_set():
                return
            ep = self._endpoints.get(resource)
            if ep is None:
                ep = self._endpoints[resource] = _Endpoint(self, resource, self.dir / endpoint_name(resource))
            if not ep.serving():
                # New, or the kubelet removed our socket when it restarted.
                ep.serve()
                log.info("Serving device plugin", resource=resource, socket=str(ep.path))

    def _register(self, ep: _Endpoint) -> None:
        """One Register call; a failure is retried by ``_tick`` with a backoff, so that a kubelet
        that refuses or hangs does not hold up every reconcile pass for ``register_timeout``."""
        with grpc.insecure_channel(f"unix:{self.dir / KUBELET_SOCKET}") as channel:
            api_pb2_grpc.RegistrationStub(channel).Register(
                api_pb2.RegisterRequest(
                    version=API_VERSION,
                    endpoint=ep.path.name,
                    resource_name=ep.resource,
                    options=api_pb2.DevicePluginOptions(get_preferred_allocation_available=True),
                ),
                timeout=self.settings.register_timeout,
            )
        log.info("Registered device plugin with kubelet", resource=ep.resource, endpoint=ep.path.name)

    # --- reading and publishing ----------------------------------------------------------------

    def _read(self) -> tuple[tuple[PluginDevice, ...], set[int]]:
        with self._cond:
            previous = self._devices
        try:
            gpus = self.backend.list_gpus()
        except CdmoError as exc:
            log.warning("Marked every device unhealthy: NVML failed", error=str(exc))
            return tuple(sorted(dataclasses.replace(d, healthy=False) for d in previous)), set()
        instances: dict[int, Sequence[GpuInstanceInfo]] = {}
        unreadable: set[int] = set()
        for info in gpus:
            if not info.mig_current:
                continue
            try:
                instances[info.index] = self.backend.list_instances(info.index)
            except CdmoError as exc:
                unreadable.add(info.index)
                log.warning("Marked GPU's devices unhealthy: NVML failed", gpu=info.index, error=str(exc))
        with self._cond:
            mig_wanted = self._mig_wanted
        devices = build_devices(
            gpus,
            instances,
            unreadable=unreadable,
            previous=previous,
            whole_gpus=self.settings.whole_gpus,
            mig_wanted=mig_wanted,
        )
        return devices, unreadable

    def _set_devices(self, devices: tuple[PluginDevice, ...], unreadable: set[int]) -> None:
        self._devices = apply_marks(devices, self._marks)
        self._resources |= {d.resource for d in devices}

    def _publish(self) -> set[str]:
        """Recompute the lists (lock held); bump the version of each one that changed."""
        lists = build_inventory(self._devices, self._withdrawn, self._resources)
        changed = {r for r, devs in lists.items() if self._lists.get(r) != devs}
        for r in changed:
            self._versions[r] = self._versions.get(r, 0) + 1
        self._lists = lists
        if changed:
            self._cond.notify_all()
        return changed

    def _wait_sent(self, targets: Mapping[str, int]) -> None:
        deadline = time.monotonic() + self.settings.ack_timeout
        with self._cond:
            while True:
                behind = [(r, v) for r, v in self._streams.values() if r in targets and v < targets[r]]
                if not behind:
                    return
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    log.warning("Stream did not send withdrawn list in time", resources=sorted(targets))
                    return
                self._cond.wait(left)

    def _stream(self, resource: str, context: Any) -> Iterator[Any]:
        with self._cond:
            self._next_stream += 1
            sid = self._next_stream
            self._streams[sid] = (resource, 0)
        sent = 0
        try:
            while not self._stop.is_set() and context.is_active():
                with self._cond:
                    while self._versions.get(resource, 0) == sent and not self._stop.is_set():
                        self._cond.wait(0.5)
                        if not context.is_active():
                            return
                    version = self._versions.get(resource, 0)
                    devices = self._lists.get(resource, ())
                if self._stop.is_set():
                    return
                yield api_pb2.ListAndWatchResponse(devices=[_device(d) for d in devices])
                # grpc asks for the next message only once this one went out.
                sent = version
                with self._cond:
                    self._streams[sid] = (resource, sent)
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._streams.pop(sid, None)
                self._cond.notify_all()

    # --- answers -------------------------------------------------------------------------------

    def preferred(self, resource: str, available: list[str], must: list[str], size: int) -> list[str]:
        with self._cond:
            devices = {d.id: d for d in self._lists.get(resource, ())}
            return list(prefer_devices(available, must, size, devices, self._kept, self._withdrawn))

    def allocate(self, resource: str, ids: list[str]) -> list[PluginDevice]:
        """The devices for one container; raises CdmoError for a withdrawn or unknown one."""
        with self._cond:
            listed = {d.id: d for d in self._lists.get(resource, ())}
            out = []
            for dev_id in ids:
                if dev_id in self._withdrawn:
                    log.warning("Refused withdrawn device", resource=resource, uuid=dev_id)
                    raise CdmoError(
                        f"{resource} device {dev_id} is being withdrawn (its MIG instance is about to go)"
                    )
                if dev_id not in listed:
                    raise CdmoError(f"{resource} has no device {dev_id}")
                out.append(listed[dev_id])
            now = self._clock()
            for gone in [u for u, at in self._handed.items() if at <= now - HANDED_OUT_GRACE_SECONDS]:
                del self._handed[gone]  # bounded: only the grace's devices stay
            for dev in out:
                self._handed[dev.id] = now
        log.info("Allocated devices", resource=resource, uuids=ids)
        return out

    def container_response(self, devices: Sequence[PluginDevice]) -> Any:
        if self.id_strategy == "index":
            unnumbered = sorted(d.id for d in devices if d.index is None)
            if unnumbered:
                log.warning(
                    "Named devices by UUID under the index strategy: NVML gave no MIG device index",
                    uuids=unnumbered,
                )
        return build_container_response(
            devices, self.list_strategies, self.id_strategy, self.settings.cdi_kind
        )


def _device(d: PluginDevice) -> Any:
    """A device as ListAndWatch lists it: with its GPU's NUMA node where known, as NVIDIA's
    plugin does, so that the kubelet's Topology Manager can align it with CPUs and memory."""
    if d.numa is None:
        return api_pb2.Device(ID=d.id, health=d.health)
    return api_pb2.Device(
        ID=d.id, health=d.health, topology=api_pb2.TopologyInfo(nodes=[api_pb2.NUMANode(ID=d.numa)])
    )
