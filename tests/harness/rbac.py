"""RBAC for the API double, evaluated from Role/ClusterRole objects and their bindings.

The e2e harness feeds it the objects ``helm template`` renders from the chart, so a request the
chart does not grant is refused with 403 exactly where a real cluster would refuse it. The
rules follow kube-apiserver's RBAC authorizer: ``apiGroups``/``resources``/``verbs`` with ``*``,
``resource/subresource`` names, ``resourceNames`` (never matching list/watch/create without a
name), RoleBindings granting only in their namespace, ClusterRoleBindings everywhere, and
``system:masters`` allowed everything.

Differs from a real server: no aggregated ClusterRoles, no default roles other than
``system:masters`` (discovery is not authorized here, only authenticated), no
nonResourceURLs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.harness.kube_api import RequestAttributes, UserInfo


@dataclass(frozen=True)
class _Rule:
    groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    names: frozenset[str]

    def allows(self, a: RequestAttributes) -> bool:
        resource = f"{a.resource}/{a.subresource}" if a.subresource else a.resource
        return (
            ("*" in self.groups or a.group in self.groups)
            and ("*" in self.resources or resource in self.resources)
            and ("*" in self.verbs or a.verb in self.verbs)
            and (not self.names or (a.name != "" and a.name in self.names))
        )


def _rules(role: Mapping[str, Any]) -> list[_Rule]:
    return [
        _Rule(
            frozenset(r.get("apiGroups") or ()),
            frozenset(r.get("resources") or ()),
            frozenset(r.get("verbs") or ()),
            frozenset(r.get("resourceNames") or ()),
        )
        for r in role.get("rules") or []
    ]


def _subject_matches(subject: Mapping[str, Any], user: UserInfo) -> bool:
    kind = subject.get("kind")
    if kind == "ServiceAccount":
        return user.username == f"system:serviceaccount:{subject.get('namespace')}:{subject.get('name')}"
    if kind == "User":
        return user.username == subject.get("name")
    if kind == "Group":
        return subject.get("name") in user.groups
    return False


class RbacAuthorizer:
    """Decides requests from a set of RBAC objects (any mix of kinds; others are ignored)."""

    def __init__(self, objects: Iterable[Mapping[str, Any]]) -> None:
        objs = list(objects)
        self._cluster_roles = {
            o["metadata"]["name"]: _rules(o) for o in objs if o.get("kind") == "ClusterRole"
        }
        self._roles = {
            (o["metadata"].get("namespace", ""), o["metadata"]["name"]): _rules(o)
            for o in objs
            if o.get("kind") == "Role"
        }
        #: (namespace or None for cluster-wide, subjects, rules)
        self._grants: list[tuple[str | None, list[Mapping[str, Any]], list[_Rule]]] = []
        for o in objs:
            ref = o.get("roleRef") or {}
            if o.get("kind") == "ClusterRoleBinding" and ref.get("kind") == "ClusterRole":
                self._grants.append((None, o.get("subjects") or [], self._cluster_roles.get(ref["name"], [])))
            elif o.get("kind") == "RoleBinding":
                ns = o["metadata"].get("namespace", "")
                rules = (
                    self._cluster_roles.get(ref["name"], [])
                    if ref.get("kind") == "ClusterRole"
                    else self._roles.get((ns, ref.get("name", "")), [])
                )
                self._grants.append((ns, o.get("subjects") or [], rules))

    def authorize(self, user: UserInfo, attrs: RequestAttributes) -> bool:
        if "system:masters" in user.groups:
            return True
        for namespace, subjects, rules in self._grants:
            if namespace is not None and namespace != attrs.namespace:
                continue
            if any(_subject_matches(s, user) for s in subjects) and any(r.allows(attrs) for r in rules):
                return True
        return False
