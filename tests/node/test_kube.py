"""KubeClient's requests, against a tiny scripted HTTP server on 127.0.0.1.

The server answers only the requests the agent makes and records them, so the tests check
paths, selectors, content types and bodies. The full API double (tests/harness/kube_api.py)
is used in test_agent_integration.py when it is there.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import kubernetes
import pytest
import urllib3

from cdmo.node_agent.kube import KubeClient, KubeError, WatchExpired

MGL = "/apis/cdmo.clear.ml/v1alpha1/miglayouts"


class Script:
    """What the server answers, and what it was asked."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.items: list[dict[str, Any]] = []
        self.pods: list[dict[str, Any]] = []
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.status_code: int | None = None
        self.watch_gone = False
        #: seconds to wait before answering a GET (a slow or hung API server)
        self.delay_seconds = 0.0
        #: seconds to wait between the headers and the body (a connection that stalls mid-answer)
        self.body_delay_seconds = 0.0


def make_handler(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _record(self, body: Any = None) -> tuple[str, dict[str, list[str]]]:
            url = urlparse(self.path)
            query = parse_qs(url.query)
            script.requests.append(
                {
                    "method": self.command,
                    "path": url.path,
                    "query": query,
                    "body": body,
                    "content_type": self.headers.get("Content-Type"),
                }
            )
            return url.path, query

        def _send(self, code: int, doc: Any) -> None:
            data = json.dumps(doc).encode()
            try:
                self.send_response(code)
            except (BrokenPipeError, ConnectionResetError):
                return
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            # The client may have given up (a timeout test): nothing to answer then.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.flush()
                if script.body_delay_seconds:
                    time.sleep(script.body_delay_seconds)
                self.wfile.write(data)

        def _fail(self) -> bool:
            if script.status_code:
                self._send(
                    script.status_code, {"kind": "Status", "code": script.status_code, "reason": "Boom"}
                )
                return True
            return False

        def do_GET(self) -> None:
            path, query = self._record()
            if script.delay_seconds:
                time.sleep(script.delay_seconds)
            if self._fail():
                return
            if path == MGL and query.get("watch") == ["true"]:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                if script.watch_gone:
                    ev = {
                        "type": "ERROR",
                        "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"},
                    }
                    self._chunk(json.dumps(ev).encode() + b"\n")
                else:
                    while True:
                        try:
                            ev = script.events.get(timeout=5)
                        except queue.Empty:
                            break
                        if ev is None:
                            break
                        self._chunk(json.dumps(ev).encode() + b"\n")
                self._chunk(b"")
                return
            if path == MGL:
                self._send(
                    200,
                    {"kind": "MigLayoutList", "metadata": {"resourceVersion": "41"}, "items": script.items},
                )
            elif path == "/api/v1/pods" or path.startswith("/api/v1/namespaces/"):
                self._send(
                    200, {"kind": "PodList", "metadata": {"resourceVersion": "7"}, "items": script.pods}
                )
            else:
                self._send(404, {"kind": "Status", "code": 404})

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def do_PATCH(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            self._record(body)
            if self._fail():
                return
            self._send(200, {"metadata": {"name": "gpu-1"}, **body})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            self._record(body)
            if self._fail():
                return
            self._send(201, body)

        def do_DELETE(self) -> None:
            length = int(self.headers.get("Content-Length", "0") or 0)
            if length:
                self.rfile.read(length)
            path, _ = self._record()
            if self._fail():
                return
            if path.endswith("/gone"):
                self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
            else:
                self._send(200, {"kind": "Pod", "metadata": {"name": path.rsplit("/", 1)[1]}})

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[Script, KubeClient]]:
    script = Script()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(script))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    client = KubeClient.for_host(f"http://127.0.0.1:{httpd.server_address[1]}")
    try:
        yield script, client
    finally:
        script.events.put(None)
        client.close()
        httpd.shutdown()
        httpd.server_close()


