"""The e2e cluster refuses what a real API server with the chart installed refuses.

The harness (tests/harness/e2e.py) runs the operator and agents with the chart's identities
through authentication, RBAC from the rendered chart and the chart's admission policy; the
conftest fails any e2e test in which a cdmo component was refused or wrote a pod or node it
should not. Here: the refusals themselves, and the double's paging and PUT rules.

Where the double may differ from a real API server, the test name says so (``_in_double``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from cdmo.node_agent.kube import KubeError
from tests.harness.chart import cdmo_violations, find_helm
from tests.harness.e2e import Harness

pytestmark = pytest.mark.skipif(
    find_helm() is None,
    reason="helm not found: run `python3 scripts/get-helm` (the chart's RBAC is rendered)",
)


def _request(
    url: str, method: str, token: str | None, body: Any = None, ctype: str = "application/json"
) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=10) as rsp:
            return rsp.status, json.loads(rsp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


ML = "/apis/cdmo.clear.ml/v1alpha1/miglayouts"


def test_agent_of_node_a_is_refused_403_when_it_writes_node_b_status(harness: Harness) -> None:
    """Must show: per-node trust. The real agent of node-a, with its pod-bound token, cannot
    write node-b's MigLayout status; it still writes its own."""
    harness.add_node("node-a")
    harness.add_node("node-b")
    harness.start_operator()
    harness.api.wait_for(
        lambda s: all(
            (s.get(s.type_of("miglayouts"), None, n) or {}).get("status", {}).get("gpus")
            for n in ("node-a", "node-b")
        ),
        30,
        "both agents did not report their GPUs",
    )
    assert harness.security is not None
    url = f"{harness.api.url}{ML}/node-b/status"
    token_a = harness.security.agent_token("node-a")
    code, body = _request(
        url, "PATCH", token_a, {"status": {"lastError": "forged by node-a"}}, "application/merge-patch+json"
    )
    assert code == 403, body
    assert body["reason"] == "Forbidden"
    assert "only by the cdmo agent on node node-b" in body["message"] and "node node-a" in body["message"]
    assert (harness.api.get("miglayouts", "node-b") or {})["status"].get(
        "lastError", ""
    ) != "forged by node-a"
    # the agent's own client gets the same answer, as a KubeError the agent retries (and logs)
    with pytest.raises(KubeError, match="403"):
        harness.agents["node-a"].kube.patch_miglayout_status("node-b", {"lastError": "forged"})
    # node-b's agent writes node-b's status
    code, body = _request(
        url,
        "PATCH",
        harness.security.agent_token("node-b"),
        {"status": {"lastError": ""}},
        "application/merge-patch+json",
    )
    assert code == 200, body
    # the refusals above were this test's own requests; take them out of the after-test check
    harness.api.server.audit[:] = [a for a in harness.api.server.audit if a[3] != 403]


def test_chart_rbac_refuses_what_it_does_not_grant(harness: Harness) -> None:
    assert harness.security is not None
    base = harness.api.url
    op, agent = harness.security.operator_token, harness.security.agent_token("node-a")
    harness.add_node("node-a", agent=False)
    # no token, an unknown token: 401
    assert _request(f"{base}/api/v1/nodes", "GET", None)[0] == 401
    assert _request(f"{base}/api/v1/nodes", "GET", "not-a-token")[0] == 401
    # the operator reads nodes and pods but writes neither, and never a MigLayout's status
    assert _request(f"{base}/api/v1/nodes", "GET", op)[0] == 200
    assert (
        _request(
            f"{base}/api/v1/nodes/node-a",
            "PATCH",
            op,
            {"metadata": {"labels": {"x": "y"}}},
            "application/merge-patch+json",
        )[0]
        == 403
    )
    assert _request(f"{base}/api/v1/namespaces/default/pods/p", "DELETE", op)[0] == 403
    assert (
        _request(f"{base}{ML}/node-a/status", "PATCH", op, {"status": {}}, "application/merge-patch+json")[0]
        == 403
    )
    # the agent deletes pods only in the device plugin's namespace, and writes no MigLayout spec
    assert _request(f"{base}/api/v1/namespaces/default/pods/p", "DELETE", agent)[0] == 403
    assert (
        _request(
            f"{base}/api/v1/nodes/node-a",
            "PATCH",
            agent,
            {"metadata": {"labels": {"x": "y"}}},
            "application/merge-patch+json",
        )[0]
        == 403
    )
    assert _request(f"{base}{ML}", "POST", agent, {"metadata": {"name": "node-a"}, "spec": {}})[0] == 403
    # the after-test check would see these (deliberate) refusals: it must, and here they are expected
    assert len(cdmo_violations(harness.api.server.audit)) == 6
    harness.api.server.audit.clear()


