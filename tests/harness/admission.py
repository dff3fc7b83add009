"""Mutating admission webhooks for the API double, called on create as kube-apiserver calls them.

For each webhook whose rules, namespaceSelector, objectSelector and matchConditions (CEL, by
cel-python) match the object, the double POSTs an AdmissionReview v1 request over HTTPS
(verifying the server against the webhook's CA), checks the response's uid, applies a
``JSONPatch`` and refuses the create with the webhook's status when ``allowed`` is false. A
webhook that cannot be called (refused connection, timeout, bad response) or whose
matchConditions fail to evaluate is handled by its ``failurePolicy``: ``Fail`` refuses the
create with 500 InternalError ``failed calling webhook``, ``Ignore`` skips the webhook.

Where this differs from kube-apiserver: no reinvocationPolicy (each webhook runs once), no
sideEffects/dryRun handling, no namespace-object defaults, ``matchPolicy`` is Exact, and the
service reference of ``clientConfig`` is replaced by a URL given by the test.
"""

from __future__ import annotations

import base64
import copy
import json
import ssl
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.harness.kube_api import ApiError, ResourceType, Store
from tests.harness.patches import json_patch


def label_selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector (matchLabels, matchExpressions); an empty or absent one matches all."""
    if not selector:
        return True
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], set(expr.get("values") or [])
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


@dataclass
class MutatingWebhook:
    """One entry of a MutatingWebhookConfiguration, with a URL the test serves it on."""

    name: str
    url: str
    ca_file: Path | None = None
    failure_policy: str = "Fail"
    timeout_seconds: float = 10.0
    #: (apiGroups, resources, operations) of the rules; "*" matches anything
    rules: tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
        (("",), ("pods",), ("CREATE",)),
    )
    object_selector: Mapping[str, Any] | None = None
    namespace_selector: Mapping[str, Any] | None = None
    match_conditions: tuple[Mapping[str, str], ...] = ()

    @classmethod
    def from_configuration(
        cls, configuration: Mapping[str, Any], *, url: str, ca_file: Path | None
    ) -> list[MutatingWebhook]:
        """The webhooks of a MutatingWebhookConfiguration (as the chart renders it), served at ``url``."""
        hooks = []
        for w in configuration.get("webhooks") or []:
            path = ((w.get("clientConfig") or {}).get("service") or {}).get("path") or ""
            rules = tuple(
                (
                    tuple(r.get("apiGroups") or ()),
                    tuple(r.get("resources") or ()),
                    tuple(r.get("operations") or ()),
                )
                for r in w.get("rules") or []
            )
            hooks.append(
                cls(
                    name=w["name"],
                    url=url.rstrip("/") + path,
                    ca_file=ca_file,
                    failure_policy=w.get("failurePolicy", "Fail"),
                    timeout_seconds=float(w.get("timeoutSeconds", 10)),
                    rules=rules,
                    object_selector=w.get("objectSelector"),
                    namespace_selector=w.get("namespaceSelector"),
                    match_conditions=tuple(w.get("matchConditions") or ()),
                )
            )
        return hooks

    def matches_rule(self, rtype: ResourceType, operation: str) -> bool:
        for groups, resources, operations in self.rules:
            if (
                ("*" in groups or rtype.group in groups)
                and ("*" in resources or rtype.plural in resources)
                and ("*" in operations or operation in operations)
            ):
                return True
        return False


@dataclass
class AdmissionCall:
    """What happened on one webhook call, for tests to read."""

    webhook: str
    uid: str
    outcome: str  # patched | allowed | denied | failed-open | failed-closed | skipped
    detail: str = ""


def evaluate_match_conditions(
    conditions: Sequence[Mapping[str, str]], obj: Any, request: Mapping[str, Any]
) -> bool:
    """True when every matchCondition holds; raises on an evaluation error (failurePolicy decides)."""
    if not conditions:
        return True
    import celpy  # cel-python, a test dependency

    env = celpy.Environment()
    activation = {
        "object": celpy.json_to_cel(obj),
        "oldObject": None,
        "request": celpy.json_to_cel(dict(request)),
    }
    for cond in conditions:
        result = env.program(env.compile(cond["expression"])).evaluate(activation)
        if isinstance(result, Exception):
            raise result
        if not bool(result):
            return False
    return True


@dataclass
class AdmissionChain:
    """The mutating webhooks of the double, in order. Set as ``KubeApiDouble.server.admission``."""

    webhooks: list[MutatingWebhook] = field(default_factory=list)
    calls: list[AdmissionCall] = field(default_factory=list)

    def add(self, hooks: MutatingWebhook | Iterable[MutatingWebhook]) -> None:
        self.webhooks.extend([hooks] if isinstance(hooks, MutatingWebhook) else hooks)

    async def admit(
        self, store: Store, rtype: ResourceType, namespace: str | None, body: Any, operation: str = "CREATE"
    ) -> Any:
        obj = copy.deepcopy(body)
        for hook in self.webhooks:
            if not hook.matches_rule(rtype, operation):
                continue
            labels = ((obj.get("metadata") or {}).get("labels")) or {}
            if not label_selector_matches(hook.object_selector, labels):
                continue
            if rtype.namespaced and hook.namespace_selector:
                ns_obj = store.get(store.type_of("namespaces", ""), None, namespace or "default") or {}
                ns_labels = {
                    "kubernetes.io/metadata.name": namespace or "default",
                    **((ns_obj.get("metadata") or {}).get("labels") or {}),
                }
                if not label_selector_matches(hook.namespace_selector, ns_labels):
                    continue
            obj = await self._call(hook, rtype, namespace, obj, operation)
        return obj

    async def _call(
        self, hook: MutatingWebhook, rtype: ResourceType, namespace: str | None, obj: Any, operation: str
    ) -> Any:
        uid = str(uuid.uuid4())
        request = {
            "uid": uid,
            "kind": {"group": rtype.group, "version": rtype.version, "kind": rtype.kind},
            "resource": {"group": rtype.group, "version": rtype.version, "resource": rtype.plural},
            "requestKind": {"group": rtype.group, "version": rtype.version, "kind": rtype.kind},
            "requestResource": {"group": rtype.group, "version": rtype.version, "resource": rtype.plural},
            "name": (obj.get("metadata") or {}).get("name", ""),
            "namespace": namespace or (obj.get("metadata") or {}).get("namespace") or "default",
            "operation": operation,
            "userInfo": {"username": "system:admin", "groups": ["system:masters"]},
            "object": obj,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
        try:
            if not evaluate_match_conditions(hook.match_conditions, obj, request):
                self.calls.append(AdmissionCall(hook.name, uid, "skipped", "matchConditions"))
                return obj
            review = await self._post(
                hook, {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
            )
            response = review["response"]
            if response.get("uid") != uid:
                raise ValueError(f"response uid {response.get('uid')!r} does not match request uid {uid!r}")
        except ApiError:
            raise
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            if hook.failure_policy == "Ignore":
                self.calls.append(AdmissionCall(hook.name, uid, "failed-open", detail))
                return obj
            self.calls.append(AdmissionCall(hook.name, uid, "failed-closed", detail))
            raise ApiError(
                500,
                "InternalError",
                f'Internal error occurred: failed calling webhook "{hook.name}": {detail}',
            ) from None
        if not response.get("allowed"):
            status = response.get("status") or {}
            message = status.get("message") or ""
            self.calls.append(AdmissionCall(hook.name, uid, "denied", message))
            raise ApiError(
                int(status.get("code") or 403),
                status.get("reason") or "Forbidden",
                f'admission webhook "{hook.name}" denied the request: {message}',
            )
        if response.get("patch"):
            if response.get("patchType") != "JSONPatch":
                raise ApiError(
                    500, "InternalError", f"webhook {hook.name} sent patchType {response.get('patchType')!r}"
                )
            ops = json.loads(base64.b64decode(response["patch"]))
            obj = json_patch(obj, ops)
            self.calls.append(AdmissionCall(hook.name, uid, "patched", json.dumps(ops)))
        else:
            self.calls.append(AdmissionCall(hook.name, uid, "allowed"))
        return obj

    async def _post(self, hook: MutatingWebhook, review: dict[str, Any]) -> dict[str, Any]:
        context = ssl.create_default_context(cafile=str(hook.ca_file)) if hook.ca_file else None
        timeout = aiohttp.ClientTimeout(total=hook.timeout_seconds)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(hook.url, json=review, ssl=context if context is not None else True) as resp,
        ):
            if resp.status != 200:
                raise ValueError(f"webhook answered HTTP {resp.status}")
            body = await resp.json()
        if not isinstance(body, dict) or body.get("kind") != "AdmissionReview" or "response" not in body:
            raise ValueError("webhook answered something that is not an AdmissionReview response")
        return body
