"""Which GPU models the cluster's labelled nodes carry, read from the API server and cached.

The webhook answers from the last list it read, refreshed in the background, so an admission
request never waits on a slow API server (the API server gives webhooks 10 s at most).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import structlog
from kubernetes import client

from cdmo.api import GPU_PRODUCT_LABEL
from cdmo.errors import CdmoError
from cdmo.mig.catalog import find_model

log = structlog.get_logger("cdmo.webhook")


def count_models(nodes: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Catalog model key -> how many nodes carry it (nodes of unknown or no product are left out)."""
    counts: Counter[str] = Counter()
    for node in nodes:
        product = ((node.get("metadata") or {}).get("labels") or {}).get(GPU_PRODUCT_LABEL)
        model = find_model(product) if product else None
        if model is not None:
            counts[model.key] += 1
    return dict(sorted(counts.items()))


class NodesUnreadable(CdmoError):
    """The webhook has never read the cluster's nodes, so it cannot tell which models they carry."""


class NodeModels:
    """The models of the nodes selected by ``label_selector``, refreshed every ``refresh_seconds``."""

    def __init__(self, api: client.ApiClient, label_selector: str, refresh_seconds: float) -> None:
        self._api = api
        self._core = client.CoreV1Api(api)
        self._selector = label_selector
        self._refresh = refresh_seconds
        self.models: dict[str, int] = {}
        self.loaded = asyncio.Event()
        #: why the last list failed (kept until one succeeds), for the answer while none has
        self.error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def _read(self) -> dict[str, int]:
        nodes = self._core.list_node(label_selector=self._selector, _request_timeout=10)
        return count_models(self._api.sanitize_for_serialization(n) for n in nodes.items)

    async def refresh(self) -> None:
        try:
            models = await asyncio.to_thread(self._read)
        except Exception as exc:  # the API server may be away for a while; keep the last answer
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("Failed to list labelled nodes", error=self.error)
            return
        self.error = None
        if models != self.models:
            log.info("Read GPU models of labelled nodes", models=models)
        self.models = models
        self.loaded.set()

    async def _loop(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._refresh)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def not_ready(self) -> str | None:
        """Why no answer can be given yet (no list read so far), or None: for GET /readyz."""
        if self.loaded.is_set():
            return None
        return f"the labelled nodes were never read ({self.error or 'no answer yet'})"

    async def current(self, wait: float = 5.0) -> dict[str, int]:
        """The last list read; waits up to ``wait`` seconds for the first one.

        Raises NodesUnreadable when no list was ever read: an empty answer would refuse every pod
        with "no labelled node carries a MIG model", which sends people to fix labels that are
        fine. The server answers 503 instead and the API server applies ``failurePolicy``.
        """
        if not self.loaded.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.loaded.wait(), wait)
        if not self.loaded.is_set():
            raise NodesUnreadable(
                f"cdmo cannot read the cluster's labelled nodes yet ({self.error or 'no answer'})",
                hint="check the webhook's RBAC (nodes list) and the API server's reachability",
            )
        return dict(self.models)