def test_operator_spec_write_by_an_agent_is_refused_by_rbac_and_an_admin_by_the_policy(
    harness: Harness,
) -> None:
    assert harness.security is not None
    harness.add_node("node-a", agent=False)
    harness.start_operator()
    harness.api.wait_for(lambda s: s.get(s.type_of("miglayouts"), None, "node-a"), 30, "no MigLayout")
    url = f"{harness.api.url}{ML}/node-a"
    patch = {"spec": {"gpus": [{"index": 0, "instances": [{"profile": "7g.80gb", "start": 0}]}]}}
    code, body = _request(url, "PATCH", harness.security.admin_token, patch, "application/merge-patch+json")
    assert code == 403 and "written by the cdmo operator" in body["message"], body
    assert harness.security.policies.denials


def test_paging_limit_and_continue_in_double(harness: Harness) -> None:
    for i in range(7):
        harness.add_node(f"n{i}", agent=False, labelled=False)
    assert harness.security is not None
    op = harness.security.operator_token
    names, token, pages = [], "", 0
    while True:
        code, body = _request(
            f"{harness.api.url}/api/v1/nodes?limit=3" + (f"&continue={token}" if token else ""), "GET", op
        )
        assert code == 200, body
        pages += 1
        names += [n["metadata"]["name"] for n in body["items"]]
        assert len(body["items"]) <= 3
        token = body["metadata"]["continue"]
        if not token:
            break
        assert body["metadata"]["remainingItemCount"] > 0
    assert pages == 3 and names == [f"n{i}" for i in range(7)]
    harness.api.compact()
    harness.add_node("late", agent=False, labelled=False)
    code, body = _request(f"{harness.api.url}/api/v1/nodes?limit=3", "GET", op)
    old = body["metadata"]["continue"]
    harness.api.compact()
    harness.add_node("later", agent=False, labelled=False)
    harness.api.compact()
    assert _request(f"{harness.api.url}/api/v1/nodes?limit=3&continue={old}", "GET", op)[0] == 410


def test_put_of_a_custom_resource_without_resource_version_is_422(harness: Harness) -> None:
    assert harness.security is not None
    harness.add_node("node-a", agent=False)
    harness.start_operator()
    ml = harness.api.wait_for(lambda s: s.get(s.type_of("miglayouts"), None, "node-a"), 30, "no MigLayout")
    body = {k: v for k, v in ml.items() if k != "status"}
    body["metadata"] = {"name": "node-a"}
    # An admin's PUT: the operator only patches, and the chart grants it no update
    # (tests/chart/test_rbac.py; a 403 to a cdmo identity fails the after-test check).
    code, answer = _request(f"{harness.api.url}{ML}/node-a", "PUT", harness.security.admin_token, body)
    assert code == 422 and "resourceVersion" in answer["message"], answer


def test_violation_check_catches_a_cdmo_write_to_a_pod() -> None:
    """The after-test check can fail: a cdmo identity writing a pod or node is reported."""
    op = "system:serviceaccount:cdmo-system:cdmo-operator"
    agent = "system:serviceaccount:cdmo-system:cdmo-agent"
    audit = [
        (op, "PATCH", "/api/v1/namespaces/default/pods/p", 200),
        (agent, "DELETE", "/api/v1/namespaces/gpu-operator/pods/plugin-x", 200),
        (agent, "PATCH", "/api/v1/nodes/n1/status", 200),
        (op, "GET", "/api/v1/pods?watch=true", 200),
        ("kubernetes-admin", "DELETE", "/api/v1/nodes/n1", 200),
    ]
    assert cdmo_violations(audit) == [
        f"{op} wrote to a pod or node: PATCH /api/v1/namespaces/default/pods/p -> 200",
        f"{agent} wrote to a pod or node: PATCH /api/v1/nodes/n1/status -> 200",
    ]


