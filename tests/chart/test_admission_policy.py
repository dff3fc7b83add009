"""The ValidatingAdmissionPolicy: who may write MigLayout spec and status.

Its shape is checked always. Its CEL expressions are evaluated, with cel-python (module
celpy) where it is installed, against the admission requests that matter: the operator and
others writing spec, status and metadata. cel-python is not the API server's CEL (no type
check against the CRD schema), so this proves the logic, not that the server compiles it.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.conftest import NAMESPACE, Helm, by_kind, one, render_named

OPERATOR = f"system:serviceaccount:{NAMESPACE}:slicer-operator"
AGENT = f"system:serviceaccount:{NAMESPACE}:slicer-agent"
ADMIN = "kubernetes-admin"

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
    ("agent-creates", "CREATE", "", AGENT, SPEC_A, None, False),
    ("operator-changes-spec", "UPDATE", "", OPERATOR, SPEC_B, SPEC_A, True),
    ("admin-changes-spec", "UPDATE", "", ADMIN, SPEC_B, SPEC_A, False),
    ("agent-changes-spec", "UPDATE", "", AGENT, SPEC_B, SPEC_A, False),
    ("admin-removes-spec", "UPDATE", "", ADMIN, NO_SPEC, SPEC_A, False),
    ("admin-labels", "UPDATE", "", ADMIN, LABELLED, SPEC_A, True),
    ("admin-touches-empty", "UPDATE", "", ADMIN, NO_SPEC, NO_SPEC, True),
    ("agent-writes-status", "UPDATE", "status", AGENT, SPEC_A, SPEC_A, True),
    ("operator-writes-status", "UPDATE", "status", OPERATOR, SPEC_A, SPEC_A, False),
    ("admin-writes-status", "UPDATE", "status", ADMIN, SPEC_A, SPEC_A, False),
]


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
    assert variables["operator"] == f"'{OPERATOR}'"
    assert variables["agent"] == f"'{AGENT}'"
    (binding,) = by_kind(objects, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == one(objects, "ValidatingAdmissionPolicy")["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Warn", "Audit"]
    on_cluster = render_named(helm, "defaults-on-1.30-cluster")
    assert one(on_cluster, "ValidatingAdmissionPolicyBinding")["spec"]["validationActions"] == ["Deny"]


@pytest.mark.parametrize(
    ("operation", "subresource", "user", "obj", "old", "allowed"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_policy_expressions_allow_only_the_right_writer(
    helm: Helm, operation: str, subresource: str, user: str, obj: Any, old: Any, allowed: bool
) -> None:
    celpy = pytest.importorskip(
        "celpy",
        reason="cel-python is not installed: the policy's CEL is not evaluated (pip install cel-python)",
    )
    spec = policy(helm)["spec"]
    env = celpy.Environment()

    def evaluate(expression: str, variables: dict[str, Any]) -> Any:
        activation = {
            "request": celpy.json_to_cel(
                {"operation": operation, "subResource": subresource, "userInfo": {"username": user}}
            ),
            "object": celpy.json_to_cel(obj),
            "oldObject": celpy.json_to_cel(old) if old is not None else None,
            "variables": celpy.celtypes.MapType(
                {celpy.celtypes.StringType(k): v for k, v in variables.items()}
            ),
        }
        return env.program(env.compile(expression)).evaluate(activation)

    variables: dict[str, Any] = {}
    for var in spec["variables"]:
        variables[var["name"]] = evaluate(var["expression"], variables)
    results = [bool(evaluate(v["expression"], variables)) for v in spec["validations"]]
    assert all(results) is allowed, results
