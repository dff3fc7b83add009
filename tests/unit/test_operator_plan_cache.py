"""SnapshotPlanner (cdmo.operator.loop): the operator's plans keep planner state between passes."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cdmo.errors import InvalidInput
from cdmo.operator.loop import SnapshotPlanner, plan_snapshot
from cdmo.planner import PlanOptions, plan_to_dict
from tests.harness.bench import build_snapshot


def _snapshot(nodes: int, seed: int) -> dict[str, Any]:
    return build_snapshot(nodes, 4, seed=seed)


def _same(planner: SnapshotPlanner, snapshot: dict[str, Any], options: PlanOptions | None = None) -> None:
    a, b = planner(snapshot, options), plan_snapshot(snapshot, options)
    assert plan_to_dict(a) == plan_to_dict(b)
    assert repr(a) == repr(b)


def test_passes_with_some_nodes_changed_plan_as_without_the_cache() -> None:
    planner = SnapshotPlanner()
    first = _snapshot(12, 1)
    _same(planner, first)
    assert (planner.cache.built, planner.cache.reused) == (12, 0)
    # Next pass: fresh dicts (as build_snapshot makes them), two nodes changed, one gone, new pods.
    second = copy.deepcopy(first)
    second["nodes"][3]["gpus"][0]["instances"] = []
    second["nodes"][7]["labels"]["zone"] = "z"
    del second["nodes"][11]
    second["pending"] = _snapshot(12, 2)["pending"]
    _same(planner, second, PlanOptions(prewarm={"1g.10gb": 2}))
    assert (planner.cache.built, planner.cache.reused) == (2, 9)


def test_a_bad_snapshot_is_refused_with_the_message_of_a_full_parse() -> None:
    planner = SnapshotPlanner()
    good = _snapshot(3, 1)
    planner(good)
    bad = copy.deepcopy(good)
    bad["nodes"][2]["gpus"][0]["instances"] = [{"profile": "9g.99gb", "start": 0, "used": True}]
    with pytest.raises(InvalidInput) as cached:
        planner(bad)
    with pytest.raises(InvalidInput) as plain:
        plan_snapshot(bad)
    assert str(cached.value) == str(plain.value)
    assert "nodes[2]" in str(cached.value)
