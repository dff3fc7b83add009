"""JSON documents read as :func:`cdmo.yamlload.load_yaml` reads YAML: a key given twice in one
object is an error, not the last value silently kept (``json.loads`` keeps it).

Pure: imports nothing of cdmo, Kubernetes or NVML.
"""

from __future__ import annotations

import json
from typing import Any


class DuplicateKey(ValueError):
    """An object of the document gives ``key`` twice."""

    def __init__(self, key: str) -> None:
        super().__init__(f"the key {key!r} is given twice in one object")
        self.key = key


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return obj


def load_json(text: str) -> Any:
    """``json.loads(text)``, refusing a key given twice (:class:`DuplicateKey`)."""
    return json.loads(text, object_pairs_hook=_object)
