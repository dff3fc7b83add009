"""Execute: run a node decision's NVML steps, with the last re-check before every destroy.

The third of reconcile's three parts (observe -> decide -> execute). For every GPU with steps,
in order:

1. ``advertiser.withdraw`` every MIG device UUID of the instances about to be destroyed, so
   no pod can be admitted to one while it goes (cdmo.node_agent.advertise);
2. before each destroy, observe the whole node again (pod-resources, bound pods, processes and
   instances of *every* GPU, less what this pass already destroyed) and decide again whether
   the instance is held; a held one stops that GPU. A reservation is thus never satisfied by an
   instance that is gone, on this GPU or another;
3. destroy; when NVML refuses the GPU instance (IN_USE: DCGM or another client holds it) after
   its compute instances went, make the full-size compute instance again at once, so its
   device does not vanish from the node;
4. repair (a compute instance for a GPU instance that has none), then create.

``advertiser.refresh`` runs once at the end of the pass, also when it failed part way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from cdmo.errors import CdmoError, Fatal
from cdmo.mig.layouts import Instance, format_layout, sort_layout
from cdmo.node_agent.advertise import DeviceAdvertiser, NoAdvertiser
from cdmo.node_agent.backend import (
    DEFAULT_RETRY,
    AlreadyGone,
    GpuBackend,
    GpuGone,
    GpuInfo,
    GpuInstanceInfo,
    InstanceBusy,
    NvmlError,
    RetryPolicy,
    call_with_retry,
)
from cdmo.node_agent.decide import (
    Action,
    Blocker,
    GpuDecision,
    GpuState,
    NodeDecision,
    Reason,
    Step,
    protected_instances,
)
from cdmo.node_agent.inuse import EMPTY_IN_USE, Holder, InUse
from cdmo.node_agent.observe import InUseSource, NodeObservation, observe_node

_log = structlog.get_logger("cdmo.node_agent")


@dataclass(frozen=True)
class GpuResult:
    """What one GPU holds after a pass, and what the pass did to it."""

    index: int
    info: GpuInfo | None
    desired: tuple[Instance, ...] | None
    state: GpuState
    reason: str
    message: str
    instances: tuple[GpuInstanceInfo, ...] = ()
    created: tuple[GpuInstanceInfo, ...] = ()
    destroyed: tuple[GpuInstanceInfo, ...] = ()
    blockers: tuple[Blocker, ...] = ()
    errors: tuple[str, ...] = ()
    #: GPU instances given their compute instance again, and why (for the condition)
    repaired: tuple[GpuInstanceInfo, ...] = ()
    repairs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReconcileResult:
    """The outcome of one pass over a node."""

    gpus: tuple[GpuResult, ...]
    in_use: InUse = field(default_factory=InUse)
    #: GPU indexes whose MIG mode the pass switched on because they came back with it off
    mig_restored: tuple[int, ...] = ()

    @property
    def created(self) -> tuple[GpuInstanceInfo, ...]:
        return tuple(i for g in self.gpus for i in g.created)

    @property
    def destroyed(self) -> tuple[GpuInstanceInfo, ...]:
        return tuple(i for g in self.gpus for i in g.destroyed)

    @property
    def repaired(self) -> tuple[GpuInstanceInfo, ...]:
        return tuple(i for g in self.gpus for i in g.repaired)

    @property
    def repairs(self) -> tuple[str, ...]:
        return tuple(m for g in self.gpus for m in g.repairs)

    @property
    def changed(self) -> bool:
        return any(g.created or g.destroyed or g.repaired for g in self.gpus)

    @property
    def blocked(self) -> tuple[GpuResult, ...]:
        return tuple(g for g in self.gpus if g.state == GpuState.BLOCKED)

    @property
    def errors(self) -> tuple[str, ...]:
        return tuple(e for g in self.gpus for e in g.errors)

    @property
    def settled(self) -> bool:
        """Nothing left to retry: every GPU is Ready, unmanaged, or refused until the spec changes."""
        return all(g.state in (GpuState.READY, GpuState.UNMANAGED, GpuState.REFUSED) for g in self.gpus)

    def gpu(self, index: int) -> GpuResult:
        return next(g for g in self.gpus if g.index == index)


def recheck_holders(
    fresh: NodeObservation, decision: NodeDecision, gpu: int, gi_id: int, uuids: tuple[str, ...]
) -> tuple[Holder, ...]:
    """Who holds GPU instance ``gi_id`` of ``gpu`` in a fresh observation of the whole node.

    Pure. Reservations are placed again over the instances every GPU holds now, so a bound pod
    keeps one that still exists. An instance re-made since the decision (other UUIDs) is left
    to the next pass.
    """
    same = [i for i in fresh.instances.get(gpu, ()) if i.gi_id == gi_id]
    if same and same[0].uuids != uuids:
        return (Holder("process", "unknown (the instance changed since the decision)"),)
    held = protected_instances(fresh.instances, decision.valid_desired, fresh.in_use)
    return held.get((gpu, gi_id), ())


@dataclass
class _Run:
    """What one GPU's steps did so far (mutable while they run)."""

    created: list[GpuInstanceInfo] = field(default_factory=list)
    destroyed: list[GpuInstanceInfo] = field(default_factory=list)
    repaired: list[GpuInstanceInfo] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    blockers: list[Blocker] = field(default_factory=list)
    #: the GPU fell off the bus or needs a reset (GpuGone): its steps stop
    gone: bool = False


