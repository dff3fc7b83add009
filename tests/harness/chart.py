"""The chart as the API double's security setup: its rendered RBAC and admission policy.

``helm template`` renders the chart once per process with the values the e2e harness runs
with (the agent's built-in device plugin by default, or delete-pod refresh of the simulated
NVIDIA plugin in its namespace; a >= 1.30 cluster that serves ValidatingAdmissionPolicy), and :func:`secure` installs on an API double:

- bearer-token authentication (:mod:`tests.harness.auth`), with tokens for the chart's
  operator ServiceAccount and, per node, for the agent ServiceAccount bound to a pod there;
- RBAC from the rendered Roles/ClusterRoles/bindings (:mod:`tests.harness.rbac`);
- the rendered ValidatingAdmissionPolicy on writes (:mod:`tests.harness.policy`).

helm comes from scripts/get-helm (.tools/bin/helm) or PATH; :func:`find_helm` says whether.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.harness.auth import ADMIN, TokenAuthenticator, service_account_user
from tests.harness.kube_api import AdmissionRequest, ApiError, KubeApiDouble, RequestAttributes, UserInfo
from tests.harness.policy import AdmissionPolicies
from tests.harness.rbac import RbacAuthorizer

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "cdmo"
RELEASE = "cdmo"
NAMESPACE = "cdmo-system"
OPERATOR_SA = f"{RELEASE}-operator"
AGENT_SA = f"{RELEASE}-agent"
WEBHOOK_SA = f"{RELEASE}-webhook"
#: What the harness's simulated cluster needs from the chart's values, per device-plugin mode
#: of tests/harness/cluster.py: the chart's default (builtin), or NVIDIA's plugin refreshed by
#: deleting its pod.
#: The fractional-GPU webhook is on, so that its ServiceAccount and role exist for the tests that
#: run it (it is off in the chart's defaults).
VALUES = {
    "builtin": ("agent.devicePlugin.namespace=gpu-operator", "webhook.enabled=true"),
    "nvidia": (
        "agent.refreshStrategy=delete-pod",
        "agent.devicePlugin.namespace=gpu-operator",
        "webhook.enabled=true",
    ),
}


def find_helm() -> str | None:
    local = ROOT / ".tools" / "bin" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("helm")


@functools.cache
def render_chart(*sets: str) -> tuple[dict[str, Any], ...]:
    helm = find_helm()
    if helm is None:
        raise FileNotFoundError(
            "helm not found at .tools/bin/helm or on PATH; run `python3 scripts/get-helm`"
        )
    args = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", "1.30.0"]
    args += ["--api-versions", "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True, cwd=ROOT)
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


@dataclass
class ChartSecurity:
    """The tokens issued and the policy evaluator, to read denials and warnings from."""

    auth: TokenAuthenticator
    policies: AdmissionPolicies
    operator_token: str
    admin_token: str
    webhook_token: str
    agent_tokens: dict[str, str] = field(default_factory=dict)

    def agent_user(self, node: str) -> UserInfo:
        return service_account_user(NAMESPACE, AGENT_SA, node=node, pod=f"{AGENT_SA}-{node}")

    def agent_token(self, node: str) -> str:
        """The token kubelet would mount in the agent pod on ``node`` (bound to that pod)."""
        if node not in self.agent_tokens:
            self.agent_tokens[node] = self.auth.issue(self.agent_user(node))
        return self.agent_tokens[node]


#: The writes to pods or nodes that a cdmo component may make, both by the agent in the external
#: modes: it deletes the device plugin's pod (delete-pod refresh) in the plugin's namespace, and
#: patches its node's taints (the reconfiguring taint; RBAC grants it only in those modes).
_ALLOWED_POD_WRITE = re.compile(
    r"^(DELETE /api/v1/namespaces/gpu-operator/pods/[^/?]+|PATCH /api/v1/nodes/[^/?]+)(\?.*)?$"
)
_POD_OR_NODE = re.compile(r"^/api/v1/(nodes(/|$|\?)|pods(/|$|\?)|namespaces/[^/]+/pods(/|$|\?))")
CDMO_USERS = (
    f"system:serviceaccount:{NAMESPACE}:{OPERATOR_SA}",
    f"system:serviceaccount:{NAMESPACE}:{AGENT_SA}",
    f"system:serviceaccount:{NAMESPACE}:{WEBHOOK_SA}",
)


def cdmo_violations(audit: list[tuple[str, str, str, int]]) -> list[str]:
    """Requests by cdmo's identities that a correct install never makes: refused ones (401/403),
    and writes to pods or nodes other than the agent's device-plugin pod delete."""
    found = []
    for user, method, path, status in audit:
        if user not in CDMO_USERS:
            continue
        if status in (401, 403):
            found.append(f"{user} was refused {status}: {method} {path}")
        elif (
            method in ("POST", "PUT", "PATCH", "DELETE")
            and _POD_OR_NODE.match(path)
            and not (user.endswith(AGENT_SA) and _ALLOWED_POD_WRITE.match(f"{method} {path}"))
        ):
            found.append(f"{user} wrote to a pod or node: {method} {path} -> {status}")
    return found


def owner_references_enforcement(
    authorize: Callable[[UserInfo, RequestAttributes], bool],
) -> Callable[[AdmissionRequest], None]:
    """kube-apiserver's OwnerReferencesPermissionEnforcement admission plugin (on in OpenShift and
    many distributions, off in a bare kube-apiserver): a write that sets or changes an object's
    ``metadata.ownerReferences`` needs ``delete`` on that object, else 403. Modelled here for
    create and update alone, without the plugin's blockOwnerDeletion rule (cdmo sets none)."""

    def check(req: AdmissionRequest) -> None:
        if req.operation not in ("CREATE", "UPDATE") or req.subresource or req.object is None:
            return
        new = (req.object.get("metadata") or {}).get("ownerReferences") or []
        old = ((req.old_object or {}).get("metadata") or {}).get("ownerReferences") or []
        if new == old:
            return
        attrs = RequestAttributes(
            "delete", req.rtype.group, req.rtype.plural, "", req.namespace or "", req.name
        )
        if not authorize(req.user, attrs):
            raise ApiError(
                403,
                "Forbidden",
                f'{req.rtype.plural}.{req.rtype.group} "{req.name}" is forbidden: cannot set an ownerRef '
                "on a resource you can't delete",
            )

    return check


def secure(api: KubeApiDouble, *sets: str, device_plugin: str = "builtin") -> ChartSecurity:
    """Make ``api`` authenticate, authorize and admit as a cluster with the chart installed."""
    objects = render_chart(*(VALUES[device_plugin] + sets))
    auth = TokenAuthenticator()
    policies = AdmissionPolicies.from_objects(objects)
    rbac = RbacAuthorizer(objects)
    security = ChartSecurity(
        auth,
        policies,
        operator_token=auth.issue(service_account_user(NAMESPACE, OPERATOR_SA)),
        admin_token=auth.issue(ADMIN),
        webhook_token=auth.issue(service_account_user(NAMESPACE, WEBHOOK_SA)),
    )

    def install() -> None:
        api.server.authenticate = auth.authenticate
        api.server.authorize = rbac.authorize
        api.store.validating.append(policies.check)
        api.store.validating.append(owner_references_enforcement(rbac.authorize))

    api.call(install)
    return security
