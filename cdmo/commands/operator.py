"""``cdmo operator``: the cluster-level half of cdmo, on kopf.

Watches pending MIG pods, labelled nodes and MigLayouts, plans new layouts and writes them to
the MigLayouts' spec. Two replicas give HA through kopf peering (one active, the other paused
until the first one's peering heartbeat is gone); ``--standalone`` turns peering off for one
replica or a test. ``--liveness`` serves kopf's health endpoint for the pod's liveness probe.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
from typing import Any

from cdmo import exit_codes
from cdmo.errors import CdmoError, InvalidInput


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--standalone",
        action="store_true",
        help="no peering: run as the only replica (tests, development); HA needs peering",
    )
    parser.add_argument(
        "--peering",
        metavar="NAME",
        default=None,
        help="the ClusterKopfPeering that replicas share (default $CDMO_PEERING_NAME or cdmo)",
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority: the highest live replica runs, the others wait "
        "(default: a random one per start, so that two identical replicas never tie)",
    )
    parser.add_argument(
        "--namespace",
        metavar="NS",
        action="append",
        default=None,
        help="serve only the MIG pods of this namespace (repeatable; default: all namespaces). "
        "Nodes and MigLayouts are cluster-wide either way; peering becomes namespaced (KopfPeering)",
    )
    parser.add_argument(
        "--liveness",
        metavar="URL",
        default=None,
        help="serve kopf's liveness endpoint, e.g. http://0.0.0.0:8081/healthz",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on this port (default $CDMO_METRICS_PORT or 8080; 0 turns them off)",
    )
    parser.add_argument(
        "--metrics-address",
        metavar="ADDR",
        default="0.0.0.0",
        help="address the metrics server binds (default all)",
    )
    parser.add_argument(
        "--server",
        metavar="URL",
        default=None,
        help="Kubernetes API server URL (default: in-cluster, else kubeconfig)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log kopf's and cdmo's details")


def _liveness(url: str | None) -> str | None:
    if url is None:
        return None
    if not url.startswith(("http://", "https://")) or "/" not in url.split("://", 1)[1]:
        raise InvalidInput(
            f"--liveness {url!r} is not an http URL with a path",
            hint="use something like http://0.0.0.0:8081/healthz",
        )
    return url


def choose_priority(requested: int | None, rng: random.Random | None = None) -> int:
    """The peering priority of this replica.

    kopf pauses *every* replica while two live peers share a priority ("Pausing all operators,
    including self"), and the pods of one Deployment are identical, so a replica that was not
    given a priority draws one at random; the highest then runs and the others stand by.
    """
    if requested is not None:
        return requested
    return (rng or random.SystemRandom()).randint(1, 2**31 - 1)


def run(args: argparse.Namespace) -> int:
    import kopf

    from cdmo.config import OperatorConfig, check_flag
    from cdmo.logs import configure_logging
    from cdmo.operator.handlers import build_context, build_registry
    from cdmo.operator.kube import build_api_client, with_events_namespace

    liveness = _liveness(args.liveness)
    config = OperatorConfig.from_env()  # a bad number is one line here (cdmo.config._check)
    if "=" not in config.partition_label or not config.label_key:
        raise InvalidInput(
            f"CDMO_PARTITION_LABEL={config.partition_label!r} is not KEY=VALUE",
            hint="the default is cdmo.clear.ml/gpu-partitioning=mig",
        )
    if args.peering:
        config = dataclasses.replace(config, peering_name=args.peering)
    if args.metrics_port is not None:
        config = dataclasses.replace(config, metrics_port=args.metrics_port)
        check_flag(config, "metrics_port", "--metrics-port")

    level = "debug" if args.verbose or args.debug else "info"
    configure_logging("auto", level)
    kopf.configure(verbose=args.verbose, debug=args.debug)

    registry = build_registry(config)
    server = args.server

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info = kopf.ConnectionInfo(server=server) if server else kopf.login_via_client(**kwargs)
        return with_events_namespace(info, config.events_namespace)

    context = build_context(config, build_api_client(server))
    if config.metrics_port:
        context.metrics.serve(config.metrics_port, args.metrics_address)
    namespaces: dict[str, Any] = {"namespaces": args.namespace} if args.namespace else {"clusterwide": True}
    try:
        kopf.run(
            registry=registry,
            standalone=args.standalone,
            peering_name=None if args.standalone else config.peering_name,
            priority=choose_priority(args.priority),
            liveness_endpoint=liveness,
            memo=kopf.Memo(cdmo=context),
            **namespaces,
        )
    except Exception as exc:
        # A startup handler refused to go on (the CRD check): kopf raises its ActivityError (not
        # exported) from the handler's PermanentError, whose reason is the one line to print.
        if isinstance(exc.__cause__, kopf.PermanentError):
            raise CdmoError(str(exc.__cause__)) from None
        raise
    print("cdmo operator stopped", file=sys.stderr)
    return exit_codes.SUCCESS