class _Executor:
    def __init__(
        self,
        backend: GpuBackend,
        decision: NodeDecision,
        in_use: InUseSource,
        retry: RetryPolicy,
        log: Any,
    ) -> None:
        self.backend = backend
        self.decision = decision
        self.in_use = in_use
        self.retry = retry
        self.log = log
        #: instances destroyed in this pass, on any GPU
        self.gone: list[GpuInstanceInfo] = []

    def call(self, fn: Callable[..., Any], *args: object) -> Any:
        return call_with_retry(self.retry, fn, *args)

    def run_gpu(self, gd: GpuDecision, advertiser: DeviceAdvertiser) -> GpuResult:
        run = _Run()
        by_gi = {i.gi_id: i for i in gd.actual}
        log = self.log.bind(gpu=gd.index)
        doomed = [by_gi[s.gi_id] for s in gd.diff.destroys if s.gi_id in by_gi]
        handed: frozenset[str] = frozenset()
        if doomed:
            handed = advertiser.withdraw(sorted({u for inst in doomed for u in inst.uuids}))
        for step in gd.diff.steps:
            if step.action == Action.DESTROY:
                assert step.gi_id is not None  # destroy steps always name their GPU instance
                if not self.destroy(gd, by_gi[step.gi_id], run, log, handed):
                    break  # its space is not free (or it is held): creating next to it would only fail
            elif step.action == Action.REPAIR:
                assert step.gi_id is not None
                self.repair(gd.index, by_gi[step.gi_id], "it had no compute instance", run, log)
            else:
                self.create(step, run, log)
            if run.gone:
                break  # GPU_IS_LOST / RESET_REQUIRED: nothing more is tried on it this pass
        return self.result(gd, run)

    def destroy(
        self,
        gd: GpuDecision,
        inst: GpuInstanceInfo,
        run: _Run,
        log: Any,
        handed: frozenset[str] = frozenset(),
    ) -> bool:
        """Destroy ``inst`` unless the node's current truth says it is held; ``handed``: devices
        the kubelet was just given (DeviceAdvertiser.withdraw), held whatever pod-resources says."""
        try:
            fresh = observe_node(self.backend, self.in_use, retry=self.retry).without(self.gone)
            holders = recheck_holders(fresh, self.decision, gd.index, inst.gi_id, inst.uuids)
            holders = (*holders, *(Holder("allocated", u) for u in inst.uuids if u in handed))
        except Fatal:
            raise
        except CdmoError as exc:
            run.errors.append(f"GPU {gd.index}: could not check who holds {inst.profile}@{inst.start}: {exc}")
            return False
        if holders:
            run.blockers.append(Blocker(inst, holders))
            log.warning(
                "Kept GPU instance found in use right before destroy",
                profile=inst.profile,
                start=inst.start,
                gi_id=inst.gi_id,
                holders=[str(h) for h in holders],
            )
            return False
        try:
            self.call(self.backend.destroy_instance, gd.index, inst.gi_id)
        except AlreadyGone:
            log.info("GPU instance already gone", profile=inst.profile, start=inst.start)
        except Fatal:
            raise
        except NvmlError as exc:
            run.errors.append(str(exc))
            run.gone = isinstance(exc, GpuGone)
            log.warning(
                "Failed to destroy GPU instance",
                profile=inst.profile,
                start=inst.start,
                gi_id=inst.gi_id,
                nvml_rc=exc.rc,
            )
            if isinstance(exc, InstanceBusy):
                self.repair_if_emptied(gd.index, inst, run, log)
            return False
        self.gone.append(inst)
        run.destroyed.append(inst)
        log.info(
            "Destroyed GPU instance", profile=inst.profile, start=inst.start, gi_id=inst.gi_id, uuid=inst.uuid
        )
        return True

    def repair_if_emptied(self, gpu: int, inst: GpuInstanceInfo, run: _Run, log: Any) -> None:
        """After a refused GI destroy: if the GI stayed but lost its compute instances, make one."""
        try:
            now = [i for i in self.call(self.backend.list_instances, gpu) if i.gi_id == inst.gi_id]
        except Fatal:
            raise
        except CdmoError as exc:
            run.errors.append(
                f"GPU {gpu}: could not read {inst.profile}@{inst.start} after its destroy failed: {exc}"
            )
            return
        if now and now[0].empty:
            self.repair(
                gpu,
                now[0],
                "NVML refused to destroy the GPU instance (IN_USE) after its compute instance went",
                run,
                log,
            )

    def repair(self, gpu: int, inst: GpuInstanceInfo, why: str, run: _Run, log: Any) -> None:
        try:
            made = self.call(self.backend.create_compute_instance, gpu, inst.gi_id)
        except Fatal:
            raise
        except NvmlError as exc:
            run.errors.append(f"GPU {gpu}: {inst.profile}@{inst.start} has no compute instance: {exc}")
            run.gone = isinstance(exc, GpuGone)
            log.warning(
                "Failed to repair GPU instance",
                profile=inst.profile,
                start=inst.start,
                gi_id=inst.gi_id,
                nvml_rc=exc.rc,
            )
            return
        run.repaired.append(made)
        run.repairs.append(
            f"GPU {gpu}: {inst.profile}@{inst.start} (GI {inst.gi_id}) got its full-size compute instance "
            f"again ({made.uuid}): {why}"
        )
        log.info(
            "Repaired GPU instance",
            profile=made.profile,
            start=made.start,
            gi_id=made.gi_id,
            ci_id=made.ci_id,
            uuid=made.uuid,
            why=why,
        )

    def create(self, step: Step, run: _Run, log: Any) -> None:
        try:
            made = self.call(self.backend.create_instance, step.gpu, step.profile, step.start)
        except Fatal:
            raise
        except NvmlError as exc:
            run.errors.append(str(exc))
            run.gone = isinstance(exc, GpuGone)
            log.warning(
                "Failed to create GPU instance", profile=step.profile, start=step.start, nvml_rc=exc.rc
            )
            return
        run.created.append(made)
        log.info(
            "Created GPU instance",
            profile=made.profile,
            start=made.start,
            gi_id=made.gi_id,
            ci_id=made.ci_id,
            uuid=made.uuid,
        )

    @staticmethod
    def result(gd: GpuDecision, run: _Run) -> GpuResult:
        if run.blockers:
            state, reason = GpuState.BLOCKED, Reason.INSTANCE_IN_USE
            message = f"GPU {gd.index} stopped changing: " + "; ".join(b.message for b in run.blockers)
        elif run.errors:
            state, reason = GpuState.FAILED, Reason.NVML_ERROR
            message = f"GPU {gd.index}: " + "; ".join(run.errors) + "; will retry"
        else:
            state, reason = GpuState.READY, Reason.LAYOUT_APPLIED
            message = f"GPU {gd.index} holds {format_layout(gd.desired or ()) or 'no instances'}"
        if run.repairs:
            message += "; repaired: " + "; ".join(run.repairs)
        return GpuResult(
            gd.index,
            gd.info,
            gd.desired,
            state,
            reason,
            message,
            created=tuple(run.created),
            destroyed=tuple(run.destroyed),
            blockers=tuple(run.blockers),
            errors=tuple(run.errors),
            repaired=tuple(run.repaired),
            repairs=tuple(run.repairs),
        )