def test_read_uses_the_name_field_selector(server: tuple[Script, KubeClient]) -> None:
    script, client = server
    script.items = [{"metadata": {"name": "gpu-1", "generation": 3}, "spec": {"gpus": []}}]
    obj, rv = client.read_miglayout("gpu-1")
    assert obj is not None and obj["metadata"]["generation"] == 3 and rv == "41"
    [req] = script.requests
    assert req["path"] == MGL and req["query"]["fieldSelector"] == ["metadata.name=gpu-1"]
    script.items = []
    assert client.read_miglayout("gpu-1") == (None, "41")


def test_status_goes_through_the_status_subresource_as_a_merge_patch(
    server: tuple[Script, KubeClient],
) -> None:
    script, client = server
    client.patch_miglayout_status("gpu-1", {"phase": "Ready", "lastError": None})
    [req] = script.requests
    assert req["method"] == "PATCH" and req["path"] == f"{MGL}/gpu-1/status"
    assert req["content_type"] == "application/merge-patch+json"
    assert req["body"] == {"status": {"phase": "Ready", "lastError": None}}


def test_pods_of_the_node(server: tuple[Script, KubeClient]) -> None:
    script, client = server
    script.pods = [
        {"metadata": {"name": "a", "namespace": "ml"}, "spec": {"nodeName": "gpu-1"}},
        {"metadata": {"name": "b", "namespace": "ml"}, "spec": {"nodeName": "gpu-2"}},
    ]
    assert [p["metadata"]["name"] for p in client.list_node_pods("gpu-1")] == ["a", "b"]
    assert script.requests[0]["path"] == "/api/v1/pods"
    assert script.requests[0]["query"]["fieldSelector"] == ["spec.nodeName=gpu-1"]
    # The namespaced list filters by node on our side too (a server may ignore field selectors).
    assert [p["metadata"]["name"] for p in client.list_pods("gpu-operator", "app=plugin", "gpu-1")] == ["a"]
    req = script.requests[1]
    assert req["path"] == "/api/v1/namespaces/gpu-operator/pods"
    assert req["query"]["labelSelector"] == ["app=plugin"] and req["query"]["fieldSelector"] == [
        "spec.nodeName=gpu-1"
    ]


def test_delete_pod_tolerates_a_gone_pod(server: tuple[Script, KubeClient]) -> None:
    script, client = server
    client.delete_pod("gpu-operator", "plugin-a")
    client.delete_pod("gpu-operator", "gone")
    assert [(r["method"], r["path"]) for r in script.requests] == [
        ("DELETE", "/api/v1/namespaces/gpu-operator/pods/plugin-a"),
        ("DELETE", "/api/v1/namespaces/gpu-operator/pods/gone"),
    ]


def test_api_errors_become_kube_errors(server: tuple[Script, KubeClient]) -> None:
    script, client = server
    script.status_code = 503
    with pytest.raises(KubeError, match="503"):
        client.read_miglayout("gpu-1")
    with pytest.raises(KubeError, match="503"):
        client.patch_miglayout_status("gpu-1", {})
    with pytest.raises(KubeError):
        client.list_node_pods("gpu-1")
    with pytest.raises(KubeError):
        client.list_pods("ns", "a=b", "gpu-1")
    with pytest.raises(KubeError):
        client.delete_pod("ns", "p")


def test_watch_streams_events_with_the_selector(server: tuple[Script, KubeClient]) -> None:
    script, client = server
    script.events.put(
        {
            "type": "MODIFIED",
            "object": {"metadata": {"name": "gpu-1", "generation": 2, "resourceVersion": "50"}},
        }
    )
    script.events.put(None)
    events = list(client.watch_miglayout("gpu-1", resource_version="41", timeout_seconds=5))
    assert [(k, o["metadata"]["generation"]) for k, o in events] == [("MODIFIED", 2)]
    req = script.requests[0]
    assert req["query"]["watch"] == ["true"] and req["query"]["resourceVersion"] == ["41"]
    assert req["query"]["fieldSelector"] == ["metadata.name=gpu-1"] and req["query"][
        "allowWatchBookmarks"
    ] == ["true"]


