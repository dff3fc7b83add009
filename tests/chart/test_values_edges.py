"""Values a platform engineer may give that used to render broken manifests: long release
names, odd names and label keys, large numbers from a values file, labels that break a
selector, ports that collide, an image reference with its tag in the repository.

Each is either rendered into something the API server and cdmo accept, or refused by helm
with a message that names the value.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdmo.config import AgentConfig, OperatorConfig, WebhookConfig
from tests.chart.conftest import CHART, KUBE_VERSION, NAMESPACE, Helm, HelmError, container, env_of, one

#: A Service name: an RFC 1035 label (what the API server checks for Services).
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
#: Helm allows release names up to 53 characters.
LONG_RELEASE = "ml-platform-production-gpu-partitioner-eu-west-1"


def render_release(helm: Helm, release: str, *sets: str) -> list[dict[str, Any]]:
    args = ["template", release, str(CHART), "--namespace", NAMESPACE, "--kube-version", f"{KUBE_VERSION}.0"]
    for s in sets:
        args += ["--set", s]
    result = helm.run(*args)
    if result.returncode != 0:
        raise HelmError(result.stderr.strip())
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.mark.parametrize(
    "sets",
    [(), ("webhook.enabled=true", "webhook.tls.certManager=false")],
    ids=["defaults", "webhook"],
)
def test_service_names_stay_dns_labels_with_a_long_release_name(helm: Helm, sets: tuple[str, ...]) -> None:
    assert len(LONG_RELEASE) <= 53
    objects = render_release(helm, LONG_RELEASE, *sets)
    services = [o["metadata"]["name"] for o in objects if o["kind"] == "Service"]
    assert len(services) == (4 if sets else 2)  # the webhook's HTTPS and metrics Services
    bad = [n for n in services if not DNS_1035_LABEL.match(n)]
    assert bad == [], f"Service names the API server refuses (over 63 characters or not a DNS label): {bad}"
    assert len(set(services)) == len(services)
    # The webhook configuration points at the webhook's Service by that same name.
    for cfg in (o for o in objects if o["kind"] == "MutatingWebhookConfiguration"):
        (hook,) = cfg["webhooks"]
        assert hook["clientConfig"]["service"]["name"] in services


def test_short_names_are_unchanged(helm: Helm) -> None:
    # Shortening applies only where the name would be too long: existing installs keep their names.
    objects = render_release(helm, "cdmo", "webhook.enabled=true", "webhook.tls.certManager=false")
    services = sorted(o["metadata"]["name"] for o in objects if o["kind"] == "Service")
    assert services == ["cdmo-agent-metrics", "cdmo-operator-metrics", "cdmo-webhook", "cdmo-webhook-metrics"]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("fullnameOverride=My_Cdmo",), "fullnameOverride"),
        (("nameOverride=gpu slicer",), "nameOverride"),
        (("serviceAccount.operator.name=Operator_SA",), "serviceAccount/operator/name"),
        (("serviceAccount.agent.name=agent'sa",), "serviceAccount/agent/name"),
        (("operator.podLabels.team=ml platform",), "podLabels"),
        (("agent.podLabels.bad key=x",), "podLabels"),
        (("webhook.podAnnotations.bad key=x",), "podAnnotations"),
        (("operator.nodeSelector.pool=a b",), "nodeSelector"),
        (("metrics.serviceMonitor.labels.release=prometheus stack",), "labels"),
        (("serviceAccount.agent.annotations.bad key=x",), "annotations"),
        (("image.repository=registry.example.com/cdmo:0.1.0",), "repository"),
        (("image.tag=v1 rc",), "tag"),
    ],
    ids=[
        "fullname-underscore",
        "name-space",
        "operator-sa-upper",
        "agent-sa-quote",
        "label-value-space",
        "label-key-space",
        "annotation-key-space",
        "node-selector-value",
        "service-monitor-label",
        "sa-annotation-key",
        "tag-in-repository",
        "tag-space",
    ],
)
def test_values_that_make_invalid_objects_are_refused(
    helm: Helm, sets: tuple[str, ...], message: str
) -> None:
    with pytest.raises(HelmError, match=message):
        helm.render(*sets)


def test_registry_with_a_port_is_a_repository(helm: Helm) -> None:
    # A colon in the registry host is not a tag: the pattern above must not refuse it.
    objects = helm.render("image.repository=registry.example.com:5000/ml/cdmo", "image.tag=0.1.0")
    assert container(one(objects, "Deployment"))["image"] == "registry.example.com:5000/ml/cdmo:0.1.0"


@pytest.mark.parametrize("component", ["operator", "agent", "webhook"])
@pytest.mark.parametrize("key", ["app.kubernetes.io/component", "app.kubernetes.io/instance"])
def test_pod_labels_that_would_break_the_selector_are_refused(helm: Helm, component: str, key: str) -> None:
    escaped = key.replace(".", "\\.")
    with pytest.raises(HelmError, match=f"{component}.podLabels.*{re.escape(key)}"):
        helm.render("webhook.enabled=true", f"{component}.podLabels.{escaped}=x")


def test_operator_metrics_and_health_ports_must_differ(helm: Helm) -> None:
    with pytest.raises(HelmError, match=re.escape("operator.metricsPort and operator.healthPort")):
        helm.render("operator.metricsPort=8081", "operator.healthPort=8081")


BIG = """
operator:
  metricsPort: 18080
  watch:
    listChunkSize: 100000
  prewarm:
    maxPerProfile: 1000000
  defrag:
    opsPerHour: 1000000
  staleTimeoutSeconds: 10000000
