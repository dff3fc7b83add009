"""cdmo's admission webhook served over real HTTPS in a thread of its own, as its own process would be.

It reads the labelled nodes from the API double with the kubernetes client, exactly as in a
cluster (cdmo.webhook.nodes), and serves cdmo.webhook.server's app with a test certificate.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import kubernetes
from aiohttp import web

from cdmo.webhook.nodes import NodeModels
from cdmo.webhook.server import Settings, build_app, server_ssl_context
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
    ) -> None:
        """``token``: the bearer token of the chart's webhook ServiceAccount where the API double
        authenticates (tests/harness/chart.py), as the pod's mounted token would be."""
        self.token = token
        self.api_url, self.tls, self.settings = api_url, tls, settings
        self.label_selector, self.refresh = label_selector, nodes_refresh_seconds
        self.url = ""
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
            runner = web.AppRunner(build_app(nodes.current, self.settings), handle_signals=False)
            await runner.setup()
            site = web.TCPSite(
                runner,
                "127.0.0.1",
                0,
                ssl_context=server_ssl_context(str(self.tls.cert_file), str(self.tls.key_file)),
            )
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"https://127.0.0.1:{port}"
            self._stop = asyncio.Event()
            ready.set()
            try:
                await self._stop.wait()
            finally:
                await nodes.stop()
                await runner.cleanup()
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
