"""Whether a node's agent keeps up with its MigLayout: Ready, WaitingForAgent, Applying or Stale.

A node whose agent has not observed the last spec (``status.observedGeneration`` behind
``metadata.generation``) is left out of the next plans, and the pods planned for it wait
for it. Past the timeout it is Stale: still left out of plans (its agent would not apply them),
but its pods are no longer held for it, so other nodes serve them. One slow node never holds
back the others.

Pure: takes MigLayout summaries (see :func:`cdmo.operator.snapshot.summarize_miglayout`) and ``now``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

from cdmo.operator.demand import parse_time

#: When the operator last wrote the spec (RFC 3339); the Stale clock starts here.
SPEC_PATCHED_AT = "cdmo.clear.ml/spec-patched-at"


class NodeState(StrEnum):
    #: The agent has applied (observed) the current spec: the node can be planned.
    READY = "Ready"
    #: The agent has not reported the node's GPUs yet.
    WAITING_FOR_AGENT = "WaitingForAgent"
    #: The agent has not observed the current spec yet.
    APPLYING = "Applying"
    #: Like the two above, for longer than the timeout.
    STALE = "Stale"


def spec_observed(ml: Mapping[str, Any]) -> bool:
    observed = ml.get("observedGeneration")
    return isinstance(observed, int) and observed >= int(ml.get("generation") or 1)


def waiting_since(ml: Mapping[str, Any]) -> datetime | None:
    """When the agent was last given something to do: the last spec write, else the creation."""
    return parse_time((ml.get("annotations") or {}).get(SPEC_PATCHED_AT)) or parse_time(ml.get("created"))


def node_state(ml: Mapping[str, Any], now: datetime, timeout_seconds: float) -> NodeState:
    if spec_observed(ml) and ml.get("statusGpus"):
        return NodeState.READY
    since = waiting_since(ml)
    if since is not None and (now - since).total_seconds() >= timeout_seconds:
        return NodeState.STALE
    if not ml.get("statusGpus"):
        return NodeState.WAITING_FOR_AGENT
    return NodeState.APPLYING
