"""Make the GPUs of a node hold their desired layouts, never destroying an instance in use.

One pass is three parts, each in its own module:

- observe (cdmo.node_agent.observe): read NVML, pod-resources and bound pods;
- decide (cdmo.node_agent.decide): a pure function from desired + observed to a per-GPU
  decision (steps, or why not);
- execute (cdmo.node_agent.execute): the NVML calls, with the re-check of the whole node right
  before each destroy, and the device advertiser told before and after.

:func:`prepare_node` observes and decides (switching MIG on first where that is decided, the
only change it makes); :func:`reconcile_node` also executes. The names the other parts define
are re-exported here for the callers of one pass (agent, CLI, teardown, simulator).

No Kubernetes here: the simulator drives this module directly on simulated GPUs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import structlog

from cdmo.errors import Fatal
from cdmo.mig.layouts import Instance
from cdmo.node_agent.advertise import DeviceAdvertiser, NoAdvertiser
from cdmo.node_agent.backend import DEFAULT_RETRY, GpuBackend, NvmlError, RetryPolicy, call_with_retry
from cdmo.node_agent.decide import (
    Action,
    Blocker,
    GpuDecision,
    GpuDiff,
    GpuState,
    MigModeDecision,
    NodeDecision,
    Reason,
    Step,
    as_if_mig_switched_on,
    decide_mig_mode,
    decide_node,
    diff_layout,
    mig_off_message,
    protected_instances,
)
from cdmo.node_agent.execute import GpuResult, ReconcileResult, execute_decision
from cdmo.node_agent.inuse import EMPTY_IN_USE
from cdmo.node_agent.observe import InUseSource, NodeObservation, observe_node

__all__ = [
    "Action",
    "Blocker",
    "GpuDecision",
    "GpuDiff",
    "GpuResult",
    "GpuState",
    "InUseSource",
    "MigModeDecision",
    "NodeDecision",
    "NodeObservation",
    "Reason",
    "ReconcileResult",
    "Step",
    "diff_layout",
    "execute_decision",
    "mig_off_message",
    "prepare_node",
    "protected_instances",
    "reconcile_node",
]

_log = structlog.get_logger("cdmo.node_agent")


def prepare_node(
    backend: GpuBackend,
    desired: Mapping[int, Sequence[Instance]],
    in_use: InUseSource = EMPTY_IN_USE,
    *,
    enable_mig: bool = False,
    restore_mig: Collection[str] = (),
    retry: RetryPolicy = DEFAULT_RETRY,
    log: Any = None,
    advertiser: DeviceAdvertiser | None = None,
    dry_run: bool = False,
    withheld: Collection[str] = (),
) -> NodeDecision:
    """Observe the node and decide what each GPU needs. Changes nothing, except MIG mode: with
    ``enable_mig``, or for GPUs whose UUID is in ``restore_mig`` (cdmo managed them with MIG on
    before a reboot or reset), MIG is switched on where the spec wants instances and nothing
    holds the whole GPU. As before a destroy, the GPU is withdrawn from the kubelet first and
    its holders read again; one the kubelet was just handed stays as it is this pass.

    ``dry_run`` changes nothing at all, MIG mode included: the GPUs that would be switched on
    are decided as if they had been, and named in the decision's ``mig_switched_on``.

    ``withheld``: MIG UUIDs the device plugin withholds after a critical XID; free ones the
    layout keeps are made again (NodeObservation.withholding)."""
    log = log or _log
    observed = observe_node(backend, in_use, retry=retry)
    mig = decide_mig_mode(desired, observed, enable_mig=enable_mig, restore_mig=restore_mig)
    if dry_run:
        decision = decide_node(
            desired,
            as_if_mig_switched_on(observed, mig.switch_on).withholding(withheld),
            mig_refused=mig.refused,
        )
        gpus = tuple(
            dataclasses.replace(g, message=f"once MIG is switched on: {g.message}")
            if g.index in mig.switch_on and g in decision.refusals
            else g
            for g in decision.gpus
        )
        return dataclasses.replace(decision, gpus=gpus, mig_switched_on=mig.switch_on)
    if mig.switch_on and advertiser is not None:
        handed = advertiser.withdraw(sorted(u for i in mig.switch_on if (u := observed.gpus[i].uuid)))
        observed = observe_node(backend, in_use, retry=retry)  # the re-check, after the withdraw
        mig = decide_mig_mode(
            desired, observed, enable_mig=enable_mig, restore_mig=restore_mig, handed=handed
        )
    errors: dict[int, str] = {}
    restored: list[int] = []
    switched: list[int] = []
    for index in mig.switch_on:
        try:
            change = call_with_retry(retry, backend.set_mig_mode, index, True)
        except Fatal:
            raise
        except NvmlError as exc:
            errors[index] = str(exc)
            log.warning("Failed to switch MIG mode on", gpu=index, nvml_rc=exc.rc)
            continue
        switched.append(index)
        if index in mig.restored:
            restored.append(index)
        log.info(
            "Switched MIG mode on",
            gpu=index,
            current=change.current,
            reset_needed=change.reset_needed,
            automatic=index in mig.restored,
        )
    for index, why in sorted(mig.refused.items()):
        log.warning("Kept MIG mode off: the GPU is in use", gpu=index, why=why)
    if mig.switch_on:
        observed = observe_node(backend, in_use, retry=retry)  # a GPU switched on gets its layout now
    decision = decide_node(
        desired, observed.withholding(withheld), mig_refused=mig.refused, mig_errors=errors
    )
    return dataclasses.replace(decision, mig_restored=tuple(restored), mig_switched_on=tuple(switched))


def reconcile_node(
    backend: GpuBackend,
    desired: Mapping[int, Sequence[Instance]],
    in_use: InUseSource = EMPTY_IN_USE,
    *,
    enable_mig: bool = False,
    restore_mig: Collection[str] = (),
    retry: RetryPolicy = DEFAULT_RETRY,
    log: Any = None,
    advertiser: DeviceAdvertiser | None = None,
    withheld: Collection[str] = (),
) -> ReconcileResult:
    """One level-triggered pass: observe, decide, execute, report what the GPUs hold.

    ``desired`` maps GPU index -> instances (a GPU not in it is left alone). ``in_use`` is an
    InUse or a callable returning a fresh one (called again before each destroy). ``advertiser``
    (default: none in this process) withdraws devices before their destroy and refreshes at
    the end of the pass, also when it fails; ``withheld`` are the MIG UUIDs it withholds after
    a critical XID (see :func:`prepare_node`). Raises Fatal (NoPermission) when NVML refuses for
    lack of privileges; other problems are in the result.
    """
    advertiser = advertiser if advertiser is not None else NoAdvertiser()
    try:
        decision = prepare_node(
            backend,
            desired,
            in_use,
            enable_mig=enable_mig,
            restore_mig=restore_mig,
            retry=retry,
            log=log,
            advertiser=advertiser,
            withheld=withheld,
        )
    except BaseException:
        advertiser.refresh()
        raise
    return execute_decision(backend, decision, in_use, advertiser=advertiser, retry=retry, log=log)
