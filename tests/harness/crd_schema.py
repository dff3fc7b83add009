"""Validation of custom resources against a CRD's openAPIV3Schema, as the API server does it.

What is checked, in the server's order: pruning of unknown fields (unless
``x-kubernetes-preserve-unknown-fields``), the OpenAPI schema (through ``jsonschema``'s draft 4
validator, whose keywords the structural schema uses), ``x-kubernetes-list-type: map`` key
uniqueness, and the ``x-kubernetes-validations`` CEL rules. OpenAPI ``format`` is checked for
the formats cdmo's CRD uses (``date-time``, ``int32``, ``int64``), as the server does.

CEL is not interpreted: each rule that cdmo's CRD uses has a hand-written Python equivalent in
``CEL_EQUIVALENTS``, keyed by the exact rule text. A rule without an equivalent raises
``UnknownCelRule``, so a CRD change that adds a rule fails the tests until the double learns it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jsonschema


class UnknownCelRule(NotImplementedError):
    """A CEL rule of the CRD that the double has no Python equivalent for."""


@dataclass(frozen=True)
class Cause:
    """One reason the object is invalid: the field path and a message in the server's words."""

    field: str
    reason: str
    message: str


def _unique_by(key: str) -> Callable[[Any], bool]:
    def rule(items: Any) -> bool:
        values = [item.get(key) for item in items]
        return len(values) == len(set(map(repr, values)))

    return rule


#: rule text -> Python predicate on ``self``. Equivalences, written and checked by hand:
#: ``self.all(x, self.exists_one(y, y.k == x.k))`` holds iff the values of ``k`` are unique.
CEL_EQUIVALENTS: dict[str, Callable[[Any], bool]] = {
    "self.all(g, self.exists_one(h, h.index == g.index))": _unique_by("index"),
    "self.all(i, self.exists_one(j, j.start == i.start))": _unique_by("start"),
}


def _path(parts: list[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def prune(obj: Any, schema: Mapping[str, Any], *, root: bool = False) -> Any:
    """A copy of ``obj`` without the fields the structural schema does not know (the server drops them)."""
    if isinstance(obj, dict) and schema.get("type") == "object":
        props = schema.get("properties")
        keep_unknown = schema.get("x-kubernetes-preserve-unknown-fields") or props is None
        out = {}
        for key, value in obj.items():
            if root and key in ("apiVersion", "kind", "metadata"):
                out[key] = copy.deepcopy(value)
            elif props is not None and key in props:
                out[key] = prune(value, props[key])
            elif keep_unknown:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(obj, list) and schema.get("type") == "array" and "items" in schema:
        return [prune(item, schema["items"]) for item in obj]
    return copy.deepcopy(obj)


#: RFC 3339 as kube-apiserver's date-time format checker reads it (strfmt's DateTime).
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")
_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("date-time")
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True  # a wrong type is the type keyword's to report
    if not _DATE_TIME.match(value):
        return False
    try:
        datetime.fromisoformat(value.replace("z", "Z").replace("t", "T").replace(" ", "T"))
    except ValueError:
        return False
    return True


@_FORMATS.checks("int64")
def _is_int64(value: object) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


@_FORMATS.checks("int32")
def _is_int32(value: object) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


def _schema_causes(obj: Any, schema: Mapping[str, Any]) -> list[Cause]:
    validator = jsonschema.Draft4Validator(schema, format_checker=_FORMATS)
    causes = []
    for err in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        field = _path(list(err.absolute_path))
        value = err.instance
        if err.validator == "pattern":
            message = f"Invalid value: {value!r}: {field} in body should match '{err.validator_value}'"
        elif err.validator == "minimum":
            message = f"Invalid value: {value!r}: {field} in body should be greater than or equal to {err.validator_value}"
        elif err.validator == "maximum":
            message = f"Invalid value: {value!r}: {field} in body should be less than or equal to {err.validator_value}"
        elif err.validator == "required":
            missing = err.message.split("'")[1] if "'" in err.message else "?"
            field = _path([*err.absolute_path, missing])
            message = "Required value"
        elif err.validator == "enum":
            allowed = ", ".join(f'"{v}"' for v in err.validator_value)
            message = f"Unsupported value: {value!r}: supported values: {allowed}"
        elif err.validator == "format":
            message = (
                f"Invalid value: {value!r}: {field} in body must be of type {err.validator_value}: {value!r}"
            )
        elif err.validator == "type":
            message = f"Invalid value: {type(value).__name__}: {field} in body must be of type {err.validator_value}"
        else:
            message = f"Invalid value: {err.message}"
        reason = "FieldValueRequired" if err.validator == "required" else "FieldValueInvalid"
        causes.append(Cause(field, reason, f"{field}: {message}"))
    return causes


def _walk_extensions(obj: Any, schema: Mapping[str, Any], path: list[str | int], causes: list[Cause]) -> None:
    """List-map key uniqueness and CEL rules, depth first as the server evaluates them."""
    field = _path(path)
    if isinstance(obj, list) and schema.get("x-kubernetes-list-type") == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen: set[str] = set()
        for i, item in enumerate(obj):
            if not isinstance(item, Mapping):
                continue
            ident = repr([item.get(k) for k in keys])
            if ident in seen:
                shown = ", ".join(f'"{k}":{item.get(k)!r}' for k in keys)
                causes.append(
                    Cause(
                        _path([*path, i]),
                        "FieldValueDuplicate",
                        f"{_path([*path, i])}: Duplicate value: map[string]interface {{}}{{{shown}}}",
                    )
                )
            seen.add(ident)
    for rule in schema.get("x-kubernetes-validations") or []:
        text = rule["rule"]
        if text not in CEL_EQUIVALENTS:
            raise UnknownCelRule(f"the API double has no Python equivalent of the CEL rule {text!r}")
        if not CEL_EQUIVALENTS[text](obj):
            message = rule.get("message") or f"failed rule: {text}"
            causes.append(
                Cause(field, rule.get("reason", "FieldValueInvalid"), f"{field}: Invalid value: {message}")
            )
    if isinstance(obj, Mapping):
        for key, sub in (schema.get("properties") or {}).items():
            if key in obj and obj[key] is not None:
                _walk_extensions(obj[key], sub, [*path, key], causes)
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            _walk_extensions(item, schema["items"], [*path, i], causes)


def validate(obj: Mapping[str, Any], schema: Mapping[str, Any]) -> list[Cause]:
    """Every reason the API server would refuse ``obj`` (already pruned); empty when valid."""
    body = {k: v for k, v in obj.items() if k != "metadata"}
    causes = _schema_causes(body, schema)
    if causes:
        # The server evaluates CEL only on a schema-valid object.
        return causes
    _walk_extensions(body, schema, [], causes)
    return causes


def crd_version_schema(crd: Mapping[str, Any], version: str) -> Mapping[str, Any]:
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise KeyError(version)
