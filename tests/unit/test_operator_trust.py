"""Per-node trust: which MigLayout reports the operator ignores (cdmo.operator.trust)."""

from __future__ import annotations

from typing import Any

import pytest

from cdmo.operator.trust import report_contradicts_spec, untrusted_nodes

SPEC = [{"index": 0, "instances": [{"profile": "3g.40gb", "start": 0}, {"profile": "1g.10gb", "start": 6}]}]
SAME = [
    {
        "index": 0,
        "migEnabled": True,
        "instances": [
            {"profile": "1g.10gb", "start": 6, "uuid": "MIG-b"},
            {"profile": "3g.40gb", "start": 0},
        ],
    },
    {
        "index": 1,
        "migEnabled": True,
        "instances": [{"profile": "7g.80gb", "start": 0}],
    },  # not in spec: not compared
]
OTHER = [{"index": 0, "migEnabled": True, "instances": [{"profile": "7g.80gb", "start": 0}]}]


def ml(
    status_gpus: list[dict[str, Any]], *, phase: str = "Ready", observed: int = 2, spec: Any = SPEC
) -> dict[str, Any]:
    return {
        "specGpus": spec,
        "statusGpus": status_gpus,
        "phase": phase,
        "generation": 2,
        "observedGeneration": observed,
    }


@pytest.mark.parametrize(
    ("summary", "contradicts"),
    [
        (ml(SAME), False),
        (ml(OTHER), True),
        (ml([]), True),  # claims the spec applied but reports no GPU 0 at all
        (ml(OTHER, phase="Blocked"), False),  # says it could not apply: honest, not a contradiction
        (ml(OTHER, observed=1), False),  # has not seen this spec yet
        (ml(OTHER, spec=None), False),  # no spec yet: bootstrap, adoption decides
    ],
    ids=["agrees", "other-instances", "gpu-missing", "blocked", "older-generation", "no-spec"],
)
def test_report_contradicts_spec(summary: dict[str, Any], contradicts: bool) -> None:
    assert report_contradicts_spec(summary) is contradicts


def test_verified_writers_are_always_believed() -> None:
    layouts = {"a": ml(SAME), "b": ml(OTHER)}
    assert untrusted_nodes(layouts, writers_verified=False) == {"b"}
    assert untrusted_nodes(layouts, writers_verified=True) == set()
