"""The chart's RBAC is exactly the least-privilege list of the design, nothing more.

operator: read pods and nodes, create events, manage miglayouts but not their status (plus
what kopf itself needs: its peering object, and a watch on CRDs).
agent: read miglayouts, patch miglayouts/status, read pods, create events, and delete pods only in the device
plugin's namespace and only with the delete-pod refresh strategy.
No wildcard verb, resource or API group anywhere.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.conftest import RENDERS, Helm, by_kind, one, render_named

#: (apiGroup, resource) -> verbs
Rules = dict[tuple[str, str], frozenset[str]]

READ = frozenset({"get", "list", "watch"})

OPERATOR_RULES: Rules = {
    ("", "pods"): READ,
    ("", "nodes"): READ,
    ("", "events"): frozenset({"create"}),
    # delete: to set ownerReferences where OwnerReferencesPermissionEnforcement runs
    ("cdmo.clear.ml", "miglayouts"): frozenset({"get", "list", "watch", "create", "patch", "delete"}),
    ("apiextensions.k8s.io", "customresourcedefinitions"): frozenset({"list", "watch"}),
}
OPERATOR_PEERING_RULES: Rules = {
    ("kopf.dev", "clusterkopfpeerings"): frozenset({"get", "list", "watch", "patch"})
}

AGENT_RULES: Rules = {
    ("cdmo.clear.ml", "miglayouts"): READ,
    ("cdmo.clear.ml", "miglayouts/status"): frozenset({"patch"}),
    ("", "pods"): READ,
    ("", "events"): frozenset({"create"}),
}
AGENT_REFRESH_RULES: Rules = {("", "pods"): frozenset({"delete"})}
#: External device-plugin modes with the reconfiguring taint: the agent taints its own node.
AGENT_TAINT_RULES: Rules = {("", "nodes"): frozenset({"get", "patch"})}

WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


def flatten(role: dict[str, Any]) -> Rules:
    """A role's rules as (apiGroup, resource) -> verbs; resourceNames or nonResourceURLs are refused."""
    rules: dict[tuple[str, str], set[str]] = {}
    for rule in role.get("rules", []):
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                rules.setdefault((group, resource), set()).update(rule["verbs"])
    return {k: frozenset(v) for k, v in rules.items()}


def bound_subjects(objects: list[dict[str, Any]], kind: str, role_name: str) -> list[tuple[str, str]]:
    binding_kind = "ClusterRoleBinding" if kind == "ClusterRole" else "RoleBinding"
    return [
        (s["namespace"], s["name"])
        for b in by_kind(objects, binding_kind)
        if b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role_name}
        for s in b["subjects"]
    ]


def service_account(objects: list[dict[str, Any]], kind: str) -> tuple[str, str]:
    spec = one(objects, kind)["spec"]["template"]["spec"]
    return ("cdmo-system", spec["serviceAccountName"])


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_no_wildcards_anywhere(helm: Helm, name: str) -> None:
    for kind in ("ClusterRole", "Role"):
        for role in by_kind(render_named(helm, name), kind):
            for rule in role["rules"]:
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[field], f"{role['metadata']['name']}: wildcard in {field}"


@pytest.mark.parametrize(
    ("name", "peering"), [("defaults", True), ("standalone", False), ("nondefault", False)]
)
def test_operator_cluster_role_is_exactly_the_list(helm: Helm, name: str, peering: bool) -> None:
    objects = render_named(helm, name)
    role = one(objects, "ClusterRole", "-operator")
    expected = OPERATOR_RULES | (OPERATOR_PEERING_RULES if peering else {})
    assert flatten(role) == expected
    assert bound_subjects(objects, "ClusterRole", role["metadata"]["name"]) == [
        service_account(objects, "Deployment")
    ]


def test_operator_never_writes_miglayout_status(helm: Helm) -> None:
    for name in RENDERS:
        rules = flatten(one(render_named(helm, name), "ClusterRole", "-operator"))
        assert ("cdmo.clear.ml", "miglayouts/status") not in rules
        assert not rules[("", "pods")] & WRITE_VERBS
        assert not rules[("", "nodes")] & WRITE_VERBS


@pytest.mark.parametrize(
    ("name", "taints"),
    [
        ("defaults", False),
        ("refresh-none", True),
        ("delete-pod", True),
        ("nondefault", True),
        ("sighup-no-taint", False),
    ],
)
def test_agent_cluster_role_is_exactly_the_list(helm: Helm, name: str, taints: bool) -> None:
    objects = render_named(helm, name)
    role = one(objects, "ClusterRole", "-agent")
    assert flatten(role) == AGENT_RULES | (AGENT_TAINT_RULES if taints else {})
    assert bound_subjects(objects, "ClusterRole", role["metadata"]["name"]) == [
        service_account(objects, "DaemonSet")
    ]


@pytest.mark.parametrize(
    ("name", "namespace"), [("delete-pod", "gpu-operator"), ("nondefault", "nvidia-device-plugin")]
)
def test_agent_deletes_pods_only_in_the_device_plugin_namespace_with_delete_pod(
    helm: Helm, name: str, namespace: str
) -> None:
    objects = render_named(helm, name)
    (role,) = by_kind(objects, "Role")
    assert role["metadata"]["namespace"] == namespace
    assert flatten(role) == AGENT_REFRESH_RULES
    (binding,) = by_kind(objects, "RoleBinding")
    assert binding["metadata"]["namespace"] == namespace
    assert bound_subjects(objects, "Role", role["metadata"]["name"]) == [
        service_account(objects, "DaemonSet")
    ]
    # The delete right on pods is in that Role alone: no ClusterRole deletes anything but
    # MigLayouts (the operator's, for their ownerReferences).
    for cluster_role in by_kind(objects, "ClusterRole"):
        assert _cluster_deletes(cluster_role) <= {MIGLAYOUTS}


MIGLAYOUTS = ("cdmo.clear.ml", "miglayouts")


def _cluster_deletes(role: dict[str, Any]) -> set[tuple[str, str]]:
    """(group, resource) pairs a ClusterRole may delete."""
    return {key for key, verbs in flatten(role).items() if "delete" in verbs or "deletecollection" in verbs}


@pytest.mark.parametrize("name", ["defaults", "refresh-none", "standalone", "sim-backend"])
def test_no_pod_deletion_without_the_delete_pod_strategy(helm: Helm, name: str) -> None:
    objects = render_named(helm, name)
    assert by_kind(objects, "Role") == [] and by_kind(objects, "RoleBinding") == []
    for role in by_kind(objects, "ClusterRole"):
        assert _cluster_deletes(role) <= {MIGLAYOUTS}


def test_flatten_catches_an_extra_verb(helm: Helm) -> None:
    # Guards the exact-list tests: one extra verb must make the comparison fail.
    role = one(render_named(helm, "defaults"), "ClusterRole", "-agent")
    role["rules"][0]["verbs"].append("delete")
    assert flatten(role) != AGENT_RULES
