"""cdmo's admission webhook served over real HTTPS in a thread of its own, as its own process would be.

It reads the labelled nodes from the API double with the kubernetes client, exactly as in a
cluster (cdmo.webhook.nodes), and serves cdmo.webhook.server's app with a test certificate; given
``metrics``, it counts into them and serves them over plain HTTP at ``metrics_url``, and reloads
the certificate files every ``cert_reload_seconds``, as ``cdmo webhook`` does.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import kubernetes
from aiohttp import web

from cdmo.webhook.metrics import WebhookMetrics, build_metrics_app
from cdmo.webhook.nodes import NodeModels
from cdmo.webhook.server import Settings, build_app, reload_certificate, server_ssl_context
from tests.harness.tls import TlsFiles


class WebhookThread:
    def __init__(
        self,
        api_url: str,
        tls: TlsFiles,
        *,
        settings: Settings = Settings(),  # noqa: B008
        label_selector: str = "cdmo.clear.ml/gpu-partitioning=mig",
        nodes_refresh_seconds: float = 0.5,
        token: str | None = None,
        metrics: WebhookMetrics | None = None,
        cert_reload_seconds: float = 60.0,
    ) -> None:
        """``token``: the bearer token of the chart's webhook ServiceAccount where the API double
        authenticates (tests/harness/chart.py), as the pod's mounted token would be."""
        self.token = token
        self.api_url, self.tls, self.settings = api_url, tls, settings
        self.label_selector, self.refresh = label_selector, nodes_refresh_seconds
        self.metrics, self.cert_reload_seconds = metrics, cert_reload_seconds
        self.url = ""
        self.metrics_url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self.nodes: NodeModels | None = None

    def start(self) -> WebhookThread:
        ready = threading.Event()
        errors: list[BaseException] = []

        async def serve() -> None:
            conf = kubernetes.client.Configuration(host=self.api_url)
            if self.token:
                conf.api_key = {"authorization": self.token}
                conf.api_key_prefix = {"authorization": "Bearer"}
            api = kubernetes.client.ApiClient(conf)
            nodes = self.nodes = NodeModels(api, self.label_selector, self.refresh)
            nodes.start()
            app = build_app(nodes.current, self.settings, metrics=self.metrics)
            runner = web.AppRunner(app, handle_signals=False)
            await runner.setup()
            context = server_ssl_context(str(self.tls.cert_file), str(self.tls.key_file))
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
            await site.start()
            self.url = f"https://127.0.0.1:{_port(site)}"
            runners, reloader = [runner], None
            if self.metrics is not None:
                reloader = asyncio.get_running_loop().create_task(
                    reload_certificate(
                        context,
                        str(self.tls.cert_file),
                        str(self.tls.key_file),
                        self.cert_reload_seconds,
                        self.metrics,
                    )
                )
                await asyncio.sleep(0)  # as `cdmo webhook`: the certificate is noted before serving
                metrics_runner = web.AppRunner(build_metrics_app(self.metrics), handle_signals=False)
                await metrics_runner.setup()
                metrics_site = web.TCPSite(metrics_runner, "127.0.0.1", 0)
                await metrics_site.start()
                runners.append(metrics_runner)
                self.metrics_url = f"http://127.0.0.1:{_port(metrics_site)}/metrics"
            self._stop = asyncio.Event()
            ready.set()
            try:
                await self._stop.wait()
            finally:
                if reloader is not None:
                    reloader.cancel()
                await nodes.stop()
                for r in runners:
                    await r.cleanup()
                api.close()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(serve())
            except BaseException as exc:
                errors.append(exc)
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name="cdmo-webhook", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        return self

    def wait_for_models(self, models: dict[str, int], timeout: float = 10.0) -> None:
        """Wait until the webhook's node list shows ``models`` (it reads nodes every refresh period)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.nodes is not None and self.nodes.models == models:
                return
            time.sleep(0.05)
        raise AssertionError(f"the webhook saw {self.nodes.models if self.nodes else None}, not {models}")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> WebhookThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _port(site: web.TCPSite) -> int:
    return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]


def write_kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig at ``path`` for a ``cdmo webhook`` process talking to the API double at ``server``."""
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "double", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "c", "context": {"cluster": "double", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    return path