def test_watch_gone_raises_watch_expired(server: tuple[Script, KubeClient]) -> None:
    script, client = server
    script.watch_gone = True
    with pytest.raises(WatchExpired):
        list(client.watch_miglayout("gpu-1", resource_version="1", timeout_seconds=5))


def test_watch_http_error_raises_kube_error(server: tuple[Script, KubeClient]) -> None:
    script, client = server
    script.status_code = 500
    with pytest.raises(KubeError):
        list(client.watch_miglayout("gpu-1", resource_version=None, timeout_seconds=5))


def test_interrupt_ends_a_waiting_watch(server: tuple[Script, KubeClient]) -> None:
    script, client = server
    got: list[Any] = []
    done = threading.Event()

    def consume() -> None:
        try:
            got.extend(client.watch_miglayout("gpu-1", resource_version=None, timeout_seconds=60))
        except KubeError:
            pass
        finally:
            done.set()

    threading.Thread(target=consume, daemon=True).start()
    script.events.put({"type": "ADDED", "object": {"metadata": {"name": "gpu-1", "resourceVersion": "2"}}})
    for _ in range(200):
        if got:
            break
        done.wait(0.01)
    client.interrupt()
    assert done.wait(5), "the watch did not end after interrupt()"
    assert [k for k, _ in got] == ["ADDED"]


def test_from_environment_without_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeError, match="no Kubernetes credentials"):
        KubeClient.from_environment(str(tmp_path / "missing-kubeconfig"))


