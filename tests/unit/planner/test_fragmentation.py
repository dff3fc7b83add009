"""Where the planner puts new instances: room for large instances first, then best fit.

A 4g.40gb (4g.20gb on A100-40GB) can only start at placement 0 and a 7g needs the whole GPU, so a
small instance in the lower half of an otherwise empty GPU costs a later 4g its only place. These
cases pin the fragmentation measure of cdmo.planner.geometry (docs/planner.md, "Fragmentation").
"""

from __future__ import annotations

from typing import Any

import pytest

from cdmo.mig.catalog import get_model, model_keys
from cdmo.mig.layouts import Instance, validate_layout
from cdmo.planner import parse_snapshot, plan, plan_to_dict
from cdmo.planner.fragmentation import FRAG_LEN
from cdmo.planner.geometry import geometry

from .conftest import gpu, node, pod
from .oracle import check_plan


def _only_device(data: dict[str, Any]) -> tuple[int, str, int]:
    result = plan(parse_snapshot(data))
    assert check_plan(data, plan_to_dict(result)) == []
    assert len(result.assignments) == 1, result.unsatisfied
    (device,) = result.assignments[0].devices
    return device.gpu, device.profile, device.start


@pytest.mark.parametrize(
    ("model", "profile", "large"),
    [
        ("h100-80gb", "1g.10gb", "4g.40gb"),
        ("h100-80gb", "1g.20gb", "4g.40gb"),
        ("h100-80gb", "2g.20gb", "4g.40gb"),
        ("h100-80gb", "3g.40gb", "4g.40gb"),
        ("a100-40gb", "2g.10gb", "4g.20gb"),
        ("a100-40gb", "3g.20gb", "4g.20gb"),
    ],
)
def test_a_small_instance_on_an_empty_gpu_leaves_room_for_a_4g(model: str, profile: str, large: str) -> None:
    data = {"nodes": [node("n", gpu(0, model))], "pending": [pod("small", profile)]}
    index, got, start = _only_device(data)
    assert (index, got) == (0, profile)
    # The lower half stays whole: the large profile, which only starts at 0, still fits beside it.
    assert validate_layout(get_model(model), [Instance(profile, start), Instance(large, 0)]) == []


def test_a_small_instance_goes_next_to_used_ones_away_from_the_free_half() -> None:
    data = {"nodes": [node("n", gpu(0, "h100-80gb", "1g.10gb@6!"))], "pending": [pod("p", "1g.10gb")]}
    assert _only_device(data) in {(0, "1g.10gb", 4), (0, "1g.10gb", 5)}


def test_a_small_instance_takes_the_upper_half_beside_a_used_4g_not_an_empty_gpu() -> None:
    data = {
        "nodes": [node("n", gpu(0, "h100-80gb"), gpu(1, "h100-80gb", "4g.40gb@0!"))],
        "pending": [pod("p", "2g.20gb")],
    }
    assert _only_device(data) == (1, "2g.20gb", 4)


def test_an_empty_gpu_is_kept_whole_before_a_free_lower_half() -> None:
    # GPU 0's upper half is full, its lower half free; GPU 1 is empty. Splitting GPU 1 would cost
    # a 7g its place; GPU 0's lower half costs a 4g one. The whole GPU is the larger block.
    data = {
        "nodes": [node("n", gpu(0, "h100-80gb", "2g.20gb@4!", "1g.10gb@6!"), gpu(1, "h100-80gb"))],
        "pending": [pod("p", "2g.20gb")],
    }
    assert _only_device(data)[0] == 0


def test_best_fit_across_gpus_puts_a_large_instance_on_the_fuller_gpu() -> None:
    # Both lower halves are free. GPU 1 has less room left, so the 4g goes there and GPU 0 keeps
    # units 4-5 free for a 2g.20gb (or two 1g) next to its used 1g. Ties by index would pick GPU 0.
    data = {
        "nodes": [
            node(
                "n",
                gpu(0, "h100-80gb", "1g.10gb@6!"),
                gpu(1, "h100-80gb", "2g.20gb@4!", "1g.10gb@6!"),
            )
        ],
        "pending": [pod("big", "4g.40gb")],
    }
    assert _only_device(data) == (1, "4g.40gb", 0)


def test_best_fit_also_chooses_between_nodes() -> None:
    data = {
        "nodes": [
            node("a", gpu(0, "h100-80gb", "1g.10gb@6!")),
            node("b", gpu(0, "h100-80gb", "2g.20gb@4!", "1g.10gb@6!")),
        ],
        "pending": [pod("big", "4g.40gb")],
    }
    result = plan(parse_snapshot(data))
    assignment = result.assignment("default/big")
    assert assignment is not None and assignment.node == "b"


def test_a_two_slot_profile_fills_a_started_half_before_breaking_a_clean_one() -> None:
    # Lower half already holds a used 1g at 0; the upper half is clean. A 2g.20gb at 2 keeps the
    # upper half (a 3g.40gb at 4) whole.
    data = {"nodes": [node("n", gpu(0, "h100-80gb", "1g.10gb@0!"))], "pending": [pod("p", "2g.20gb")]}
    assert _only_device(data) == (0, "2g.20gb", 2)


@pytest.mark.parametrize("key", model_keys())
def test_fragmentation_vectors_never_grow_when_units_are_taken(key: str) -> None:
    """Taking units can only lose blocks and fill, so every loss is >= 0 (the planner's lower bounds rely on it)."""
    geo = geometry(get_model(key))
    assert all(len(v) == FRAG_LEN for v in geo.frag)
    for mask in range(geo.full + 1):
        for unit in range(geo.axis):
            if mask >> unit & 1:
                smaller = geo.frag[mask & ~(1 << unit)]
                assert all(b >= a for b, a in zip(geo.frag[mask], smaller, strict=True)), (key, mask, unit)
