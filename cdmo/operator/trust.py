"""Whether the operator believes a node's reported layout: per-node trust, decided purely.

The agent on a node reports what its GPUs hold in its MigLayout's status, and the operator
plans on that report. Where the API server enforces who writes status (the chart's admission
policy lets only the agent on node N write MigLayout N's status: ``status_writers_verified``),
a report is the node's own. Where it does not (no policy, or Warn only), any agent could have
written it, so a report that contradicts the operator's own spec is ignored: the node stays
out of plans, with a Warning Event, until its report agrees with the spec again.

Contradiction: the report claims the current spec applied (``observedGeneration`` current,
phase Ready) but lists other instances than the spec on a GPU the spec names. An agent that
could not apply the spec says so (Blocked, Error, an older observedGeneration): that is not a
contradiction. Pure: MigLayout summaries (cdmo.operator.snapshot.summarize_miglayout) in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cdmo.operator.stale import spec_observed


def _instances(gpu: Mapping[str, Any]) -> list[tuple[str, int]]:
    return sorted((str(i.get("profile")), int(i.get("start", -1))) for i in gpu.get("instances") or [])


def report_contradicts_spec(ml: Mapping[str, Any]) -> bool:
    """True when the status says "applied" but holds other instances than the spec wants."""
    spec = ml.get("specGpus")
    if spec is None or ml.get("phase") != "Ready" or not spec_observed(ml):
        return False
    reported = {int(g.get("index", -1)): _instances(g) for g in ml.get("statusGpus") or []}
    return any(reported.get(int(g.get("index", -1))) != _instances(g) for g in spec)


def untrusted_nodes(miglayouts: Mapping[str, Mapping[str, Any]], writers_verified: bool) -> set[str]:
    """Nodes whose report the operator ignores this pass."""
    if writers_verified:
        return set()
    return {name for name, ml in miglayouts.items() if report_contradicts_spec(ml)}
