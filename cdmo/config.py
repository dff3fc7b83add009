"""cdmo's knobs, in one place, fed by environment variables (the Helm chart sets them).

Each field names its variable; CLI flags override the environment where a verb offers them.
Pure: reads only the mapping it is given (``os.environ`` by default at the edge).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from cdmo.api import PARTITIONING_LABEL_KEY, PARTITIONING_LABEL_VALUE
from cdmo.errors import InvalidInput

#: The longest any seconds setting may be: about 31 years, the limit the simulator puts on any
#: time too (cdmo.sim.scenario.MAX_TIME_SECONDS). Far beyond any period cdmo waits, and far below
#: threading.TIMEOUT_MAX (about 9.2e9 s: a wait's end in nanoseconds must fit in 64 bits), above
#: which Event.wait raises OverflowError: CDMO_RESYNC_SECONDS=1e10 killed the agent's main loop.
#: The margin keeps sums of two settings (resync_seconds + liveness_seconds) below it as well.
MAX_SECONDS = 1e9
#: The most any count may be (pre-warmed instances per profile, GPU-instance operations per hour):
#: more than a cluster holds (Kubernetes supports up to 5,000 nodes; 8 GPUs of at most 7 instances
#: each make 280,000), and small enough that the chart renders it as a plain integer (10^30
#: rendered as -9223372036854775808, which the operator refused).
MAX_COUNT = 1_000_000
MAX_PORT = 65535


def _field_env(cls: type, name: str) -> str:
    return dict(cls.ENV)[name]  # type: ignore[attr-defined]


def _convert(raw: str, default: Any, env: str) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if isinstance(default, (int, float)) and (not raw.isascii() or "_" in raw):
            # int() and float() also read other scripts' digits ("٣" is 3) and Python's digit
            # groups ("1_0" is 10); a setting is written in 0-9, as Kubernetes writes numbers.
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise InvalidInput(
            f"environment variable {env}={raw!r} is not a valid {type(default).__name__}"
        ) from None
    return raw


def _from_env(cls: type, environ: Mapping[str, str] | None) -> Any:
    env = os.environ if environ is None else environ
    values = {}
    for f in fields(cls):
        var = _field_env(cls, f.name)
        if var in env:
            values[f.name] = _convert(env[var], f.default, var)
            _check(cls, f.name, values[f.name], f"environment variable {var}")
    return cls(**values)


def check_flag(config: Any, name: str, flag: str) -> None:
    """The check of :func:`_check` for a setting a command-line ``flag`` gave (flags override
    the environment, after ``from_env`` checked it)."""
    _check(type(config), name, getattr(config, name), flag)


def maximum(cls: type, name: str) -> int | float:
    """The largest value the number setting ``name`` of config class ``cls`` accepts.

    Ports: 65535; shares (SHARES): 1; a limit the class names (MAXIMA); else seconds (a float)
    MAX_SECONDS and counts (an int) MAX_COUNT. The chart's values.schema.json gives the same
    maximum for the value behind each variable (tests/chart/test_values_schema.py compares them).
    """
    return _limit(cls, name)[0]


def _limit(cls: type, name: str) -> tuple[int | float, str]:
    """:func:`maximum`, and what a refusal of a larger value says."""
    if name in getattr(cls, "PORTS", ()):
        return MAX_PORT, f"is not a TCP port (0 to {MAX_PORT})"
    if name in getattr(cls, "SHARES", ()):
        return 1, "is a share: between 0 and 1"
    named: dict[str, int | float] = dict(getattr(cls, "MAXIMA", ()))
    if name in named:
        return named[name], f"is more than the limit of {named[name]:,}: give a smaller number"
    if isinstance(next(f.default for f in fields(cls) if f.name == name), float):
        return MAX_SECONDS, f"is more than {MAX_SECONDS:g} seconds (about 31 years): give a shorter time"
    return MAX_COUNT, f"is more than the limit of {MAX_COUNT:,}: give a smaller number"


def minimum(cls: type, name: str) -> tuple[float, bool]:
    """The smallest value the number setting ``name`` of ``cls`` accepts, and whether that value
    itself is refused (an exclusive bound: above zero)."""
    if name in getattr(cls, "AT_LEAST_ONE", ()):
        return 1, False
    return 0, name in getattr(cls, "POSITIVE", ())


def _check(cls: type, name: str, value: Any, source: str) -> None:
    """Refuse a number no component can run with: ``inf``, ``nan`` and ``-1`` are floats, and
    went on to fail deep inside kopf (a traceback retried every minute) or to make a loop spin;
    ``1e10`` seconds overflowed a thread's wait and killed the agent's loop. Every number here is
    a count, a port, a share or seconds: finite, not negative and at most :func:`maximum`; the
    class names those that must be above zero (POSITIVE), shares of a whole (SHARES) and ports
    (PORTS)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    said = f"{source}={value!r}"
    if not math.isfinite(value):
        raise InvalidInput(f"{said} is not a finite number")
    if value < 0:
        raise InvalidInput(f"{said} must not be negative")
    if name in getattr(cls, "POSITIVE", ()) and value <= 0:
        raise InvalidInput(f"{said} must be above zero")
    if name in getattr(cls, "AT_LEAST_ONE", ()) and value < 1:
        raise InvalidInput(f"{said} is whole seconds: at least 1")
    top, refusal = _limit(cls, name)
    if value > top:
        raise InvalidInput(f"{said} {refusal}")


