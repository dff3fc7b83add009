"""The node agent's loop: watch its own MigLayout, reconcile, refresh the device plugin, write status.

Level-triggered: every pass reads the MigLayout and the GPUs afresh and compares desired with
actual, whatever woke it (a watch event with a new generation, the 60 s resync, a backoff
after a failed or blocked pass, the start after a crash or a reboot). The status the agent
writes itself does not wake it (same generation).

:meth:`Agent.run` blocks until ``stop`` is set; run it in a thread (the e2e harness runs one
agent per simulated node in one process). It starts one daemon thread for the watch; every
wait is on ``stop`` or on the wake event, so setting ``stop`` ends ``run`` within one NVML or
API call (the watch's HTTP read is cut with :meth:`KubeClient.interrupt`).
"""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from cdmo.api import parse_spec
from cdmo.config import AgentConfig
from cdmo.errors import CdmoError, Fatal, InvalidLayout
from cdmo.mig.layouts import Instance
from cdmo.node_agent.advertise import AgentAdvertiser, NoAdvertiser
from cdmo.node_agent.backend import DEFAULT_RETRY, GpuBackend, NoPermission, RetryPolicy
from cdmo.node_agent.backoff import doubling_delay
from cdmo.node_agent.inuse import InUse, build_bound_pods, build_in_use
from cdmo.node_agent.kube import WatchExpired
from cdmo.node_agent.metrics import AgentMetrics
from cdmo.node_agent.podresources.client import (
    AllocatableDevices,
    PodDevices,
    PodResourcesClient,
    PodResourcesUnavailable,
)
from cdmo.node_agent.reconcile import ReconcileResult, reconcile_node
from cdmo.node_agent.refresh import Refresher
from cdmo.node_agent.status import (
    MIG_MODE_RESTORED,
    build_error_status,
    build_status,
    managed_gpus,
    mig_restored_message,
    needs_refresh,
)

_log = structlog.get_logger("cdmo.node_agent.agent")


class AgentKube(Protocol):
    """The Kubernetes calls the agent makes (KubeClient implements it; tests use a fake)."""

    def read_miglayout(self, name: str) -> tuple[dict[str, Any] | None, str | None]: ...

    def watch_miglayout(
        self, name: str, *, resource_version: str | None, timeout_seconds: float
    ) -> Iterator[tuple[str, dict[str, Any]]]: ...

    def interrupt(self) -> None: ...

    def patch_miglayout_status(self, name: str, status: dict[str, Any]) -> None: ...

    def list_node_pods(self, node: str) -> list[dict[str, Any]]: ...

    def create_miglayout_event(
        self, layout: dict[str, Any], *, reason: str, message: str, event_type: str = "Normal"
    ) -> None: ...


class PodDevicesSource(Protocol):
    """Who holds which device: PodResourcesClient, or a stand-in in a harness."""

    def available(self) -> bool: ...

    def list(self) -> list[PodDevices]: ...

    def allocatable(self) -> builtins.list[AllocatableDevices]: ...


@dataclass(frozen=True)
class PassOutcome:
    """What one pass did: ``settled`` means wait for the resync, else back off and try again."""

    settled: bool
    status: dict[str, Any] | None
    result: ReconcileResult | None = None


def agent_pass(
    config: AgentConfig,
    backend: GpuBackend,
    desired: Mapping[int, Sequence[Instance]],
    read_in_use: Callable[[], InUse],
    previous: Mapping[str, Any] | None,
    *,
    retry: RetryPolicy,
    log: Any,
    advertiser: AgentAdvertiser,
) -> ReconcileResult:
    """One reconcile pass as both agents (cluster and standalone) run it: MIG switched on by
    ``--enable-mig``, or back on for GPUs the last status (``previous``) showed cdmo managed."""
    return reconcile_node(
        backend,
        desired,
        read_in_use,
        enable_mig=config.enable_mig,
        restore_mig=managed_gpus(previous) if config.auto_enable_mig else (),
        retry=retry,
        log=log,
        advertiser=advertiser,
        withheld=advertiser.unhealthy().uuids,
    )


