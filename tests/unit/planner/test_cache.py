"""PlanCache: plans with a cache kept between snapshots are the plans without one."""

from __future__ import annotations

import gc
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdmo.planner import PlanOptions, Snapshot, parse_snapshot, plan, plan_to_dict
from cdmo.planner.cache import PlanCache
from tests.harness.bench import build_snapshot

from .oracle import random_snapshot


def _same(a: Any, b: Any) -> None:
    # repr covers what plan_to_dict leaves out (each GPU's layout before, created, destroyed, drains)
    assert plan_to_dict(a) == plan_to_dict(b)
    assert repr(a) == repr(b)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seeds=st.lists(st.integers(0, 10_000), min_size=2, max_size=6),
    keep=st.lists(st.booleans(), min_size=12, max_size=12),
    options=st.booleans(),
)
def test_a_cache_kept_over_changing_snapshots_gives_the_plans_without_it(
    seeds: list[int], keep: list[bool], options: bool
) -> None:
    # Each step draws a new snapshot; nodes whose flag says "keep" stay the very same Node objects
    # as in the step before (as the simulator passes unchanged nodes), the others are new.
    cache = PlanCache()
    nodes: dict[str, Any] = {}
    for step, seed in enumerate(seeds):
        fresh = parse_snapshot(random_snapshot(seed, max_nodes=5, max_gpus=3, max_pods=12))
        current = []
        for i, node in enumerate(fresh.nodes):
            old = nodes.get(node.name)
            current.append(old if old is not None and keep[(i + step) % len(keep)] else node)
        nodes = {n.name: n for n in current}
        snapshot = Snapshot(nodes=tuple(current), pending=fresh.pending)
        opts = PlanOptions(prewarm={"1g.10gb": 1}, drain_max_gpus=1, defrag_ops=4) if options else None
        _same(plan(snapshot, opts, cache=cache), plan(snapshot, opts))


def test_the_cache_reuses_unchanged_nodes_and_forgets_the_gone() -> None:
    # The check can fail: a cache that rebuilt every node, or kept every node ever seen, is caught.
    first = parse_snapshot(build_snapshot(30, 5, seed=1))
    other = parse_snapshot(build_snapshot(30, 5, seed=2))
    cache = PlanCache()
    _same(plan(first, cache=cache), plan(first))
    assert (cache.built, cache.reused) == (30, 0)
    mixed = Snapshot(nodes=first.nodes[:20] + other.nodes[20:25], pending=other.pending)
    _same(plan(mixed, cache=cache), plan(mixed))
    assert (cache.built, cache.reused) == (5, 20)
    assert len(cache) == 25  # the 10 nodes the last plan did not see are gone


def test_an_unchanged_node_is_listed_by_the_same_object_plan_after_plan() -> None:
    # "Reuse, do not copy": a node the plan leaves alone is the same NodePlan in every plan.
    snapshot = parse_snapshot(build_snapshot(20, 3, seed=4))
    cache = PlanCache()
    one, two = plan(snapshot, cache=cache), plan(snapshot, cache=cache)
    unchanged = [(a, b) for a, b in zip(one.nodes, two.nodes, strict=True) if not a.changed]
    assert unchanged
    assert all(a is b for a, b in unchanged)
    # Without a cache each plan builds its own entries (equal, not the same objects).
    three = plan(snapshot)
    assert all(a == c and a is not c for a, c in zip(one.nodes, three.nodes, strict=True) if not a.changed)


def test_a_cached_plan_leaves_no_cyclic_garbage() -> None:
    snapshot = parse_snapshot(build_snapshot(20))
    cache = PlanCache()
    plan(snapshot, cache=cache)
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        plan(snapshot, cache=cache)
        changed = Snapshot(nodes=snapshot.nodes[:10], pending=snapshot.pending[:50])
        plan(changed, cache=cache)  # drops the other ten nodes' facts
        assert gc.collect() == 0
    finally:
        if was_enabled:
            gc.enable()


def test_a_node_object_listed_twice_gets_its_own_search_records() -> None:
    # Only a snapshot built in code can list one Node object twice; the cache's kept records of
    # that node must not be shared by the two entries within one plan.
    snapshot = parse_snapshot(build_snapshot(6, 4, seed=9))
    twice = Snapshot(nodes=(*snapshot.nodes, snapshot.nodes[2]), pending=snapshot.pending)
    cache = PlanCache()
    plan(twice, cache=cache)
    _same(plan(twice, cache=cache), plan(twice))


def _unshared(snapshot: Snapshot) -> Snapshot:
    """The snapshot with every pod's and GPU's parts as objects of their own (as code may build
    it), where parse_snapshot hands equal requests, selectors, tolerations and layouts over as one."""
    import copy
    from dataclasses import replace

    pods = tuple(
        replace(
            p,
            requests=dict(p.requests),
            node_selector=dict(p.node_selector),
            tolerations=copy.deepcopy(p.tolerations),
            node_affinity=copy.deepcopy(p.node_affinity),
        )
        for p in snapshot.pending
    )
    nodes = tuple(
        replace(n, gpus=tuple(replace(g, instances=copy.deepcopy(g.instances)) for g in n.gpus))
        for n in snapshot.nodes
    )
    return Snapshot(nodes=nodes, pending=pods)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=10_000))
def test_shared_and_unshared_parts_give_the_same_plan(seed: int) -> None:
    snapshot = parse_snapshot(random_snapshot(seed))
    alone = _unshared(snapshot)
    assert alone.pending == snapshot.pending and alone.nodes == snapshot.nodes
    assert plan_to_dict(plan(alone)) == plan_to_dict(plan(snapshot))
    assert plan(alone) == plan(snapshot)
