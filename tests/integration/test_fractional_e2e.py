"""End to end: CFGI-, KAI- and MetaGPU-style pods reach Running on MIG slices, unchanged by their users.

The real operator, node agents on simulated GPUs, the simulated scheduler/device plugin/kubelet
and cdmo's admission webhook over HTTPS, all against the API double, which calls the webhook on
pod create (tests/harness/admission.py). Pods are created through the kubernetes client as a
job submitter would, carrying only their source system's ask.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from tests.harness.admission import AdmissionChain, MutatingWebhook
from tests.harness.e2e import Harness
from tests.harness.tls import make_tls_files
from tests.harness.webhook import WebhookThread

ASK = "cdmo.clear.ml/fractional-ask"


def _webhook_token(harness: Harness) -> str | None:
    """The chart's webhook ServiceAccount token, where the API double checks identities."""
    return harness.security.webhook_token if harness.security is not None else None


@pytest.fixture
def webhook(harness: Harness) -> Iterator[WebhookThread]:
    tls = make_tls_files(harness.workdir / "tls")
    with WebhookThread(harness.api.url, tls, token=_webhook_token(harness)) as hook:
        harness.api.server.admission = AdmissionChain(
            [MutatingWebhook("fractional.cdmo.clear.ml", hook.url + "/mutate", tls.ca_file)]
        )
        yield hook


@pytest.fixture
def core(harness: Harness) -> Iterator[kubernetes.client.CoreV1Api]:
    """A user's client: pods are created as a cluster admin would (the jobs' submitter)."""
    admin = harness.security.admin_token if harness.security is not None else None
    client = (
        harness.api_client(admin)
        if admin
        else kubernetes.client.ApiClient(kubernetes.client.Configuration(host=harness.api.url))
    )
    try:
        yield kubernetes.client.CoreV1Api(client)
    finally:
        client.close()


def _pod(name: str, container: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **meta},
        "spec": {"restartPolicy": "Never", "containers": [container]},
    }


# The manifests exactly as each source system's users write them: no MIG resource anywhere.
CFGI = _pod(
    "clearml-task", {"name": "task", "image": "worker"}, labels={"clearml-injector/fraction": "0.250"}
)
CFGI_LEGACY = _pod(
    "clearml-task-old",
    {"name": "task", "image": "worker", "resources": {"limits": {"nvidia.com/gpu": "1"}}},
    labels={"clearml-injector/fraction": "0.125"},
)
KAI = _pod("kai-train", {"name": "trainer", "image": "worker"}, annotations={"gpu-fraction": "0.5"})
KAI_MEMORY = _pod("kai-infer", {"name": "server", "image": "worker"}, annotations={"gpu-memory": "12000"})
METAGPU = _pod(
    "metagpu-notebook",
    {"name": "notebook", "image": "worker", "resources": {"limits": {"cnvrg.io/metagpu": "75"}}},
)
#: name -> the MIG resource the rule gives on H100 80GB
EXPECTED = {
    "clearml-task": "nvidia.com/mig-2g.20gb",
    "clearml-task-old": "nvidia.com/mig-1g.10gb",
    "kai-train": "nvidia.com/mig-4g.40gb",
    "kai-infer": "nvidia.com/mig-1g.20gb",
    "metagpu-notebook": "nvidia.com/mig-7g.80gb",
}