def _with_final_state(backend: GpuBackend, res: GpuResult, retry: RetryPolicy) -> GpuResult:
    """``res`` with what the GPU holds now; Ready only if that is exactly the desired layout."""
    if res.info is None or not res.info.mig_current:
        return res
    state, reason, message, errors = res.state, res.reason, res.message, res.errors
    try:
        now = tuple(call_with_retry(retry, backend.list_instances, res.index))
    except Fatal:
        raise
    except NvmlError as exc:
        # This GPU cannot be read (GPU_IS_LOST, ...): say so on it alone; the other GPUs'
        # results, and what this pass did, are still reported.
        failure = f"GPU {res.index}: could not read what it holds after the pass: {exc}"
        return dataclasses.replace(
            res,
            state=GpuState.FAILED,
            reason=Reason.NVML_ERROR,
            message=f"{res.message}; {failure}" if res.state == GpuState.FAILED else failure,
            errors=(*res.errors, failure),
        )
    if res.state == GpuState.READY and res.desired is not None:
        have = sort_layout(i.instance for i in now if i.healthy)
        if have != sort_layout(res.desired) or len(now) != len(have):
            state, reason = GpuState.FAILED, Reason.NVML_ERROR
            message = (
                f"GPU {res.index} holds {format_layout(i.instance for i in now) or 'no instances'} "
                f"but the spec asks for {format_layout(res.desired) or 'no instances'}; will retry"
            )
            errors = (f"GPU {res.index} does not hold its desired layout after the pass",)
    return GpuResult(
        res.index,
        res.info,
        res.desired,
        state,
        reason,
        message,
        now,
        res.created,
        res.destroyed,
        res.blockers,
        errors,
        res.repaired,
        res.repairs,
    )


