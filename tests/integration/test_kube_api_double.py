"""The API double behaves like kube-apiserver where cdmo relies on it (through the real client)."""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from tests.harness.kube_api import BOOKMARK_INTERVAL, KubeApiDouble

GROUP, VERSION, PLURAL = "cdmo.clear.ml", "v1alpha1", "miglayouts"


def _pod(
    name: str, node: str = "", labels: dict[str, str] | None = None, phase: str = "Pending"
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "x"}]}
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels or {}},
        "spec": spec,
        "status": {"phase": phase},
    }


def _miglayout(name: str, gpus: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MigLayout",
        "metadata": {"name": name},
        "spec": {"gpus": gpus},
    }


def _raw(url: str, method: str = "GET", body: Any = None, ctype: str = "application/json") -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=10) as rsp:
            return rsp.status, json.loads(rsp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_discovery_marks_cdmo_and_kopf_resources_watchable(kube_api: KubeApiDouble) -> None:
    _, core = _raw(f"{kube_api.url}/api/v1")
    names = {r["name"]: r for r in core["resources"]}
    assert {"pods", "pods/status", "pods/binding", "nodes", "events"} <= set(names)
    assert "watch" in names["pods"]["verbs"] and names["nodes"]["namespaced"] is False
    _, groups = _raw(f"{kube_api.url}/apis")
    assert {"cdmo.clear.ml", "kopf.dev", "events.k8s.io"} <= {g["name"] for g in groups["groups"]}
    _, cdmo = _raw(f"{kube_api.url}/apis/{GROUP}/{VERSION}")
    mgl = next(r for r in cdmo["resources"] if r["name"] == PLURAL)
    assert mgl["shortNames"] == ["mgl"] and not mgl["namespaced"] and "watch" in mgl["verbs"]
    assert "miglayouts/status" in {r["name"] for r in cdmo["resources"]}
    _, kopf = _raw(f"{kube_api.url}/apis/kopf.dev/v1")
    assert {"clusterkopfpeerings", "kopfpeerings"} <= {r["name"] for r in kopf["resources"]}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=a", ["p1", "p2"]),
        ("app==a,tier!=web", ["p2"]),
        ("app in (a,b),tier", ["p1", "p3"]),
        ("tier notin (web)", ["p2", "p3"]),
        ("!tier", ["p2"]),
    ],
    ids=["eq", "neq-absent-matches", "in-and-exists", "notin", "not-exists"],
)
def test_label_selectors(
    kube_api: KubeApiDouble, api_client: kubernetes.client.ApiClient, selector: str, expected: list[str]
) -> None:
    kube_api.create(_pod("p1", labels={"app": "a", "tier": "web"}))
    kube_api.create(_pod("p2", labels={"app": "a"}))
    kube_api.create(_pod("p3", labels={"app": "b", "tier": "db"}))
    core = kubernetes.client.CoreV1Api(api_client)
    pods = core.list_namespaced_pod("default", label_selector=selector)
    assert sorted(p.metadata.name for p in pods.items) == expected


def test_field_selectors_and_unsupported_field(
    kube_api: KubeApiDouble, api_client: kubernetes.client.ApiClient
) -> None:
    kube_api.create(_pod("bound", node="gpu-node-1", phase="Running"))
    kube_api.create(_pod("pending"))
    core = kubernetes.client.CoreV1Api(api_client)
    on_node = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=gpu-node-1")
    assert [p.metadata.name for p in on_node.items] == ["bound"]
    unbound = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=,status.phase=Pending")
    assert [p.metadata.name for p in unbound.items] == ["pending"]
    by_name = core.list_namespaced_pod("default", field_selector="metadata.name!=bound")
    assert [p.metadata.name for p in by_name.items] == ["pending"]
    with pytest.raises(ApiException) as err:
        core.list_namespaced_pod("default", field_selector="spec.priority=1")
    assert err.value.status == 400


def test_status_subresource_splits_spec_and_status(
    kube_api: KubeApiDouble, api_client: kubernetes.client.ApiClient
) -> None:
    custom = kubernetes.client.CustomObjectsApi(api_client)
    created = custom.create_cluster_custom_object(
        GROUP, VERSION, PLURAL, {**_miglayout("n1", []), "status": {"phase": "Ready"}}
    )
    assert "status" not in created  # status is dropped on create when /status is on
    assert created["metadata"]["generation"] == 1
    after_status = custom.patch_cluster_custom_object_status(
        GROUP,
        VERSION,
        PLURAL,
        "n1",
        {"status": {"phase": "Ready", "observedGeneration": 1}, "spec": {"gpus": [{"index": 5}]}},
    )
    assert after_status["status"]["phase"] == "Ready"
    assert after_status["spec"] == {"gpus": []}  # /status ignores spec
    assert after_status["metadata"]["generation"] == 1  # status writes do not bump generation
    after_spec = custom.patch_cluster_custom_object(
        GROUP,
        VERSION,
        PLURAL,
        "n1",
        {"spec": {"gpus": [{"index": 0, "instances": []}]}, "status": {"phase": "Error"}},
    )
    assert after_spec["metadata"]["generation"] == 2
    assert after_spec["status"]["phase"] == "Ready"  # the main resource ignores status
    assert int(after_spec["metadata"]["resourceVersion"]) > int(after_status["metadata"]["resourceVersion"])


