"""Two identical operator replicas must not tie on kopf's peering priority (kopf pauses both)."""

from __future__ import annotations

import random

from cdmo.commands.operator import choose_priority


def test_an_explicit_priority_is_kept() -> None:
    assert choose_priority(7) == 7
    assert choose_priority(0) == 0


def test_replicas_without_a_priority_draw_distinct_positive_ones() -> None:
    rng = random.Random(1)
    drawn = {choose_priority(None, rng) for _ in range(50)}
    assert len(drawn) == 50
    assert all(p >= 1 for p in drawn)
