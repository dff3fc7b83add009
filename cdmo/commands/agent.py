"""``cdmo agent``: the node agent's loop (the DaemonSet's command).

NODE_NAME comes from the environment (the downward API); every knob has an environment
variable (cdmo.config.AgentConfig) and most have a flag. Logs are structlog JSON on stderr;
Prometheus metrics are served on --metrics-port (0 turns them off).

In the ``builtin`` mode (the default) the agent serves the kubelet device plugin for its MIG
devices itself. ``--standalone LAYOUT.yaml`` runs it without the Kubernetes API: the layout
comes from the file (read again when it changes) and each pass writes one JSON document to
stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import threading
from typing import Any

from cdmo import exit_codes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cdmo.node_agent.refresh import STRATEGIES
    from cdmo.node_agent.wiring import add_backend_arguments, add_device_plugin_arguments

    parser.add_argument(
        "--standalone",
        metavar="LAYOUT.yaml",
        default=None,
        help="run without Kubernetes: the desired layout from this file (re-read when it changes), "
        "one JSON status document per pass on stdout",
    )
    add_backend_arguments(parser)
    add_device_plugin_arguments(parser)
    parser.add_argument("--node-name", default=None, help="this node's name (default $NODE_NAME)")
    parser.add_argument(
        "--refresh-strategy",
        choices=STRATEGIES,
        default=None,
        help="builtin: the agent is the device plugin; sighup, delete-pod, none: NVIDIA's plugin "
        "is refreshed that way (default $CDMO_REFRESH_STRATEGY or builtin)",
    )
    parser.add_argument(
        "--enable-mig",
        action="store_true",
        default=None,
        help="switch MIG on where the spec wants instances and the GPU needs no reset",
    )
    parser.add_argument(
        "--no-auto-enable-mig",
        dest="auto_enable_mig",
        action="store_false",
        default=None,
        help="leave MIG off on a GPU back from a reboot or reset with MIG off, even where cdmo managed it "
        "(default: switch it back on when the GPU is idle; $CDMO_AUTO_ENABLE_MIG)",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="Prometheus port (default 9464; 0: off)"
    )
    parser.add_argument(
        "--reconfiguring-taint",
        metavar="KEY:EFFECT",
        default=None,
        help="external modes: taint the node with this from before the first destroy until the plugin "
        "re-advertised (default $CDMO_RECONFIGURING_TAINT or cdmo.clear.ml/reconfiguring:NoSchedule; '' off)",
    )
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig outside the cluster")
    parser.add_argument("--log-format", choices=("json", "console", "auto"), default=None)
    parser.add_argument("--once", action="store_true", help="run one pass, write the status, and exit")


def build_config(args: argparse.Namespace) -> Any:
    from cdmo.config import check_flag
    from cdmo.node_agent.wiring import config_from_args

    conf = config_from_args(args)
    changes: dict[str, Any] = {}
    for flag, field in (
        ("node_name", "node_name"),
        ("refresh_strategy", "refresh_strategy"),
        ("enable_mig", "enable_mig"),
        ("auto_enable_mig", "auto_enable_mig"),
        ("metrics_port", "metrics_port"),
        ("log_format", "log_format"),
        ("reconfiguring_taint", "reconfiguring_taint"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            changes[field] = value
    conf = dataclasses.replace(conf, **changes)
    if "metrics_port" in changes:
        check_flag(conf, "metrics_port", "--metrics-port")
    return conf


def run(args: argparse.Namespace) -> int:
    from cdmo.errors import InvalidInput
    from cdmo.logs import configure_logging
    from cdmo.node_agent.agent import Agent
    from cdmo.node_agent.kube import KubeClient
    from cdmo.node_agent.metrics import AgentMetrics
    from cdmo.node_agent.refresh import BuiltinRefresh, build_refresher
    from cdmo.node_agent.wiring import build_backend

    conf = build_config(args)
    configure_logging(
        "json" if conf.log_format == "auto" else conf.log_format, "debug" if args.debug else "info"
    )
    if args.standalone is not None:
        return _run_standalone(args, conf)
    if not conf.node_name:
        raise InvalidInput("the agent needs its node's name", hint="set NODE_NAME or pass --node-name")
    kube = KubeClient.from_environment(args.kubeconfig)
    kube.event_namespace = conf.events_namespace
    backend = build_backend(conf)
    metrics = AgentMetrics()
    agent: Agent | None = None  # /healthz is fine until the agent's loop runs
    if conf.metrics_port and not args.once:
        metrics.serve(conf.metrics_port, health=lambda: agent.stuck() if agent is not None else None)
    plugin = None
    try:  # the plugin starts inside: a failed start still closes NVML and the client
        plugin = _start_plugin(conf, backend, metrics)
        advertiser = plugin
        if plugin is None and conf.reconfiguring_taint:
            from cdmo.node_agent.taint import ReconfiguringTaint

            advertiser = ReconfiguringTaint(kube, conf.node_name, conf.reconfiguring_taint)
        refresher = BuiltinRefresh(plugin) if plugin is not None else build_refresher(conf, kube)
        agent = Agent(conf, backend, kube, refresher, metrics=metrics, advertiser=advertiser)
        return _drive(agent, once=args.once)
    finally:
        if plugin is not None:
            plugin.stop()
        backend.close()
        kube.close()


def _drive(agent: Any, *, once: bool) -> int:
    """One pass (``--once``), or passes until SIGTERM or SIGINT: the same for both agents."""
    stop = threading.Event()
    if once:
        agent.sync_once(stop)
        return exit_codes.SUCCESS
    set_on_signals(stop, (signal.SIGTERM, signal.SIGINT))
    agent.run(stop)
    return exit_codes.SUCCESS


def set_on_signals(event: threading.Event, signals: tuple[signal.Signals, ...]) -> None:
    """Set ``event`` when one of ``signals`` arrives, from a thread of its own.

    Not ``event.set()`` in the handler: Python runs handlers in the main thread, between two
    bytecodes, so one can run while that thread is inside ``event.wait()`` holding the event's
    lock, and ``set()`` would then wait forever for the lock its own thread holds (an agent that
    ignored SIGTERM until it was killed, seen in CI). The thread waits until the main thread
    lets go of the lock.
    """

    def handler(signum: int, frame: object) -> None:
        threading.Thread(target=event.set, name="cdmo-signal", daemon=True).start()

    for sig in signals:
        signal.signal(sig, handler)


def _start_plugin(conf: Any, backend: Any, metrics: Any = None) -> Any:
    """The started built-in device plugin in the builtin mode, else None."""
    from cdmo.node_agent.wiring import build_device_plugin

    if conf.refresh_strategy != "builtin":
        return None
    plugin = build_device_plugin(conf, backend, metrics)
    plugin.start()
    return plugin


def _run_standalone(args: argparse.Namespace, conf: Any) -> int:
    import sys

    from cdmo.commands.node import read_layout_file
    from cdmo.errors import InvalidInput
    from cdmo.node_agent.refresh import BuiltinRefresh, build_refresher
    from cdmo.node_agent.standalone import StandaloneAgent
    from cdmo.node_agent.wiring import build_backend, read_local_in_use

    if conf.refresh_strategy == "delete-pod":
        raise InvalidInput(
            "the delete-pod refresh strategy needs Kubernetes",
            hint="use builtin, sighup or none with --standalone",
        )
    read_layout_file(args.standalone)  # a missing or broken file is refused before anything starts
    backend = build_backend(conf)
    plugin = None
    try:
        plugin = _start_plugin(conf, backend)
        agent = StandaloneAgent(
            conf,
            backend,
            args.standalone,
            read_layout_file,
            lambda: read_local_in_use(conf.pod_resources_socket),
            BuiltinRefresh(plugin) if plugin is not None else build_refresher(conf, None),
            sys.stdout,
            advertiser=plugin,
        )
        return _drive(agent, once=args.once)
    finally:
        if plugin is not None:
            plugin.stop()
        backend.close()