def test_stale_resource_version_conflicts(
    kube_api: KubeApiDouble, api_client: kubernetes.client.ApiClient
) -> None:
    custom = kubernetes.client.CustomObjectsApi(api_client)
    obj = custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, _miglayout("n1", []))
    stale = obj["metadata"]["resourceVersion"]
    custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, "n1", {"metadata": {"labels": {"x": "y"}}})
    with pytest.raises(ApiException) as err:
        custom.patch_cluster_custom_object(
            GROUP, VERSION, PLURAL, "n1", {"metadata": {"resourceVersion": stale}, "spec": {"gpus": []}}
        )
    assert err.value.status == 409
    assert json.loads(err.value.body)["reason"] == "Conflict"
    code, _ = _raw(
        f"{kube_api.url}/apis/{GROUP}/{VERSION}/{PLURAL}/n1",
        "PATCH",
        [{"op": "test", "path": "/metadata/resourceVersion", "value": stale}],
        "application/json-patch+json",
    )
    assert code == 422  # a failed JSON-patch test, as kopf expects


@pytest.mark.parametrize(
    ("gpus", "field"),
    [
        ([{"index": 0, "instances": [{"profile": "big", "start": 0}]}], "spec.gpus[0].instances[0].profile"),
        (
            [{"index": 0, "instances": [{"profile": "1g.10gb", "start": -1}]}],
            "spec.gpus[0].instances[0].start",
        ),
        ([{"index": 0, "instances": []}, {"index": 0, "instances": []}], "spec.gpus[1]"),
        (
            [
                {
                    "index": 0,
                    "instances": [{"profile": "1g.10gb", "start": 2}, {"profile": "2g.20gb", "start": 2}],
                }
            ],
            "spec.gpus[0].instances",
        ),
    ],
    ids=["profile-pattern", "negative-start", "duplicate-gpu-index", "same-start-twice"],
)
def test_miglayout_schema_and_cel_refuse_bad_specs(
    kube_api: KubeApiDouble, api_client: kubernetes.client.ApiClient, gpus: list[dict[str, Any]], field: str
) -> None:
    custom = kubernetes.client.CustomObjectsApi(api_client)
    with pytest.raises(ApiException) as err:
        custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, _miglayout("bad", gpus))
    assert err.value.status == 422
    status = json.loads(err.value.body)
    assert status["reason"] == "Invalid"
    assert field in [c["field"] for c in status["details"]["causes"]]
    assert kube_api.get(PLURAL, "bad") is None


def test_unknown_fields_are_pruned(kube_api: KubeApiDouble, api_client: kubernetes.client.ApiClient) -> None:
    custom = kubernetes.client.CustomObjectsApi(api_client)
    obj = custom.create_cluster_custom_object(
        GROUP, VERSION, PLURAL, {**_miglayout("n1", []), "spec": {"gpus": [], "colour": "red"}, "extra": 1}
    )
    assert obj["spec"] == {"gpus": []} and "extra" not in obj