def test_from_environment_with_a_kubeconfig(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    path = tmp_path / "config"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    client = KubeClient.from_environment(str(path))
    assert client.api_client.configuration.host == "http://127.0.0.1:9"
    client.close()


# --- connection errors and timeouts (issue 10, item 6) --------------------------------------


class FlakyList:
    """list_cluster_custom_object that fails ``failures`` times with ``error``, then answers."""

    def __init__(self, failures: int, error: BaseException) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error

        class Resp:
            data = json.dumps({"metadata": {"resourceVersion": "5"}, "items": []}).encode()

        return Resp()


CONNECTION_FAILURES = [
    urllib3.exceptions.NewConnectionError(None, "connection refused"),  # type: ignore[arg-type]
    urllib3.exceptions.ReadTimeoutError(None, "/apis", "read timed out"),  # type: ignore[arg-type]
    urllib3.exceptions.ProtocolError("connection aborted"),
    urllib3.exceptions.MaxRetryError(None, "/apis", "too many retries"),  # type: ignore[arg-type]
    ConnectionResetError("reset by peer"),
    TimeoutError("timed out"),
]


@pytest.mark.parametrize("error", CONNECTION_FAILURES, ids=lambda e: type(e).__name__)
def test_a_connection_error_is_tried_again_and_then_succeeds(error: BaseException) -> None:
    client = KubeClient.for_host("http://127.0.0.1:9")
    client.retry_wait_seconds = 0
    flaky = FlakyList(2, error)
    client.custom.list_cluster_custom_object = flaky  # type: ignore[method-assign]
    assert client.read_miglayout("gpu-1") == (None, "5")
    assert flaky.calls == 3


@pytest.mark.parametrize("error", CONNECTION_FAILURES, ids=lambda e: type(e).__name__)
def test_a_connection_that_keeps_failing_is_a_kube_error_after_bounded_tries(error: BaseException) -> None:
    client = KubeClient.for_host("http://127.0.0.1:9")
    client.retry_wait_seconds = 0
    flaky = FlakyList(100, error)
    client.custom.list_cluster_custom_object = flaky  # type: ignore[method-assign]
    with pytest.raises(KubeError, match="cannot reach the Kubernetes API after 3 tries"):
        client.read_miglayout("gpu-1")
    assert flaky.calls == 3


def test_a_refused_connection_is_a_kube_error_on_every_call() -> None:
    """A real socket: nothing listens on the port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    conf = kubernetes.client.Configuration(host=f"http://127.0.0.1:{port}")
    conf.retries = False  # urllib3's own retries off: the bound is cdmo's
    client = KubeClient(kubernetes.client.ApiClient(conf), request_timeout_seconds=2, retry_wait_seconds=0)
    calls: list[Callable[[], Any]] = [
        lambda: client.read_miglayout("gpu-1"),
        lambda: client.patch_miglayout_status("gpu-1", {}),
        lambda: client.list_node_pods("gpu-1"),
        lambda: client.list_pods("ns", "a=b", "gpu-1"),
        lambda: client.delete_pod("ns", "p"),
        lambda: client.create_miglayout_event({"metadata": {"name": "gpu-1"}}, reason="R", message="m"),
    ]
    for call in calls:
        with pytest.raises(KubeError, match="cannot reach"):
            call()


def test_a_request_that_times_out_is_a_kube_error(server: tuple[Script, KubeClient]) -> None:
    script, client = server
    script.delay_seconds = 1.0
    client.request_timeout_seconds = 0.2
    client.retry_wait_seconds = 0
    client.api_client.rest_client.pool_manager.connection_pool_kw["retries"] = False
    with pytest.raises(KubeError, match="cannot reach"):
        client.list_node_pods("gpu-1")
    assert len(script.requests) == 3


def test_a_body_that_stalls_after_the_headers_is_tried_again_and_then_a_kube_error(
    server: tuple[Script, KubeClient],
) -> None:
    """The client reads bodies lazily (_preload_content=False): the read is inside the retries."""
    script, client = server
    script.body_delay_seconds = 1.0
    client.request_timeout_seconds = 0.2
    client.retry_wait_seconds = 0
    client.api_client.rest_client.pool_manager.connection_pool_kw["retries"] = False
    with pytest.raises(KubeError, match="cannot reach"):
        client.list_node_pods("gpu-1")
    assert len(script.requests) == 3


def test_events_go_to_the_namespace_the_agent_is_given(server: tuple[Script, KubeClient]) -> None:
    script, client = server
    client.event_namespace = "cdmo-system"
    client.create_miglayout_event({"metadata": {"name": "gpu-1"}}, reason="R", message="m")
    (req,) = script.requests
    assert req["path"] == "/api/v1/namespaces/cdmo-system/events"
    assert req["body"]["metadata"]["namespace"] == "cdmo-system"


def test_events_on_the_miglayout(server: tuple[Script, KubeClient]) -> None:
    script, client = server
    layout = {"metadata": {"name": "gpu-1", "uid": "u-1", "resourceVersion": "9"}}
    client.create_miglayout_event(layout, reason="MigModeRestored", message="MIG is back on GPU 0")
    (req,) = script.requests
    assert (req["method"], req["path"]) == ("POST", "/api/v1/namespaces/default/events")
    body = req["body"]
    assert body["involvedObject"] == {
        "apiVersion": "cdmo.clear.ml/v1alpha1",
        "kind": "MigLayout",
        "name": "gpu-1",
        "uid": "u-1",
        "resourceVersion": "9",
    }
    assert (body["reason"], body["type"], body["message"]) == (
        "MigModeRestored",
        "Normal",
        "MIG is back on GPU 0",
    )


def test_kube_client_replaces_taints_with_a_merge_patch_guarded_by_resource_version(
    server: tuple[Script, KubeClient],
) -> None:
    script, client = server
    taints = [{"key": "cdmo.clear.ml/reconfiguring", "value": "true", "effect": "NoSchedule"}]
    client.patch_node_taints("gpu-1", taints, "17")
    [req] = script.requests
    assert req["method"] == "PATCH" and req["path"] == "/api/v1/nodes/gpu-1"
    assert req["content_type"] == "application/merge-patch+json"
    assert req["body"] == {"spec": {"taints": taints}, "metadata": {"resourceVersion": "17"}}