def execute_decision(
    backend: GpuBackend,
    decision: NodeDecision,
    in_use: InUseSource = EMPTY_IN_USE,
    *,
    advertiser: DeviceAdvertiser | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    log: Any = None,
) -> ReconcileResult:
    """Run the decided steps, GPU by GPU, then read what every GPU holds.

    Before each destroy the whole node is observed again (``in_use`` is called again when it is
    a callable; NVML always is); a held instance stops that GPU. Transient NVML errors are
    retried per ``retry``; other failures are reported in the GPU's result. Raises Fatal
    (NoPermission) after refreshing the advertiser.
    """
    log = log or _log
    advertiser = advertiser if advertiser is not None else NoAdvertiser()
    executor = _Executor(backend, decision, in_use, retry, log)
    try:
        results: list[GpuResult] = []
        for gd in decision.gpus:
            if gd.state == GpuState.PENDING:
                results.append(executor.run_gpu(gd, advertiser))
            else:
                results.append(
                    GpuResult(
                        gd.index,
                        gd.info,
                        gd.desired,
                        gd.state,
                        gd.reason,
                        gd.message,
                        blockers=gd.diff.blockers,
                    )
                )
        final = tuple(_with_final_state(backend, res, retry) for res in results)
    finally:
        advertiser.refresh()
    return ReconcileResult(final, decision.in_use, decision.mig_restored)
