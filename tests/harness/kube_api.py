"""A Kubernetes API double over HTTP, for kopf and the kubernetes client alike.

Thin aiohttp server, in memory, run in a background thread on 127.0.0.1 with a random port.
What it implements, and how close to kube-apiserver it is, is listed in docs/operator.md
("The API double"). In short: discovery (/version, /api, /apis, group versions with verbs and
subresources), list/get/create/update/patch/delete, watch streams with resourceVersion,
bookmarks, initial events and ``410 Gone`` for versions older than the retained history,
label and field selectors, the status subresource (status writes ignore the rest and vice
versa; ``metadata.generation`` moves on spec changes only), optimistic concurrency (409 on a
stale ``metadata.resourceVersion``), finalizers and deletionTimestamp, pods/binding, and
validation of custom resources against their CRD's schema (422 Invalid).

Strictness that tests switch on (the e2e harness does, see tests/harness/e2e.py), each in its
own module so that this one stays the store and the HTTP routing:

- authentication by bearer token (:mod:`tests.harness.auth`): a request without a known token
  gets 401 once an authenticator is set;
- authorization (:mod:`tests.harness.rbac`): RBAC evaluated from the rendered chart's roles and
  bindings, 403 for anything they do not grant;
- admission: mutating admission webhooks on create (``server.admission``,
  :mod:`tests.harness.admission`, called as a real server calls them), then a chain of mutating
  hooks, then of validating hooks, run on every write with the
  old and new object and the user (:mod:`tests.harness.policy` evaluates the chart's
  ValidatingAdmissionPolicy; a mutating webhook double slots in as a mutating hook);
- ``limit``/``continue`` paging of lists (continue tokens pin the list's resourceVersion and
  expire with 410 once compacted, as etcd's do);
- 422 for a PUT of a custom resource without ``metadata.resourceVersion`` (the server refuses
  unconditional updates of custom resources).

Also: graceful deletion of bound pods (the simulated kubelet finishes it), CRD deletion that
waits for its objects, OpenAPI ``format`` checks, BOOKMARKs every 60 s as kube-apiserver sends.

Not implemented: server-side apply, managedFields, namespace existence checks.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import copy
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml
from aiohttp import web

from tests.harness import crd_schema, patches
from tests.harness.selectors import SelectorError, parse_field_selector, parse_label_selector

CRDS_DIR = Path(__file__).resolve().parents[2] / "crds"
#: kube-apiserver sends a BOOKMARK on a quiet watch about once a minute (kopf's 70 s
#: inactivity timeout counts on it); the double does the same unless a test asks otherwise.
BOOKMARK_INTERVAL = 60.0
#: What the API server puts on a deleted CRD until its objects are gone.
CRD_CLEANUP_FINALIZER = "customresourcecleanup.apiextensions.k8s.io"
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
T = TypeVar("T")


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    #: e.g. ("status", "binding")
    subresources: tuple[str, ...] = ()
    #: openAPIV3Schema of a custom resource; None for built-in types (not validated)
    schema: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @property
    def is_custom(self) -> bool:
        return self.schema is not None


BUILTIN_TYPES = (
    ResourceType("", "v1", "pods", "Pod", True, "pod", ("po",), ("all",), ("status", "binding")),
    ResourceType("", "v1", "nodes", "Node", False, "node", ("no",), (), ("status",)),
    ResourceType("", "v1", "namespaces", "Namespace", False, "namespace", ("ns",), (), ("status",)),
    ResourceType("", "v1", "events", "Event", True, "event", ("ev",)),
    ResourceType("", "v1", "configmaps", "ConfigMap", True, "configmap", ("cm",)),
    ResourceType("events.k8s.io", "v1", "events", "Event", True, "event", ("ev",)),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True, "lease"),
    ResourceType(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        "customresourcedefinition",
        ("crd", "crds"),
        (),
        ("status",),
    ),
)


def kopf_peering_crds() -> list[dict[str, Any]]:
    """kopf's own peering CRDs (kopf.dev/v1), as kopf's docs ship them: schemaless objects."""
    crds = []
    for kind, plural, scope in (
        ("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
        ("KopfPeering", "kopfpeerings", "Namespaced"),
    ):
        crds.append(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.kopf.dev"},
                "spec": {
                    "group": "kopf.dev",
                    "scope": scope,
                    "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                    "versions": [
                        {
                            "name": "v1",
                            "served": True,
                            "storage": True,
                            "schema": {
                                "openAPIV3Schema": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    ],
                },
            }
        )
    return crds


def load_crds(directory: Path = CRDS_DIR) -> list[dict[str, Any]]:
    """Every CRD under ``crds/`` (the project's single source)."""
    docs = []
    for path in sorted(directory.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def types_from_crd(crd: Mapping[str, Any]) -> list[ResourceType]:
    spec = crd["spec"]
    names = spec["names"]
    result = []
    for v in spec["versions"]:
        if not v.get("served", True):
            continue
        result.append(
            ResourceType(
                group=spec["group"],
                version=v["name"],
                plural=names["plural"],
                kind=names["kind"],
                namespaced=spec["scope"] == "Namespaced",
                singular=names.get("singular", names["kind"].lower()),
                short_names=tuple(names.get("shortNames", ())),
                categories=tuple(names.get("categories", ())),
                subresources=tuple(sorted((v.get("subresources") or {}).keys())),
                schema=(v.get("schema") or {}).get("openAPIV3Schema") or {"type": "object"},
            )
        )
    return result


@dataclass(frozen=True)
class RequestAttributes:
    """What RBAC decides on (authorizer.Attributes): verb, API group, resource, subresource, namespace, name."""

    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str


def request_attributes(
    method: str,
    query: Mapping[str, str],
    rtype: ResourceType,
    namespace: str | None,
    name: str | None,
    sub: str | None,
) -> RequestAttributes:
    """The RBAC verb of an HTTP request, as kube-apiserver's request-info resolver names it."""
    if method == "GET":
        verb = "watch" if query.get("watch") in ("true", "1") else ("get" if name else "list")
    elif method == "POST":
        verb = "create"
    elif method == "PUT":
        verb = "update"
    elif method == "PATCH":
        verb = "patch"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = method.lower()
    return RequestAttributes(verb, rtype.group, rtype.plural, sub or "", namespace or "", name or "")


class ApiError(Exception):
    """An error answer, rendered as a Kubernetes Status object."""

    def __init__(
        self, code: int, reason: str, message: str, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, dict(details or {})

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _not_found(rtype: ResourceType, name: str) -> ApiError:
    what = f"{rtype.plural}.{rtype.group}" if rtype.group else rtype.plural
    return ApiError(
        404,
        "NotFound",
        f'{what} "{name}" not found',
        {"name": name, "group": rtype.group, "kind": rtype.plural},
    )


def _conflict(rtype: ResourceType, name: str) -> ApiError:
    what = f"{rtype.plural}.{rtype.group}" if rtype.group else rtype.plural
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {what} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        {"name": name, "group": rtype.group, "kind": rtype.plural},
    )


@dataclass(frozen=True)
class UserInfo:
    """Who sends a request, as the authenticator resolved its bearer token (authentication.k8s.io)."""

    username: str
    groups: tuple[str, ...] = ()
    #: e.g. {"authentication.kubernetes.io/node-name": ("node-a",)} for a token bound to a pod
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


#: The user of the request being served; None for the test's own seeding helpers (no admission).
CURRENT_USER: contextvars.ContextVar[UserInfo | None] = contextvars.ContextVar(
    "cdmo_double_user", default=None
)


@dataclass(frozen=True)
class AdmissionRequest:
    """What admission sees of one write (admission.k8s.io AdmissionRequest, the fields cdmo needs)."""

    operation: str  # CREATE | UPDATE | DELETE
    rtype: ResourceType
    namespace: str | None
    name: str
    subresource: str
    user: UserInfo
    #: the object as it would be stored (None on DELETE)
    object: Mapping[str, Any] | None
    old_object: Mapping[str, Any] | None


#: A mutating hook returns the object to continue with (or None: unchanged); any hook refuses by
#: raising ApiError.
MutatingHook = Callable[[AdmissionRequest], "dict[str, Any] | None"]
ValidatingHook = Callable[[AdmissionRequest], None]


@dataclass(frozen=True)
class StoreEvent:
    """One committed change: what listeners (simulated controllers) and watchers receive."""

    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    rtype: ResourceType
    old: dict[str, Any] | None
    new: dict[str, Any]


@dataclass(eq=False)
class _Watcher:
    rtype: ResourceType
    namespace: str | None
    label_pred: Callable[[Mapping[str, Any]], bool]
    field_pred: Callable[[Mapping[str, Any]], bool]
    queue: asyncio.Queue[dict[str, Any] | None]

    def matches(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and obj.get("metadata", {}).get("namespace") != self.namespace:
            return False
        return self.label_pred(obj) and self.field_pred(obj)

    def translate(self, ev: StoreEvent) -> dict[str, Any] | None:
        """The event as this watcher's selectors see it (objects can enter or leave the selection)."""
        was, now = self.matches(ev.old), self.matches(ev.new)
        if ev.type == "DELETED":
            return {"type": "DELETED", "object": ev.new} if was else None
        if was and now:
            return {"type": "MODIFIED", "object": ev.new}
        if now:
            return {"type": "ADDED", "object": ev.new}
        if was:
            return {"type": "DELETED", "object": ev.new}
        return None


def _grace_period(rtype: ResourceType, obj: Mapping[str, Any], asked: int | None) -> int:
    """Seconds a delete waits: pods bound to a node and not finished wait for their kubelet."""
    if rtype.plural != "pods" or rtype.group:
        return 0
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
        return 0
    if asked is not None:
        return max(0, int(asked))
    return int(spec.get("terminationGracePeriodSeconds", 30))


def _spec_part(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


class Store:
    """The objects, the event history and the watchers. Used only on the server's event loop."""

    def __init__(self, *, history_limit: int = 10000) -> None:
        self.types: dict[tuple[str, str], ResourceType] = {}
        self.objects: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = {}
        self.rv = 0
        self.history: list[StoreEvent] = []
        self.history_limit = history_limit
        #: watches from versions older than this get 410 Gone
        self.compacted_rv = 0
        self.watchers: set[_Watcher] = set()
        self.listeners: list[Callable[[StoreEvent], None]] = []
        self.commits = 0
        #: admission chain, run on writes that come through HTTP (a user is set): mutating first
        self.mutating: list[MutatingHook] = []
        self.validating: list[ValidatingHook] = []
        for rt in BUILTIN_TYPES:
            self.add_type(rt)

    # -- types ---------------------------------------------------------------------------------
    def add_type(self, rtype: ResourceType) -> None:
        self.types[rtype.key] = rtype
        self.objects.setdefault(rtype.key, {})

    def find_type(self, group: str, version: str, plural: str) -> ResourceType:
        rtype = self.types.get((group, plural))
        if rtype is None or rtype.version != version:
            raise ApiError(
                404,
                "NotFound",
                f"the server could not find the requested resource ({group}/{version} {plural})",
            )
        return rtype

    def type_of(self, plural: str, group: str | None = None) -> ResourceType:
        if group is not None:
            return self.types[(group, plural)]
        for g in ("", *sorted({k[0] for k in self.types})):
            if (g, plural) in self.types:
                return self.types[(g, plural)]
        raise KeyError(plural)

    def install_crd(self, crd: Mapping[str, Any]) -> dict[str, Any]:
        """Store the CRD object and serve its resource (what the real server does on CRD create)."""
        rtype = self.type_of("customresourcedefinitions", "apiextensions.k8s.io")
        existing = self.get(rtype, None, crd["metadata"]["name"])
        obj = existing or self.create(rtype, None, crd, keep_status=True)
        for rt in types_from_crd(crd):
            self.add_type(rt)
        return obj

    # -- reads ---------------------------------------------------------------------------------
    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.objects[rtype.key].get((namespace or "", name))

    def list(
        self,
        rtype: ResourceType,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        lp = parse_label_selector(label_selector)
        fp = parse_field_selector(field_selector, rtype.plural)
        items = [
            o
            for (ns, _), o in sorted(self.objects[rtype.key].items())
            if (namespace is None or ns == namespace) and lp(o) and fp(o)
        ]
        return items

    # -- writes --------------------------------------------------------------------------------
    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _commit(
        self, type_: str, rtype: ResourceType, old: dict[str, Any] | None, new: dict[str, Any]
    ) -> None:
        ev = StoreEvent(int(new["metadata"]["resourceVersion"]), type_, rtype, old, new)
        self.history.append(ev)
        if len(self.history) > self.history_limit:
            dropped = self.history[: len(self.history) - self.history_limit]
            self.compacted_rv = dropped[-1].rv
            del self.history[: len(dropped)]
        for w in list(self.watchers):
            if w.rtype.key == rtype.key and (out := w.translate(ev)) is not None:
                w.queue.put_nowait(out)
        self.commits += 1
        for listener in list(self.listeners):
            listener(ev)

    def compact(self) -> None:
        """Forget the event history, as etcd compaction does: older watches get 410 Gone."""
        self.compacted_rv = self.rv
        self.history.clear()

    def _admit(
        self,
        operation: str,
        rtype: ResourceType,
        obj: dict[str, Any] | None,
        old: Mapping[str, Any] | None,
        subresource: str | None,
        *,
        mutating: bool,
    ) -> dict[str, Any] | None:
        """One admission phase on a write by an HTTP client; returns the (mutated) object.

        As in kube-apiserver: mutating admission, then schema validation, then validating
        admission (so a schema-invalid object gets 422 before any policy sees it).
        """
        user = CURRENT_USER.get()
        hooks = self.mutating if mutating else self.validating
        if user is None or not hooks:
            return obj
        meta = (obj or old or {}).get("metadata") or {}
        req = AdmissionRequest(
            operation, rtype, meta.get("namespace"), meta.get("name", ""), subresource or "", user, obj, old
        )
        if not mutating:
            for check in self.validating:
                check(req)
            return obj
        for hook in self.mutating:
            changed = hook(req)
            if changed is not None:
                obj = changed
                req = AdmissionRequest(
                    operation, rtype, req.namespace, req.name, req.subresource, user, obj, old
                )
        return obj

    def _validate(self, rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        if rtype.schema is None:
            return obj
        pruned = crd_schema.prune(obj, rtype.schema, root=True)
        causes = crd_schema.validate(pruned, rtype.schema)
        if causes:
            name = obj.get("metadata", {}).get("name", "")
            summary = ", ".join(c.message for c in causes)
            raise ApiError(
                422,
                "Invalid",
                f'{rtype.kind}.{rtype.group} "{name}" is invalid: {"[" + summary + "]" if len(causes) > 1 else summary}',
                {
                    "name": name,
                    "group": rtype.group,
                    "kind": rtype.kind,
                    "causes": [{"reason": c.reason, "message": c.message, "field": c.field} for c in causes],
                },
            )
        return pruned

    def create(
        self,
        rtype: ResourceType,
        namespace: str | None,
        body: Mapping[str, Any],
        *,
        keep_status: bool = False,
    ) -> dict[str, Any]:
        obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        if rtype.namespaced:
            namespace = namespace or meta.get("namespace") or "default"
            if meta.get("namespace") not in (None, namespace):
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the object does not match the namespace of the request",
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "Invalid", f"{rtype.kind} is invalid: metadata.name: Required value")
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        key = (meta.get("namespace", ""), meta["name"])
        if key in self.objects[rtype.key]:
            what = f"{rtype.plural}.{rtype.group}" if rtype.group else rtype.plural
            raise ApiError(
                409, "AlreadyExists", f'{what} "{meta["name"]}" already exists', {"name": meta["name"]}
            )
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        if not keep_status:
            if rtype.is_custom and rtype.has_status:
                obj.pop("status", None)
            elif rtype.plural == "pods":
                obj["status"] = {"phase": "Pending"}
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        for k in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(k, None)
        obj = self._admit("CREATE", rtype, obj, None, None, mutating=True) or obj
        obj = self._validate(rtype, obj)
        self._admit("CREATE", rtype, obj, None, None, mutating=False)
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self.objects[rtype.key][key] = obj
        self._commit("ADDED", rtype, None, obj)
        if rtype.plural == "customresourcedefinitions":
            for rt in types_from_crd(obj):
                self.add_type(rt)
        return obj

    def write(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        proposed: Mapping[str, Any],
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """Replace the object with ``proposed``, as PUT (or a computed PATCH result) does."""
        old = self.get(rtype, namespace, name)
        if old is None:
            raise _not_found(rtype, name)
        want_rv = (proposed.get("metadata") or {}).get("resourceVersion")
        if want_rv not in (None, "") and str(want_rv) != old["metadata"]["resourceVersion"]:
            raise _conflict(rtype, name)
        if subresource == "status":
            new = copy.deepcopy(old)
            if "status" in proposed:
                new["status"] = copy.deepcopy(proposed["status"])
            else:
                new.pop("status", None)
        else:
            new = copy.deepcopy(dict(proposed))
            if rtype.has_status:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            meta = new.setdefault("metadata", {})
            for k in (
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ):
                if k in old["metadata"]:
                    meta[k] = old["metadata"][k]
                else:
                    meta.pop(k, None)
        return self._update(rtype, old, new, subresource)

    def _update(
        self, rtype: ResourceType, old: dict[str, Any], new: dict[str, Any], subresource: str | None = None
    ) -> dict[str, Any]:
        name = old["metadata"]["name"]
        new["apiVersion"], new["kind"] = rtype.api_version, rtype.kind
        new["metadata"]["generation"] = old["metadata"].get("generation", 1)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if _spec_part(new) != _spec_part(old):
            new["metadata"]["generation"] += 1
        new = self._admit("UPDATE", rtype, new, old, subresource, mutating=True) or new
        new = self._validate(rtype, new)
        self._admit("UPDATE", rtype, new, old, subresource, mutating=False)
        if new == old:
            return old  # a no-op write does not move the resourceVersion, as in Kubernetes
        new["metadata"]["resourceVersion"] = self._next_rv()
        key = (old["metadata"].get("namespace", ""), name)
        if (
            new["metadata"].get("deletionTimestamp")
            and not new["metadata"].get("finalizers")
            and not new["metadata"].get("deletionGracePeriodSeconds")
        ):
            del self.objects[rtype.key][key]
            self._commit("DELETED", rtype, old, new)
            if rtype.plural == "customresourcedefinitions":
                self._unserve(new)
            self._finish_crd_cleanup(rtype)
            return new
        self.objects[rtype.key][key] = new
        self._commit("MODIFIED", rtype, old, new)
        return new

    def patch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        content_type: str,
        body: Any,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        old = self.get(rtype, namespace, name)
        if old is None:
            raise _not_found(rtype, name)
        ctype = content_type.split(";")[0].strip()
        try:
            if ctype == "application/json-patch+json":
                proposed = patches.json_patch(old, body)
            elif ctype == "application/merge-patch+json":
                proposed = patches.merge_patch(old, body)
            elif ctype == "application/strategic-merge-patch+json":
                if rtype.is_custom:
                    raise ApiError(
                        415,
                        "UnsupportedMediaType",
                        "the body of the request was in an unknown format - accepted media types include: "
                        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                    )
                proposed = patches.strategic_merge_patch(old, body)
            else:
                raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {ctype!r}")
        except patches.PatchError as exc:
            raise ApiError(exc.code, "Invalid" if exc.code == 422 else "BadRequest", str(exc)) from None
        except (IndexError, KeyError, ValueError, TypeError) as exc:
            raise ApiError(422, "Invalid", f"the patch cannot be applied: {exc}") from None
        if not isinstance(proposed, dict):
            raise ApiError(422, "Invalid", "the patch result is not an object")
        return self.write(rtype, namespace, name, proposed, subresource)

    def delete(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        preconditions: Mapping[str, Any] | None = None,
        grace_period: int | None = None,
    ) -> dict[str, Any]:
        """Delete, honouring finalizers and, for pods, graceful deletion.

        A pod bound to a node and not finished is not removed at once: it gets a
        deletionTimestamp and ``deletionGracePeriodSeconds`` (the request's, else its
        ``terminationGracePeriodSeconds``, else 30), and goes when its node's kubelet deletes it
        again with grace 0 (the simulated kubelet does). Other objects have grace 0.
        """
        old = self.get(rtype, namespace, name)
        if old is None:
            raise _not_found(rtype, name)
        pre = preconditions or {}
        if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
            raise _conflict(rtype, name)
        if pre.get("uid") and pre["uid"] != old["metadata"]["uid"]:
            raise _conflict(rtype, name)
        self._admit("DELETE", rtype, None, old, None, mutating=True)
        self._admit("DELETE", rtype, None, old, None, mutating=False)
        key = (old["metadata"].get("namespace", ""), name)
        if rtype.plural == "customresourcedefinitions" and not old["metadata"].get("deletionTimestamp"):
            served = [t for t in types_from_crd(old) if self.objects.get(t.key)]
            if served:
                # The server's customresourcecleanup finalizer: the CRD stays (Terminating) while
                # its objects are deleted, each honouring its own finalizers; it goes with the last.
                new = copy.deepcopy(old)
                new["metadata"]["finalizers"] = [
                    *new["metadata"].get("finalizers", []),
                    CRD_CLEANUP_FINALIZER,
                ]
                new["metadata"]["deletionTimestamp"] = now_rfc3339()
                new["metadata"]["resourceVersion"] = self._next_rv()
                self.objects[rtype.key][key] = new
                self._commit("MODIFIED", rtype, old, new)
                for t in served:
                    for ns, obj_name in list(self.objects[t.key]):
                        self.delete(t, ns or None, obj_name)
                return new
        grace = _grace_period(rtype, old, grace_period)
        meta = old["metadata"]
        if meta.get("finalizers") or grace > 0:
            if meta.get("deletionTimestamp") and int(meta.get("deletionGracePeriodSeconds") or 0) <= grace:
                return old  # already going, no sooner than asked
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = meta.get("deletionTimestamp") or now_rfc3339()
            new["metadata"]["deletionGracePeriodSeconds"] = grace
            if new["metadata"].get("finalizers") or grace > 0:
                if not meta.get("deletionTimestamp"):
                    new["metadata"]["generation"] = meta.get("generation", 1) + 1
                new["metadata"]["resourceVersion"] = self._next_rv()
                self.objects[rtype.key][key] = new
                self._commit("MODIFIED", rtype, old, new)
                return new
        del self.objects[rtype.key][key]
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = self._next_rv()
        self._commit("DELETED", rtype, old, gone)
        if rtype.plural == "customresourcedefinitions":
            self._unserve(gone)
        self._finish_crd_cleanup(rtype)
        return gone

    def _unserve(self, crd: Mapping[str, Any]) -> None:
        for t in types_from_crd(crd):
            self.types.pop(t.key, None)
            self.objects.pop(t.key, None)

    def _finish_crd_cleanup(self, rtype: ResourceType) -> None:
        """Remove a Terminating CRD once the last of its objects is gone."""
        if not rtype.is_custom or self.objects.get(rtype.key):
            return
        crds = self.type_of("customresourcedefinitions", "apiextensions.k8s.io")
        crd = self.get(crds, None, f"{rtype.plural}.{rtype.group}")
        if crd is None or CRD_CLEANUP_FINALIZER not in crd["metadata"].get("finalizers", []):
            return
        new = copy.deepcopy(crd)
        new["metadata"]["finalizers"] = [
            f for f in crd["metadata"]["finalizers"] if f != CRD_CLEANUP_FINALIZER
        ]
        self._update(crds, crd, new)
        if self.get(crds, None, crd["metadata"]["name"]) is None:
            self._unserve(crd)

    def bind(self, namespace: str, name: str, binding: Mapping[str, Any]) -> dict[str, Any]:
        """pods/binding: set spec.nodeName once and PodScheduled=True, as the binding REST does."""
        rtype = self.type_of("pods", "")
        pod = self.get(rtype, namespace, name)
        if pod is None:
            raise _not_found(rtype, name)
        target = (binding.get("target") or {}).get("name")
        if not target:
            raise ApiError(422, "Invalid", "Binding.target.name: Required value")
        if pod.get("spec", {}).get("nodeName"):
            raise ApiError(
                409, "Conflict", f'pod {name} is already assigned to node "{pod["spec"]["nodeName"]}"'
            )
        new = copy.deepcopy(pod)
        new.setdefault("spec", {})["nodeName"] = target
        conds = [
            c for c in new.setdefault("status", {}).get("conditions", []) if c.get("type") != "PodScheduled"
        ]
        conds.append({"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()})
        new["status"]["conditions"] = conds
        # pods/binding is the one way to set spec.nodeName; it writes spec and status in one change
        self._update(rtype, pod, new)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}

    # -- watches -------------------------------------------------------------------------------
    def open_watch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        label_selector: str | None,
        field_selector: str | None,
        since: str | None,
        send_initial: bool,
    ) -> tuple[_Watcher, list[dict[str, Any]]]:
        """Register a watcher and return the events to send first (atomic: no await here)."""
        watcher = _Watcher(
            rtype,
            namespace,
            parse_label_selector(label_selector),
            parse_field_selector(field_selector, rtype.plural),
            asyncio.Queue(),
        )
        first: list[dict[str, Any]] = []
        if since in (None, "", "0") or send_initial:
            items = [o for o in self.list(rtype, namespace) if watcher.matches(o)]
            items.sort(key=lambda o: int(o["metadata"]["resourceVersion"]))
            first = [{"type": "ADDED", "object": o} for o in items]
        else:
            try:
                since_rv = int(str(since))
            except ValueError:
                raise ApiError(400, "BadRequest", f"invalid resource version {since!r}") from None
            if since_rv < self.compacted_rv:
                raise ApiError(410, "Expired", f"too old resource version: {since_rv} ({self.compacted_rv})")
            for ev in self.history:
                if ev.rv > since_rv and ev.rtype.key == rtype.key and (out := watcher.translate(ev)):
                    first.append(out)
        self.watchers.add(watcher)
        return watcher, first


def _path_parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def page_list(
    items: list[dict[str, Any]], limit: str | None, token: str | None, store: Store
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One page of a list and its metadata (``continue``, ``remainingItemCount``), as the server pages.

    The token holds the list's resourceVersion and the last key served. Differs from a real
    server: later pages show the objects as they are now, not as of the first page's version.
    A token older than the compacted history gets 410 Expired, as etcd's compaction causes.
    """
    rv = str(store.rv)
    start: tuple[str, str] | None = None
    if token:
        try:
            decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
            rv, start = str(decoded["rv"]), (str(decoded["start"][0]), str(decoded["start"][1]))
        except (ValueError, KeyError, IndexError, TypeError):
            raise ApiError(400, "BadRequest", "continue key is not valid") from None
        if int(rv) < store.compacted_rv:
            raise ApiError(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result. "
                "You can start a new list without the continue parameter.",
            )
    if limit is not None and not limit.isdigit():
        raise ApiError(400, "BadRequest", f"invalid limit {limit!r}: must be a whole number")

    def key(o: Mapping[str, Any]) -> tuple[str, str]:
        meta = o.get("metadata") or {}
        return (meta.get("namespace") or "", meta.get("name") or "")

    if start is not None:
        items = [o for o in items if key(o) > start]
    size = int(limit or 0)
    meta: dict[str, Any] = {"resourceVersion": rv, "continue": ""}
    if size <= 0 or len(items) <= size:
        return items, meta
    page = items[:size]
    cont = {"rv": rv, "start": list(key(page[-1]))}
    meta["continue"] = base64.urlsafe_b64encode(json.dumps(cont).encode()).decode()
    meta["remainingItemCount"] = len(items) - size
    return page, meta


class KubeApiServer:
    """The aiohttp application around a Store."""

    def __init__(
        self,
        store: Store,
        *,
        bookmark_interval: float = BOOKMARK_INTERVAL,
        default_watch_timeout: float = 600.0,
    ) -> None:
        self.store = store
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        self.requests: list[tuple[str, str, int]] = []
        #: every request with who sent it: (username or "", method, path_qs, status)
        self.audit: list[tuple[str, str, str, int]] = []
        #: (resource, items) of each list answer, to show paging at work
        self.list_pages: list[tuple[str, int]] = []
        #: bearer token -> user (tests.harness.auth); None: requests need no token
        self.authenticate: Callable[[str], UserInfo | None] | None = None
        #: (user, request attributes) -> allowed (tests.harness.rbac); None: everything is allowed
        self.authorize: Callable[[UserInfo, RequestAttributes], bool] | None = None
        #: watches answered 410 Gone (their resourceVersion was compacted away)
        self.expired_watches: list[str] = []
        self.closing = asyncio.Event()
        #: Mutating admission on create (tests/harness/admission.py): ``await admit(store, rtype,
        #: namespace, body)`` returns the body to store, or raises ApiError as the webhook decides.
        self.admission: Any | None = None
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    # -- discovery -----------------------------------------------------------------------------
    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for g, _ in self.store.types:
            if g:
                versions = groups.setdefault(g, [])
                for rt in self.store.types.values():
                    if rt.group == g and rt.version not in versions:
                        versions.append(rt.version)
        return groups

    def _api_group(self, name: str, versions: list[str]) -> dict[str, Any]:
        vs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        return {"name": name, "versions": vs, "preferredVersion": vs[0]}

    def _resource_list(self, group: str, version: str) -> dict[str, Any]:
        resources = []
        for rt in sorted(self.store.types.values(), key=lambda r: r.plural):
            if rt.group != group or rt.version != version:
                continue
            resources.append(
                {
                    "name": rt.plural,
                    "singularName": rt.singular,
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": VERBS,
                    "shortNames": list(rt.short_names),
                    "categories": list(rt.categories),
                }
            )
            for sub in rt.subresources:
                verbs = ["create"] if sub == "binding" else ["get", "patch", "update"]
                kind = "Binding" if sub == "binding" else rt.kind
                resources.append(
                    {
                        "name": f"{rt.plural}/{sub}",
                        "singularName": "",
                        "namespaced": rt.namespaced,
                        "kind": kind,
                        "verbs": verbs,
                    }
                )
        if not resources:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({group}/{version})"
            )
        gv = f"{group}/{version}" if group else version
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}

    # -- routing -------------------------------------------------------------------------------
    def _user(self, request: web.Request) -> UserInfo | None:
        """The request's user from its bearer token; 401 when a token is needed and unknown."""
        if self.authenticate is None:
            return None
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        user = self.authenticate(token) if token else None
        if user is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return user

    async def handle(self, request: web.Request) -> web.StreamResponse:
        user: UserInfo | None = None
        try:
            user = self._user(request)
            CURRENT_USER.set(user)
            response = await self._route(request, user)
        except ApiError as exc:
            response = web.json_response(exc.status(), status=exc.code)
        except SelectorError as exc:
            err = ApiError(400, "BadRequest", str(exc))
            response = web.json_response(err.status(), status=400)
        except crd_schema.UnknownCelRule as exc:
            err = ApiError(500, "InternalError", str(exc))
            response = web.json_response(err.status(), status=500)
        self.requests.append((request.method, request.path_qs, response.status))
        self.audit.append((user.username if user else "", request.method, request.path_qs, response.status))
        return response

    def _check_access(
        self,
        user: UserInfo | None,
        request: web.Request,
        rtype: ResourceType,
        namespace: str | None,
        name: str | None,
        sub: str | None,
    ) -> None:
        if self.authorize is None or user is None:
            return
        attrs = request_attributes(request.method, request.query, rtype, namespace, name, sub)
        if not self.authorize(user, attrs):
            what = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
            scope = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
            qualified = f"{rtype.plural}.{rtype.group}" if rtype.group else rtype.plural
            subject = f'{qualified} "{name}"' if name else qualified
            raise ApiError(
                403,
                "Forbidden",
                f'{subject} is forbidden: User "{user.username}" cannot {attrs.verb} resource "{what}" '
                f'in API group "{rtype.group}"{scope}',
                {"name": name or "", "group": rtype.group, "kind": rtype.plural},
            )

    async def _route(self, request: web.Request, user: UserInfo | None = None) -> web.StreamResponse:
        parts = _path_parts(request.path)
        if parts == ["version"]:
            return web.json_response(
                {"major": "1", "minor": "31", "gitVersion": "v1.31.0-cdmo-double", "platform": "linux/amd64"}
            )
        if parts == ["api"]:
            return web.json_response(
                {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
            )
        if parts == ["apis"]:
            groups = [self._api_group(g, vs) for g, vs in sorted(self._groups().items())]
            return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) == 2:
            versions = self._groups().get(parts[1])
            if not versions:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return web.json_response(
                {"kind": "APIGroup", "apiVersion": "v1", **self._api_group(parts[1], versions)}
            )
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            return web.json_response(self._resource_list(group, version))
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3 and (group, rest[2]) in self.store.types:
            namespace, rest = rest[1], rest[2:]
        rtype = self.store.find_type(group, version, rest[0])
        if namespace is not None and not rtype.namespaced:
            raise ApiError(404, "NotFound", f"{rtype.plural} is not namespaced")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if len(rest) > 3 or (sub is not None and sub not in rtype.subresources):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        self._check_access(user, request, rtype, namespace, name, sub)
        if name is not None and rtype.namespaced and namespace is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return await self._dispatch(request, rtype, namespace, name, sub)

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            try:
                return yaml.safe_load(raw)
            except yaml.YAMLError:
                raise ApiError(400, "BadRequest", "the body is neither JSON nor YAML") from None

    async def _dispatch(
        self,
        request: web.Request,
        rtype: ResourceType,
        namespace: str | None,
        name: str | None,
        sub: str | None,
    ) -> web.StreamResponse:
        q = request.query
        method = request.method
        if name is None:
            if method == "GET" and q.get("watch") in ("1", "t", "T", "TRUE", "true", "True"):
                return await self._watch(request, rtype, namespace)
            if method == "GET":
                items = self.store.list(rtype, namespace, q.get("labelSelector"), q.get("fieldSelector"))
                page, meta = page_list(items, q.get("limit"), q.get("continue"), self.store)
                self.list_pages.append((rtype.plural, len(page)))
                return web.json_response(
                    {
                        "kind": f"{rtype.kind}List",
                        "apiVersion": rtype.api_version,
                        "metadata": meta,
                        "items": page,
                    },
                    dumps=_dumps,
                )
            if method == "POST":
                body = await self._body(request)
                if self.admission is not None:
                    body = await self.admission.admit(self.store, rtype, namespace, body)
                obj = self.store.create(rtype, namespace, body)
                return web.json_response(obj, status=201)
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on a collection here")
        if sub == "binding":
            if method != "POST" or namespace is None:
                raise ApiError(405, "MethodNotAllowed", "pods/binding supports POST only")
            return web.json_response(self.store.bind(namespace, name, await self._body(request)), status=201)
        if method == "GET":
            obj = self.store.get(rtype, namespace, name)
            if obj is None:
                raise _not_found(rtype, name)
            return web.json_response(obj)
        if method == "PUT":
            body = await self._body(request)
            if rtype.is_custom and not ((body or {}).get("metadata") or {}).get("resourceVersion"):
                # Custom resources refuse unconditional updates (customresource's AllowUnconditionalUpdate is false).
                raise ApiError(
                    422,
                    "Invalid",
                    f'{rtype.kind}.{rtype.group} "{name}" is invalid: metadata.resourceVersion: Invalid value: '
                    "0x0: must be specified for an update",
                )
            return web.json_response(self.store.write(rtype, namespace, name, body, sub))
        if method == "PATCH":
            ctype = request.headers.get("Content-Type", "application/merge-patch+json")
            return web.json_response(
                self.store.patch(rtype, namespace, name, ctype, await self._body(request), sub)
            )
        if method == "DELETE":
            body = await self._body(request) or {}
            raw_grace = body.get("gracePeriodSeconds", q.get("gracePeriodSeconds"))
            try:
                grace = None if raw_grace is None else int(raw_grace)
            except (TypeError, ValueError):
                raise ApiError(400, "BadRequest", f"invalid gracePeriodSeconds {raw_grace!r}") from None
            return web.json_response(
                self.store.delete(rtype, namespace, name, body.get("preconditions"), grace)
            )
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")

    async def _watch(
        self, request: web.Request, rtype: ResourceType, namespace: str | None
    ) -> web.StreamResponse:
        q = request.query
        send_initial = q.get("sendInitialEvents") == "true"
        bookmarks = q.get("allowWatchBookmarks") == "true"
        raw_timeout = q.get("timeoutSeconds")
        if raw_timeout is not None and not raw_timeout.isdigit():
            # kube-apiserver reads timeoutSeconds as an int64 and refuses anything else
            raise ApiError(
                400, "BadRequest", f"invalid timeoutSeconds {raw_timeout!r}: must be a whole number"
            )
        timeout = float(raw_timeout or self.default_watch_timeout)
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        try:
            watcher, first = self.store.open_watch(
                rtype,
                namespace,
                q.get("labelSelector"),
                q.get("fieldSelector"),
                q.get("resourceVersion"),
                send_initial,
            )
        except ApiError as exc:
            if exc.code != 410:
                raise
            # A watch from a compacted version is answered 200 with one ERROR event, then closed.
            self.expired_watches.append(request.path_qs)
            await response.prepare(request)
            await response.write(json.dumps({"type": "ERROR", "object": exc.status()}).encode() + b"\n")
            await response.write_eof()
            return response
        deadline = time.monotonic() + timeout
        try:
            await response.prepare(request)
            for ev in first:
                await response.write(json.dumps(ev).encode() + b"\n")
            if send_initial:
                await response.write(json.dumps(self._bookmark(rtype, initial_end=True)).encode() + b"\n")
            while not self.closing.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    ev = await asyncio.wait_for(watcher.queue.get(), min(remaining, self.bookmark_interval))
                except TimeoutError:
                    if bookmarks:
                        await response.write(json.dumps(self._bookmark(rtype)).encode() + b"\n")
                    continue
                if ev is None:
                    break
                await response.write(json.dumps(ev).encode() + b"\n")
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError, RuntimeError):
            pass
        finally:
            self.store.watchers.discard(watcher)
        return response

    def _bookmark(self, rtype: ResourceType, initial_end: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"resourceVersion": str(self.store.rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {
            "type": "BOOKMARK",
            "object": {"kind": rtype.kind, "apiVersion": rtype.api_version, "metadata": meta},
        }


class KubeApiDouble:
    """The server in a background thread, plus thread-safe helpers to seed and read objects.

    Helpers run on the server's loop, so they see and change the same state as HTTP clients,
    and every change they make reaches watchers like any other write.
    """

    def __init__(
        self,
        *,
        crds: Iterable[Mapping[str, Any]] | None = None,
        bookmark_interval: float = BOOKMARK_INTERVAL,
        history_limit: int = 10000,
        default_watch_timeout: float = 600.0,
    ) -> None:
        self._crds = list(crds) if crds is not None else [*load_crds(), *kopf_peering_crds()]
        self._bookmark_interval = bookmark_interval
        self._history_limit = history_limit
        self._default_watch_timeout = default_watch_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._changed = threading.Condition()
        self.store: Store
        self.server: KubeApiServer
        self.url = ""

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> str:
        ready = threading.Event()
        errors: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(self._astart())
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._astop())
            loop.close()

        self._thread = threading.Thread(target=main, name="kube-api-double", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        return self.url

    async def _astart(self) -> None:
        self.store = Store(history_limit=self._history_limit)
        self.store.listeners.append(self._notify)
        for crd in self._crds:
            self.store.install_crd(crd)
        for ns in ("default", "kube-system"):
            self.store.create(
                self.store.type_of("namespaces"), None, {"metadata": {"name": ns}}, keep_status=True
            )
        self.server = KubeApiServer(
            self.store,
            bookmark_interval=self._bookmark_interval,
            default_watch_timeout=self._default_watch_timeout,
        )
        self._runner = web.AppRunner(self.server.app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def _astop(self) -> None:
        self.server.closing.set()
        for w in list(self.store.watchers):
            w.queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> KubeApiDouble:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- thread-safe access --------------------------------------------------------------------
    def _notify(self, _: StoreEvent) -> None:
        with self._changed:
            self._changed.notify_all()

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn`` on the server's loop (where the store lives) and return its result."""
        assert self._loop is not None, "the API double is not running"
        if threading.current_thread() is self._thread:
            return fn()

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def call_soon(self, fn: Callable[[], Any]) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(fn)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def _type(self, plural: str, group: str | None) -> ResourceType:
        return self.store.type_of(plural, group)

    def create(self, obj: Mapping[str, Any], *, keep_status: bool = True) -> dict[str, Any]:
        """Seed an object (status kept unless told otherwise); the kind picks the resource."""
        api_version, kind = obj["apiVersion"], obj["kind"]
        group = api_version.split("/")[0] if "/" in api_version else ""

        def do() -> dict[str, Any]:
            if kind == "CustomResourceDefinition":
                return copy.deepcopy(self.store.install_crd(obj))
            rtype = next(r for r in self.store.types.values() if r.group == group and r.kind == kind)
            ns = obj.get("metadata", {}).get("namespace")
            return copy.deepcopy(self.store.create(rtype, ns, obj, keep_status=keep_status))

        return self.call(do)

    def get(
        self, plural: str, name: str, namespace: str | None = None, group: str | None = None
    ) -> dict[str, Any] | None:
        return self.call(lambda: copy.deepcopy(self.store.get(self._type(plural, group), namespace, name)))

    def list(
        self,
        plural: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        group: str | None = None,
    ) -> list[dict[str, Any]]:
        return self.call(
            lambda: copy.deepcopy(
                self.store.list(self._type(plural, group), namespace, label_selector, field_selector)
            )
        )

    def patch(
        self,
        plural: str,
        name: str,
        body: Any,
        namespace: str | None = None,
        *,
        subresource: str | None = None,
        group: str | None = None,
        content_type: str = "application/merge-patch+json",
    ) -> dict[str, Any]:
        return self.call(
            lambda: copy.deepcopy(
                self.store.patch(self._type(plural, group), namespace, name, content_type, body, subresource)
            )
        )

    def delete(
        self,
        plural: str,
        name: str,
        namespace: str | None = None,
        group: str | None = None,
        *,
        grace_period: int | None = None,
    ) -> dict[str, Any]:
        return self.call(
            lambda: copy.deepcopy(
                self.store.delete(self._type(plural, group), namespace, name, grace_period=grace_period)
            )
        )

    def compact(self) -> None:
        self.call(self.store.compact)

    def drop_watches(self) -> int:
        """End every open watch stream (as an API server restart does); returns how many."""

        def drop() -> int:
            watchers = list(self.store.watchers)
            for w in watchers:
                w.queue.put_nowait(None)
            return len(watchers)

        return self.call(drop)

    def subscribe(self, listener: Callable[[StoreEvent], None]) -> Callable[[], None]:
        """Call ``listener`` on the server loop after every committed change; returns an unsubscriber."""
        self.call(lambda: self.store.listeners.append(listener))

        def unsubscribe() -> None:
            self.call(
                lambda: self.store.listeners.remove(listener) if listener in self.store.listeners else None
            )

        return unsubscribe

    def history(self, plural: str | None = None) -> list[StoreEvent]:
        return self.call(
            lambda: [e for e in self.store.history if plural is None or e.rtype.plural == plural]
        )

    def wait_for(self, check: Callable[[Store], T], timeout: float = 30.0, message: str = "") -> T:
        """Wait until ``check(store)`` (run on the server loop) returns something truthy; return it.

        Event-driven: re-checks after each committed change, never on a fixed sleep.
        """
        deadline = time.monotonic() + timeout
        for _ in itertools.count():
            with self._changed:
                seen = self.store.commits
            result = self.call(lambda: check(self.store))
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(message or f"condition not met within {timeout} s")
            with self._changed:
                if self.store.commits == seen:
                    self._changed.wait(min(remaining, 1.0))
        raise AssertionError("unreachable")