agent:
  metricsPort: 19464
webhook:
  enabled: true
  port: 18443
  metagpuUnitsPerGpu: 100000
"""


def test_large_numbers_from_a_values_file_reach_cdmo_as_numbers(helm: Helm, tmp_path: Path) -> None:
    # A values file's numbers reach the templates as floats; rendered as text, a million was 1e+06,
    # which cdmo.config's int() refuses: the operator would crash-loop.
    values = tmp_path / "big.yaml"
    values.write_text(BIG)
    objects = helm.render(values_files=(values,))

    def plain(kind: str, name_suffix: str = "") -> dict[str, str]:
        return {
            k: v for k, v in env_of(container(one(objects, kind, name_suffix))).items() if isinstance(v, str)
        }

    op = OperatorConfig.from_env(plain("Deployment", "-operator"))
    assert (op.prewarm_max_per_profile, op.defrag_ops_per_hour) == (1_000_000, 1_000_000)
    assert (op.list_chunk_size, op.metrics_port, op.stale_timeout_seconds) == (100_000, 18080, 1e7)
    assert AgentConfig.from_env(plain("DaemonSet")).metrics_port == 19464
    hook = WebhookConfig.from_env(plain("Deployment", "-webhook"))
    assert (hook.port, hook.metagpu_units_per_gpu) == (18443, 100_000)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("webhook.resources.limit.cpu=1",), "limit"),
        (("webhook.resources.requests.cpu[0]=1",), "requests"),
        (("webhook.tls.duration=90d",), "duration"),
        (("webhook.tls.renewBefore=two weeks",), "renewBefore"),
        (("webhook.optOutLabel.key=keep fractional",), "optOutLabel"),
        (("webhook.optOutLabel.value=not now",), "optOutLabel"),
    ],
    ids=["resources-typo", "resources-list", "duration-days", "renew-words", "opt-out-key", "opt-out-value"],
)
def test_webhook_values_that_make_invalid_objects_are_refused(
    helm: Helm, sets: tuple[str, ...], message: str
) -> None:
    # Before: a typo in resources rendered a field the API server drops (no limits at all); a
    # duration cert-manager cannot parse, or an opt-out label that is no label, made the
    # Certificate or the MutatingWebhookConfiguration fail at install time.
    with pytest.raises(HelmError, match=message):
        helm.render(
            "webhook.enabled=true",
            "webhook.tls.certManager=true",
            *sets,
            api_versions=("cert-manager.io/v1",),
        )
