"""The admission webhook over real HTTPS, and the API double calling it on pod create.

The webhook reads labelled nodes from the API double with the kubernetes client; the double
calls it as kube-apiserver does (tests/harness/admission.py says where the double differs).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from tests.harness.admission import AdmissionChain, MutatingWebhook
from tests.harness.kube_api import KubeApiDouble
from tests.harness.tls import TlsFiles, make_tls_files
from tests.harness.webhook import WebhookThread, write_kubeconfig


def add_node(api: KubeApiDouble, name: str, product: str, labelled: bool = True) -> None:
    labels = {"nvidia.com/gpu.product": product}
    if labelled:
        labels["cdmo.clear.ml/gpu-partitioning"] = "mig"
    api.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})


def pod(
    name: str,
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    limits: dict[str, Any] | None = None,
    node_selector: dict[str, str] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "worker"}
    if limits:
        container["resources"] = {"limits": limits}
    spec: dict[str, Any] = {"containers": [container]}
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
        "spec": spec,
    }


def review(obj: dict[str, Any], uid: str = "u-1") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default",
            "operation": "CREATE",
            "object": obj,
        },
    }


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "tls")


@pytest.fixture
def webhook(kube_api: KubeApiDouble, tls: TlsFiles) -> Iterator[WebhookThread]:
    with WebhookThread(kube_api.url, tls) as hook:
        yield hook


@pytest.fixture
def core(api_client: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api_client)


async def _post(url: str, body: Any, ca_file: Path | None) -> tuple[int, Any]:
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else ssl.create_default_context()
    async with aiohttp.ClientSession() as session, session.post(url, json=body, ssl=context) as resp:
        return resp.status, await resp.json(content_type=None)


def test_webhook_answers_an_admission_review_over_https_with_a_json_patch(
    kube_api: KubeApiDouble, webhook: WebhookThread, tls: TlsFiles
) -> None:
    add_node(kube_api, "gpu-1", "NVIDIA-H100-80GB-HBM3")
    webhook.wait_for_models({"h100-80gb": 1})
    status, body = asyncio.run(
        _post(webhook.url + "/mutate", review(pod("p", annotations={"gpu-fraction": "0.5"})), tls.ca_file)
    )
    assert status == 200
    response = body["response"]
    assert (body["kind"], response["uid"], response["allowed"], response["patchType"]) == (
        "AdmissionReview",
        "u-1",
        True,
        "JSONPatch",
    )
    ops = json.loads(base64.b64decode(response["patch"]))
    assert {
        "op": "add",
        "path": "/spec/containers/0/resources",
        "value": {"limits": {"nvidia.com/mig-4g.40gb": "1"}},
    } in ops


def test_webhook_certificate_is_checked_a_client_without_its_ca_is_refused(
    webhook: WebhookThread,
) -> None:
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        asyncio.run(_post(webhook.url + "/mutate", review(pod("p")), None))


def test_webhook_answers_bad_bodies_with_400_and_other_kinds_unchanged(
    webhook: WebhookThread, tls: TlsFiles
) -> None:
    status, _ = asyncio.run(_post(webhook.url + "/mutate", {"kind": "Nope"}, tls.ca_file))
    assert status == 400
    other = review({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
    other["request"]["kind"] = {"group": "", "version": "v1", "kind": "ConfigMap"}
    status, body = asyncio.run(_post(webhook.url + "/mutate", other, tls.ca_file))
    assert status == 200 and body["response"] == {"uid": "u-1", "allowed": True}


def _chain(kube_api: KubeApiDouble, hooks: list[MutatingWebhook]) -> AdmissionChain:
    chain = AdmissionChain(hooks)
    kube_api.server.admission = chain
    return chain


def test_api_double_calls_the_webhook_on_create_and_stores_the_patched_pod_as_kube_apiserver_does(
    kube_api: KubeApiDouble, webhook: WebhookThread, tls: TlsFiles, core: kubernetes.client.CoreV1Api
) -> None:
    add_node(kube_api, "gpu-1", "NVIDIA-H100-80GB-HBM3")
    webhook.wait_for_models({"h100-80gb": 1})
    chain = _chain(
        kube_api, [MutatingWebhook("fractional.cdmo.clear.ml", webhook.url + "/mutate", tls.ca_file)]
    )
    core.create_namespaced_pod("default", pod("meta", limits={"cnvrg.io/metagpu": "50"}))
    stored = kube_api.get("pods", "meta", "default")
    assert stored is not None
    limits = stored["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"nvidia.com/mig-4g.40gb": "1"}  # cnvrg.io/metagpu removed
    record = json.loads(stored["metadata"]["annotations"]["cdmo.clear.ml/fractional-ask"])
    assert record[0]["asked"] == {"cnvrg.io/metagpu": "50"} and record[0]["profile"] == "4g.40gb"
    assert [c.outcome for c in chain.calls] == ["patched"]


def test_the_model_most_labelled_nodes_carry_is_used_when_the_pod_selects_none(
    kube_api: KubeApiDouble, webhook: WebhookThread, tls: TlsFiles, core: kubernetes.client.CoreV1Api
) -> None:
    add_node(kube_api, "h100-1", "NVIDIA-H100-80GB-HBM3")
    add_node(kube_api, "h200-1", "NVIDIA-H200")
    add_node(kube_api, "h200-2", "NVIDIA-H200")
    add_node(kube_api, "a100-unlabelled-1", "NVIDIA-A100-SXM4-40GB", labelled=False)
    add_node(kube_api, "a100-unlabelled-2", "NVIDIA-A100-SXM4-40GB", labelled=False)
    add_node(kube_api, "a100-unlabelled-3", "NVIDIA-A100-SXM4-40GB", labelled=False)
    webhook.wait_for_models({"h100-80gb": 1, "h200-141gb": 2})
    _chain(kube_api, [MutatingWebhook("fractional.cdmo.clear.ml", webhook.url + "/mutate", tls.ca_file)])
    core.create_namespaced_pod("default", pod("cfgi", labels={"clearml-injector/fraction": "0.125"}))
    core.create_namespaced_pod(
        "default",
        pod(
            "pinned",
            labels={"clearml-injector/fraction": "0.125"},
            node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        ),
    )
    limits = {
        n: kube_api.get("pods", n, "default")["spec"]["containers"][0]["resources"]["limits"]
        for n in ("cfgi", "pinned")
    }  # type: ignore[index]
    assert limits == {"cfgi": {"nvidia.com/mig-1g.18gb": "1"}, "pinned": {"nvidia.com/mig-1g.10gb": "1"}}


def test_a_pod_no_model_can_serve_is_refused_with_what_would_fit(
    kube_api: KubeApiDouble, webhook: WebhookThread, tls: TlsFiles, core: kubernetes.client.CoreV1Api
) -> None:
    add_node(kube_api, "gpu-1", "NVIDIA-H100-80GB-HBM3")
    webhook.wait_for_models({"h100-80gb": 1})
    _chain(kube_api, [MutatingWebhook("fractional.cdmo.clear.ml", webhook.url + "/mutate", tls.ca_file)])
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("default", pod("big", annotations={"gpu-memory": "100000"}))
    assert err.value.status == 403
    message = json.loads(err.value.body)["message"]
    assert 'admission webhook "fractional.cdmo.clear.ml" denied the request' in message
    assert "ask at most 81152 MiB" in message and "h200-141gb" in message
    assert "\n" not in message
    assert kube_api.get("pods", "big", "default") is None


def test_a_pod_asking_for_a_whole_gpu_and_a_share_is_denied_with_what_to_remove(
    kube_api: KubeApiDouble, webhook: WebhookThread, tls: TlsFiles, core: kubernetes.client.CoreV1Api
) -> None:
    """The MIG limit used to be added next to nvidia.com/gpu: a pod that can never be scheduled."""
    add_node(kube_api, "gpu-1", "NVIDIA-H100-80GB-HBM3")
    webhook.wait_for_models({"h100-80gb": 1})
    _chain(kube_api, [MutatingWebhook("fractional.cdmo.clear.ml", webhook.url + "/mutate", tls.ca_file)])
    both = pod("both", annotations={"gpu-fraction": "0.25"}, limits={"nvidia.com/gpu": "1"})
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("default", both)
    assert err.value.status == 403
    message = json.loads(err.value.body)["message"]
    assert message == (
        'admission webhook "fractional.cdmo.clear.ml" denied the request: pod default/both: container main'
        " asks for a whole GPU (nvidia.com/gpu=1) and a share of one (kai gpu-fraction=0.25); cdmo makes room"
        " for the share as a MIG slice, never for whole GPUs in the same pod, which would wait forever"
        " (KAI refuses such a pod too): remove nvidia.com/gpu from container main to run on a MIG slice,"
        " or remove annotation gpu-fraction to keep the whole GPU"
    )
    assert kube_api.get("pods", "both", "default") is None


def test_metagpu_in_an_init_container_and_a_sidecar_is_stored_as_mig_devices_the_pod_can_get(
    kube_api: KubeApiDouble, webhook: WebhookThread, tls: TlsFiles, core: kubernetes.client.CoreV1Api
) -> None:
    """cnvrg.io/metagpu left in spec.initContainers is a resource no MIG node offers: the pod pended."""
    from cdmo.demand import read_demand

    add_node(kube_api, "gpu-1", "NVIDIA-H100-80GB-HBM3")
    webhook.wait_for_models({"h100-80gb": 1})
    _chain(kube_api, [MutatingWebhook("fractional.cdmo.clear.ml", webhook.url + "/mutate", tls.ca_file)])
    body = pod("init-meta", limits={"cnvrg.io/metagpu": "25"})
    body["spec"]["initContainers"] = [
        {"name": "proxy", "image": "p", "restartPolicy": "Always", "resources": {"limits": {"cnvrg.io/metagpu": "25"}}},
        {"name": "fetch", "image": "f", "resources": {"limits": {"cnvrg.io/metagpu": "50"}}},
    ]  # fmt: skip
    core.create_namespaced_pod("default", body)
    stored = kube_api.get("pods", "init-meta", "default")
    assert stored is not None
    assert [c["resources"]["limits"] for c in stored["spec"]["initContainers"]] == [
        {"nvidia.com/mig-2g.20gb": "1"},
        {"nvidia.com/mig-4g.40gb": "1"},
    ]
    assert stored["spec"]["initContainers"][0]["restartPolicy"] == "Always"
    assert "cnvrg.io/metagpu" not in json.dumps(stored["spec"])
    # app + sidecar run together (2 x 2g); the plain init container ran beside the sidecar (2g + 4g)
    assert read_demand(stored).by_profile() == {"2g.20gb": 2, "4g.40gb": 1}


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"https://127.0.0.1:{port}/mutate"


@pytest.mark.parametrize(("policy", "created"), [("Fail", False), ("Ignore", True)])
def test_failure_policy_is_honoured_by_the_api_double_when_the_webhook_is_down(
    kube_api: KubeApiDouble, tls: TlsFiles, core: kubernetes.client.CoreV1Api, policy: str, created: bool
) -> None:
    chain = _chain(
        kube_api,
        [
            MutatingWebhook(
                "fractional.cdmo.clear.ml",
                _closed_port_url(),
                tls.ca_file,
                failure_policy=policy,
                timeout_seconds=2,
            )
        ],
    )
    body = pod("down", annotations={"gpu-fraction": "0.5"})
    if created:
        core.create_namespaced_pod("default", body)
        stored = kube_api.get("pods", "down", "default")
        assert stored is not None and "resources" not in stored["spec"]["containers"][0]
        assert [c.outcome for c in chain.calls] == ["failed-open"]
    else:
        with pytest.raises(ApiException) as err:
            core.create_namespaced_pod("default", body)
        assert err.value.status == 500
        assert 'failed calling webhook "fractional.cdmo.clear.ml"' in json.loads(err.value.body)["message"]
        assert kube_api.get("pods", "down", "default") is None


def test_object_selector_keeps_opted_out_pods_away_from_the_webhook_in_the_api_double(
    kube_api: KubeApiDouble, tls: TlsFiles, core: kubernetes.client.CoreV1Api
) -> None:
    # the webhook is down and fails closed: only a pod that reaches it would be refused
    selector = {
        "matchExpressions": [{"key": "cdmo.clear.ml/translate", "operator": "NotIn", "values": ["false"]}]
    }
    hook = MutatingWebhook(
        "fractional.cdmo.clear.ml",
        _closed_port_url(),
        tls.ca_file,
        object_selector=selector,
        timeout_seconds=2,
    )
    chain = _chain(kube_api, [hook])
    core.create_namespaced_pod(
        "default",
        pod("opted-out", labels={"cdmo.clear.ml/translate": "false"}, annotations={"gpu-fraction": "0.5"}),
    )
    assert kube_api.get("pods", "opted-out", "default") is not None
    assert chain.calls == []


class _Rotation:
    """A mounted Secret's two files, holding the ``old`` pair, and a ``new`` pair to write there."""

    def __init__(self, tmp_path: Path) -> None:
        self.old = make_tls_files(tmp_path / "old")
        self.new = make_tls_files(tmp_path / "new")
        live = tmp_path / "live"
        live.mkdir()
        self.cert, self.key = live / "tls.crt", live / "tls.key"
        self.cert.write_bytes(self.old.cert_file.read_bytes())
        self.key.write_bytes(self.old.key_file.read_bytes())

    @contextlib.asynccontextmanager
    async def serving(self, every: float) -> AsyncIterator[Callable[[Path], Awaitable[bool]]]:
        """The webhook on a free port, reloading the files every ``every`` seconds; yields
        ``trusted_by(ca)``: whether a client trusting only ``ca`` gets an answer."""
        from aiohttp import web

        from cdmo.webhook.server import build_app, reload_certificate, server_ssl_context

        async def models() -> dict[str, int]:
            return {"h100-80gb": 1}

        context = server_ssl_context(str(self.cert), str(self.key))
        runner = web.AppRunner(build_app(models))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        url = f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/healthz"  # type: ignore[union-attr]

        async def trusted_by(ca: Path) -> bool:
            ssl_ctx = ssl.create_default_context(cafile=str(ca))
            try:
                async with aiohttp.ClientSession() as s, s.get(url, ssl=ssl_ctx) as resp:
                    return resp.status == 200
            except aiohttp.ClientConnectorError:  # the certificate's error among them
                return False

        reloader = asyncio.get_running_loop().create_task(
            reload_certificate(context, str(self.cert), str(self.key), every)
        )
        await asyncio.sleep(0)  # the reloader notes the files as they are before its first wait
        try:
            yield trusted_by
        finally:
            reloader.cancel()
            await runner.cleanup()


