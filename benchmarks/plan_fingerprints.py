"""Fingerprints of many plans, to show that a speed change leaves every plan exactly as it was.

    .venv/bin/python benchmarks/plan_fingerprints.py --write /tmp/before.json   # on the old code
    .venv/bin/python benchmarks/plan_fingerprints.py --check /tmp/before.json   # on the new code

Per case, the SHA-256 of ``plan_to_dict(plan)`` as sorted JSON and of ``repr(plan)`` (which also
holds each GPU's layout before, what is created and destroyed, and the drains). Cases: the
benchmark's snapshots (10, 100, 1000 nodes with 10 pods per node, and 100 nodes oversubscribed with
25), every snapshot under tests/data/snapshots, 200 random snapshots of the planner's held-out
generator (tests/unit/planner/oracle.py, small and larger), and 40 of them planned again with
pre-warming, draining and idle defragmentation options as the simulator passes them. The plans
are planned once without and once with a :class:`cdmo.planner.cache.PlanCache` where it exists, and
a sequence of changing snapshots with one cache throughout (both must match the plain plans).
``--check`` exits 1 and names the cases that differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_planner import build_snapshot  # noqa: E402

from cdmo.planner import PlanOptions, Snapshot, parse_snapshot, plan, plan_to_dict  # noqa: E402
from tests.unit.planner.oracle import random_snapshot  # noqa: E402


def _digest(result: Any) -> str:
    text = json.dumps(plan_to_dict(result), sort_keys=True) + "\n" + repr(result)
    return hashlib.sha256(text.encode()).hexdigest()


def _options(seed: int, data: dict[str, Any]) -> PlanOptions:
    gpus = [(n["name"], g["index"]) for n in data["nodes"] for g in n["gpus"]]
    pods = [f"{p.get('namespace', 'default')}/{p['name']}" for p in data["pending"]]
    return PlanOptions(
        prewarm={"1g.10gb": 2, "3g.40gb": 1, "1g.6gb": 1} if seed % 2 else {"2g.20gb": 1},
        drain_max_gpus=seed % 3,
        draining=tuple(gpus[: seed % 2]),
        waited={p: float(60 * (i % 4)) for i, p in enumerate(pods)},
        drain_after_seconds=60.0,
        defrag_ops=(seed % 4) * 3,
        defrag_profiles=("3g.40gb",) if seed % 5 == 0 else (),
    )


def cases(quick: bool = False) -> Iterator[tuple[str, Snapshot, PlanOptions | None]]:
    sizes = [(10, 10), (100, 10), (100, 25)] + ([] if quick else [(1000, 10)])
    for nodes, per_node in sizes:
        yield f"bench-{nodes}x{per_node}", parse_snapshot(build_snapshot(nodes, per_node)), None
    for path in sorted((ROOT / "tests/data/snapshots").glob("*.yaml")):
        yield f"file-{path.name}", parse_snapshot(yaml.safe_load(path.read_text())), None
    for seed in range(100):
        yield f"random-small-{seed}", parse_snapshot(random_snapshot(seed)), None
    for seed in range(100):
        data = random_snapshot(10_000 + seed, max_nodes=6, max_gpus=4, max_pods=30)
        yield f"random-large-{seed}", parse_snapshot(data), None
    for seed in range(40):
        data = random_snapshot(20_000 + seed, max_nodes=5, max_gpus=4, max_pods=12)
        if seed % 3 == 0:
            data["pending"] = data["pending"][:1]
        yield f"random-options-{seed}", parse_snapshot(data), _options(seed, data)
    for seed in range(4):
        # Oversubscribed, so that large pods wait and GPUs drain for them.
        data = build_snapshot(30, 25, seed=seed)
        yield f"bench-options-{seed}", parse_snapshot(data), _options(seed + 1, data)


def sequence() -> Iterator[tuple[str, Snapshot]]:
    """Snapshots where a few nodes change each step and the rest stay the same Node objects
    (as the simulator passes them): node i of step k is re-parsed only when k % (i + 2) == 0."""
    base = build_snapshot(40, 6, seed=11)
    nodes = list(parse_snapshot(base).nodes)
    for step in range(12):
        data = build_snapshot(40, 6, seed=100 + step)
        fresh = parse_snapshot(data)
        for i in range(len(nodes)):
            if step and step % (i + 2) == 0:
                nodes[i] = fresh.nodes[i]
        yield f"sequence-{step}", Snapshot(nodes=tuple(nodes), pending=fresh.pending[: 40 + 20 * step])


def fingerprints(quick: bool = False) -> dict[str, str]:
    try:
        from cdmo.planner.cache import PlanCache
    except ImportError:  # before the cache existed
        PlanCache = None  # type: ignore[assignment,misc]
    out: dict[str, str] = {}
    for name, snapshot, options in cases(quick):
        digest = _digest(plan(snapshot, options))
        out[name] = digest
        if PlanCache is not None:
            cached = _digest(plan(snapshot, options, cache=PlanCache()))
            if cached != digest:
                out[name + "+cache"] = cached
    cache = PlanCache() if PlanCache is not None else None
    for name, snapshot in sequence():
        out[name] = _digest(plan(snapshot))
        if cache is not None:
            first, again = _digest(plan(snapshot, cache=cache)), _digest(plan(snapshot, cache=cache))
            if first != out[name] or again != out[name]:
                out[name + "+cache"] = first + again
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", type=Path, help="write the fingerprints here")
    group.add_argument("--check", type=Path, help="compare with fingerprints written earlier")
    parser.add_argument("--quick", action="store_true", help="leave out the 1000-node snapshot")
    args = parser.parse_args(argv)
    now = fingerprints(args.quick)
    if args.write:
        args.write.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        print(f"{len(now)} plans written to {args.write}")
        return 0
    before = json.loads(args.check.read_text())
    differ = sorted(k for k in now if before.get(k) != now[k] and (k in before or k.endswith("+cache")))
    missing = sorted(k for k in before if k not in now and not (args.quick and k.startswith("bench-1000")))
    for k in differ:
        print(f"differs: {k}")
    for k in missing:
        print(f"missing: {k}")
    same = len([k for k in now if k in before and before[k] == now[k]])
    print(f"{same} plans identical, {len(differ)} differ, {len(missing)} missing")
    return 1 if differ or missing else 0


if __name__ == "__main__":
    sys.exit(main())
