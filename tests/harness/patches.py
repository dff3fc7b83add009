"""PATCH bodies as the API server applies them: JSON merge patch, strategic merge, JSON patch.

Strategic merge is the merge patch plus merging by key for the lists that Kubernetes marks
``patchStrategy: merge`` and that cdmo's parts touch (conditions by type; containers, volumes,
env and ports by name). Directives such as ``$patch: delete`` are not supported.
"""

from __future__ import annotations

import copy
from typing import Any


class PatchError(ValueError):
    """A patch the server cannot apply (422 for a failed ``test``, 400 for bad shape)."""

    def __init__(self, message: str, code: int = 422) -> None:
        super().__init__(message)
        self.code = code


_STRATEGIC_KEYS = {
    "conditions": "type",
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "volumeMounts": "name",
    "env": "name",
    "ports": "containerPort",
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge, null deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif key in _STRATEGIC_KEYS and isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_list(result[key], value, _STRATEGIC_KEYS[key])
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _merge_list(old: list[Any], new: list[Any], key: str) -> list[Any]:
    merged = [copy.deepcopy(item) for item in old]
    for item in new:
        if not isinstance(item, dict) or key not in item:
            merged.append(copy.deepcopy(item))
            continue
        for i, existing in enumerate(merged):
            if isinstance(existing, dict) and existing.get(key) == item[key]:
                merged[i] = strategic_merge_patch(existing, item)
                break
        else:
            merged.append(copy.deepcopy(item))
    return merged


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _walk(doc: Any, pointer: str) -> tuple[Any, str | int]:
    """The parent container and the last key of a JSON pointer."""
    if not pointer.startswith("/"):
        raise PatchError(f"invalid JSON pointer {pointer!r}", 400)
    parts = [_unescape(p) for p in pointer.split("/")[1:]]
    node = doc
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise PatchError(f"doc is missing path: {pointer!r}")
    last = parts[-1]
    if isinstance(node, list):
        return node, (len(node) if last == "-" else int(last))
    return node, last


def _get(doc: Any, pointer: str) -> Any:
    if pointer == "":
        return doc
    parent, key = _walk(doc, pointer)
    try:
        return parent[key]
    except (KeyError, IndexError):
        raise PatchError(f"doc is missing path: {pointer!r}") from None


def _add(doc: Any, pointer: str, value: Any) -> None:
    parent, key = _walk(doc, pointer)
    if isinstance(parent, list):
        parent.insert(int(key), value)
    else:
        parent[key] = value


def _remove(doc: Any, pointer: str) -> Any:
    parent, key = _walk(doc, pointer)
    try:
        return parent.pop(key)
    except (KeyError, IndexError):
        raise PatchError(f"doc is missing path: {pointer!r}") from None


def json_patch(target: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902; a failed ``test`` raises PatchError (the server answers 422)."""
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a list of operations", 400)
    doc = copy.deepcopy(target)
    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        if kind == "test":
            if _get(doc, path) != op.get("value"):
                raise PatchError(f"testing value {path} failed")
        elif kind == "add":
            _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "replace":
            _remove(doc, path)
            _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "move":
            _add(doc, path, _remove(doc, op["from"]))
        elif kind == "copy":
            _add(doc, path, copy.deepcopy(_get(doc, op["from"])))
        else:
            raise PatchError(f"unknown JSON patch operation {kind!r}", 400)
    return doc