def test_watch_resumes_from_a_version_and_gets_410_after_compaction(
    kube_api: KubeApiDouble, api_client: kubernetes.client.ApiClient
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    listed = core.list_namespaced_pod("default")
    since = listed.metadata.resource_version
    kube_api.create(_pod("a"))
    kube_api.patch("pods", "a", {"metadata": {"labels": {"k": "v"}}}, "default")
    w = kubernetes.watch.Watch()
    events = []
    for ev in w.stream(core.list_namespaced_pod, "default", resource_version=since, timeout_seconds=1):
        events.append((ev["type"], ev["object"].metadata.name))
        if len(events) == 2:
            w.stop()
    assert events == [("ADDED", "a"), ("MODIFIED", "a")]
    kube_api.compact()
    _, body = _raw(
        f"{kube_api.url}/api/v1/namespaces/default/pods?watch=true&resourceVersion={since}&timeoutSeconds=1"
    )
    assert body["type"] == "ERROR" and body["object"]["code"] == 410


def test_watch_with_selector_sees_objects_enter_and_leave(kube_api: KubeApiDouble) -> None:
    kube_api.create(_pod("a"))
    url = f"{kube_api.url}/api/v1/pods?watch=true&labelSelector=pick%3Dyes&timeoutSeconds=5&allowWatchBookmarks=true"
    seen: list[tuple[str, str]] = []
    opened = threading.Event()

    def read() -> None:
        with urllib.request.urlopen(url, timeout=10) as rsp:
            opened.set()
            for line in rsp:
                ev = json.loads(line)
                seen.append((ev["type"], ev["object"].get("metadata", {}).get("name", "")))
                if ev["type"] == "DELETED":
                    return

    reader = threading.Thread(target=read)
    reader.start()
    opened.wait(5)
    kube_api.wait_for(lambda store: len(store.watchers) == 1, 30)
    kube_api.patch("pods", "a", {"metadata": {"labels": {"pick": "yes"}}}, "default")
    kube_api.patch("pods", "a", {"metadata": {"labels": {"pick": "no"}}}, "default")
    reader.join(10)
    assert [s for s in seen if s[0] != "BOOKMARK"] == [("ADDED", "a"), ("DELETED", "a")]


def test_binding_and_finalizers(kube_api: KubeApiDouble) -> None:
    kube_api.create(_pod("a"))
    code, _ = _raw(
        f"{kube_api.url}/api/v1/namespaces/default/pods/a/binding",
        "POST",
        {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": "a"},
            "target": {"kind": "Node", "name": "n1"},
        },
    )
    assert code == 201
    pod = kube_api.get("pods", "a", "default")
    assert pod is not None and pod["spec"]["nodeName"] == "n1"
    assert {"type": "PodScheduled", "status": "True"}.items() <= pod["status"]["conditions"][0].items()
    code, _ = _raw(
        f"{kube_api.url}/api/v1/namespaces/default/pods/a/binding", "POST", {"target": {"name": "n2"}}
    )
    assert code == 409
    kube_api.patch("pods", "a", {"metadata": {"finalizers": ["x/y"]}}, "default")
    # a bound pod's delete is graceful: it stays, terminating, until its kubelet deletes it again
    kube_api.delete("pods", "a", "default")
    held = kube_api.get("pods", "a", "default")
    assert held is not None and held["metadata"]["deletionTimestamp"]
    assert held["metadata"]["deletionGracePeriodSeconds"] == 30
    kube_api.patch("pods", "a", {"metadata": {"finalizers": None}}, "default")
    assert kube_api.get("pods", "a", "default") is not None  # no finalizer, but the grace period runs
    kube_api.delete("pods", "a", "default", grace_period=0)  # what the kubelet sends
    assert kube_api.get("pods", "a", "default") is None


def test_strategic_merge_on_pod_conditions_merges_by_type(
    api_client: kubernetes.client.ApiClient, kube_api: KubeApiDouble
) -> None:
    kube_api.create(
        {**_pod("a"), "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]}}
    )
    core = kubernetes.client.CoreV1Api(api_client)
    core.patch_namespaced_pod_status(
        "a",
        "default",
        {"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}},
    )
    pod = kube_api.get("pods", "a", "default")
    assert pod is not None
    assert sorted(c["type"] for c in pod["status"]["conditions"]) == ["PodScheduled", "Ready"]


def test_a_cel_rule_without_a_python_equivalent_is_not_silently_accepted() -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Cluster",
            "names": {"kind": "Thing", "plural": "things", "singular": "thing"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "x-kubernetes-validations": [{"rule": "self.size() > 0"}],
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    with KubeApiDouble(crds=[crd]) as double:
        code, body = _raw(
            f"{double.url}/apis/example.com/v1/things",
            "POST",
            {"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "t"}, "spec": {"a": 1}},
        )
    assert code == 500 and "self.size() > 0" in body["message"]


def _watch_lines(url: str) -> list[tuple[float, dict[str, Any]]]:
    """Every event of a watch until the server closes it, with the time it arrived."""
    start = time.monotonic()
    with urllib.request.urlopen(url, timeout=15) as rsp:
        return [(time.monotonic() - start, json.loads(line)) for line in rsp]


def test_quiet_watch_gets_bookmarks_at_the_interval_only_when_asked_real_server_sends_them_about_once_a_minute(
    kube_api: KubeApiDouble,
) -> None:
    # The double's default interval is kube-apiserver's (about 60 s); the fixture shortens it
    # to 0.5 s. A real server's cadence is not exact, so only lower bounds on gaps are checked.
    assert BOOKMARK_INTERVAL == 60.0
    kube_api.create(_pod("quiet"))
    base = f"{kube_api.url}/api/v1/namespaces/default/pods?watch=true&timeoutSeconds=3"
    rv = kube_api.wait_for(lambda store: store.rv, 5)
    events = _watch_lines(f"{base}&resourceVersion={rv}&allowWatchBookmarks=true")
    marks = [(t, ev) for t, ev in events if ev["type"] == "BOOKMARK"]
    assert [ev["type"] for _, ev in events if ev["type"] != "BOOKMARK"] == []
    assert len(marks) >= 3, f"a 3 s quiet watch at a 0.5 s interval got {len(marks)} bookmarks"
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(marks)]
    assert min(gaps) >= 0.45, f"bookmarks came faster than the interval: {gaps}"
    assert all(ev["object"]["metadata"]["resourceVersion"] == str(rv) for _, ev in marks)
    assert all(ev["object"]["kind"] == "Pod" for _, ev in marks)
    # a client that did not ask for bookmarks gets none
    assert _watch_lines(f"{base}&resourceVersion={rv}") == []
