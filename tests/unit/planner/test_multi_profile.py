"""Pods that ask several profiles at once: the node screen changes no plan, and explaining many
such pods is bounded.

Each such pod has a demand of its own, so no cached answer serves it: before the screen
(Planner._may_hold) and the bound on explanations (reasons.EXPLAIN_WORK), 500 of them on 50 nodes
took 10 s to plan and 2,000 on 1,000 nodes minutes (benchmarks/bench_multi_profile.py).
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from cdmo.planner import algorithm, parse_snapshot, plan, reasons
from cdmo.planner.demand import demand_of
from cdmo.planner.models import PendingPod
from cdmo.planner.render import plan_to_dict

from .conftest import gpu, node

PROFILES = ("1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb", "1g.20gb")
USED = ((), ("1g.10gb@0!",), ("3g.40gb@4!",), ("2g.20gb@2!", "1g.10gb@6"), ("1g.10gb@1!", "1g.10gb@5!"))


def multi_profile_snapshot(seed: int, nodes: int, pods: int) -> dict[str, Any]:
    """Nodes of 4 H100s holding a few instances; pods asking 1 to 4 profiles, 1 to 3 of each."""
    rng = random.Random(seed)
    return {
        "nodes": [
            node(f"n{i:03d}", *(gpu(g, "h100-80gb", *rng.choice(USED)) for g in range(4)))
            for i in range(nodes)
        ],
        "pending": [
            {
                "name": f"p{j:03d}",
                "requests": {
                    f"nvidia.com/mig-{p}": rng.randint(1, 3) for p in rng.sample(PROFILES, rng.randint(1, 4))
                },
                "priority": rng.randint(0, 3),
            }
            for j in range(pods)
        ],
    }


@pytest.mark.parametrize("seed", range(12))
def test_the_node_screen_changes_no_plan(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """_may_hold only refuses nodes no walk could use, and counts them as the walks it spares, so
    the repairs' budget (and so every plan, waits and reasons included) is as without it."""
    snapshot = parse_snapshot(multi_profile_snapshot(seed, nodes=6, pods=24))
    screened = plan_to_dict(plan(snapshot))
    refused = 0
    real = algorithm.Planner._may_hold

    def counting(self: algorithm.Planner, *args: Any) -> bool:
        nonlocal refused
        found = real(self, *args)
        refused += not found
        return found

    monkeypatch.setattr(algorithm.Planner, "_may_hold", counting)
    assert plan_to_dict(plan(snapshot)) == screened
    assert refused > 0  # the screen was used: these snapshots hold pods that fit nowhere
    monkeypatch.setattr(algorithm.Planner, "_may_hold", lambda *_: True)
    assert plan_to_dict(plan(snapshot)) == screened


def test_explanations_past_their_bound_say_so_and_the_plan_is_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    snapshot = parse_snapshot(multi_profile_snapshot(7, nodes=20, pods=80))
    full = plan(snapshot)
    detailed = {u.code for u in full.unsatisfied}
    assert reasons.EXPLAIN_CUT[1] not in {u.reason for u in full.unsatisfied}
    assert detailed & {"NoRoom", "NoRoomLeft", "Outranked"}

    monkeypatch.setattr(reasons, "EXPLAIN_WORK", 30)
    cut = plan(snapshot)
    assert cut.assignments == full.assignments
    assert [u.pod for u in cut.unsatisfied] == [u.pod for u in full.unsatisfied]
    texts = [u.reason for u in cut.unsatisfied]
    first_cut = texts.index(reasons.EXPLAIN_CUT[1])
    assert first_cut > 0  # pods explained before the bound keep their reasons
    assert [u.reason for u in cut.unsatisfied[:first_cut]] == [u.reason for u in full.unsatisfied[:first_cut]]
    assert "bound of" in reasons.EXPLAIN_CUT[1] and all(
        u.code == "NotExplained" for u in cut.unsatisfied if u.reason == reasons.EXPLAIN_CUT[1]
    )


def test_a_pod_with_room_on_more_nodes_than_are_named_says_at_least() -> None:
    count = reasons.ROOM_NAMES_LIMIT + 10
    data = {
        "nodes": [node(f"gpu-{i:03d}", gpu(0)) for i in range(count)],
        # every GPU taken by a 7g pod of higher priority: the 4g pod is outranked on all of them
        "pending": [{"name": f"big-{i:03d}", "requests": {"nvidia.com/mig-7g.80gb": 1}, "priority": 1}
                    for i in range(count)] + [{"name": "small", "requests": {"nvidia.com/mig-4g.40gb": 1}}],
    }  # fmt: skip
    (u,) = plan(parse_snapshot(data)).unsatisfied
    assert u.code == "Outranked"
    shown = reasons.ROOM_NAMES_LIMIT + 1 - 3
    assert f"(gpu-000, gpu-001, gpu-002 and at least {shown} more)" in u.reason


@pytest.mark.parametrize(
    ("names", "at_least", "text"),
    [
        (["a", "b", "c", "d"], False, "a, b, c and 1 more"),
        (["a", "b", "c", "d"], True, "a, b, c and at least 2 more"),
        (["a"], True, "a and at least 1 more"),
    ],
)
def test_name_list(names: list[str], at_least: bool, text: str) -> None:
    assert reasons.name_list(names, at_least=at_least) == text


@pytest.mark.parametrize(("raw", "expected"), [("2", 2), ("\u00b2", 0), ("\u0663", 0), ("02", 2)])
def test_a_count_given_as_text_is_read_from_ascii_digits_only(raw: str, expected: int) -> None:
    """A snapshot built in code may carry a count as text; '²' and '٣' ask for nothing (int() of
    '²' raised, of '٣' read 3)."""
    demand, bad = demand_of(PendingPod(name="p", requests={"nvidia.com/mig-1g.10gb": raw}))  # type: ignore[dict-item]
    assert bad == ()
    assert dict(demand).get("1g.10gb", 0) == expected
