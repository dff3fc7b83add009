"""The operator's writes to the API: create MigLayouts, patch their spec. Thin I/O, nothing decided here.

kopf reads (watches and indexes); these few writes go through the kubernetes client's
``ApiClient``, which the caller builds (in-cluster config, a kubeconfig, or any host in tests).
The client is synchronous, so calls run in a worker thread and never block kopf's event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import kopf
import kubernetes
import structlog
import urllib3
from kubernetes.client.exceptions import ApiException
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from cdmo.api import CRD_NAME, GROUP, MANAGED_BY_LABEL, MANAGED_BY_VALUE, PLURAL, VERSION, crd_problem
from cdmo.api import KIND as MIGLAYOUT_KIND
from cdmo.errors import CdmoError
from cdmo.operator.publish import SpecRefused

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


def build_node_owner(node_name: str, node_uid: str) -> list[dict[str, Any]]:
    """The MigLayout's ``ownerReferences``: its node, by uid.

    The API server's garbage collector then deletes the MigLayout when the node is deleted, or
    re-created under the same name (a new uid): the new node starts from a new MigLayout, which
    adopts what its GPUs hold. No ``blockOwnerDeletion``: that would need delete rights on nodes.
    """
    return [{"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid}]


def build_bootstrap_miglayout(node_name: str, node_uid: str = "") -> dict[str, Any]:
    """A new MigLayout without ``spec.gpus``: the agent changes nothing until the operator adopts."""
    metadata: dict[str, Any] = {"name": node_name, "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE}}
    if node_uid:
        metadata["ownerReferences"] = build_node_owner(node_name, node_uid)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": MIGLAYOUT_KIND, "metadata": metadata, "spec": {}}


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, ApiException):
        return exc.status is not None and (exc.status >= 500 or exc.status == 429)
    return isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


class LayoutWriter:
    """Creates MigLayouts and patches their spec, with bounded retries of transient failures;
    at start, reads their CRD to check that it is the schema this release writes."""

    def __init__(self, api_client: kubernetes.client.ApiClient, attempts: int = 3) -> None:
        self._client = api_client
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._attempts = attempts

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            retry=retry_if_exception(_retryable),
            reraise=True,
        ):
            with attempt:
                return await asyncio.to_thread(fn, *args, **kwargs)
        raise AssertionError("unreachable")

    async def crd_problem(self) -> str | None:
        """Why the installed MigLayout CRD will not do (cdmo.api.crd_problem), None when it will
        or cannot be read (a warning is logged: the check is a guard, not a requirement)."""
        extensions = kubernetes.client.ApiextensionsV1Api(self._client)
        try:
            # list, which kopf needs anyway (the chart grants it), not get: no extra permission.
            found = await self._call(
                extensions.list_custom_resource_definition, field_selector=f"metadata.name={CRD_NAME}"
            )
        except ApiException as exc:
            if exc.status in (401, 403):
                log.warning("Cannot read the MigLayout CRD to check its schema", reason=api_message(exc))
                return None
            raise
        items = self._client.sanitize_for_serialization(found).get("items") or []
        crd = next((c for c in items if (c.get("metadata") or {}).get("name") == CRD_NAME), None)
        return crd_problem(crd)

    async def create_miglayout(self, node_name: str, node_uid: str = "") -> bool:
        """Create the node's MigLayout (owned by the node when its uid is given); False if it exists already."""
        try:
            await self._call(
                self._custom.create_cluster_custom_object,
                GROUP,
                VERSION,
                PLURAL,
                build_bootstrap_miglayout(node_name, node_uid),
            )
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        log.info("Created MigLayout", node=node_name)
        return True

    async def set_owner(self, node_name: str, node_uid: str, resource_version: str) -> bool:
        """Make the node own its MigLayout (one made without an owner); False when it moved or is gone."""
        body = {
            "metadata": {
                "resourceVersion": resource_version,
                "ownerReferences": build_node_owner(node_name, node_uid),
            }
        }
        try:
            await self._call(
                self._custom.patch_cluster_custom_object, GROUP, VERSION, PLURAL, node_name, body
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        log.info("Set MigLayout owner", node=node_name)
        return True

    async def patch_spec(self, node_name: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Merge-patch the MigLayout; None when it moved meanwhile (409) or is gone (404).

        Raises :class:`SpecRefused` when the API server refuses the body itself (400, 422: the
        CRD's schema or CEL rules), which no retry mends.
        """
        try:
            result: dict[str, Any] = await self._call(
                self._custom.patch_cluster_custom_object, GROUP, VERSION, PLURAL, node_name, body
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                log.info("Skipped MigLayout patch", node=node_name, status=exc.status, reason=exc.reason)
                return None
            if exc.status in (400, 422):
                raise SpecRefused(node_name, api_message(exc)) from None
            raise
        return result


#: Kubernetes caps an Event's message at 1 KiB; the API server's reason goes into one.
_MAX_REASON = 600


def api_message(exc: ApiException) -> str:
    """The ``message`` of the API server's Status answer (else the HTTP reason), bounded."""
    text = ""
    try:
        status = json.loads(exc.body or "")
        if isinstance(status, dict):
            text = str(status.get("message") or "")
    except (TypeError, ValueError):
        pass
    text = text or f"{exc.status} {exc.reason or ''}".strip()
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."
