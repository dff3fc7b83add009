"""The operator's writes to the API: create MigLayouts, patch their spec. Thin I/O, nothing decided here.

kopf reads (watches and indexes); these few writes go through the kubernetes client's
``ApiClient``, which the caller builds (in-cluster config, a kubeconfig, or any host in tests).
The client is synchronous, so calls run in a worker thread and never block kopf's event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import kopf
import kubernetes
import structlog
import urllib3
from kubernetes.client.exceptions import ApiException
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from cdmo.api import GROUP, MANAGED_BY_LABEL, MANAGED_BY_VALUE, PLURAL, VERSION
from cdmo.api import KIND as MIGLAYOUT_KIND
from cdmo.errors import CdmoError

log = structlog.get_logger("cdmo.operator")


def with_events_namespace(info: kopf.ConnectionInfo | None, namespace: str) -> kopf.ConnectionInfo | None:
    """``info`` with kopf's default namespace set to ``namespace`` (when both are given).

    kopf posts the Events of cluster-scoped objects (MigLayouts) into the connection's default
    namespace, and the kubernetes client's in-cluster login leaves it unset, so they would land
    in ``default``, where the operator's users may not look (or may not read).
    """
    if info is None or not namespace:
        return info
    return dataclasses.replace(info, default_namespace=namespace)


def build_api_client(server: str | None = None, token: str | None = None) -> kubernetes.client.ApiClient:
    """A client for ``server`` (tests; ``token`` as bearer), else in-cluster config, else the local kubeconfig."""
    if server:
        conf = kubernetes.client.Configuration(host=server)
        if token:
            conf.api_key = {"authorization": token}
            conf.api_key_prefix = {"authorization": "Bearer"}
        return kubernetes.client.ApiClient(conf)
    config = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)
    except kubernetes.config.ConfigException:
        try:
            kubernetes.config.load_kube_config(client_configuration=config)
        except (kubernetes.config.ConfigException, OSError) as exc:
            raise CdmoError(
                f"no Kubernetes credentials: {exc}",
                hint="run the operator in the cluster, point KUBECONFIG at a kubeconfig, or pass --server",
            ) from None
    return kubernetes.client.ApiClient(config)


def build_bootstrap_miglayout(node_name: str) -> dict[str, Any]:
    """A new MigLayout without ``spec.gpus``: the agent changes nothing until the operator adopts."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": MIGLAYOUT_KIND,
        "metadata": {"name": node_name, "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE}},
        "spec": {},
    }


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, ApiException):
        return exc.status is not None and (exc.status >= 500 or exc.status == 429)
    return isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


class LayoutWriter:
    """Creates MigLayouts and patches their spec, with bounded retries of transient failures."""

    def __init__(self, api_client: kubernetes.client.ApiClient, attempts: int = 3) -> None:
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._attempts = attempts

    async def _call(self, fn: Any, *args: Any) -> Any:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            retry=retry_if_exception(_retryable),
            reraise=True,
        ):
            with attempt:
                return await asyncio.to_thread(fn, *args)
        raise AssertionError("unreachable")

    async def create_miglayout(self, node_name: str) -> bool:
        """Create the node's MigLayout; False if it exists already."""
        try:
            await self._call(
                self._custom.create_cluster_custom_object,
                GROUP,
                VERSION,
                PLURAL,
                build_bootstrap_miglayout(node_name),
            )
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        log.info("Created MigLayout", node=node_name)
        return True

    async def patch_spec(self, node_name: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Merge-patch the MigLayout; None when it moved meanwhile (409) or is gone (404)."""
        try:
            result: dict[str, Any] = await self._call(
                self._custom.patch_cluster_custom_object, GROUP, VERSION, PLURAL, node_name, body
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                log.info("Skipped MigLayout patch", node=node_name, status=exc.status, reason=exc.reason)
                return None
            raise
        return result
