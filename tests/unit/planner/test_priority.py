"""Strict priority against the MILP oracle: no waiting pod outranks a pod that holds its room.

Hypothesis draws seeds for oracle.random_snapshot (up to 3 nodes x 3 GPUs, 12 pods, priorities
0-2). Asserted per snapshot: no priority inversion (oracle.inversions, node by node on the dict
forms: no waiting pod fits on a node once the lower-priority pods planned there are taken
away), and the MILP's priority-first optimum is never beaten (at the highest level where plan
and optimum differ, the plan serves fewer). How often the plan *is* that optimum is measured on
held-out seeds by benchmarks/check_planner_optimum.py (docs/benchmarks.md), not asserted here:
a local search cannot promise it on every snapshot.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdmo.planner import parse_snapshot, plan, plan_to_dict

from .conftest import gpu, node, pod
from .oracle import check_plan, inversions, optimum_by_priority, random_snapshot, served_by_priority

SNAPSHOT = {"max_nodes": 3, "max_gpus": 3, "max_pods": 12}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=2**31))
def test_no_priority_inversion_and_never_above_the_optimum(seed: int) -> None:
    data = random_snapshot(seed, **SNAPSHOT)
    out = plan_to_dict(plan(parse_snapshot(data)))
    assert check_plan(data, out) == []
    assert inversions(data, out) == []
    got, best = served_by_priority(data, out), optimum_by_priority(data)
    for level in sorted(best, reverse=True):
        if got[level] != best[level]:
            assert got[level] < best[level], f"seed {seed}: the plan beats the optimum at priority {level}"
            break


def test_inversion_checker_finds_a_hand_made_inversion() -> None:
    # One empty H100: the plan below gives it to the low-priority pod and leaves the 7g waiting.
    data = {
        "nodes": [node("n", gpu(0))],
        "pending": [pod("low", "3g.40gb"), pod("high", "7g.80gb", priority=5)],
    }
    bad = {
        "nodes": [
            {
                "name": "n",
                "changed": True,
                "gpus": [{"index": 0, "instances": [{"profile": "3g.40gb", "start": 4}]}],
            }
        ],
        "assignments": [
            {"pod": "default/low", "node": "n", "devices": [{"gpu": 0, "profile": "3g.40gb", "start": 4}]}
        ],
        "unsatisfied": [{"pod": "default/high", "reason": "made by hand"}],
    }
    assert check_plan(data, bad) == []
    assert inversions(data, bad) == ["default/high (priority 5) fits on n without ['default/low']"]
    good = plan_to_dict(plan(parse_snapshot(data)))
    assert inversions(data, good) == [] and good["assignments"][0]["pod"] == "default/high"
