"""The node agent's Kubernetes I/O, thin: its own MigLayout, the pods on its node.

- read and watch the MigLayout named after the node (field selector metadata.name=NODE);
- patch ``miglayouts/status`` (a JSON merge patch: ``null`` removes a field);
- list the pods bound to the node (field selector spec.nodeName=NODE);
- list and delete the device plugin pods of the node (label selector, namespace);
- read its Node and replace its taints (the reconfiguring taint of the external modes).

- create Events on the node's MigLayout (MIG mode switched back on after a reboot).

Objects come back as plain dicts, the JSON the API server sent. A connection that fails or
times out (urllib3's errors, OSError) is tried again a bounded number of times with backoff
(tenacity), then reported like an API failure: :class:`KubeError` (retry later), never a
traceback. A watch whose resourceVersion expired raises :class:`WatchExpired`. Any ``kubernetes.client.ApiClient`` works, so tests and the harness can
point it at ``http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import tenacity
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from cdmo.api import GROUP, KIND, PLURAL, VERSION
from cdmo.errors import Transient


class KubeError(Transient):
    """A Kubernetes API call failed; the agent tries again later."""


class NotFound(KubeError):
    """404: the object does not exist."""


class WatchExpired(KubeError):
    """410 Gone: the watch's resourceVersion is too old; read again, then watch from there."""


def _error(exc: ApiException, what: str) -> KubeError:
    reason = exc.reason or ""
    if exc.status == 410:
        return WatchExpired(f"{what}: resourceVersion expired (410)")
    if exc.status == 404:
        return NotFound(f"{what}: Kubernetes API answered 404 {reason}".strip())
    return KubeError(f"{what}: Kubernetes API answered {exc.status} {reason}".strip())


#: What a request raises when the connection fails or times out (not an API answer).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (urllib3.exceptions.HTTPError, OSError)

#: Events about cluster-scoped objects (a MigLayout) go to this namespace unless told another
#: (``AgentConfig.events_namespace``; the chart gives the agent's own), as kubectl's do.
EVENT_NAMESPACE = "default"


