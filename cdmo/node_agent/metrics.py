"""The node agent's Prometheus metrics, in a registry of its own (several agents may share a process).

- ``cdmo_agent_reconcile_duration_seconds`` (histogram): one pass, read to status write;
- ``cdmo_agent_instances_created_total`` / ``..._destroyed_total`` (counters, by profile);
- ``cdmo_agent_instances_repaired_total`` (counter, by profile): GPU instances that got their
  compute instance again (left half-made, or a GI destroy refused after its CI went);
- ``cdmo_agent_mig_mode_restored_total`` (counter): GPUs whose MIG mode the agent switched back
  on after a reboot or reset;
- ``cdmo_agent_failures_total`` (counter, by reason: NvmlError, InstanceInUse, Fatal, ...);
- ``cdmo_agent_blocked_gpus`` (gauge): GPUs blocked by an instance in use after the last pass;
- ``cdmo_agent_device_plugin_refreshes_total`` (counter, by strategy and result);
- ``cdmo_agent_xid_errors_total`` (counter, by xid and action: marked, the devices it names went
  Unhealthy; ignored, an application XID or one the settings ignore): critical XID errors the
  built-in device plugin received, to alert on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, make_wsgi_app

from cdmo.node_agent.backend import XidEvent
from cdmo.node_agent.reconcile import GpuState, ReconcileResult
from cdmo.node_agent.refresh import RefreshOutcome

_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.reconcile_seconds = Histogram(
            "cdmo_agent_reconcile_duration_seconds",
            "Duration of one reconcile pass",
            buckets=_BUCKETS,
            registry=r,
        )
        self.created = Counter(
            "cdmo_agent_instances_created", "MIG instances created", ["profile"], registry=r
        )
        self.destroyed = Counter(
            "cdmo_agent_instances_destroyed", "MIG instances destroyed", ["profile"], registry=r
        )
        self.repaired = Counter(
            "cdmo_agent_instances_repaired",
            "GPU instances given their compute instance again",
            ["profile"],
            registry=r,
        )
        self.mig_restored = Counter(
            "cdmo_agent_mig_mode_restored",
            "GPUs whose MIG mode was switched back on after a reboot or reset",
            registry=r,
        )
        self.failures = Counter(
            "cdmo_agent_failures", "Failed or refused reconcile work", ["reason"], registry=r
        )
        self.blocked_gpus = Gauge("cdmo_agent_blocked_gpus", "GPUs blocked by an instance in use", registry=r)
        self.refreshes = Counter(
            "cdmo_agent_device_plugin_refreshes",
            "Device plugin refreshes",
            ["strategy", "result"],
            registry=r,
        )

        self.xid_errors = Counter(
            "cdmo_agent_xid_errors",
            "Critical XID errors the device plugin received",
            ["xid", "action"],
            registry=r,
        )

    def observe_xid(self, event: XidEvent, marked: bool) -> None:
        self.xid_errors.labels(xid=str(event.xid), action="marked" if marked else "ignored").inc()

    def observe_pass(self, result: ReconcileResult, seconds: float) -> None:
        self.reconcile_seconds.observe(seconds)
        for inst in result.created:
            self.created.labels(profile=inst.profile).inc()
        for inst in result.destroyed:
            self.destroyed.labels(profile=inst.profile).inc()
        for inst in result.repaired:
            self.repaired.labels(profile=inst.profile).inc()
        if result.mig_restored:
            self.mig_restored.inc(len(result.mig_restored))
        for gpu in result.gpus:
            if gpu.state in (GpuState.FAILED, GpuState.BLOCKED, GpuState.REFUSED, GpuState.MIG_OFF):
                self.failures.labels(reason=str(gpu.reason)).inc()
        self.blocked_gpus.set(len(result.blocked))

    def observe_failure(self, reason: str) -> None:
        self.failures.labels(reason=reason).inc()

    def observe_refresh(self, strategy: str, outcome: RefreshOutcome) -> None:
        self.refreshes.labels(strategy=strategy, result="ok" if outcome.ok else outcome.reason).inc()

    def render(self) -> bytes:
        """The text exposition format, as the endpoint serves it."""
        return bytes(generate_latest(self.registry))

    def serve(
        self, port: int, addr: str = "0.0.0.0", health: Callable[[], str | None] = lambda: None
    ) -> WSGIServer:
        """Serve the metrics on ``port`` in a background thread, and GET /healthz: 200, or 503
        with what ``health`` says is wrong (the kubelet's liveness probe). Returns the server."""
        metrics = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == "/healthz":
                why = health()
                status = "200 OK" if why is None else "503 Service Unavailable"
                start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
                return [(why or "ok").encode()]
            return metrics(environ, start_response)  # type: ignore[no-any-return]

        server = make_server(addr, port, app, _ThreadingServer, handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, name="cdmo-metrics", daemon=True).start()
        return server


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """One thread per request (a slow scrape does not hold up the probe), as prometheus_client's
    own server does."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # every scrape and probe on stderr would drown the agent's own log
