"""``cdmo webhook``: the mutating admission webhook for fractional GPU asks (HTTPS, AdmissionReview v1).

Pods that carry a ClearML CFGI fraction label, KAI ``gpu-fraction``/``gpu-memory`` annotations
or a cnvrg MetaGPU ask get ``nvidia.com/mig-<profile>: 1`` instead, on create. The GPU model is
the pod's ``nvidia.com/gpu.product`` selector, else ``--default-model``, else the model most
labelled nodes carry. Flags override the environment (``CDMO_WEBHOOK_*``, set by the chart).
Prometheus metrics are served over plain HTTP on --metrics-port (0 turns them off).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from cdmo.config import WebhookConfig, check_flag
from cdmo.errors import CdmoError, InvalidInput

if TYPE_CHECKING:
    import ssl

    from aiohttp import web

FRACTION_MATCHES = ("compute+memory", "compute", "memory")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port", type=int, default=None, help="HTTPS port (default $CDMO_WEBHOOK_PORT or 8443)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics over HTTP on this port (default $CDMO_WEBHOOK_METRICS_PORT or 8080; "
        "0 turns them off)",
    )
    parser.add_argument("--cert-file", default=None, help="TLS certificate (PEM); read again when it changes")
    parser.add_argument("--key-file", default=None, help="TLS private key (PEM)")
    parser.add_argument(
        "--default-model",
        default=None,
        help="translate for this GPU model when a pod selects none (default: the model most labelled nodes carry)",
    )
    parser.add_argument(
        "--fraction-match",
        choices=FRACTION_MATCHES,
        default=None,
        help="what a fraction must get its share of: compute and memory slices (the default), or one of them",
    )
    parser.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, else ~/.kube/config)"
    )


def _config(args: argparse.Namespace) -> WebhookConfig:
    config = WebhookConfig.from_env()
    overrides = {
        k: v
        for k, v in {
            "port": args.port,
            "metrics_port": args.metrics_port,
            "cert_file": args.cert_file,
            "key_file": args.key_file,
            "default_model": args.default_model,
            "fraction_match": args.fraction_match,
        }.items()
        if v is not None
    }
    config = dataclasses.replace(config, **overrides)
    if config.fraction_match not in FRACTION_MATCHES:
        raise InvalidInput(
            f"fraction match {config.fraction_match!r} is not one of {', '.join(FRACTION_MATCHES)}",
        )
    if not 0 < config.port < 65536:
        raise InvalidInput(f"port {config.port} is not a TCP port", hint="give 1 to 65535")
    if args.metrics_port is not None:
        check_flag(config, "metrics_port", "--metrics-port")
    if config.metrics_port == config.port:
        raise InvalidInput(
            f"metrics port {config.metrics_port} is the HTTPS port too",
            hint="serve the metrics on a port of their own (--metrics-port, $CDMO_WEBHOOK_METRICS_PORT)",
        )
    if config.cfgi_replicas_per_gpu < 1 or config.metagpu_units_per_gpu < 1:
        raise InvalidInput("CFGI replicas and MetaGPU units per GPU must be at least 1")
    for what, path in (("certificate", config.cert_file), ("key", config.key_file)):
        if not Path(path).is_file():
            raise InvalidInput(
                f"TLS {what} {path} does not exist",
                hint="give --cert-file and --key-file (the chart mounts them from the webhook's Secret)",
            )
    if config.default_model:
        from cdmo.mig.catalog import get_model

        get_model(config.default_model)
    return config


def run(args: argparse.Namespace) -> int:
    config = _config(args)
    from cdmo.logs import configure_logging

    configure_logging(config.log_format)
    asyncio.run(_serve(config, args.kubeconfig))
    return 0


async def _serve(config: WebhookConfig, kubeconfig: str | None) -> None:
    import kubernetes
    from aiohttp import web

    from cdmo.translate.rule import Rule
    from cdmo.webhook.metrics import WebhookMetrics, build_metrics_app
    from cdmo.webhook.nodes import NodeModels
    from cdmo.webhook.server import (
        SHUTDOWN_SECONDS,
        Settings,
        build_app,
        reload_certificate,
        server_ssl_context,
    )

    # a certificate that does not load is one line and exit 2, before anything starts
    context = server_ssl_context(config.cert_file, config.key_file)
    if kubeconfig:
        kubernetes.config.load_kube_config(kubeconfig)
    else:
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
    nodes = NodeModels(kubernetes.client.ApiClient(), config.partition_label, config.nodes_refresh_seconds)
    nodes.start()
    rule = Rule(
        fraction_compute="compute" in config.fraction_match,
        fraction_memory="memory" in config.fraction_match,
        cfgi_replicas_per_gpu=config.cfgi_replicas_per_gpu,
        metagpu_units_per_gpu=config.metagpu_units_per_gpu,
    )
    metrics = WebhookMetrics()
    app = build_app(
        nodes.current, Settings(config.default_model or None, rule), ready=nodes.not_ready, metrics=metrics
    )
    reloader = asyncio.get_running_loop().create_task(
        reload_certificate(context, config.cert_file, config.key_file, config.cert_reload_seconds, metrics)
    )
    await asyncio.sleep(0)  # the reloader notes the certificate's end before anything is served
    runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_SECONDS)
    await runner.setup()
    metrics_runner = None
    # Everything started above is stopped on every way out, a port that cannot be bound included.
    try:
        await _listen(runner, config.port, context)
        if config.metrics_port:
            # every scrape in aiohttp's access log would drown the webhook's own lines
            metrics_runner = web.AppRunner(build_metrics_app(metrics), access_log=None)
            await metrics_runner.setup()
            await _listen(metrics_runner, config.metrics_port, None)
        # Kubernetes stops a pod with SIGTERM: finish the requests in flight, then exit 0.
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        structlog.get_logger("cdmo.webhook").info(
            "Started webhook", port=config.port, metrics_port=config.metrics_port
        )
        await stop.wait()
    finally:
        reloader.cancel()
        await nodes.stop()
        await runner.cleanup()
        if metrics_runner is not None:
            await metrics_runner.cleanup()


async def _listen(runner: web.BaseRunner, port: int, context: ssl.SSLContext | None) -> None:
    """Listen on ``port`` on every address; a port that cannot be bound is one line, not a traceback."""
    from aiohttp import web

    try:
        await web.TCPSite(runner, "0.0.0.0", port, ssl_context=context).start()
    except OSError as exc:
        raise CdmoError(
            f"cannot listen on port {port}: {exc.strerror or exc}",
            hint="another process holds it, or it needs privileges; choose another port",
        ) from None