def backoff_delay(config: AgentConfig, failures: int) -> float:
    """Seconds to the next pass: the resync period, or after failures a doubling backoff up to it."""
    if failures == 0:
        return config.resync_seconds
    return doubling_delay(config.backoff_initial_seconds, failures - 1, config.resync_seconds)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Agent:
    """The agent of one node: ``Agent(config, backend, kube, refresher).run(stop)``."""

    def __init__(
        self,
        config: AgentConfig,
        backend: GpuBackend,
        kube: AgentKube,
        refresher: Refresher,
        *,
        pod_resources: PodDevicesSource | None = None,
        metrics: AgentMetrics | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        clock: Callable[[], datetime] = _utcnow,
        advertiser: AgentAdvertiser | None = None,
    ) -> None:
        if not config.node_name:
            raise CdmoError(
                "the agent needs its node's name", hint="set NODE_NAME (the downward API's spec.nodeName)"
            )
        self.config = config
        self.node = config.node_name
        self.backend = backend
        self.kube = kube
        self.refresher = refresher
        #: The agent's own device plugin (builtin mode); NoAdvertiser in the external modes.
        self.advertiser = advertiser if advertiser is not None else NoAdvertiser()
        self.pod_resources = (
            pod_resources if pod_resources is not None else PodResourcesClient(config.pod_resources_socket)
        )
        self.metrics = metrics if metrics is not None else AgentMetrics()
        self.retry = retry
        self.clock = clock
        self.log = _log.bind(node=self.node)
        self._wake = threading.Event()
        self._done = threading.Event()
        self._generation: int | None = None
        self._resource_version: str | None = None
        self._warned_no_pod_resources = False
        self.passes = 0
        #: time.monotonic() when the loop last began or ended a pass (liveness)
        self._beat = time.monotonic()

    # --- in use ------------------------------------------------------------------------------

    def read_in_use(self) -> InUse:
        """Pod-resources + pods bound to this node (NVML processes are added by reconcile)."""
        bound = build_bound_pods(self.kube.list_node_pods(self.node))
        pod_devices: list[PodDevices] | None = None
        allocatable: list[AllocatableDevices] | None = None
        if self.pod_resources.available():
            pod_devices = self.pod_resources.list()
            # Only a bound pod asking a resource that names no profile needs the kubelet's pools.
            if any(p.others for p in bound):
                try:
                    allocatable = self.pod_resources.allocatable()
                except PodResourcesUnavailable as exc:
                    self.log.debug("Skipped GetAllocatableResources", error=str(exc))
        elif not self._warned_no_pod_resources:
            self._warned_no_pod_resources = True
            self.log.warning(
                "Pod-resources socket not found; every instance of a profile that a bound pod asks for is kept",
                socket=self.config.pod_resources_socket,
            )
        return build_in_use(pod_devices, bound, allocatable=allocatable)

    # --- one pass ----------------------------------------------------------------------------

    def sync_once(self, stop: threading.Event | None = None) -> PassOutcome:
        """Read the MigLayout, reconcile the GPUs, refresh the device plugin if needed, write status."""
        stop = stop or threading.Event()
        self.passes += 1
        obj, rv = self.kube.read_miglayout(self.node)
        self._resource_version = rv
        if obj is None:
            self._generation = None
            self.log.debug("No MigLayout for this node; nothing to do")
            return PassOutcome(True, None)
        generation = (obj.get("metadata") or {}).get("generation")
        self._generation = generation
        previous = obj.get("status") or {}
        log = self.log.bind(generation=generation)

        try:
            desired = parse_spec(obj.get("spec"))
        except InvalidLayout as exc:
            status = build_error_status(
                generation=generation,
                reason="InvalidSpec",
                message=f"MigLayout {self.node}: {exc}",
                now=self.clock(),
                previous=previous,
            )
            self._write(status, previous)
            self.metrics.observe_failure("InvalidSpec")
            log.warning("Refused MigLayout spec", error=str(exc))
            return PassOutcome(True, status)

        started = time.monotonic()
        self.advertiser.set_desired(desired)  # the plan's resources registered, its instances preferred
        try:
            result = agent_pass(
                self.config,
                self.backend,
                desired,
                self.read_in_use,
                previous,
                retry=self.retry,
                log=log,
                advertiser=self.advertiser,
            )
        except Fatal as exc:
            status = build_error_status(
                generation=generation,
                reason="PermissionDenied" if isinstance(exc, NoPermission) else "Fatal",
                message=str(exc),
                now=self.clock(),
                previous=previous,
            )
            self._write(status, previous)
            self.metrics.observe_failure("Fatal")
            raise
        except CdmoError as exc:
            # The pass could not decide (NVML unreadable after its retries, a GPU lost before the
            # pass, the kubelet's pod-resources away): the status says so, or it would go on
            # saying Ready while nothing on the node is looked after. The loop backs off and tries
            # again; the next pass that runs writes the whole status anew.
            status = build_error_status(
                generation=generation,
                reason=type(exc).__name__,
                message=f"a reconcile pass failed and is tried again: {exc}",
                now=self.clock(),
                previous=previous,
            )
            self._write(status, previous)
            raise

        refresh = None
        if needs_refresh(result, previous):
            refresh = self.refresher.refresh(stop)
            self.metrics.observe_refresh(self.refresher.strategy, refresh)
            log.info(
                "Refreshed device plugin" if refresh.ok else "Failed to refresh device plugin",
                strategy=self.refresher.strategy,
                reason=refresh.reason,
            )

        if refresh is None or refresh.ok:
            self.advertiser.settle()  # external modes: lift the reconfiguring taint

        status = build_status(
            result,
            generation=generation,
            now=self.clock(),
            previous=previous,
            refresh=refresh,
            unhealthy=self.advertiser.unhealthy(),
        )
        self._write(status, previous)
        if result.mig_restored:
            self._announce_mig_restored(obj, result, log)
        self.metrics.observe_pass(result, time.monotonic() - started)
        if result.changed:
            log.info(
                "Reconciled MigLayout",
                phase=status["phase"],
                created=len(result.created),
                destroyed=len(result.destroyed),
            )
        else:
            log.debug("Reconciled MigLayout", phase=status["phase"])
        return PassOutcome(result.settled and (refresh is None or refresh.ok), status, result)

    def _announce_mig_restored(self, obj: dict[str, Any], result: ReconcileResult, log: Any) -> None:
        message = mig_restored_message(result)
        try:
            self.kube.create_miglayout_event(obj, reason=MIG_MODE_RESTORED, message=message)
        except CdmoError as exc:  # the condition says it too; an Event lost is not worth a retry
            log.warning("Failed to create Event", reason=MIG_MODE_RESTORED, error=str(exc))

    def _write(self, status: dict[str, Any], previous: dict[str, Any]) -> None:
        if {k: v for k, v in status.items() if v is not None} == previous:
            return  # nothing new to say: skip the write (and the watch event it would cause)
        self.kube.patch_miglayout_status(self.node, status)

    # --- the loop ----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Reconcile until ``stop`` is set. Raises Fatal (no privileges) after writing the status."""
        watcher = threading.Thread(
            target=self._watch_loop, args=(stop,), name=f"cdmo-watch-{self.node}", daemon=True
        )
        relay = threading.Thread(
            target=self._relay_stop, args=(stop,), name=f"cdmo-stop-{self.node}", daemon=True
        )
        watcher.start()
        relay.start()
        self.log.info(
            "Started node agent", backend=type(self.backend).__name__, refresh=self.refresher.strategy
        )
        failures = 0
        try:
            while not stop.is_set():
                self._wake.clear()
                self._beat = time.monotonic()
                try:
                    settled = self.sync_once(stop).settled
                except Fatal as exc:
                    self.log.error("Stopped node agent: cannot go on", error=str(exc))
                    raise
                except CdmoError as exc:
                    self.metrics.observe_failure(type(exc).__name__)
                    self.log.warning("Failed reconcile pass", error=str(exc))
                    settled = False
                except Exception as exc:  # the loop's edge: log, back off, go on
                    self.metrics.observe_failure("Unexpected")
                    self.log.exception("Failed reconcile pass unexpectedly", error=str(exc))
                    settled = False
                failures = 0 if settled else failures + 1
                self._beat = time.monotonic()
                self._wake.wait(backoff_delay(self.config, failures))
        finally:
            self._done.set()
            self._wake.set()
            self.kube.interrupt()
            watcher.join(timeout=5)
            self.log.info("Stopped node agent")

    def stuck(self, now: float | None = None) -> str | None:
        """Why the agent should be restarted (GET /healthz), or None: the loop neither began nor
        ended a pass for longer than it ever waits (resync_seconds) plus ``liveness_seconds``,
        so a pass hangs (a wedged driver, a kubelet or API call that never returns)."""
        limit = self.config.liveness_seconds
        if limit <= 0:
            return None
        quiet = (time.monotonic() if now is None else now) - self._beat
        if quiet <= self.config.resync_seconds + limit:
            return None
        return f"no reconcile pass began or ended for {quiet:.0f} s; one seems stuck"

    def _relay_stop(self, stop: threading.Event) -> None:
        while not self._done.is_set():
            if stop.wait(1.0):
                self._wake.set()
                self.kube.interrupt()
                return

    def _watch_backoff(self, failures: int) -> float:
        """The MigLayout watch's wait after ``failures`` failed watches: at most 64 times the
        initial backoff, and never past the resync period."""
        return doubling_delay(
            self.config.backoff_initial_seconds, min(failures, 6), self.config.resync_seconds
        )

    def _watch_loop(self, stop: threading.Event) -> None:
        failures = 0
        while not stop.is_set() and not self._done.is_set():
            began = time.monotonic()
            try:
                for kind, obj in self.kube.watch_miglayout(
                    self.node,
                    resource_version=self._resource_version,
                    timeout_seconds=self.config.watch_timeout_seconds,
                ):
                    if stop.is_set() or self._done.is_set():
                        return
                    meta = obj.get("metadata") or {}
                    if meta.get("resourceVersion"):
                        self._resource_version = meta["resourceVersion"]
                    if kind == "BOOKMARK":
                        continue
                    if kind in ("ADDED", "DELETED") or meta.get("generation") != self._generation:
                        self.log.debug(
                            "Woke on MigLayout event", event_type=kind, generation=meta.get("generation")
                        )
                        self._wake.set()
                # A watch that the server ends at once (an API double without watches) must not spin.
                failures = 0 if time.monotonic() - began >= 1.0 else failures + 1
                if failures:
                    stop.wait(self._watch_backoff(failures))
            except WatchExpired:
                self._resource_version = None
                self._wake.set()  # read again; the pass stores a fresh resourceVersion
            except Exception as exc:  # the watch's edge: a dropped connection must not end the agent
                if stop.is_set():
                    return
                failures += 1
                self.log.debug("Watch of MigLayout ended", error=str(exc))
                stop.wait(self._watch_backoff(failures))