def test_a_renewed_certificate_is_served_without_a_restart(tmp_path: Path) -> None:
    """Rotation: new files in the mounted Secret are picked up; clients trusting only the new CA connect."""
    tls = _Rotation(tmp_path)

    async def scenario() -> tuple[bool, bool]:
        async with tls.serving(0.05) as trusted_by:
            assert await trusted_by(tls.old.ca_file) and not await trusted_by(tls.new.ca_file)
            # what the kubelet does when cert-manager renews the Secret
            tls.cert.write_bytes(tls.new.cert_file.read_bytes())
            tls.key.write_bytes(tls.new.key_file.read_bytes())
            for _ in range(100):
                if await trusted_by(tls.new.ca_file):
                    break
                await asyncio.sleep(0.05)
            return await trusted_by(tls.new.ca_file), await trusted_by(tls.old.ca_file)

    new_ok, old_ok = asyncio.run(scenario())
    assert new_ok and not old_ok


def test_cdmo_webhook_command_serves_over_https_and_stops_on_sigterm(
    kube_api: KubeApiDouble, tls: TlsFiles, tmp_path: Path
) -> None:
    """The real `cdmo webhook` process, with a kubeconfig pointing at the API double."""
    import signal
    import subprocess
    import sys
    import time

    add_node(kube_api, "gpu-1", "NVIDIA-H200")
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube_api.url)
    port = int(_closed_port_url().split(":")[2].split("/")[0])
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdmo.cli", "webhook", "--port", str(port), "--cert-file", str(tls.cert_file),
         "--key-file", str(tls.key_file), "--kubeconfig", str(kubeconfig)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = f"https://127.0.0.1:{port}/mutate"
        deadline = time.monotonic() + 30
        body: Any = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, body = asyncio.run(
                    _post(url, review(pod("p", labels={"clearml-injector/fraction": "0.125"})), tls.ca_file)
                )
                if status == 200 and body["response"].get("patch"):
                    break
            except aiohttp.ClientConnectorError:
                pass
            time.sleep(0.2)
        assert body is not None and proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        ops = json.loads(base64.b64decode(body["response"]["patch"]))
        assert ops[0]["value"] == {"limits": {"nvidia.com/mig-1g.18gb": "1"}}  # the H200 of the double
        # A client that stops halfway through its body holds a request in flight: SIGTERM waits for
        # it only as long as the API server would (aiohttp's own default is 60 s, past the 30 s
        # after which the kubelet kills the pod).
        stuck = ssl.create_default_context(cafile=str(tls.ca_file)).wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=30), server_hostname="127.0.0.1"
        )
        stuck.sendall(
            b"POST /mutate HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n"
        )
        assert stuck.recv(100).startswith(b"HTTP/1.1 100")  # the route matched; the handler now reads
        stuck.sendall(b"{")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(45)  # only against a hang: the webhook gives in-flight requests 10 s
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0


