"""``cdmo agent``: the node agent's loop (the DaemonSet's command).

NODE_NAME comes from the environment (the downward API); every knob has an environment
variable (cdmo.config.AgentConfig) and most have a flag. Logs are structlog JSON on stderr;
Prometheus metrics are served on --metrics-port (0 turns them off).
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
    from cdmo.node_agent.wiring import add_backend_arguments

    add_backend_arguments(parser)
    parser.add_argument("--node-name", default=None, help="this node's name (default $NODE_NAME)")
    parser.add_argument(
        "--refresh-strategy",
        choices=STRATEGIES,
        default=None,
        help="how to make the device plugin see new MIG devices (default $CDMO_REFRESH_STRATEGY or sighup)",
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
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig outside the cluster")
    parser.add_argument("--log-format", choices=("json", "console", "auto"), default=None)
    parser.add_argument("--once", action="store_true", help="run one pass, write the status, and exit")


def build_config(args: argparse.Namespace) -> Any:
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
    ):
        value = getattr(args, flag, None)
        if value is not None:
            changes[field] = value
    return dataclasses.replace(conf, **changes)


def run(args: argparse.Namespace) -> int:
    from cdmo.errors import InvalidInput
    from cdmo.logs import configure_logging
    from cdmo.node_agent.agent import Agent
    from cdmo.node_agent.kube import KubeClient
    from cdmo.node_agent.metrics import AgentMetrics
    from cdmo.node_agent.refresh import build_refresher
    from cdmo.node_agent.wiring import build_backend

    conf = build_config(args)
    configure_logging(
        "json" if conf.log_format == "auto" else conf.log_format, "debug" if args.debug else "info"
    )
    if not conf.node_name:
        raise InvalidInput("the agent needs its node's name", hint="set NODE_NAME or pass --node-name")
    kube = KubeClient.from_environment(args.kubeconfig)
    backend = build_backend(conf)
    metrics = AgentMetrics()
    if conf.metrics_port and not args.once:
        metrics.serve(conf.metrics_port)
    agent = Agent(conf, backend, kube, build_refresher(conf, kube), metrics=metrics)
    stop = threading.Event()
    try:
        if args.once:
            agent.sync_once(stop)
            return exit_codes.SUCCESS
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        agent.run(stop)
        return exit_codes.SUCCESS
    finally:
        backend.close()
        kube.close()
