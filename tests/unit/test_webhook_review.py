"""The webhook's pure parts: AdmissionReview responses, counting node models, and its CLI's bad input."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from cdmo.cli import main
from cdmo.webhook.nodes import count_models
from cdmo.webhook.review import BadReview, build_review_response


def review(
    obj: Any, *, kind: str = "Pod", operation: str = "CREATE", namespace: str = "team"
) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "abc",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "operation": operation,
            "namespace": namespace,
            "object": obj,
        },
    }


def pod(**meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p", **meta}, "spec": {"containers": [{"name": "m"}]}}


def test_a_translated_pod_gets_a_base64_json_patch() -> None:
    body, action, reason = build_review_response(
        review(pod(annotations={"gpu-fraction": "0.25"})), {"h100-80gb": 1}
    )
    response = body["response"]
    assert (action, response["uid"], response["allowed"], response["patchType"]) == (
        "mutate",
        "abc",
        True,
        "JSONPatch",
    )
    ops = json.loads(base64.b64decode(response["patch"]))
    assert ops[0]["value"] == {"limits": {"nvidia.com/mig-2g.20gb": "1"}}
    assert response["auditAnnotations"] == {"fractional-ask": reason} and "2g.20gb" in reason


def test_a_refusal_names_the_namespace_from_the_request() -> None:
    body, action, reason = build_review_response(
        review(pod(annotations={"gpu-memory": "999999"})), {"h100-80gb": 1}
    )
    assert action == "refuse" and body["response"]["allowed"] is False
    assert body["response"]["status"]["code"] == 403
    assert reason.startswith("pod team/p asks kai gpu-memory=999999")


def test_an_unreadable_ask_is_refused_with_422_and_what_to_write() -> None:
    body, action, _ = build_review_response(
        review(pod(labels={"clearml-injector/fraction": "lots"})), {"h100-80gb": 1}
    )
    status = body["response"]["status"]
    assert action == "refuse" and status["code"] == 422
    assert "'lots' is not a number; write it like 0.25" in status["message"]


def test_a_pod_for_a_non_mig_gpu_passes_unchanged_with_a_warning() -> None:
    obj = pod(annotations={"gpu-fraction": "0.5"})
    obj["spec"]["nodeSelector"] = {"nvidia.com/gpu.product": "NVIDIA-L4"}
    body, action, _ = build_review_response(review(obj), {"h100-80gb": 1})
    assert action == "skip"
    assert body["response"]["allowed"] is True and "patch" not in body["response"]
    assert "NVIDIA-L4 is not a MIG GPU model" in body["response"]["warnings"][0]


@pytest.mark.parametrize(("kind", "operation"), [("ConfigMap", "CREATE"), ("Pod", "UPDATE")])
def test_other_kinds_and_operations_are_allowed_unchanged(kind: str, operation: str) -> None:
    body, action, _ = build_review_response(
        review(pod(annotations={"gpu-fraction": "0.5"}), kind=kind, operation=operation), {"h100-80gb": 1}
    )
    assert action == "skip" and body["response"] == {"uid": "abc", "allowed": True}


@pytest.mark.parametrize(
    "bad", [{}, [], {"kind": "AdmissionReview"}, {"kind": "AdmissionReview", "request": {}}]
)
def test_bodies_that_are_not_admission_reviews_raise(bad: Any) -> None:
    with pytest.raises(BadReview):
        build_review_response(bad, {})


_TERMS = {"nodeSelectorTerms": [{"matchExpressions": [{"key": "k", "operator": "In", "values": ["v"]}]}]}


def _affinity(terms: Any) -> dict[str, Any]:
    return {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": terms}}}


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"containers": [None]}, "spec.containers[0] must be a mapping, not null"),
        ({"containers": [{"name": "m"}], "initContainers": [None]}, "spec.initContainers[0] must be a mapping, not null"),
        ({"containers": [{"name": "m"}], **_affinity({"nodeSelectorTerms": [None]})}, "nodeSelectorTerms[0] must be a mapping, not null"),
        ({"containers": [{"name": "m"}], **_affinity({"nodeSelectorTerms": [{"matchExpressions": [None]}]})}, "nodeSelectorTerms[0].matchExpressions[0] must be a mapping, not null"),
        ({"containers": [{"name": "m"}], "initContainers": ["setup"]}, "spec.initContainers[0] must be a mapping, not str"),
        ({"containers": [{"name": "m"}], **_affinity({"nodeSelectorTerms": [{"matchExpressions": ["k"]}]})}, "matchExpressions[0] must be a mapping, not str"),
    ],
    ids=["container-null", "init-container-null", "selector-term-null", "expression-null", "init-container-str", "expression-str"],
)  # fmt: skip
def test_a_pod_with_a_null_or_misshapen_list_entry_is_a_bad_review_naming_it(
    spec: dict[str, Any], words: str
) -> None:
    """A null list entry passed the shape check as if left out, and the pod walk then raised
    AttributeError: a 500 to the API server instead of BadReview's 400 with one line."""
    obj = {"metadata": {"name": "p", "annotations": {"gpu-fraction": "0.5"}}, "spec": spec}
    with pytest.raises(BadReview) as caught:
        build_review_response(review(obj), {"h100-80gb": 1})
    assert str(caught.value).startswith("the AdmissionReview's pod: ") and words in str(caught.value)