async def test_nodes_never_read_is_a_503_so_the_api_server_applies_failure_policy() -> None:
    """Not "no labelled node carries a MIG model" (labels are fine): the webhook cannot tell yet."""
    from aiohttp.test_utils import TestClient, TestServer

    from cdmo.webhook.nodes import NodeModels, NodesUnreadable
    from cdmo.webhook.server import build_app

    api = kubernetes.client.ApiClient(kubernetes.client.Configuration(host="http://127.0.0.1:9"))
    nodes = NodeModels(api, "cdmo.clear.ml/gpu-partitioning=mig", 60.0)

    def refused() -> dict[str, int]:
        raise kubernetes.client.ApiException(status=403, reason="Forbidden")

    nodes._read = refused  # type: ignore[method-assign]
    await nodes.refresh()
    with pytest.raises(NodesUnreadable, match="Forbidden"):
        await nodes.current(wait=0.01)
    app = build_app(lambda: nodes.current(wait=0.01), ready=nodes.not_ready)
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/mutate", json=review(pod("p", annotations={"gpu-fraction": "0.5"})))
        assert resp.status == 503
        assert "cannot read the cluster's labelled nodes" in (await resp.json())["error"]
        # not ready: the Service sends the API server's calls to a replica that can answer
        ready = await client.get("/readyz")
        assert ready.status == 503 and "Forbidden" in await ready.text()
        assert (await client.get("/healthz")).status == 200  # alive all the same: no restart
        # once a list is read, the models are answered
        nodes._read = lambda: {"h100-80gb": 2}  # type: ignore[method-assign]
        await nodes.refresh()
        assert await nodes.current(wait=0.01) == {"h100-80gb": 2} and nodes.error is None
        assert (await client.get("/readyz")).status == 200
    api.close()


