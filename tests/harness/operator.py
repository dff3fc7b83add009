"""The real cdmo kopf operator, run in a background thread against the API double."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import kopf

from cdmo.config import OperatorConfig
from cdmo.operator.handlers import OperatorContext, build_context, build_registry
from cdmo.operator.kube import build_api_client


class OperatorRunner:
    """``kopf.operator(...)`` with cdmo's registry in a thread, standalone, pointed at ``url``.

    Each start builds a fresh registry and context, so the operator can be stopped and started
    again in one test (the restart scenario) without kopf's global registry.
    """

    def __init__(
        self,
        url: str,
        config: OperatorConfig,
        *,
        clock: Callable[[], datetime] | None = None,
        standalone: bool = True,
        peering_name: str | None = None,
        priority: int = 0,
        token: str | None = None,
    ) -> None:
        self.url, self.config, self.clock = url, config, clock
        self.standalone, self.peering_name, self.priority = standalone, peering_name, priority
        #: the operator's ServiceAccount token (the API double's authenticator knows it)
        self.token = token
        self.context: OperatorContext | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.error: BaseException | None = None

    def start(self, timeout: float = 30.0) -> OperatorRunner:
        self._stop = threading.Event()
        self._ready = threading.Event()
        registry = build_registry(self.config)
        url, token = self.url, self.token

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url, token=token, default_namespace="default")

        api_client = build_api_client(url, token)
        kwargs: dict[str, Any] = {} if self.clock is None else {"clock": self.clock}
        self.context = build_context(self.config, api_client, **kwargs)
        memo = kopf.Memo(cdmo=self.context)

        async def operate() -> None:
            try:
                await kopf.operator(
                    registry=registry,
                    clusterwide=True,
                    standalone=self.standalone,
                    peering_name=self.peering_name,
                    priority=self.priority,
                    stop_flag=self._stop,
                    ready_flag=self._ready,
                    memo=memo,
                )
            finally:
                # kopf waits for a threading stop flag in an executor thread, which asyncio.run
                # joins on the way out: an operator that stopped by itself (a failed startup
                # handler) would hang there until stop().
                self._stop.set()

        def main() -> None:
            try:
                asyncio.run(operate())
            except BaseException as exc:  # surfaced by stop() and the tests
                self.error = exc
            finally:
                api_client.close()

        self._thread = threading.Thread(target=main, name="cdmo-operator", daemon=True)
        self._thread.start()
        # An operator that stops before it is ready (a failed startup handler) says why at once.
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if not self._thread.is_alive():
                # kopf's ActivityError says "handlers failed"; the handler's own error is its cause.
                cause = self.error.__cause__ if self.error is not None else None
                raise RuntimeError(
                    f"the operator stopped before it was ready: {self.error!r}, from {cause!r}"
                ) from self.error
            if time.monotonic() > deadline:
                raise TimeoutError("the operator did not become ready")
        return self

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 20.0) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the operator did not stop")
        self._thread = None
