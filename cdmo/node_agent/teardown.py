"""Hand a node back: destroy every free MIG instance, then optionally switch MIG off.

Refuses, changing nothing, while any instance is in use, and lists the holders. Switching MIG
off needs a GPU reset on Ampere; the result says so per GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cdmo.node_agent.backend import (
    DEFAULT_RETRY,
    GpuBackend,
    GpuInstanceInfo,
    MigModeChange,
    RetryPolicy,
    call_with_retry,
)
from cdmo.node_agent.inuse import EMPTY_IN_USE
from cdmo.node_agent.reconcile import Blocker, GpuState, InUseSource, execute_decision, prepare_node


@dataclass(frozen=True)
class TeardownResult:
    destroyed: tuple[GpuInstanceInfo, ...] = ()
    mig: tuple[MigModeChange, ...] = ()
    #: Instances in use: when there are any, nothing was destroyed (or the rest was left).
    holders: tuple[Blocker, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def refused(self) -> bool:
        return bool(self.holders)

    @property
    def ok(self) -> bool:
        return not self.holders and not self.errors


def teardown_node(
    backend: GpuBackend,
    in_use: InUseSource = EMPTY_IN_USE,
    *,
    disable_mig: bool = False,
    retry: RetryPolicy = DEFAULT_RETRY,
    log: Any = None,
) -> TeardownResult:
    """Destroy every instance on every GPU with MIG on, unless one is in use; then MIG off if asked."""
    gpus = call_with_retry(retry, backend.list_gpus)
    plan = prepare_node(backend, {g.index: () for g in gpus if g.mig_current}, in_use, retry=retry, log=log)
    errors = [g.message for g in plan.gpus if g.state == GpuState.REFUSED]
    holders = tuple(b for g in plan.gpus for b in g.diff.blockers)
    if holders:
        return TeardownResult(holders=holders, errors=tuple(errors))
    result = execute_decision(backend, plan, in_use, retry=retry, log=log)
    holders = tuple(b for g in result.gpus for b in g.blockers)
    errors += list(result.errors)
    changes: list[MigModeChange] = []
    if disable_mig and not holders and not errors:
        for g in gpus:
            if g.mig_current or g.mig_pending:
                changes.append(call_with_retry(retry, backend.set_mig_mode, g.index, False))
    return TeardownResult(result.destroyed, tuple(changes), holders, tuple(errors))