async def _post_bytes(url: str, data: bytes, ca_file: Path) -> tuple[int, Any]:
    context = ssl.create_default_context(cafile=str(ca_file))
    headers = {"Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=data, headers=headers, ssl=context) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


def test_a_v1beta1_review_is_answered_in_v1beta1_and_an_unknown_version_is_refused(
    kube_api: KubeApiDouble, webhook: WebhookThread, tls: TlsFiles
) -> None:
    """kube-apiserver refuses a response whose apiVersion differs from the request's."""
    add_node(kube_api, "gpu-1", "NVIDIA-H100-80GB-HBM3")
    webhook.wait_for_models({"h100-80gb": 1})
    old = review(pod("p", annotations={"gpu-fraction": "0.5"}), uid="beta")
    old["apiVersion"] = "admission.k8s.io/v1beta1"
    status, body = asyncio.run(_post(webhook.url + "/mutate", old, tls.ca_file))
    assert status == 200
    assert (body["apiVersion"], body["kind"], body["response"]["uid"]) == (
        "admission.k8s.io/v1beta1",
        "AdmissionReview",
        "beta",
    )
    assert body["response"]["patchType"] == "JSONPatch"
    unknown = {**old, "apiVersion": "admission.k8s.io/v2"}
    status, body = asyncio.run(_post(webhook.url + "/mutate", unknown, tls.ca_file))
    assert status == 400 and "admission.k8s.io/v2" in body["error"]


def _shaped(obj: Any, **request: Any) -> bytes:
    body = review(obj)
    body["request"].update(request)
    return json.dumps(body).encode()


_ASK = {"name": "p", "annotations": {"gpu-fraction": "0.5"}}


@pytest.mark.parametrize(
    "data",
    [
        _shaped(pod("p"), kind="Pod"),
        _shaped({"metadata": "p", "spec": {"containers": [{"name": "m"}]}}),
        _shaped({"metadata": {"name": "p", "annotations": ["gpu-fraction"]}, "spec": {"containers": []}}),
        _shaped({"metadata": _ASK, "spec": {"containers": {"main": {}}}}),
        _shaped({"metadata": _ASK, "spec": {"containers": ["main"]}}),
        _shaped({"metadata": _ASK, "spec": {"containers": [{"name": "m", "resources": ["limits"]}]}}),
        _shaped({"metadata": _ASK, "spec": {"containers": [{"name": "m"}], "nodeSelector": ["a"]}}),
        b"[" * 100_000 + b"]" * 100_000,
        _shaped({"metadata": _ASK, "spec": {"containers": [None]}}),
        _shaped({"metadata": _ASK, "spec": {"containers": [{"name": "m"}], "initContainers": [None]}}),
        _shaped({"metadata": _ASK, "spec": {"containers": [{"name": "m"}], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [None]}}}}}),
        _shaped({"metadata": _ASK, "spec": {"containers": [{"name": "m"}], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [None]}]}}}}}),
    ],
    ids=["kind-str", "meta-str", "annotations-list", "containers-dict", "container-str", "resources-list",
         "node-selector-list", "deep-json", "container-null", "init-container-null", "selector-term-null",
         "expression-null"],
)  # fmt: skip
def test_a_body_no_api_server_would_send_is_a_400_and_the_webhook_keeps_serving(
    kube_api: KubeApiDouble, webhook: WebhookThread, tls: TlsFiles, data: bytes
) -> None:
    """A hostile or broken client: one line back with 400, not a 500 and a traceback in the log."""
    add_node(kube_api, "gpu-1", "NVIDIA-H100-80GB-HBM3")
    webhook.wait_for_models({"h100-80gb": 1})
    status, body = asyncio.run(_post_bytes(webhook.url + "/mutate", data, tls.ca_file))
    assert status == 400 and isinstance(body, dict) and body["error"]
    good = review(pod("p", annotations={"gpu-fraction": "0.5"}))
    status, body = asyncio.run(_post(webhook.url + "/mutate", good, tls.ca_file))
    assert status == 200 and body["response"]["patchType"] == "JSONPatch"