@dataclass(frozen=True)
class OperatorConfig:
    """Knobs of ``cdmo operator``."""

    partition_label: str = f"{PARTITIONING_LABEL_KEY}={PARTITIONING_LABEL_VALUE}"
    #: Plan after demand has been quiet this long ...
    batch_idle_seconds: float = 5.0
    #: ... or at the latest this long after the first change.
    batch_max_seconds: float = 30.0
    #: A node whose agent has not observed its spec for this long is marked Stale.
    stale_timeout_seconds: float = 180.0
    #: Pods pending this long without PodScheduled=False/Unschedulable count too (batch schedulers).
    pending_grace_seconds: float = 60.0
    metrics_port: int = 8080
    health_port: int = 8081
    #: The planning loop also wakes this often without any change (pending grace, Stale timeout).
    resync_seconds: float = 15.0
    #: Watch requests: the API server ends each after this long, the client gives up a bit later.
    #: Below kube-apiserver's own 30-60 min so that a silently dropped connection is noticed.
    watch_server_timeout: float = 300.0
    watch_client_timeout: float = 330.0
    watch_connect_timeout: float = 10.0
    #: kopf peering object for HA (two replicas, one active); the chart creates it.
    peering_name: str = "cdmo"
    #: Where kopf posts the Events of cluster-scoped objects (MigLayouts); empty: kopf's own
    #: default ("default"). The chart sets the operator's namespace.
    events_namespace: str = ""
    #: Initial lists come in pages of this many objects (limit/continue), so that a cluster of
    #: 50,000 pods never sits in the operator's memory as one response. 0: one response.
    list_chunk_size: int = 500
    #: The API server lets only a node's own agent write its MigLayout status (the chart's
    #: admission policy, enforced). When false, a report contradicting the spec is ignored.
    status_writers_verified: bool = False
    #: Pre-warming (docs/planner.md): keep free instances of the profiles pods asked for lately,
    #: created on free space only and the first taken back when a pod needs the room.
    prewarm: bool = True
    #: Demand history: arrivals per profile over this sliding window give its rate.
    prewarm_window_seconds: float = 900.0
    #: Expected asks within this long (about batch window + GI create + plugin refresh, with a
    #: margin) are kept ready, rounded up ...
    prewarm_horizon_seconds: float = 60.0
    #: ... and at most this many free instances per profile.
    prewarm_max_per_profile: int = 2
    #: Draining for large pods (4g and 7g of an 8-unit GPU) that fit nowhere: at most this share of
    #: the labelled GPUs drain at once (at least one; 0 turns it off), so smaller pods always keep
    #: the rest of the fleet.
    drain_max_fraction: float = 0.125
    #: ... and only for pods that have waited this long (the tail of the wait).
    drain_after_seconds: float = 300.0
    #: ... and only GPUs whose used instances hold at most this share of it (nearly empty ones).
    drain_max_used_share: float = 0.375
    #: ... and no GPU of a model drains while a smaller pod that model could hold has waited this
    #: long (the bound that keeps small pods from starving in turn; 0: no such bound).
    drain_yield_after_seconds: float = 300.0
    #: While large pods wait, free instances of GPUs at most this share used are destroyed so
    #: that those GPUs can empty (0: off).
    reclaim_max_used_share: float = 0.0
    #: Idle defragmentation: when no pod waits, move free instances together (destroy and
    #: re-create free ones only) at most this many GPU-instance operations per hour (0: off) ...
    defrag_ops_per_hour: int = 60
    #: ... looking at most this often.
    defrag_interval_seconds: float = 300.0

    ENV = (
        ("partition_label", "CDMO_PARTITION_LABEL"),
        ("batch_idle_seconds", "CDMO_BATCH_IDLE_SECONDS"),
        ("batch_max_seconds", "CDMO_BATCH_MAX_SECONDS"),
        ("stale_timeout_seconds", "CDMO_STALE_TIMEOUT_SECONDS"),
        ("pending_grace_seconds", "CDMO_PENDING_GRACE_SECONDS"),
        ("metrics_port", "CDMO_METRICS_PORT"),
        ("health_port", "CDMO_HEALTH_PORT"),
        ("resync_seconds", "CDMO_PLAN_RESYNC_SECONDS"),
        ("watch_server_timeout", "CDMO_WATCH_SERVER_TIMEOUT"),
        ("watch_client_timeout", "CDMO_WATCH_CLIENT_TIMEOUT"),
        ("watch_connect_timeout", "CDMO_WATCH_CONNECT_TIMEOUT"),
        ("peering_name", "CDMO_PEERING_NAME"),
        ("events_namespace", "CDMO_EVENTS_NAMESPACE"),
        ("list_chunk_size", "CDMO_LIST_CHUNK_SIZE"),
        ("status_writers_verified", "CDMO_STATUS_WRITERS_VERIFIED"),
        ("prewarm", "CDMO_PREWARM"),
        ("prewarm_window_seconds", "CDMO_PREWARM_WINDOW_SECONDS"),
        ("prewarm_horizon_seconds", "CDMO_PREWARM_HORIZON_SECONDS"),
        ("prewarm_max_per_profile", "CDMO_PREWARM_MAX_PER_PROFILE"),
        ("drain_max_fraction", "CDMO_DRAIN_MAX_FRACTION"),
        ("drain_after_seconds", "CDMO_DRAIN_AFTER_SECONDS"),
        ("drain_max_used_share", "CDMO_DRAIN_MAX_USED_SHARE"),
        ("drain_yield_after_seconds", "CDMO_DRAIN_YIELD_AFTER_SECONDS"),
        ("reclaim_max_used_share", "CDMO_RECLAIM_MAX_USED_SHARE"),
        ("defrag_ops_per_hour", "CDMO_DEFRAG_OPS_PER_HOUR"),
        ("defrag_interval_seconds", "CDMO_DEFRAG_INTERVAL_SECONDS"),
    )
    #: Numbers that must be above zero (a zero resync or watch timeout would spin or never wait).
    POSITIVE = (
        "resync_seconds",
        "stale_timeout_seconds",
        "watch_server_timeout",
        "watch_client_timeout",
        "watch_connect_timeout",
        "prewarm_window_seconds",
        "defrag_interval_seconds",
    )
    AT_LEAST_ONE = ("watch_server_timeout",)  # kopf asks the API server for whole seconds
    SHARES = ("drain_max_fraction", "drain_max_used_share", "reclaim_max_used_share")
    PORTS = ("metrics_port", "health_port")
    #: Limits other than maximum()'s rules. A page of 100,000 pods is hundreds of MiB of JSON,
    #: beyond the operator's memory limit (the chart's 512Mi).
    MAXIMA = (("list_chunk_size", 100_000),)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        return _from_env(cls, environ)

    @property
    def label_key(self) -> str:
        return self.partition_label.split("=", 1)[0]

    @property
    def label_value(self) -> str:
        return self.partition_label.split("=", 1)[1] if "=" in self.partition_label else ""


