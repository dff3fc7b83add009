"""Geometry's per-model tables: the placements it offers, its lower bound, and its bounded caches.

The placements of a demand are searched once per (used instances, demand) and costed per set of
free instances (Geometry._ways); the reference here searches every (used, free, demand) from
scratch, as the planner did before, and both must give the same options in the same order.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from cdmo.mig.catalog import all_models, get_model
from cdmo.planner import geometry as geometry_module
from cdmo.planner.geometry import Demand, Geometry, bits_of


def _reference_options(geo: Geometry, fixed: int, free: int, demand: Demand) -> list[tuple[Any, ...]]:
    """Every way to add ``demand``, searched from scratch for this (fixed, free)."""
    wanted = [p for p, c in demand for _ in range(c)]
    if any(p not in geo.by_profile for p in wanted):
        return []
    wanted.sort(key=lambda p: (-geo.size[p], p))
    fixed_units = geo.units_of(fixed)
    found: dict[tuple[int, int, int], tuple[Any, ...]] = {}

    def leaf(assigned: int, units: int) -> None:
        keep = free & ~assigned & ~geo.hits[units]
        while keep and (fixed | assigned | keep) not in geo.valid:
            keep &= ~(1 << (keep.bit_length() - 1))
        destroyed = free.bit_count() - (assigned & free).bit_count() - keep.bit_count()
        created = (assigned & ~free).bit_count()
        occupied = fixed_units | units
        loss = tuple(
            b - a
            for b, a in zip(geo.frag[geo.full & ~fixed_units], geo.frag[geo.full & ~occupied], strict=True)
        )
        cost = (destroyed, created, loss, assigned)
        sig = (destroyed, created, occupied)
        if sig not in found or cost < found[sig][0]:
            found[sig] = (cost, keep, occupied)

    def extend(k: int, assigned: int, units: int, lo: int) -> None:
        if k == len(wanted):
            leaf(assigned, units)
            return
        cands = geo.by_profile[wanted[k]]
        first = lo if k and wanted[k - 1] == wanted[k] else 0
        for pos in range(first, len(cands)):
            ci = cands[pos]
            if geo.units[ci] & (fixed_units | units) or (fixed | assigned | 1 << ci) not in geo.valid:
                continue
            extend(k + 1, assigned | 1 << ci, units | geo.units[ci], pos + 1)

    extend(0, 0, 0, 0)
    return [(d, c, loss, a, fixed | a, keep, occ) for (d, c, loss, a), keep, occ in sorted(found.values())]


def _as_tuples(geo: Geometry, fixed: int, free: int, demand: Demand) -> list[tuple[Any, ...]]:
    return [
        (o.destroyed, o.created, o.loss, o.assigned, o.fixed, o.free, o.units)
        for o in geo.options(fixed, free, demand)
    ]


def _states(geo: Geometry, rng: random.Random, n: int) -> list[tuple[int, int, Demand]]:
    """Random (used, free) splits of valid layouts, with random demands of 1-3 devices."""
    layouts = sorted(geo.valid)
    names = list(geo.profile_names)
    out = []
    for _ in range(n):
        layout = rng.choice(layouts)
        fixed = sum(1 << i for i in bits_of(layout) if rng.random() < 0.5)
        picks = [rng.choice(names) for _ in range(rng.randint(1, 3))]
        demand = tuple(sorted((p, picks.count(p)) for p in set(picks)))
        out.append((fixed, layout & ~fixed, demand))
    return out


@pytest.mark.parametrize("key", [m.key for m in all_models()])
def test_options_equal_a_search_from_scratch_for_every_state(key: str) -> None:
    geo = Geometry(get_model(key), 0)
    for fixed, free, demand in _states(geo, random.Random(key), 300):
        assert _as_tuples(geo, fixed, free, demand) == _reference_options(geo, fixed, free, demand)


@pytest.mark.parametrize("key", ["h100-80gb", "a30-24gb", "rtx-pro-6000-blackwell"])
def test_creates_at_least_is_a_lower_bound_and_minus_one_only_where_nothing_fits(key: str) -> None:
    geo = Geometry(get_model(key), 0)
    for fixed, free, demand in _states(geo, random.Random(key), 300):
        bound = geo.creates_at_least(fixed, free, demand)
        options = geo.options(fixed, free, demand)
        if bound < 0:
            assert not options
        else:
            assert all(bound <= o.created for o in options)
            missing = sum(max(0, c - (free & geo.profile_bits[p]).bit_count()) for p, c in demand)
            assert bound == missing
        assert geo.bound_table(demand)[fixed << len(geo.cands) | free] == bound


def test_caches_that_start_over_give_the_same_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    model = get_model("h100-80gb")
    states = _states(Geometry(model, 0), random.Random(5), 200)
    roomy = Geometry(model, 0)
    expected = [(_as_tuples(roomy, *s), roomy.creates_at_least(*s)) for s in states]
    monkeypatch.setattr(geometry_module, "_ADD_CACHE_LIMIT", 3)
    monkeypatch.setattr(geometry_module, "_BOUND_CACHE_LIMIT", 5)
    tight = Geometry(model, 0)
    for _ in range(2):  # twice: answers read back from the small caches too
        assert [(_as_tuples(tight, *s), tight.creates_at_least(*s)) for s in states] == expected
    assert len(tight._ways_cache) <= 3 and tight._bound_entries <= 6
