"""Applying a JSON patch (RFC 6902: add, remove, replace) to plain data, without changing the input.

``cdmo translate`` shows the pod as the webhook's patch would leave it; the API server applies
the same patch on its side.

Pure: no I/O.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from cdmo.errors import InvalidInput


def _tokens(path: str) -> list[str]:
    if not path.startswith("/"):
        raise InvalidInput(f"JSON patch path {path!r} does not start with /")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def apply_patch(doc: Mapping[str, Any], ops: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``doc`` with ``ops`` applied, as a new object; raises InvalidInput on a path that does not exist."""
    result: Any = copy.deepcopy(dict(doc))
    for op in ops:
        *parents, last = _tokens(str(op["path"]))
        target = result
        for token in parents:
            target = target[int(token)] if isinstance(target, list) else target.get(token)
            if target is None:
                raise InvalidInput(f"JSON patch path {op['path']} does not exist")
        kind = op["op"]
        if isinstance(target, list):
            index = len(target) if last == "-" else int(last)
            if kind == "add":
                target.insert(index, copy.deepcopy(op["value"]))
            elif kind == "remove":
                del target[index]
            elif kind == "replace":
                target[index] = copy.deepcopy(op["value"])
            else:
                raise InvalidInput(f"JSON patch op {kind!r} is not supported")
            continue
        if kind in ("add", "replace"):
            if kind == "replace" and last not in target:
                raise InvalidInput(f"JSON patch replace of absent {op['path']}")
            target[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            if last not in target:
                raise InvalidInput(f"JSON patch remove of absent {op['path']}")
            del target[last]
        else:
            raise InvalidInput(f"JSON patch op {kind!r} is not supported")
    return dict(result)