@dataclass(frozen=True)
class AgentConfig:
    """Knobs of ``cdmo agent``."""

    node_name: str = ""
    backend: str = "nvml"
    sim_state: str = ""
    sim_gpus: str = ""
    pod_resources_socket: str = "/var/lib/kubelet/pod-resources/kubelet.sock"
    resync_seconds: float = 60.0
    #: builtin (the agent's own kubelet device plugin) | sighup | delete-pod | none (NVIDIA's plugin)
    refresh_strategy: str = "builtin"
    #: The kubelet's device-plugins directory (builtin mode serves and registers there).
    device_plugin_dir: str = "/var/lib/kubelet/device-plugins"
    #: builtin: how Allocate names the devices: envvar | volume-mounts | cdi-annotations (comma list)
    device_list_strategy: str = "volume-mounts"
    #: builtin: uuid | index
    device_id_strategy: str = "uuid"
    #: builtin, cdi-annotations: the CDI kind of the toolkit's spec
    cdi_kind: str = "nvidia.com/gpu"
    #: builtin: offer GPUs with MIG off as nvidia.com/gpu (NVIDIA's plugin is off on cdmo nodes)
    advertise_whole_gpus: bool = True
    #: builtin: critical XIDs that do not make a device Unhealthy, as NVIDIA's plugin reads
    #: DP_DISABLE_HEALTHCHECKS: "" (only the application XIDs), all | xids (no XID watch), or
    #: XID numbers to ignore too, comma-separated (cdmo.node_agent.deviceplugin.health).
    disable_healthchecks: str = ""
    #: External modes: taint KEY:EFFECT set on the node from before the first destroy until the
    #: plugin re-advertised ("" turns it off).
    reconfiguring_taint: str = "cdmo.clear.ml/reconfiguring:NoSchedule"
    device_plugin_namespace: str = "gpu-operator"
    device_plugin_selector: str = "app=nvidia-device-plugin-daemonset"
    device_plugin_process: str = "nvidia-device-plugin"
    refresh_timeout_seconds: float = 120.0
    #: How often the delete-pod strategy looks for the new device plugin pod.
    refresh_poll_seconds: float = 1.0
    enable_mig: bool = False
    #: Switch MIG back on for a GPU that comes back from a reboot or reset with MIG off, when the
    #: MigLayout's status shows cdmo managed it with MIG on and nothing holds the GPU.
    auto_enable_mig: bool = True
    #: Where the agent posts its Events about its MigLayout (cluster-scoped); the chart sets the
    #: agent's own namespace, so they sit beside the operator's and not in ``default``.
    events_namespace: str = "default"
    metrics_port: int = 9464
    log_format: str = "auto"
    #: A watch request lasts this long (server side) before the agent starts a new one.
    watch_timeout_seconds: float = 300.0
    #: After a failed or blocked pass, wait this long, doubling up to resync_seconds.
    backoff_initial_seconds: float = 2.0
    #: GET /healthz on the metrics port fails once no pass began or ended for this long beyond
    #: resync_seconds: a pass stuck in NVML or a kubelet call (0: never fails).
    liveness_seconds: float = 900.0

    ENV = (
        ("node_name", "NODE_NAME"),
        ("backend", "CDMO_BACKEND"),
        ("sim_state", "CDMO_SIM_STATE"),
        ("sim_gpus", "CDMO_SIM_GPUS"),
        ("pod_resources_socket", "CDMO_POD_RESOURCES_SOCKET"),
        ("resync_seconds", "CDMO_RESYNC_SECONDS"),
        ("refresh_strategy", "CDMO_REFRESH_STRATEGY"),
        ("device_plugin_dir", "CDMO_DEVICE_PLUGIN_DIR"),
        ("device_list_strategy", "CDMO_DEVICE_LIST_STRATEGY"),
        ("device_id_strategy", "CDMO_DEVICE_ID_STRATEGY"),
        ("cdi_kind", "CDMO_CDI_KIND"),
        ("advertise_whole_gpus", "CDMO_ADVERTISE_WHOLE_GPUS"),
        ("disable_healthchecks", "CDMO_DISABLE_HEALTHCHECKS"),
        ("reconfiguring_taint", "CDMO_RECONFIGURING_TAINT"),
        ("device_plugin_namespace", "CDMO_DEVICE_PLUGIN_NAMESPACE"),
        ("device_plugin_selector", "CDMO_DEVICE_PLUGIN_SELECTOR"),
        ("device_plugin_process", "CDMO_DEVICE_PLUGIN_PROCESS"),
        ("refresh_timeout_seconds", "CDMO_REFRESH_TIMEOUT_SECONDS"),
        ("refresh_poll_seconds", "CDMO_REFRESH_POLL_SECONDS"),
        ("enable_mig", "CDMO_ENABLE_MIG"),
        ("auto_enable_mig", "CDMO_AUTO_ENABLE_MIG"),
        ("events_namespace", "CDMO_EVENTS_NAMESPACE"),
        ("metrics_port", "CDMO_METRICS_PORT"),
        ("log_format", "CDMO_LOG_FORMAT"),
        ("watch_timeout_seconds", "CDMO_WATCH_TIMEOUT_SECONDS"),
        ("backoff_initial_seconds", "CDMO_BACKOFF_INITIAL_SECONDS"),
        ("liveness_seconds", "CDMO_LIVENESS_SECONDS"),
    )
    POSITIVE = (
        "resync_seconds",
        "refresh_timeout_seconds",
        "refresh_poll_seconds",
        "watch_timeout_seconds",
        "backoff_initial_seconds",
    )
    PORTS = ("metrics_port",)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AgentConfig:
        return _from_env(cls, environ)


