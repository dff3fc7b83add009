"""The chart's ValidatingAdmissionPolicies, evaluated on the API double's writes (cel-python).

Plug :meth:`AdmissionPolicies.check` into ``Store.validating``. A policy applies when a
binding names it and its ``matchConstraints.resourceRules`` match the write (group, version,
operation, ``resource`` or ``resource/subresource``). Its variables are evaluated in order,
then its validations; a failed one refuses the write when the binding's ``validationActions``
hold ``Deny`` (403 for reason Forbidden, 422 otherwise, with the server's message shape), and
is recorded in :attr:`AdmissionPolicies.warnings` for ``Warn``/``Audit``.

Differs from a real server: cel-python is not the API server's CEL (no type check against the
CRD schema, no cost limits); ``paramKind``, ``matchConditions`` and binding ``matchResources``
are not implemented (the chart uses none of them, and :meth:`from_objects` refuses them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import celpy

from tests.harness.kube_api import AdmissionRequest, ApiError


@dataclass
class _Policy:
    name: str
    binding: str
    actions: tuple[str, ...]
    rules: list[Mapping[str, Any]]
    variables: list[tuple[str, Any]]
    #: (program, messageExpression program or None, message, reason)
    validations: list[tuple[Any, Any, str, str]]


def _compile(env: celpy.Environment, expression: str) -> Any:
    return env.program(env.compile(expression))


def _matches(rules: Iterable[Mapping[str, Any]], req: AdmissionRequest) -> bool:
    resource = f"{req.rtype.plural}/{req.subresource}" if req.subresource else req.rtype.plural
    for r in rules:
        if (
            ({"*", req.rtype.group} & set(r.get("apiGroups") or ()))
            and ({"*", req.rtype.version} & set(r.get("apiVersions") or ()))
            and ({"*", req.operation} & set(r.get("operations") or ()))
            and ({"*", resource} & set(r.get("resources") or ()))
        ):
            return True
    return False


def _request_json(req: AdmissionRequest) -> dict[str, Any]:
    return {
        "operation": req.operation,
        "subResource": req.subresource,
        "name": req.name,
        "namespace": req.namespace or "",
        "resource": {"group": req.rtype.group, "version": req.rtype.version, "resource": req.rtype.plural},
        "userInfo": {
            "username": req.user.username,
            "groups": list(req.user.groups),
            "extra": {k: list(v) for k, v in req.user.extra.items()},
        },
    }


@dataclass
class AdmissionPolicies:
    policies: list[_Policy]
    #: (policy, message) of failed validations that were not denied (Warn / Audit)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    #: (policy, message) of denied writes
    denials: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def from_objects(cls, objects: Iterable[Mapping[str, Any]]) -> AdmissionPolicies:
        objs = list(objects)
        env = celpy.Environment()
        bindings = {
            o["spec"]["policyName"]: o for o in objs if o.get("kind") == "ValidatingAdmissionPolicyBinding"
        }
        policies = []
        for o in objs:
            if o.get("kind") != "ValidatingAdmissionPolicy" or o["metadata"]["name"] not in bindings:
                continue
            spec, binding = o["spec"], bindings[o["metadata"]["name"]]
            unsupported = {"paramKind", "matchConditions"} & set(spec) or {
                "matchResources",
                "paramRef",
            } & set(binding["spec"])
            if unsupported:
                raise NotImplementedError(f"the API double's policy evaluation lacks {sorted(unsupported)}")
            policies.append(
                _Policy(
                    o["metadata"]["name"],
                    binding["metadata"]["name"],
                    tuple(binding["spec"].get("validationActions") or ()),
                    list((spec.get("matchConstraints") or {}).get("resourceRules") or []),
                    [(v["name"], _compile(env, v["expression"])) for v in spec.get("variables") or []],
                    [
                        (
                            _compile(env, v["expression"]),
                            _compile(env, v["messageExpression"]) if v.get("messageExpression") else None,
                            v.get("message") or f"failed expression: {v['expression'].strip()}",
                            v.get("reason") or "Invalid",
                        )
                        for v in spec.get("validations") or []
                    ],
                )
            )
        return cls(policies)

    def failures(self, req: AdmissionRequest) -> list[tuple[_Policy, str, str]]:
        """(policy, message, reason) of every validation the write fails, whatever the binding's actions."""
        failed: list[tuple[_Policy, str, str]] = []
        activation_base = {
            "request": celpy.json_to_cel(_request_json(req)),
            "object": celpy.json_to_cel(req.object) if req.object is not None else None,
            "oldObject": celpy.json_to_cel(req.old_object) if req.old_object is not None else None,
        }
        for p in self.policies:
            if not _matches(p.rules, req):
                continue
            variables: dict[Any, Any] = {}
            activation = {**activation_base, "variables": celpy.celtypes.MapType(variables)}
            for name, program in p.variables:
                variables[celpy.celtypes.StringType(name)] = program.evaluate(activation)
                activation["variables"] = celpy.celtypes.MapType(variables)
            for program, message_program, message, reason in p.validations:
                result = program.evaluate(activation)
                # a runtime error fails the validation, as under the chart's failurePolicy Fail
                if not isinstance(result, celpy.CELEvalError) and bool(result):
                    continue
                if message_program is not None:
                    evaluated = message_program.evaluate(activation)
                    if not isinstance(evaluated, celpy.CELEvalError):
                        message = str(evaluated)
                failed.append((p, message, reason))
        return failed

    def check(self, req: AdmissionRequest) -> None:
        """Refuse the write (ApiError) if a Deny-bound policy's validation fails; record the rest."""
        for p, message, reason in self.failures(req):
            text = (
                f"ValidatingAdmissionPolicy '{p.name}' with binding '{p.binding}' denied request: {message}"
            )
            if "Deny" not in p.actions:
                self.warnings.append((p.name, text))
                continue
            self.denials.append((p.name, text))
            qualified = f"{req.rtype.plural}.{req.rtype.group}" if req.rtype.group else req.rtype.plural
            raise ApiError(
                403 if reason == "Forbidden" else 422,
                reason,
                f'{qualified} "{req.name}" is forbidden: {text}',
                {"name": req.name, "group": req.rtype.group, "kind": req.rtype.plural},
            )
