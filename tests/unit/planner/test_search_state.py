"""The placement search's kept indexes: answers from kept state heaps are those of heaps built anew.

The planner keeps each group's state heaps from one priority level to the next while the ranking
does not change (``Planner._set_mode``), and reads its cost, value and memo tables ahead of the
calls that fill them. These tests plan the same snapshots with a planner that throws the heaps
away at every level (as it did before) and require the very same plans.
"""

from __future__ import annotations

from typing import Any

import pytest

from cdmo.planner import PlanOptions, parse_snapshot, plan, plan_to_dict
from cdmo.planner.algorithm import Planner, _Bounds
from tests.harness.bench import build_snapshot

from .oracle import random_snapshot


def _set_mode_rebuilding(self: Planner, mode: int) -> None:
    # The old behaviour: every level starts with new heaps and bounds, whatever the ranking.
    self.mode = mode
    self._bounds = _Bounds(mode)
    for group in self.groups:
        group.mheaps.clear()
    self.node_memo.clear()


def _plans(snapshot: Any, options: PlanOptions | None, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    kept = plan(snapshot, options)
    with monkeypatch.context() as patch:
        patch.setattr(Planner, "_set_mode", _set_mode_rebuilding)
        rebuilt = plan(snapshot, options)
    return kept, rebuilt


def _same(a: Any, b: Any) -> None:
    # repr covers what plan_to_dict leaves out (each GPU's layout before, created, destroyed, drains)
    assert plan_to_dict(a) == plan_to_dict(b)
    assert repr(a) == repr(b)


@pytest.mark.parametrize("seed", range(40))
def test_heaps_kept_between_levels_give_the_plans_of_new_heaps(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = parse_snapshot(random_snapshot(30_000 + seed, max_nodes=6, max_gpus=4, max_pods=30))
    kept, rebuilt = _plans(snapshot, None, monkeypatch)
    _same(kept, rebuilt)


@pytest.mark.parametrize("seed", range(3))
def test_heaps_kept_between_levels_on_a_crowded_cluster_with_every_option(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Three priority levels, oversubscribed (second passes, repairs, swaps, undo), and with
    # draining, defragmentation and pre-warming on: every path that changes states after the
    # heaps were built.
    data = build_snapshot(12, 25, seed=seed)
    pods = [f"{p.get('namespace', 'default')}/{p['name']}" for p in data["pending"]]
    gpus = [(n["name"], g["index"]) for n in data["nodes"] for g in n["gpus"]]
    options = PlanOptions(
        prewarm={"1g.10gb": 2},
        drain_max_gpus=2,
        draining=tuple(gpus[:1]),
        waited={p: float(60 * (i % 4)) for i, p in enumerate(pods)},
        drain_after_seconds=60.0,
        defrag_ops=6,
    )
    snapshot = parse_snapshot(data)
    for opts in (None, options):
        kept, rebuilt = _plans(snapshot, opts, monkeypatch)
        _same(kept, rebuilt)


@pytest.mark.parametrize("seed", range(12))
def test_the_served_counts_kept_per_priority_are_those_of_the_assigned_pods(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The polish reads ``Planner.served`` per move; it must equal a count of ``assigned``
    whenever it is read, through assigns, unassigns and undos."""
    from collections import Counter

    from cdmo.planner.repair import RepairSteps

    reads = []
    kept_vector = RepairSteps._served_vector

    def checked(self: Planner) -> tuple[int, ...]:
        counted = Counter(self.pods_by_key[k].pod.priority for k in self.assigned)
        vector = kept_vector(self)
        assert vector == tuple(counted[p] for p in self._levels)
        reads.append(vector)
        return vector

    monkeypatch.setattr(RepairSteps, "_served_vector", checked)
    data = (
        build_snapshot(12, 25, seed=seed)
        if seed < 3
        else random_snapshot(31_000 + seed, max_nodes=6, max_gpus=4, max_pods=30)
    )
    plan(parse_snapshot(data))
    if seed < 3:
        assert reads, "the crowded snapshots must reach the polish"