def test_a_certificate_pair_that_does_not_load_leaves_the_last_good_one_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewed certificate next to the old key (a half-written or broken Secret) is not served,
    and neither is nothing: connections keep getting the old certificate until a pair loads."""
    from cdmo.webhook import server

    failures: list[str] = []

    class Log:
        def info(self, event: str, **_: Any) -> None:
            pass

        def warning(self, event: str, **_: Any) -> None:
            if event == "Failed to reload webhook certificate":  # not the 1-day certificate's end
                failures.append(event)

    monkeypatch.setattr(server, "log", Log())
    tls = _Rotation(tmp_path)

    async def scenario() -> tuple[bool, bool, bool, bool]:
        async with tls.serving(0.02) as trusted_by:
            tls.cert.write_bytes(tls.new.cert_file.read_bytes())  # the key is still the old one
            for _ in range(500):  # bounded: until the reloader has tried the mismatched pair twice
                if len(failures) >= 2:
                    break
                await asyncio.sleep(0.02)
            assert len(failures) >= 2, failures
            broken = await trusted_by(tls.old.ca_file), await trusted_by(tls.new.ca_file)
            tls.key.write_bytes(tls.new.key_file.read_bytes())
            for _ in range(500):
                if await trusted_by(tls.new.ca_file):
                    break
                await asyncio.sleep(0.02)
            return (*broken, await trusted_by(tls.new.ca_file), await trusted_by(tls.old.ca_file))

    old_during, new_during, new_after, old_after = asyncio.run(scenario())
    assert (old_during, new_during) == (True, False)
    assert (new_after, old_after) == (True, False)


_PATCH_PODS = {
    "metagpu-with-requests-and-escaped-keys": {
        "metadata": {"name": "a", "namespace": "default", "annotations": {"x.io/a~b": "1"}},
        "spec": {
            "containers": [
                {
                    "name": "a",
                    "resources": {
                        "requests": {"cnvrg.io/metagpu": "25", "cpu": "1"},
                        "limits": {"cnvrg.io/metagpu": "25"},
                    },
                }
            ]
        },
    },
    "cfgi-replicas-in-second-container-with-init": {
        "metadata": {"name": "b", "namespace": "default", "labels": {"clearml-injector/fraction": "0.25"}},
        "spec": {
            "initContainers": [{"name": "init"}],
            "containers": [
                {"name": "side"},
                {"name": "main", "resources": {"limits": {"nvidia.com/gpu": "2"}, "requests": {"nvidia.com/gpu": "2"}}},
            ],
        },
    },
    "kai-devices-null-limits": {
        "metadata": {
            "generateName": "job-",
            "namespace": "default",
            "annotations": {"gpu-fraction": "0.5", "gpu-fraction-container-name": "b", "gpu-fraction-num-devices": "2"},
        },
        "spec": {"containers": [{"name": "a"}, {"name": "b", "resources": {"limits": None}}]},
    },
    "metagpu-in-init-container-and-sidecar": {
        "metadata": {"name": "e", "namespace": "default"},
        "spec": {
            "initContainers": [
                {"name": "fetch", "resources": {"requests": {"cnvrg.io/metagpu": "25"}, "limits": {"cnvrg.io/metagpu": "25"}}},
                {"name": "proxy", "restartPolicy": "Always", "resources": {"limits": {"cnvrg.io/metagpu": "50"}}},
            ],
            "containers": [{"name": "app"}],
        },
    },
    "kai-names-an-init-container": {
        "metadata": {"name": "f", "namespace": "default", "annotations": {"gpu-memory": "10000", "gpu-fraction-container-name": "prep"}},
        "spec": {"initContainers": [{"name": "prep"}], "containers": [{"name": "app"}]},
    },
    "two-metagpu-containers": {
        "metadata": {"name": "d", "namespace": "default", "annotations": {}},
        "spec": {
            "containers": [
                {"name": "a", "resources": {"limits": {"cnvrg.io/metagpu": "25"}}},
                {"name": "b", "resources": {"limits": {"cnvrg.io/metagpu": "50"}}},
            ]
        },
    },
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(_PATCH_PODS))
def test_the_patch_applied_by_an_rfc6902_implementation_gives_what_cdmo_translate_shows(
    kube_api: KubeApiDouble,
    webhook: WebhookThread,
    tls: TlsFiles,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
) -> None:
    """One module decides a pod's ask: the webhook's patch, applied by the ``jsonpatch`` package as
    the API server would, leaves the pod `cdmo translate --model` shows (bar the reason's wording)."""
    import jsonpatch

    from cdmo.cli import main
    from cdmo.translate.pods import REASON_ANNOTATION

    add_node(kube_api, "gpu-1", "NVIDIA-H100-80GB-HBM3")
    webhook.wait_for_models({"h100-80gb": 1})
    obj = _PATCH_PODS[name]
    status, body = asyncio.run(_post(webhook.url + "/mutate", review(obj), tls.ca_file))
    assert status == 200 and body["response"]["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(body["response"]["patch"], validate=True))
    assert isinstance(ops, list)
    patched = jsonpatch.apply_patch(obj, ops)
    manifest = tmp_path / "pod.json"
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "Pod", **obj}))
    capsys.readouterr()
    assert main(["translate", str(manifest), "--model", "h100-80gb", "-o", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    for pod_ in (patched, shown):
        pod_.pop("apiVersion", None)
        pod_.pop("kind", None)
        pod_["metadata"]["annotations"].pop(REASON_ANNOTATION)
    assert patched == shown


def test_slow_and_silent_clients_do_not_hold_up_the_api_servers_requests(
    kube_api: KubeApiDouble, webhook: WebhookThread, tls: TlsFiles
) -> None:
    """Connections that never finish their TLS handshake or their headers; then concurrent reviews."""
    add_node(kube_api, "gpu-1", "NVIDIA-H100-80GB-HBM3")
    webhook.wait_for_models({"h100-80gb": 1})
    port = int(webhook.url.rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=str(tls.ca_file))
    held: list[socket.socket] = []
    try:
        for _ in range(10):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=30))  # no handshake
        for _ in range(10):
            conn = context.wrap_socket(
                socket.create_connection(("127.0.0.1", port), timeout=30), server_hostname="127.0.0.1"
            )
            conn.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Le")
            held.append(conn)

        async def many() -> list[tuple[int, Any]]:
            return await asyncio.gather(
                *(
                    _post(webhook.url + "/mutate", review(pod(f"p{i}", annotations={"gpu-fraction": "0.5"}), uid=f"u{i}"), tls.ca_file)
                    for i in range(16)
                )
            )  # fmt: skip

        answers = asyncio.run(asyncio.wait_for(many(), 60))  # only against a hang
        assert [(s, b["response"]["uid"], b["response"]["patchType"]) for s, b in answers] == [
            (200, f"u{i}", "JSONPatch") for i in range(16)
        ]
    finally:
        for conn in held:
            conn.close()