def test_cfgi_kai_and_metagpu_pods_run_on_mig_slices_and_an_unservable_ask_is_refused(
    harness: Harness, webhook: WebhookThread, core: kubernetes.client.CoreV1Api
) -> None:
    harness.add_node("gpu-node-1", ("h100-80gb", "h100-80gb"))
    harness.add_node("gpu-node-2", ("h100-80gb",))
    webhook.wait_for_models({"h100-80gb": 2})
    harness.start_operator()

    manifests = [CFGI, CFGI_LEGACY, KAI, KAI_MEMORY, METAGPU]
    for manifest in manifests:
        assert "nvidia.com/mig" not in json.dumps(manifest)
        core.create_namespaced_pod("default", manifest)
    keys = [f"default/{m['metadata']['name']}" for m in manifests]
    harness.wait_running(keys, timeout=90)

    for key in keys:
        pod = harness.pod(key)
        assert pod is not None
        name = pod["metadata"]["name"]
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert limits == {EXPECTED[name]: "1"}, (name, limits)
        assert json.loads(pod["metadata"]["annotations"][ASK])[0]["resource"] == EXPECTED[name]
        # the kubelet handed the pod a real MIG device of that profile, which still exists
        node = pod["spec"]["nodeName"]
        devices = harness.cluster.allocations(node)[("default", name)]
        assert [r for r, _ in devices] == [EXPECTED[name]]
        assert {u for _, u in devices} <= harness.cluster.existing_uuids(node)
    assert harness.cluster.check_running_pods_keep_devices() == []

    # no H100 can give 100000 MiB: refused at create, with what would fit
    too_big = _pod("kai-huge", {"name": "main", "image": "worker"}, annotations={"gpu-memory": "100000"})
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("default", too_big)
    assert err.value.status == 403
    message = json.loads(err.value.body)["message"]
    assert "no GPU model of the cluster's labelled nodes can serve" in message
    assert "ask at most 81152 MiB" in message and "h200-141gb" in message
    assert harness.pod("default/kai-huge") is None


def test_with_the_charts_webhook_configuration_only_fractional_pods_reach_the_webhook(
    harness: Harness, core: kubernetes.client.CoreV1Api
) -> None:
    """The MutatingWebhookConfiguration as the chart renders it (objectSelector, namespaceSelector,
    matchConditions by cel-python in the API double), in front of the real webhook."""
    pytest.importorskip("celpy", reason="cel-python is not installed: matchConditions cannot be evaluated")
    from tests.chart.conftest import Helm, find_helm

    binary = find_helm()
    if binary is None:
        pytest.skip("helm not found at .tools/bin/helm or on PATH; run `python3 scripts/get-helm`")
    objects = Helm(binary).render("webhook.enabled=true")
    (mwc,) = [o for o in objects if o["kind"] == "MutatingWebhookConfiguration"]
    tls = make_tls_files(harness.workdir / "tls")
    harness.add_node("gpu-node-1", ("h100-80gb",))
    with WebhookThread(harness.api.url, tls, token=_webhook_token(harness)) as hook:
        chain = AdmissionChain(MutatingWebhook.from_configuration(mwc, url=hook.url, ca_file=tls.ca_file))
        harness.api.server.admission = chain
        hook.wait_for_models({"h100-80gb": 1})
        harness.start_operator()

        plain = _pod("plain", {"name": "main", "image": "worker"})
        opted_out = _pod(
            "kept-fractional",
            {"name": "main", "image": "worker"},
            labels={"clearml-injector/fraction": "0.250", "cdmo.clear.ml/fractional": "off"},
        )
        for manifest in (plain, opted_out, CFGI):
            core.create_namespaced_pod("default", manifest)
        harness.wait_running(["default/clearml-task"], timeout=90)

        assert [(c.outcome, c.detail) for c in chain.calls if c.outcome != "patched"] == [
            ("skipped", "matchConditions")
        ]
        assert [c.outcome for c in chain.calls].count("patched") == 1
        assert "resources" not in harness.pod("default/plain")["spec"]["containers"][0]  # type: ignore[index]
        assert "resources" not in harness.pod("default/kept-fractional")["spec"]["containers"][0]  # type: ignore[index]
        limits = harness.pod("default/clearml-task")["spec"]["containers"][0]["resources"]["limits"]  # type: ignore[index]
        assert limits == {"nvidia.com/mig-2g.20gb": "1"}
        harness.stop_operator()
