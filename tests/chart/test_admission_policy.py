"""The ValidatingAdmissionPolicy: who may write MigLayout spec and status.

Its shape is checked always. Its CEL expressions are evaluated, with cel-python (module
celpy) where it is installed, against the admission requests that matter: the operator and
others writing spec, status and metadata, and agents writing their own node's status or
another's (the node-name claim of a pod-bound token). The same evaluator
(tests/harness/policy.py) judges the e2e suite's writes. cel-python is not the API server's CEL (no type
check against the CRD schema), so this proves the logic, not that the server compiles it.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.conftest import NAMESPACE, Helm, by_kind, one, render_named
from tests.harness.auth import service_account_user
from tests.harness.kube_api import AdmissionRequest, UserInfo, load_crds, types_from_crd

OPERATOR = ("operator", None)
AGENT_ON_GPU_1 = ("agent", "gpu-1")
AGENT_ON_GPU_2 = ("agent", "gpu-2")
AGENT_UNBOUND = ("agent", None)  # a token not bound to a pod: no node-name claim
ADMIN = ("admin", None)
EMERGENCY = ("emergency", None)  # an admin acting in the emergency spec-editors group

SPEC_A = {
    "metadata": {"name": "gpu-1"},
    "spec": {"gpus": [{"index": 0, "instances": [{"profile": "1g.10gb", "start": 0}]}]},
}
SPEC_B = {"metadata": {"name": "gpu-1"}, "spec": {"gpus": [{"index": 0, "instances": []}]}}
LABELLED = {"metadata": {"name": "gpu-1", "labels": {"team": "ml"}}, "spec": SPEC_A["spec"]}
NO_SPEC = {"metadata": {"name": "gpu-1"}}

#: (case, operation, subresource, user, object, oldObject) -> allowed
CASES = [
    ("operator-creates", "CREATE", "", OPERATOR, SPEC_A, None, True),
    ("admin-creates", "CREATE", "", ADMIN, SPEC_A, None, False),
    ("agent-creates", "CREATE", "", AGENT_ON_GPU_1, SPEC_A, None, False),
    ("operator-changes-spec", "UPDATE", "", OPERATOR, SPEC_B, SPEC_A, True),
    ("admin-changes-spec", "UPDATE", "", ADMIN, SPEC_B, SPEC_A, False),
    ("emergency-admin-changes-spec", "UPDATE", "", EMERGENCY, SPEC_B, SPEC_A, True),
    ("agent-changes-spec", "UPDATE", "", AGENT_ON_GPU_1, SPEC_B, SPEC_A, False),
    ("admin-removes-spec", "UPDATE", "", ADMIN, NO_SPEC, SPEC_A, False),
    ("admin-labels", "UPDATE", "", ADMIN, LABELLED, SPEC_A, True),
    ("admin-touches-empty", "UPDATE", "", ADMIN, NO_SPEC, NO_SPEC, True),
    ("own-node-agent-writes-status", "UPDATE", "status", AGENT_ON_GPU_1, SPEC_A, SPEC_A, True),
    ("other-node-agent-writes-status", "UPDATE", "status", AGENT_ON_GPU_2, SPEC_A, SPEC_A, False),
    ("unbound-agent-token-writes-status", "UPDATE", "status", AGENT_UNBOUND, SPEC_A, SPEC_A, False),
    ("operator-writes-status", "UPDATE", "status", OPERATOR, SPEC_A, SPEC_A, False),
    ("admin-writes-status", "UPDATE", "status", ADMIN, SPEC_A, SPEC_A, False),
    ("emergency-admin-writes-status", "UPDATE", "status", EMERGENCY, SPEC_A, SPEC_A, False),
]


def user_info(who: tuple[str, str | None]) -> UserInfo:
    role, node = who
    if role == "admin":
        return UserInfo("jane", ("system:authenticated",))
    if role == "emergency":
        return UserInfo("jane", ("system:authenticated", "cdmo:spec-editors"))
    return service_account_user(
        NAMESPACE, f"slicer-{role}", node=node, pod=f"slicer-{role}-x" if node else None
    )


def policy(helm: Helm) -> dict[str, Any]:
    return one(render_named(helm, "nondefault"), "ValidatingAdmissionPolicy")


def test_policy_matches_miglayout_writes_and_is_bound(helm: Helm) -> None:
    objects = render_named(helm, "nondefault")
    spec = one(objects, "ValidatingAdmissionPolicy")["spec"]
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == ["cdmo.clear.ml"]
    assert sorted(rule["resources"]) == ["miglayouts", "miglayouts/status"]
    assert sorted(rule["operations"]) == ["CREATE", "UPDATE"]
    assert spec["failurePolicy"] == "Fail"
    variables = {v["name"]: v["expression"] for v in spec["variables"]}
    assert variables["operator"] == f"'system:serviceaccount:{NAMESPACE}:slicer-operator'"
    assert variables["agent"] == f"'system:serviceaccount:{NAMESPACE}:slicer-agent'"
    (binding,) = by_kind(objects, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == one(objects, "ValidatingAdmissionPolicy")["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Warn", "Audit"]
    on_cluster = render_named(helm, "defaults-on-1.30-cluster")
    assert one(on_cluster, "ValidatingAdmissionPolicyBinding")["spec"]["validationActions"] == ["Deny"]


@pytest.mark.parametrize(
    ("operation", "subresource", "who", "obj", "old", "allowed"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_policy_expressions_allow_only_the_right_writer(
    helm: Helm, operation: str, subresource: str, who: Any, obj: Any, old: Any, allowed: bool
) -> None:
    pytest.importorskip(
        "celpy",
        reason="cel-python is not installed: the policy's CEL is not evaluated (pip install cel-python)",
    )
    from tests.harness.policy import AdmissionPolicies

    policies = AdmissionPolicies.from_objects(render_named(helm, "nondefault"))
    crd = next(c for c in load_crds() if c["spec"]["names"]["plural"] == "miglayouts")
    (rtype,) = types_from_crd(crd)
    req = AdmissionRequest(
        operation, rtype, None, obj["metadata"]["name"], subresource, user_info(who), obj, old
    )
    failures = policies.failures(req)
    assert (not failures) is allowed, [m for _, m, _ in failures]


def test_default_render_compares_the_node_name_claim_with_the_miglayout_name(helm: Helm) -> None:
    """Must show: `helm template` with defaults (on a >= 1.30 cluster) renders the per-node check."""
    spec = one(render_named(helm, "defaults-on-1.30-cluster"), "ValidatingAdmissionPolicy")["spec"]
    variables = {v["name"]: v["expression"] for v in spec["variables"]}
    assert "request.userInfo.extra['authentication.kubernetes.io/node-name']" in variables["nodeClaim"]
    assert any(
        "variables.nodeClaim[0] == object.metadata.name" in v["expression"] for v in spec["validations"]
    )