def test_operator_lists_and_watches_only_pending_pods_and_labelled_nodes_in_pages(harness: Harness) -> None:
    """Scale: the API server, not the operator, filters pods and nodes; lists come in pages."""
    from urllib.parse import parse_qs, urlsplit

    harness.add_node("node-a", agent=False)
    harness.add_node("plain", agent=False, labelled=False)
    harness.start_operator()
    harness.api.wait_for(lambda s: s.get(s.type_of("miglayouts"), None, "node-a"), 30, "no MigLayout")
    seen: dict[str, list[dict[str, list[str]]]] = {}
    for user, method, path_qs, _ in list(harness.api.server.audit):
        if user.endswith("cdmo-operator") and method == "GET":
            parts = urlsplit(path_qs)
            if parts.path in ("/api/v1/pods", "/api/v1/nodes"):
                seen.setdefault(parts.path, []).append(parse_qs(parts.query))
    pods, nodes = seen["/api/v1/pods"], seen["/api/v1/nodes"]
    assert pods and all(q.get("fieldSelector") == ["status.phase=Pending"] for q in pods), pods
    assert nodes and all(q.get("labelSelector") == ["cdmo.clear.ml/gpu-partitioning=mig"] for q in nodes), (
        nodes
    )
    lists = [q for q in pods + nodes if "watch" not in q]
    assert lists and all(q.get("limit") == ["500"] for q in lists), lists


def test_status_with_a_malformed_date_time_is_422_as_openapi_format_says(harness: Harness) -> None:
    assert harness.security is not None
    harness.add_node("node-a", agent=False)
    harness.start_operator()
    harness.api.wait_for(lambda s: s.get(s.type_of("miglayouts"), None, "node-a"), 30, "no MigLayout")
    url = f"{harness.api.url}{ML}/node-a/status"
    token = harness.security.agent_token("node-a")
    bad = {"status": {"lastAppliedTime": "yesterday at noon"}}
    code, body = _request(url, "PATCH", token, bad, "application/merge-patch+json")
    assert code == 422, body
    assert body["details"]["causes"][0]["field"] == "status.lastAppliedTime"
    good = {"status": {"lastAppliedTime": "2026-11-29T03:00:00Z"}}
    assert _request(url, "PATCH", token, good, "application/merge-patch+json")[0] == 200


def test_crd_deletion_waits_for_its_objects_and_their_finalizers(harness: Harness) -> None:
    """As kube-apiserver does: a deleted CRD stays Terminating until its objects are gone, and
    the objects wait for their finalizers (kopf's, removed by the running operator)."""
    assert harness.security is not None
    harness.add_node("node-a", agent=False)
    harness.start_operator()
    ml = harness.api.wait_for(
        lambda s: (
            (o := s.get(s.type_of("miglayouts"), None, "node-a")) and o["metadata"].get("finalizers") and o
        ),
        30,
        "no MigLayout with the operator's finalizer",
    )
    assert ml["metadata"]["finalizers"] == ["cdmo.clear.ml/operator"]
    harness.stop_operator()  # nobody removes the finalizer now
    admin = harness.security.admin_token
    crd_url = (
        f"{harness.api.url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions/miglayouts.cdmo.clear.ml"
    )
    code, crd = _request(crd_url, "DELETE", admin)
    assert code == 200 and crd["metadata"]["deletionTimestamp"], crd
    assert _request(crd_url, "GET", admin)[0] == 200  # Terminating, not gone
    stuck = harness.api.get("miglayouts", "node-a")
    assert stuck is not None and stuck["metadata"]["deletionTimestamp"]
    harness.start_operator()  # kopf releases its finalizer on deleted objects
    harness.api.wait_for(
        lambda s: (
            ("apiextensions.k8s.io", "customresourcedefinitions") in s.types
            and s.get(
                s.type_of("customresourcedefinitions", "apiextensions.k8s.io"),
                None,
                "miglayouts.cdmo.clear.ml",
            )
            is None
        ),
        30,
        "the CRD did not go after its last object",
    )
    assert _request(f"{harness.api.url}{ML}", "GET", admin)[0] == 404
    harness.stop_operator()
    harness.api.server.audit.clear()  # the operator's 404s on the vanished kind are expected here


def test_a_running_pod_is_deleted_gracefully_through_its_kubelet(harness: Harness) -> None:
    harness.add_node("node-a")
    harness.start_operator()
    key = harness.submit("job", {"1g.10gb": 1})
    harness.wait_running([key])
    harness.api.delete("pods", "job", "default")
    harness.api.wait_for(
        lambda s: s.get(s.type_of("pods"), "default", "job") is None, 10, "the pod did not go"
    )
    events = [
        (e.type, e.new["metadata"].get("deletionGracePeriodSeconds"))
        for e in harness.api.history("pods")
        if e.new["metadata"]["name"] == "job" and e.new["metadata"].get("deletionTimestamp")
    ]
    # first marked terminating with the default 30 s grace, then removed by the kubelet with 0
    assert events[0] == ("MODIFIED", 30) and events[-1][0] == "DELETED", events