class KubeClient:
    """What the agent reads and writes in Kubernetes. Thread-safe: every call is one request
    (tried again, ``connect_attempts`` times in all, when the connection fails)."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        request_timeout_seconds: float = 30.0,
        connect_attempts: int = 3,
        retry_wait_seconds: float = 0.5,
        event_namespace: str = EVENT_NAMESPACE,
    ) -> None:
        self.api_client = api_client
        self.event_namespace = event_namespace or EVENT_NAMESPACE
        self.connect_attempts = max(1, connect_attempts)
        self.retry_wait_seconds = retry_wait_seconds
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
        return json.loads(getattr(resp, "data", None) or b"null")

    def _request(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """The JSON body of ``fn(*args, **kwargs)`` (None when empty); connection failures retried
        with backoff, every failure a KubeError.

        Every call passes ``_preload_content=False``, so the body is read here, inside the
        retries: a connection that breaks or times out while the body arrives fails only then.
        """

        def call() -> Any:
            return self._json(fn(*args, **kwargs))

        wait = (
            tenacity.wait_exponential(multiplier=self.retry_wait_seconds, max=5 * self.retry_wait_seconds)
            if self.retry_wait_seconds > 0
            else tenacity.wait_none()
        )
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(CONNECTION_ERRORS),
            stop=tenacity.stop_after_attempt(self.connect_attempts),
            wait=wait,
            reraise=True,
        )
        try:
            return retrying(call)
        except ApiException as exc:
            raise _error(exc, what) from exc
        except ValueError as exc:  # a body cut short or not JSON (json.JSONDecodeError)
            raise KubeError(
                f"{what}: the Kubernetes API answered with a body that is not JSON: {exc}"
            ) from exc
        except CONNECTION_ERRORS as exc:
            raise KubeError(
                f"{what}: cannot reach the Kubernetes API after {self.connect_attempts} tries: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def read_miglayout(self, name: str) -> tuple[dict[str, Any] | None, str | None]:
        """(the MigLayout called ``name`` or None, the list's resourceVersion to watch from)."""
        resp = self._request(
            f"read MigLayout {name}",
            self.custom.list_cluster_custom_object,
            GROUP,
            VERSION,
            PLURAL,
            field_selector=f"metadata.name={name}",
            _preload_content=False,
            _request_timeout=self.request_timeout_seconds,
        )
        data = resp or {}
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
        except CONNECTION_ERRORS as exc:
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
        self._request(
            f"write the status of MigLayout {name}",
            self.custom.patch_cluster_custom_object_status,
            GROUP,
            VERSION,
            PLURAL,
            name,
            {"status": status},
            _preload_content=False,
            _request_timeout=self.request_timeout_seconds,
        )

    def list_node_pods(self, node: str) -> list[dict[str, Any]]:
        """Every pod bound to ``node``, in every namespace."""
        resp = self._request(
            f"list the pods on node {node}",
            self.core.list_pod_for_all_namespaces,
            field_selector=f"spec.nodeName={node}",
            _preload_content=False,
            _request_timeout=self.request_timeout_seconds,
        )
        return list((resp or {}).get("items") or [])

    def list_pods(self, namespace: str, label_selector: str, node: str) -> list[dict[str, Any]]:
        """Pods of ``namespace`` matching ``label_selector`` that are bound to ``node``."""
        resp = self._request(
            f"list pods {label_selector} in {namespace}",
            self.core.list_namespaced_pod,
            namespace,
            label_selector=label_selector,
            field_selector=f"spec.nodeName={node}",
            _preload_content=False,
            _request_timeout=self.request_timeout_seconds,
        )
        items = (resp or {}).get("items") or []
        return [p for p in items if (p.get("spec") or {}).get("nodeName") == node]

    def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a pod; one already gone is fine."""
        try:
            self._request(
                f"delete pod {namespace}/{name}",
                self.core.delete_namespaced_pod,
                name,
                namespace,
                _preload_content=False,
                _request_timeout=self.request_timeout_seconds,
            )
        except KubeError as exc:
            if isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 404:
                return
            raise

    def create_miglayout_event(
        self,
        layout: dict[str, Any],
        *,
        reason: str,
        message: str,
        event_type: str = "Normal",
        now: datetime | None = None,
    ) -> None:
        """An Event about MigLayout ``layout`` (the object as read), from the node agent."""
        meta = layout.get("metadata") or {}
        name = str(meta.get("name", ""))
        stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{name}.", "namespace": self.event_namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": name,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": event_type,
            "source": {"component": "cdmo-agent", "host": name},
            "reportingComponent": "cdmo.clear.ml/agent",
            "reportingInstance": name,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        self._request(
            f"create an Event on MigLayout {name}",
            self.core.create_namespaced_event,
            self.event_namespace,
            body,
            _preload_content=False,
            _request_timeout=self.request_timeout_seconds,
        )

    def read_node(self, name: str) -> dict[str, Any]:
        resp = self._request(
            f"read node {name}",
            self.core.read_node,
            name,
            _preload_content=False,
            _request_timeout=self.request_timeout_seconds,
        )
        return dict(resp or {})

    def patch_node_taints(
        self, name: str, taints: list[dict[str, Any]], resource_version: str | None
    ) -> None:
        """Replace ``spec.taints`` (a JSON merge patch replaces the list); with ``resource_version``
        the API server refuses the write (409) if the node changed since it was read."""
        body: dict[str, Any] = {"spec": {"taints": taints}}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        self._request(
            f"patch the taints of node {name}",
            self.core.patch_node,
            name,
            body,
            _content_type="application/merge-patch+json",
            _preload_content=False,
            _request_timeout=self.request_timeout_seconds,
        )

    def close(self) -> None:
        self.interrupt()
        self.api_client.close()
