"""AdmissionReview in, AdmissionReview out: the webhook's decision as plain data.

The answer has the request's apiVersion (``admission.k8s.io/v1``, or ``v1beta1`` where a webhook
configuration lists it): kube-apiserver refuses an answer in another version. Requests the
webhook does not handle (not a pod, not CREATE) are allowed unchanged, so a too-wide webhook
configuration cannot break other objects. A body kube-apiserver would never send (not an
AdmissionReview, a pod whose fields have the wrong types) raises BadReview: the server answers
400 with one line.

Pure: no I/O.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from cdmo.errors import InvalidInput
from cdmo.translate.pods import check_pod_shape, translate_pod
from cdmo.translate.rule import DEFAULT_RULE, Rule

API_VERSION = "admission.k8s.io/v1"
#: The AdmissionReview versions answered, each in its own version (their fields are the same).
API_VERSIONS = (API_VERSION, "admission.k8s.io/v1beta1")


class BadReview(InvalidInput):
    """The request body is not an AdmissionReview request kube-apiserver would send."""


def _answer(api_version: str, uid: str, **fields: Any) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": "AdmissionReview", "response": {"uid": uid, **fields}}


def build_review_response(
    review: Any,
    cluster_models: Mapping[str, int],
    *,
    default_model: str | None = None,
    rule: Rule = DEFAULT_RULE,
) -> tuple[dict[str, Any], str, str]:
    """The AdmissionReview response for ``review``, the action taken and its reason.

    A refused pod gets ``allowed: false`` with HTTP-style code 403 and the one-line reason; an
    unreadable ask (a label that is not a number) is refused with 422 and what to write instead.
    """
    if not isinstance(review, Mapping) or review.get("kind") != "AdmissionReview":
        raise BadReview("the body is not an AdmissionReview")
    version = str(review.get("apiVersion"))
    if version not in API_VERSIONS:
        raise BadReview(
            f"AdmissionReview apiVersion {review.get('apiVersion')!r} is not {' or '.join(API_VERSIONS)}",
            hint="list admissionReviewVersions: [v1] in the webhook configuration",
        )
    request = review.get("request")
    if not isinstance(request, Mapping) or not request.get("uid"):
        raise BadReview("the AdmissionReview has no request with a uid")
    uid = str(request["uid"])
    kind = request.get("kind") or {}
    if not isinstance(kind, Mapping):
        raise BadReview("the AdmissionReview request's kind is not a group/version/kind object")
    if (kind.get("group"), kind.get("kind")) != ("", "Pod") or request.get("operation") != "CREATE":
        return _answer(version, uid, allowed=True), "skip", "not a pod create"
    pod = request.get("object")
    if not isinstance(pod, Mapping):
        return _answer(version, uid, allowed=True), "skip", "no pod in the request"
    try:
        check_pod_shape(pod, "the AdmissionReview's pod")  # the shapes `cdmo translate` checks too
    except InvalidInput as exc:
        raise BadReview(str(exc)) from None
    if request.get("namespace") and not (pod.get("metadata") or {}).get("namespace"):
        # the API server fills the namespace in after admission; the reason should name it
        pod = {**pod, "metadata": {**(pod.get("metadata") or {}), "namespace": request["namespace"]}}
    try:
        result = translate_pod(pod, cluster_models, default_model=default_model, rule=rule)
    except InvalidInput as exc:
        reason = f"cdmo cannot read the pod's fractional GPU ask: {exc}"
        return (
            _answer(
                version, uid, allowed=False, status={"code": 422, "reason": "Invalid", "message": reason}
            ),
            "refuse",
            reason,
        )
    if result.action == "refuse":
        return (
            _answer(
                version,
                uid,
                allowed=False,
                status={"code": 403, "reason": "Forbidden", "message": result.reason},
            ),
            "refuse",
            result.reason,
        )
    fields: dict[str, Any] = {"allowed": True}
    if result.warnings:
        fields["warnings"] = list(result.warnings)
    if result.action == "mutate":
        fields["patchType"] = "JSONPatch"
        fields["patch"] = base64.b64encode(json.dumps(list(result.patch)).encode()).decode()
        fields["auditAnnotations"] = {"fractional-ask": result.reason[:1000]}
    return _answer(version, uid, **fields), result.action, result.reason