def test_null_fields_are_read_as_left_out() -> None:
    """Unlike a null list entry, a null field is one the pod does not give (JSON's null, Go's nil)."""
    obj = pod(annotations={"gpu-fraction": "0.5"}, labels=None)
    obj["spec"] = {
        "containers": [{"name": "m", "resources": None}],
        "initContainers": None,
        **_affinity(None),
    }
    body, action, _ = build_review_response(review(obj), {"h100-80gb": 1})
    assert action == "mutate" and body["response"]["patchType"] == "JSONPatch"


def test_count_models_counts_known_mig_products_only() -> None:
    def node(product: str | None) -> dict[str, Any]:
        return {"metadata": {"labels": {"nvidia.com/gpu.product": product} if product else {}}}

    nodes = [
        node("NVIDIA-H100-80GB-HBM3"),
        node("NVIDIA-H100-80GB-HBM3"),
        node("NVIDIA-H200"),
        node("NVIDIA-L4"),
        node(None),
    ]
    assert count_models(nodes) == {"h100-80gb": 2, "h200-141gb": 1}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            ["--cert-file", "/nonexistent/tls.crt", "--key-file", "/nonexistent/tls.key"],
            "TLS certificate /nonexistent/tls.crt does not exist",
        ),
        (["--port", "70000"], "is not a TCP port"),
        (["--default-model", "v100"], "unknown GPU model"),
        (["--metrics-port", "70000"], "--metrics-port=70000 is not a TCP port"),
        (["--metrics-port", "-1"], "--metrics-port=-1 must not be negative"),
        (["--port", "9443", "--metrics-port", "9443"], "metrics port 9443 is the HTTPS port too"),
    ],
    ids=[
        "missing-cert",
        "bad-port",
        "unknown-model",
        "bad-metrics-port",
        "negative-metrics-port",
        "same-ports",
    ],
)
def test_webhook_command_refuses_bad_input_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], words: str
) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text("x")
    key.write_text("x")
    base = ["--cert-file", str(cert), "--key-file", str(key)]
    assert main(["webhook", *base, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


def test_webhook_command_refuses_a_bad_metrics_port_variable_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDMO_WEBHOOK_METRICS_PORT", "65536")
    assert main(["webhook"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CDMO_WEBHOOK_METRICS_PORT=65536 is not a TCP port" in err[0], err


@pytest.mark.parametrize("broken", ["mismatched", "not-pem"])
def test_webhook_command_refuses_a_certificate_that_does_not_load_in_one_line_before_starting(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, broken: str
) -> None:
    """Checked before anything starts (no node list, no kubeconfig read): one line naming the files."""
    from tests.harness.tls import make_tls_files

    one, other = make_tls_files(tmp_path / "one"), make_tls_files(tmp_path / "other")
    cert, key = one.cert_file, other.key_file
    if broken == "not-pem":
        key = tmp_path / "tls.key"
        key.write_text("not a key")
    args = ["webhook", "--cert-file", str(cert), "--key-file", str(key)]
    assert main([*args, "--kubeconfig", str(tmp_path / "no-kubeconfig")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"TLS certificate {cert} and key {key} do not load" in err[0], err