@dataclass(frozen=True)
class WebhookConfig:
    """Knobs of ``cdmo webhook`` (the fractional-GPU admission webhook)."""

    port: int = 8443
    #: Prometheus metrics over plain HTTP (0: off); a port apart from the HTTPS one, as the
    #: operator's and the agent's, so that Prometheus need not trust the webhook's CA.
    metrics_port: int = 8080
    cert_file: str = "/tls/tls.crt"
    key_file: str = "/tls/tls.key"
    #: Translate for this model when a pod selects none, before the model most labelled nodes carry.
    default_model: str = ""
    #: Labelled nodes whose nvidia.com/gpu.product says which models the cluster has.
    partition_label: str = f"{PARTITIONING_LABEL_KEY}={PARTITIONING_LABEL_VALUE}"
    #: How often the node list is read again (a new GPU model changes the default model).
    nodes_refresh_seconds: float = 30.0
    #: A fraction needs its share of compute slices and of memory slices ("compute+memory"),
    #: or only one of them ("compute", "memory").
    fraction_match: str = "compute+memory"
    cfgi_replicas_per_gpu: int = 8
    metagpu_units_per_gpu: int = 100
    #: The certificate files are read again when they change (cert-manager renews them in place).
    cert_reload_seconds: float = 60.0
    log_format: str = "auto"

    ENV = (
        ("port", "CDMO_WEBHOOK_PORT"),
        ("metrics_port", "CDMO_WEBHOOK_METRICS_PORT"),
        ("cert_file", "CDMO_WEBHOOK_CERT_FILE"),
        ("key_file", "CDMO_WEBHOOK_KEY_FILE"),
        ("default_model", "CDMO_WEBHOOK_DEFAULT_MODEL"),
        ("partition_label", "CDMO_PARTITION_LABEL"),
        ("nodes_refresh_seconds", "CDMO_WEBHOOK_NODES_REFRESH_SECONDS"),
        ("fraction_match", "CDMO_WEBHOOK_FRACTION_MATCH"),
        ("cfgi_replicas_per_gpu", "CDMO_WEBHOOK_CFGI_REPLICAS_PER_GPU"),
        ("metagpu_units_per_gpu", "CDMO_WEBHOOK_METAGPU_UNITS_PER_GPU"),
        ("cert_reload_seconds", "CDMO_WEBHOOK_CERT_RELOAD_SECONDS"),
        ("log_format", "CDMO_LOG_FORMAT"),
    )
    POSITIVE = (
        "nodes_refresh_seconds",
        "cert_reload_seconds",
        "cfgi_replicas_per_gpu",
        "metagpu_units_per_gpu",
    )
    PORTS = ("port", "metrics_port")
    #: Limits other than maximum()'s rules, generous beyond the products' own (CFGI's replica
    #: counts are single digits, MetaGPU's units 100): a fraction finer than a MIG slice (an
    #: eighth of a GPU at the finest) maps to the smallest slice anyway.
    MAXIMA = (("cfgi_replicas_per_gpu", 1024), ("metagpu_units_per_gpu", 100_000))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WebhookConfig:
        return _from_env(cls, environ)
