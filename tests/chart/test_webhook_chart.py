"""The fractional-GPU webhook in the chart: off by default; its selectors, TLS and matchConditions.

matchConditions are evaluated with cel-python through the API double's admission chain
(tests/harness/admission.py): cel-python is not the API server's CEL, so this proves the logic
of the expression, not that kube-apiserver compiles it.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.chart.conftest import NAMESPACE, Helm, HelmError, by_kind, container, env_of, one, render_named
from tests.chart.test_render import validate_object
from tests.harness.admission import MutatingWebhook, evaluate_match_conditions, label_selector_matches

CERT_MANAGER_API = "cert-manager.io/v1"
WEBHOOK_VALUES = Path(__file__).resolve().parent / "values-webhook.yaml"


def _webhook_objects(helm: Helm, *sets: str, api_versions: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    return helm.render("webhook.enabled=true", *sets, api_versions=api_versions)


def _mwc(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (hook,) = one(objects, "MutatingWebhookConfiguration")["webhooks"]
    return hook


def test_webhook_is_off_by_default(helm: Helm) -> None:
    objects = render_named(helm, "defaults")
    assert by_kind(objects, "MutatingWebhookConfiguration") == []
    assert not [o for o in objects if o["metadata"]["name"].endswith("-webhook")]


def test_enabled_webhook_objects_are_valid_kubernetes_objects(helm: Helm) -> None:
    objects = _webhook_objects(helm)
    kinds = sorted(o["kind"] for o in objects if o["metadata"]["name"].startswith("cdmo-webhook"))
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "MutatingWebhookConfiguration",
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "Service",  # its metrics
        "ServiceAccount",
    ]
    for obj in objects:
        assert validate_object(obj) in ("kubernetes", "crd", "skipped")


def test_two_replicas_keep_one_through_drains_and_one_replica_has_no_budget(helm: Helm) -> None:
    pdb = one(_webhook_objects(helm), "PodDisruptionBudget", "-webhook")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "webhook"
    budgets = by_kind(_webhook_objects(helm, "webhook.replicas=1"), "PodDisruptionBudget")
    # the operator's own budget stays; the webhook has none with one replica
    assert [b["metadata"]["name"] for b in budgets if b["metadata"]["name"].endswith("-webhook")] == []
    assert budgets, "the operator's PodDisruptionBudget should still render"


def test_webhook_configuration_defaults(helm: Helm) -> None:
    hook = _mwc(_webhook_objects(helm))
    assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None"
    assert hook["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "operations": ["CREATE"],
            "scope": "Namespaced",
        }
    ]
    assert hook["clientConfig"]["service"] == {
        "name": "cdmo-webhook",
        "namespace": NAMESPACE,
        "path": "/mutate",
        "port": 443,
    }
    # kube-system and the chart's own namespace are never sent to the webhook
    assert not label_selector_matches(
        hook["namespaceSelector"], {"kubernetes.io/metadata.name": "kube-system"}
    )
    assert not label_selector_matches(hook["namespaceSelector"], {"kubernetes.io/metadata.name": NAMESPACE})
    assert label_selector_matches(hook["namespaceSelector"], {"kubernetes.io/metadata.name": "ml"})
    # the opt-out label
    assert not label_selector_matches(hook["objectSelector"], {"cdmo.clear.ml/fractional": "off"})
    assert label_selector_matches(hook["objectSelector"], {"clearml-injector/fraction": "0.25"})


def test_values_reach_the_configuration_and_the_deployment(helm: Helm) -> None:
    objects = helm.render(values_files=(WEBHOOK_VALUES,))
    for obj in objects:
        assert validate_object(obj) in ("kubernetes", "crd", "skipped")
    hook = _mwc(objects)
    assert hook["failurePolicy"] == "Ignore" and hook["timeoutSeconds"] == 5
    ns = hook["namespaceSelector"]
    assert ns["matchLabels"] == {"example.com/fractional-gpus": "on"}
    assert not label_selector_matches(
        ns, {"kubernetes.io/metadata.name": "team", "example.com/fractional-gpus": "off"}
    )
    assert label_selector_matches(
        ns, {"kubernetes.io/metadata.name": "team", "example.com/fractional-gpus": "on"}
    )
    assert not label_selector_matches(hook["objectSelector"], {"example.com/keep-fractional": "yes"})
    env = env_of(container(one(objects, "Deployment", "-webhook")))
    assert env["CDMO_WEBHOOK_DEFAULT_MODEL"] == "h100-80gb"
    assert env["CDMO_WEBHOOK_FRACTION_MATCH"] == "compute"
    assert env["CDMO_WEBHOOK_CFGI_REPLICAS_PER_GPU"] == "4"
    assert env["CDMO_WEBHOOK_METAGPU_UNITS_PER_GPU"] == "1000"
    assert env["CDMO_WEBHOOK_PORT"] == "9443"
    assert env["CDMO_WEBHOOK_METRICS_PORT"] == "9091"
    assert one(objects, "Service", "-webhook-metrics")["spec"]["ports"][0]["port"] == 9091
    assert env["CDMO_PARTITION_LABEL"] == "example.com/mig-partitioning=dynamic"


def test_the_deployments_env_is_what_cdmo_config_reads(helm: Helm) -> None:
    from cdmo.config import WebhookConfig

    env = env_of(container(one(_webhook_objects(helm), "Deployment", "-webhook")))
    config = WebhookConfig.from_env({k: v for k, v in env.items() if isinstance(v, str)})
    assert config == WebhookConfig(cert_file="/tls/tls.crt", key_file="/tls/tls.key")


def test_chart_made_certificate_is_signed_by_the_ca_in_ca_bundle_for_the_service_names(helm: Helm) -> None:
    objects = _webhook_objects(helm)
    hook = _mwc(objects)
    secret = one(objects, "Secret", "-webhook-tls")
    ca_pem = base64.b64decode(hook["clientConfig"]["caBundle"])
    assert ca_pem == base64.b64decode(secret["data"]["ca.crt"])
    ca = x509.load_pem_x509_certificate(ca_pem)
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )
    assert f"cdmo-webhook.{NAMESPACE}.svc" in names
    volumes = one(objects, "Deployment", "-webhook")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": "cdmo-webhook-tls"}} in volumes


def test_cert_manager_makes_the_certificate_where_the_cluster_has_it(helm: Helm) -> None:
    objects = _webhook_objects(helm, api_versions=(CERT_MANAGER_API,))
    assert by_kind(objects, "Secret") == []
    cert = one(objects, "Certificate")
    assert cert["spec"]["secretName"] == "cdmo-webhook-tls"
    assert cert["spec"]["issuerRef"] == {"kind": "Issuer", "name": "cdmo-webhook-selfsigned"}
    assert cert["spec"]["renewBefore"] == "360h"
    assert one(objects, "Issuer")["spec"] == {"selfSigned": {}}
    mwc = one(objects, "MutatingWebhookConfiguration")
    assert mwc["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": f"{NAMESPACE}/cdmo-webhook"}
    assert "caBundle" not in mwc["webhooks"][0]["clientConfig"]
    # an issuer of the cluster's own replaces the self-signed one
    objects = _webhook_objects(
        helm,
        "webhook.tls.issuerRef.kind=ClusterIssuer",
        "webhook.tls.issuerRef.name=corp-ca",
        api_versions=(CERT_MANAGER_API,),
    )
    assert by_kind(objects, "Issuer") == []
    assert one(objects, "Certificate")["spec"]["issuerRef"] == {"kind": "ClusterIssuer", "name": "corp-ca"}


def _pod(
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    resources: Any = None,
    init_resources: Any = None,
) -> dict[str, Any]:
    c: dict[str, Any] = {"name": "main", "image": "x"}
    if resources is not None:
        c["resources"] = resources
    meta: dict[str, Any] = {"name": "p"}
    if labels is not None:
        meta["labels"] = labels
    if annotations is not None:
        meta["annotations"] = annotations
    spec: dict[str, Any] = {"containers": [c]}
    if init_resources is not None:
        spec["initContainers"] = [{"name": "prep", "image": "x", "resources": init_resources}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


@pytest.mark.parametrize(
    ("pod", "sent"),
    [
        (_pod(labels={"clearml-injector/fraction": "0.250"}), True),
        (_pod(annotations={"gpu-fraction": "0.5"}), True),
        (_pod(annotations={"gpu-memory": "2000"}), True),
        (_pod(resources={"limits": {"cnvrg.io/metagpu": 25}}), True),
        (_pod(resources={"requests": {"cnvrg.io/metagpu": 25}}), True),
        (_pod(), False),
        (_pod(labels={"app": "web"}, annotations={"team": "a"}, resources={"limits": {"cpu": "1"}}), False),
        (_pod(resources={"limits": {"nvidia.com/mig-1g.10gb": 1}}), False),
        (_pod(resources={}), False),
        (_pod(init_resources={"limits": {"cnvrg.io/metagpu": 25}}), True),
        (_pod(init_resources={"requests": {"cnvrg.io/metagpu": 25}}), True),
        (_pod(init_resources={"limits": {"cpu": "1"}}), False),
    ],
    ids=[
        "cfgi",
        "kai-fraction",
        "kai-memory",
        "metagpu-limits",
        "metagpu-requests",
        "bare",
        "other",
        "mig",
        "empty-resources",
        "metagpu-init-limits",
        "metagpu-init-requests",
        "init-other",
    ],
)
def test_match_conditions_send_only_pods_with_a_fractional_ask(
    helm: Helm, pod: dict[str, Any], sent: bool
) -> None:
    pytest.importorskip("celpy", reason="cel-python is not installed: matchConditions are not evaluated")
    mwc = one(_webhook_objects(helm), "MutatingWebhookConfiguration")
    (hook,) = MutatingWebhook.from_configuration(mwc, url="https://unused", ca_file=None)
    assert evaluate_match_conditions(hook.match_conditions, pod, {"operation": "CREATE"}) is sent


def test_probes_ask_paths_the_webhook_serves_and_readiness_waits_for_the_nodes(helm: Helm) -> None:
    """Readiness once asked /healthz, which is ok before the nodes were ever read, when /mutate
    can only answer 503: such a replica stayed in the Service."""
    from cdmo.webhook.server import build_app

    c = container(one(_webhook_objects(helm), "Deployment", "-webhook"))
    served = {r.resource.canonical for r in build_app(lambda: None).router.routes() if r.method == "GET"}  # type: ignore[arg-type,return-value,union-attr]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"/healthz", "/readyz"} <= served


def test_the_webhook_serves_metrics_on_a_named_port_its_service_and_service_monitor_select(
    helm: Helm,
) -> None:
    """Prometheus reaches the webhook as it reaches the operator: a container port named metrics
    (the port cdmo.config reads), a Service selecting the webhook's pods through it, and the
    ServiceMonitor selecting that Service by its labels and port name."""
    from cdmo.config import WebhookConfig

    objects = _webhook_objects(helm, "metrics.serviceMonitor.enabled=true")
    deployment = one(objects, "Deployment", "-webhook")
    c = container(deployment)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    env = {k: v for k, v in env_of(c).items() if isinstance(v, str)}
    assert ports["metrics"] == WebhookConfig.from_env(env).metrics_port == 8080
    assert ports["https"] != ports["metrics"]
    service = one(objects, "Service", "-webhook-metrics")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("metrics", 8080, "metrics")
    monitor = one(objects, "ServiceMonitor")
    assert label_selector_matches(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert NAMESPACE in monitor["spec"]["namespaceSelector"]["matchNames"]
    assert port["name"] in {e["port"] for e in monitor["spec"]["endpoints"]}
    # the webhook's HTTPS Service is not scraped: it has no port named metrics
    https = one(objects, "Service", "-webhook")
    assert [p["name"] for p in https["spec"]["ports"]] == ["https"]
    for obj in objects:
        assert validate_object(obj) in ("kubernetes", "crd", "skipped")
    # without metrics Services, or without the webhook, none for it and none selected
    services = by_kind(_webhook_objects(helm, "metrics.service.enabled=false"), "Service")
    assert [s["metadata"]["name"] for s in services] == ["cdmo-webhook"]
    off = helm.render("metrics.serviceMonitor.enabled=true")
    assert not [s for s in by_kind(off, "Service") if "webhook" in s["metadata"]["name"]]
    (component,) = [
        e
        for e in one(off, "ServiceMonitor")["spec"]["selector"]["matchExpressions"]
        if e["key"] == "app.kubernetes.io/component"
    ]
    assert component["values"] == ["operator", "agent"]


def test_a_metrics_port_equal_to_the_https_port_or_out_of_range_is_refused(helm: Helm) -> None:
    with pytest.raises(HelmError, match=re.escape("webhook.metricsPort and webhook.port are both 9443")):
        _webhook_objects(helm, "webhook.port=9443", "webhook.metricsPort=9443")
    with pytest.raises(HelmError, match="metricsPort"):
        _webhook_objects(helm, "webhook.metricsPort=70000")  # values.schema.json


def test_the_chart_made_certificates_end_reads_as_the_webhook_publishes_it(
    helm: Helm, tmp_path: Path
) -> None:
    """helm's genSignedCert makes an RSA certificate, unlike the tests' EC ones: cdmo's reader of
    notAfter (no X.509 package in the image) gets its end as cryptography does."""
    from cdmo.webhook.certificate import read_not_after

    secret = one(_webhook_objects(helm), "Secret", "-webhook-tls")
    pem = base64.b64decode(secret["data"]["tls.crt"])
    path = tmp_path / "tls.crt"
    path.write_bytes(pem)
    cert = x509.load_pem_x509_certificate(pem)
    assert read_not_after(str(path)) == cert.not_valid_after_utc.timestamp()
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert abs(lifetime.days - 365) <= 1  # webhook.tls.validityDays
