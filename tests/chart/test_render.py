"""helm lint, helm template with default and non-default values, and every rendered object
validated against the Kubernetes 1.30 schemas (strict: an unknown field is an error).

Objects of custom resources have no schema in kubernetes-validate: the chart's own
(ClusterKopfPeering) are checked against the CRD the chart ships; the rest are listed in
SKIPPED_KINDS with the reason.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.chart.conftest import (
    CHART,
    KUBE_VERSION,
    NONDEFAULT_VALUES,
    RENDERS,
    Helm,
    HelmError,
    by_kind,
    render_named,
)

#: Kinds whose schema is neither in Kubernetes nor in this chart: skipped, with the reason.
SKIPPED_KINDS = {
    "ServiceMonitor": "prometheus-operator's CRD (monitoring.coreos.com) is not part of Kubernetes or of this chart",
}


def crd_schema(kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of the chart's CRD for ``kind`` (from helm/cdmo/crds/)."""
    for path in sorted((CHART / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
            return version["schema"]["openAPIV3Schema"]
    raise LookupError(kind)


def validate_object(obj: dict[str, Any]) -> str:
    """'kubernetes' or 'crd' when the object is valid; raises on an invalid one; 'skipped' else."""
    kind = obj["kind"]
    if kind in SKIPPED_KINDS:
        return "skipped"
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        return "kubernetes"
    except kubernetes_validate.SchemaNotFoundError:
        pass
    jsonschema.validate(obj, crd_schema(kind))
    return "crd"


def test_helm_lint_passes_with_default_and_nondefault_values(helm: Helm) -> None:
    for extra in ([], ["--values", str(NONDEFAULT_VALUES)]):
        result = helm.run("lint", str(CHART), "--strict", "--kube-version", f"{KUBE_VERSION}.0", *extra)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_every_rendered_object_is_valid_for_kubernetes_1_30(helm: Helm, name: str) -> None:
    objects = render_named(helm, name)
    assert objects, "the chart rendered nothing"
    outcome = {f"{o['kind']}/{o['metadata']['name']}": validate_object(o) for o in objects}
    skipped = sorted(k for k, v in outcome.items() if v == "skipped")
    for key in skipped:
        print(f"{name}: {key} not validated: {SKIPPED_KINDS[key.split('/')[0]]}")
    # The workloads and their RBAC are there and were validated against Kubernetes' own schemas.
    for kind in ("Deployment", "DaemonSet", "ClusterRole", "ClusterRoleBinding", "ServiceAccount"):
        assert any(k.startswith(kind + "/") and v == "kubernetes" for k, v in outcome.items()), kind


def test_crds_are_valid_kubernetes_objects(helm: Helm) -> None:
    objects = helm.render(include_crds=True)
    crds = by_kind(objects, "CustomResourceDefinition")
    assert sorted(c["metadata"]["name"] for c in crds) == [
        "clusterkopfpeerings.kopf.dev",
        "miglayouts.cdmo.clear.ml",
    ]
    for crd in crds:
        assert validate_object(crd) == "kubernetes"


def test_the_validator_refuses_an_unknown_field(helm: Helm) -> None:
    # Guards the test above: strict validation must catch a misspelt field in a rendered object.
    (daemonset,) = by_kind(render_named(helm, "defaults"), "DaemonSet")
    daemonset["spec"]["template"]["spec"]["hostPid"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="hostPid"):
        validate_object(daemonset)


def test_the_peering_object_is_checked_against_the_chart_crd(helm: Helm) -> None:
    (peering,) = by_kind(render_named(helm, "defaults"), "ClusterKopfPeering")
    assert validate_object(peering) == "crd"
    peering["status"] = "not an object"
    with pytest.raises(jsonschema.ValidationError):
        validate_object(peering)


def test_objects_live_in_the_release_namespace_or_are_cluster_scoped(helm: Helm) -> None:
    cluster_scoped = {
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterKopfPeering",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    for name in ("defaults", "nondefault"):
        for obj in render_named(helm, name):
            ns = obj["metadata"].get("namespace")
            if obj["kind"] in cluster_scoped:
                assert ns is None, obj["metadata"]["name"]
            elif obj["kind"] in ("Role", "RoleBinding"):
                # The delete-pod refresh Role lives beside the device plugin, not beside cdmo.
                assert ns == "nvidia-device-plugin", obj["metadata"]["name"]
            else:
                assert ns == "cdmo-system", f"{obj['kind']}/{obj['metadata']['name']}"


def test_every_object_carries_the_chart_labels(helm: Helm) -> None:
    for obj in render_named(helm, "nondefault"):
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/instance") == "cdmo", obj["kind"]
        assert labels.get("app.kubernetes.io/part-of") == "cdmo", obj["kind"]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("agent.refreshStrategy=restart",), "refreshStrategy"),
        (("operator.peering.enabled=false",), "several replicas need kopf peering"),
        (("operator.replicas=0",), "replicas"),
        (("operator.runAsUser=0",), "runAsUser"),
        (("partitioning.labelValue=not a label",), "labelValue"),
        (("agent.backend=simulated",), "say which GPUs to simulate"),
        (
            ("metrics.serviceMonitor.enabled=true", "metrics.service.enabled=false"),
            "needs metrics.service.enabled",
        ),
        (("agent.unknownKnob=1",), "unknownKnob"),
        (("admissionPolicy.enabled=sometimes",), "enabled"),
    ],
    ids=[
        "unknown-refresh",
        "replicas-without-peering",
        "no-replicas",
        "root-operator",
        "bad-label",
        "sim-without-gpus",
        "servicemonitor-without-service",
        "typo",
        "bad-policy-switch",
    ],
)
def test_bad_values_are_refused_with_a_message_that_names_them(
    helm: Helm, sets: tuple[str, ...], message: str
) -> None:
    with pytest.raises(HelmError, match=message):
        helm.render(*sets)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    # Helm's merge of a values file over the defaults: maps merge, everything else replaces.
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = _merge(base[key], value)
        else:
            merged[key] = value
    return merged


def test_values_yaml_satisfies_its_own_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(defaults, schema)
    jsonschema.validate(_merge(defaults, yaml.safe_load(NONDEFAULT_VALUES.read_text())), schema)


def test_admission_policy_follows_the_cluster_when_auto(helm: Helm) -> None:
    def kinds(name: str) -> set[str]:
        return {o["kind"] for o in render_named(helm, name)}

    assert "ValidatingAdmissionPolicy" not in kinds("defaults")  # helm template: no cluster to ask
    assert {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} <= kinds(
        "defaults-on-1.30-cluster"
    )
    assert "ValidatingAdmissionPolicy" not in {
        o["kind"] for o in helm.render("admissionPolicy.enabled=false")
    }
    assert "ValidatingAdmissionPolicy" in {o["kind"] for o in helm.render("admissionPolicy.enabled=true")}
