"""The node agent's Kubernetes I/O, thin: its own MigLayout, the pods on its node.

- read and watch the MigLayout named after the node (field selector metadata.name=NODE);
- patch ``miglayouts/status`` (a JSON merge patch: ``null`` removes a field);
- list the pods bound to the node (field selector spec.nodeName=NODE);
- list and delete the device plugin pods of the node (label selector, namespace).

Objects come back as plain dicts, the JSON the API server sent. API failures become
:class:`KubeError` (retry later); a watch whose resourceVersion expired raises
:class:`WatchExpired`. Any ``kubernetes.client.ApiClient`` works, so tests and the harness can
point it at ``http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from cdmo.api import GROUP, PLURAL, VERSION
from cdmo.errors import Transient


class KubeError(Transient):
    """A Kubernetes API call failed; the agent tries again later."""


class WatchExpired(KubeError):
    """410 Gone: the watch's resourceVersion is too old; read again, then watch from there."""


def _error(exc: ApiException, what: str) -> KubeError:
    reason = exc.reason or ""
    if exc.status == 410:
        return WatchExpired(f"{what}: resourceVersion expired (410)")
    return KubeError(f"{what}: Kubernetes API answered {exc.status} {reason}".strip())


class KubeClient:
    """What the agent reads and writes in Kubernetes. Thread-safe: every call is one request."""

    def __init__(self, api_client: client.ApiClient, *, request_timeout_seconds: float = 30.0) -> None:
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.request_timeout_seconds = request_timeout_seconds
        #: running watches -> whether interrupt() was called on them
        self._watches: dict[watch.Watch, bool] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> KubeClient:
        """In-cluster credentials (the DaemonSet's service account), else a kubeconfig."""
        conf = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=conf)
        except config.ConfigException:
            try:
                config.load_kube_config(config_file=kubeconfig, client_configuration=conf)
            except (config.ConfigException, OSError) as exc:
                raise KubeError(
                    f"no Kubernetes credentials: {exc}",
                    hint="run the agent in the cluster, or point KUBECONFIG at a kubeconfig",
                ) from exc
        return cls(client.ApiClient(conf))

    @classmethod
    def for_host(cls, host: str, token: str | None = None) -> KubeClient:
        """A client for an API server at ``host`` (tests, API doubles), with a bearer token if given."""
        conf = client.Configuration(host=host)
        if token:
            conf.api_key = {"authorization": token}
            conf.api_key_prefix = {"authorization": "Bearer"}
        return cls(client.ApiClient(conf))

    @staticmethod
    def _json(resp: Any) -> Any:
        return json.loads(resp.data or b"null")

    def read_miglayout(self, name: str) -> tuple[dict[str, Any] | None, str | None]:
        """(the MigLayout called ``name`` or None, the list's resourceVersion to watch from)."""
        try:
            resp = self.custom.list_cluster_custom_object(
                GROUP,
                VERSION,
                PLURAL,
                field_selector=f"metadata.name={name}",
                _preload_content=False,
                _request_timeout=self.request_timeout_seconds,
            )
        except ApiException as exc:
            raise _error(exc, f"read MigLayout {name}") from exc
        data = self._json(resp) or {}
        items = [i for i in data.get("items") or [] if (i.get("metadata") or {}).get("name") == name]
        return (items[0] if items else None), (data.get("metadata") or {}).get("resourceVersion")

    def watch_miglayout(
        self, name: str, *, resource_version: str | None, timeout_seconds: float
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event type, object) for changes of MigLayout ``name`` until the server ends the watch.

        :meth:`interrupt` ends every watch of this client at once (from another thread).
        """
        w = watch.Watch()
        with self._lock:
            self._watches[w] = False
        kwargs: dict[str, Any] = {
            "field_selector": f"metadata.name={name}",
            "timeout_seconds": max(1, int(timeout_seconds)),
            "allow_watch_bookmarks": True,
            "_request_timeout": (self.request_timeout_seconds, timeout_seconds + 30),
        }
        if resource_version:
            kwargs["resource_version"] = resource_version
        try:
            for event in w.stream(self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL, **kwargs):
                obj = event.get("raw_object") or event.get("object") or {}
                yield str(event.get("type")), obj
        except ApiException as exc:
            raise _error(exc, f"watch MigLayout {name}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if self._watches.get(w):
                return  # interrupt() cut the connection: a normal end
            raise KubeError(f"watch MigLayout {name}: the connection failed: {exc}") from exc
        finally:
            with self._lock:
                self._watches.pop(w, None)

    def interrupt(self) -> None:
        """Stop every running watch (their generators end promptly)."""
        with self._lock:
            watches = list(self._watches)
            for w in watches:
                self._watches[w] = True
        for w in watches:
            w.stop()

    def patch_miglayout_status(self, name: str, status: dict[str, Any]) -> None:
        """Write ``status`` through the /status subresource (JSON merge patch)."""
        try:
            self.custom.patch_cluster_custom_object_status(
                GROUP,
                VERSION,
                PLURAL,
                name,
                {"status": status},
                _preload_content=False,
                _request_timeout=self.request_timeout_seconds,
            )
        except ApiException as exc:
            raise _error(exc, f"write the status of MigLayout {name}") from exc

    def list_node_pods(self, node: str) -> list[dict[str, Any]]:
        """Every pod bound to ``node``, in every namespace."""
        try:
            resp = self.core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node}",
                _preload_content=False,
                _request_timeout=self.request_timeout_seconds,
            )
        except ApiException as exc:
            raise _error(exc, f"list the pods on node {node}") from exc
        return list((self._json(resp) or {}).get("items") or [])

    def list_pods(self, namespace: str, label_selector: str, node: str) -> list[dict[str, Any]]:
        """Pods of ``namespace`` matching ``label_selector`` that are bound to ``node``."""
        try:
            resp = self.core.list_namespaced_pod(
                namespace,
                label_selector=label_selector,
                field_selector=f"spec.nodeName={node}",
                _preload_content=False,
                _request_timeout=self.request_timeout_seconds,
            )
        except ApiException as exc:
            raise _error(exc, f"list pods {label_selector} in {namespace}") from exc
        items = (self._json(resp) or {}).get("items") or []
        return [p for p in items if (p.get("spec") or {}).get("nodeName") == node]

    def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a pod; one already gone is fine."""
        try:
            self.core.delete_namespaced_pod(
                name, namespace, _preload_content=False, _request_timeout=self.request_timeout_seconds
            )
        except ApiException as exc:
            if exc.status == 404:
                return
            raise _error(exc, f"delete pod {namespace}/{name}") from exc

    def close(self) -> None:
        self.interrupt()
        self.api_client.close()
