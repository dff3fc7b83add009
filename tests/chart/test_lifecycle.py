"""The chart over a release's life (issue 14): it starts on full nodes, survives drains, pins
its image, never shares a peering object with another release, posts Events where its users
look, and ships CRDs that the documented upgrade step applies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import (
    CHART,
    NAMESPACE,
    ROOT,
    Helm,
    HelmError,
    by_kind,
    container,
    env_of,
    one,
    render_named,
)

DIGEST = "sha256:" + "ab" * 32


def pod_spec(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(objects, kind)["spec"]["template"]["spec"]
    return spec


def render_release(helm: Helm, release: str, *sets: str) -> list[dict[str, Any]]:
    args = ["template", release, str(CHART), "--namespace", NAMESPACE]
    for s in sets:
        args += ["--set", s]
    result = helm.run(*args)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_agent_is_system_node_critical_by_default(helm: Helm) -> None:
    assert (
        pod_spec(render_named(helm, "defaults"), "DaemonSet")["priorityClassName"] == "system-node-critical"
    )
    # "" runs it without one (where a quota forbids critical pods outside kube-system).
    assert "priorityClassName" not in pod_spec(render_named(helm, "nondefault"), "DaemonSet")


def test_operator_has_a_pod_disruption_budget_for_its_own_pods(helm: Helm) -> None:
    objects = render_named(helm, "defaults")
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1" and pdb["metadata"]["namespace"] == NAMESPACE
    assert pdb["spec"]["maxUnavailable"] == 1
    operator_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector.items() <= operator_labels.items()
    agent_labels = one(objects, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= agent_labels.items(), "the budget must not cover the agents"
    assert by_kind(render_named(helm, "nondefault"), "PodDisruptionBudget") == []


def test_anti_affinity_is_soft_by_default_and_can_be_required(helm: Helm) -> None:
    soft = pod_spec(render_named(helm, "defaults"), "Deployment")["affinity"]["podAntiAffinity"]
    assert list(soft) == ["preferredDuringSchedulingIgnoredDuringExecution"]
    hard = pod_spec(helm.render("operator.antiAffinity=hard"), "Deployment")["affinity"]["podAntiAffinity"]
    assert list(hard) == ["requiredDuringSchedulingIgnoredDuringExecution"]
    (term,) = hard["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    with pytest.raises(HelmError, match="antiAffinity"):
        helm.render("operator.antiAffinity=sometimes")


def test_an_image_digest_wins_over_the_tag(helm: Helm) -> None:
    objects = helm.render("image.repository=registry.example.com/cdmo", f"image.digest={DIGEST}")
    for kind in ("Deployment", "DaemonSet"):
        assert container(one(objects, kind))["image"] == f"registry.example.com/cdmo@{DIGEST}"
    assert container(one(render_named(helm, "defaults"), "Deployment"))["image"].startswith("cdmo:")
    with pytest.raises(HelmError, match="digest"):
        helm.render("image.digest=latest")


def test_two_releases_never_share_a_peering_object(helm: Helm) -> None:
    names = []
    for release in ("gpu-a", "gpu-b"):
        objects = render_release(helm, release)
        (peering,) = by_kind(objects, "ClusterKopfPeering")
        c = container(one(objects, "Deployment"))
        assert f"--peering={peering['metadata']['name']}" in c["args"]
        assert env_of(c)["CDMO_PEERING_NAME"] == peering["metadata"]["name"]
        names.append(peering["metadata"]["name"])
    assert names == ["gpu-a-cdmo", "gpu-b-cdmo"]
    # A name given by hand is kept.
    (peering,) = by_kind(render_release(helm, "gpu-a", "operator.peering.name=shared"), "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "shared"


def test_operator_events_go_to_its_own_namespace(helm: Helm) -> None:
    env = env_of(container(one(render_named(helm, "defaults"), "Deployment")))
    assert env["CDMO_EVENTS_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_login_sets_kopfs_default_namespace_for_events() -> None:
    import kopf

    from cdmo.config import OperatorConfig
    from cdmo.operator.kube import with_events_namespace

    conf = OperatorConfig.from_env({"CDMO_EVENTS_NAMESPACE": "cdmo-system"})
    info = with_events_namespace(kopf.ConnectionInfo(server="https://k8s", token="t"), conf.events_namespace)
    assert info is not None and info.default_namespace == "cdmo-system" and info.token == "t"
    # Unset: kopf's own behaviour is kept; no credentials: nothing to change.
    plain = kopf.ConnectionInfo(server="https://k8s")
    assert with_events_namespace(plain, "") is plain
    assert with_events_namespace(None, "cdmo-system") is None


def test_the_crds_helm_installs_are_the_ones_the_upgrade_step_applies(helm: Helm) -> None:
    # Helm installs crds/ on the first install only; docs/upgrading.md applies the same files
    # with `kubectl apply --server-side -f helm/cdmo/crds/` before `helm upgrade`.
    with_crds = helm.render(include_crds=True)
    without = helm.render()
    rendered = [o for o in with_crds if o.get("kind") == "CustomResourceDefinition"]
    assert [o for o in without if o.get("kind") == "CustomResourceDefinition"] == []
    files = sorted((CHART / "crds").glob("*.yaml"))
    from_files = [yaml.safe_load(p.read_text()) for p in files]
    key = lambda o: o["metadata"]["name"]  # noqa: E731
    assert sorted(rendered, key=key) == sorted(from_files, key=key)
    doc = (ROOT / "docs" / "upgrading.md").read_text()
    assert "kubectl apply --server-side --force-conflicts -f helm/cdmo/crds/" in doc


def test_the_uninstall_order_deletes_miglayouts_while_the_operator_runs() -> None:
    text = (ROOT / "docs" / "disabling.md").read_text()
    uninstall = text[text.index("## 5. Uninstall cdmo") :]
    steps = [
        uninstall.index("kubectl label nodes -l"),
        uninstall.index("kubectl delete miglayouts --all --wait"),
        uninstall.index("helm uninstall"),
        uninstall.index("kubectl delete crd miglayouts.cdmo.clear.ml"),
    ]
    assert steps == sorted(steps), "unlabel, delete MigLayouts, uninstall, then delete the CRD"


@pytest.mark.parametrize(
    "path", sorted((ROOT / "examples").glob("gpu-operator-values*.yaml")), ids=lambda p: p.name
)
def test_gpu_operator_values_keep_the_toolkit_opt_in_feature(path: Path) -> None:
    values = yaml.safe_load(path.read_text())
    env = {e["name"]: e["value"] for e in values["toolkit"]["env"]}
    # Helm replaces a list whole: leaving this out of our list drops the vendor's setting.
    assert env["NVIDIA_CONTAINER_TOOLKIT_OPT_IN_FEATURES"] == "disable-cuda-compat-lib-hook"
