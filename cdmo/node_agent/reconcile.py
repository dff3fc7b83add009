"""Make the GPUs of a node hold their desired layouts, never destroying an instance in use.

Two halves:

- pure decisions: :func:`protected_instances` (which instances are held or reserved) and
  :func:`diff_layout` (desired vs actual on one GPU -> destroy-then-create steps, or the
  blockers that forbid them);
- :func:`plan_node` reads the GPUs and decides per GPU; :func:`execute_plan` runs the steps,
  checking in-use again right before each destroy. :func:`reconcile_node` does both.

Rules (ARCHITECTURE.md, "Rules that make it safe"): a GPU whose desired layout is invalid for
its model, or whose index does not exist, is refused and nothing on it is touched. A GPU on
which an unwanted instance is in use is Blocked and nothing on it is touched either: the plan
that asked for it is stale, and the operator plans again from the status. GPUs that the spec
does not list are left as they are. Creates use explicit placements only.

No Kubernetes here: the simulator drives this module directly on simulated GPUs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import structlog

from cdmo.errors import CdmoError, Fatal
from cdmo.mig.catalog import find_model
from cdmo.mig.layouts import Instance, format_layout, sort_layout, validate_layout
from cdmo.node_agent.advertise import DeviceAdvertiser, NoAdvertiser
from cdmo.node_agent.backend import (
    DEFAULT_RETRY,
    AlreadyGone,
    GpuBackend,
    GpuInfo,
    GpuInstanceInfo,
    NvmlError,
    RetryPolicy,
    call_with_retry,
)
from cdmo.node_agent.inuse import EMPTY_IN_USE, Holder, InUse

_log = structlog.get_logger("cdmo.node_agent")

InUseSource = InUse | Callable[[], InUse]


class GpuState(StrEnum):
    READY = "Ready"  # the GPU holds its desired layout
    PENDING = "Pending"  # planned steps not run yet
    BLOCKED = "Blocked"  # an unwanted instance is in use: nothing changed
    FAILED = "Failed"  # some steps failed (NVML); the next pass retries
    REFUSED = "Refused"  # invalid layout, unknown model or GPU: nothing touched
    MIG_OFF = "MigOff"  # MIG mode is off (or waits for a reset)
    UNMANAGED = "Unmanaged"  # the spec does not list this GPU: left as it is


class Reason(StrEnum):
    LAYOUT_APPLIED = "LayoutApplied"
    NOTHING_DESIRED = "NothingDesired"
    INSTANCE_IN_USE = "InstanceInUse"
    INVALID_LAYOUT = "InvalidLayout"
    UNKNOWN_GPU = "UnknownGpu"
    UNKNOWN_MODEL = "UnknownModel"
    MIG_MODE_DISABLED = "MigModeDisabled"
    MIG_MODE_RESET_REQUIRED = "MigModeResetRequired"
    NVML_ERROR = "NvmlError"
    NOT_MANAGED = "NotManaged"
    CHANGES_PLANNED = "ChangesPlanned"


@dataclass(frozen=True)
class Step:
    """One NVML change: destroy a GPU instance (by GI id) or create one at a placement."""

    action: str  # "destroy" | "create"
    gpu: int
    profile: str
    start: int
    gi_id: int | None = None
    uuid: str | None = None

    def __str__(self) -> str:
        return f"{self.action} {self.profile}@{self.start} on GPU {self.gpu}"


@dataclass(frozen=True)
class Blocker:
    """An unwanted instance that something holds."""

    instance: GpuInstanceInfo
    holders: tuple[Holder, ...]

    @property
    def message(self) -> str:
        inst = self.instance
        uuid = f" ({inst.uuid})" if inst.uuid else ""
        return f"GPU {inst.gpu}: {inst.profile}@{inst.start}{uuid} is held by " + ", ".join(
            str(h) for h in self.holders
        )

    @property
    def pods(self) -> tuple[str, ...]:
        return tuple(h.pod for h in self.holders if h.pod)


@dataclass(frozen=True)
class GpuDiff:
    """What one GPU needs: ordered steps (destroys first), or blockers that forbid them."""

    gpu: int
    steps: tuple[Step, ...] = ()
    blockers: tuple[Blocker, ...] = ()

    @property
    def destroys(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.action == "destroy")

    @property
    def creates(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.action == "create")


def protected_instances(
    actual: Mapping[int, Sequence[GpuInstanceInfo]],
    desired: Mapping[int, Sequence[Instance]],
    in_use: InUse,
) -> dict[tuple[int, int], tuple[Holder, ...]]:
    """(gpu, gi_id) -> holders, for every instance that must not be destroyed.

    Reservations of a profile take free healthy instances of it that the desired layout keeps
    first, then others in (gpu, start) order: a bound pod keeps an instance to land on.
    """
    result: dict[tuple[int, int], list[Holder]] = {}
    free: dict[str, list[tuple[int, int, GpuInstanceInfo]]] = {}
    for gpu in sorted(actual):
        wanted = set(desired.get(gpu, ()))
        for inst in actual[gpu]:
            holders = list(in_use.holders_of(inst.uuid))
            for pod in in_use.unknown.get(inst.profile, ()):
                holders.append(Holder("unknown", pod))
            if holders:
                result[(gpu, inst.gi_id)] = holders
            elif inst.healthy:
                kept = 0 if inst.instance in wanted or gpu not in desired else 1
                free.setdefault(inst.profile, []).append((kept, gpu, inst))
    for profile, pods in sorted(in_use.reservations.items()):
        candidates = sorted(free.get(profile, []), key=lambda c: (c[0], c[1], c[2].start))
        for pod, (_, gpu, inst) in zip(pods, candidates, strict=False):
            result.setdefault((gpu, inst.gi_id), []).append(Holder("reservation", pod))
    return {k: tuple(v) for k, v in sorted(result.items())}


def diff_layout(
    desired: Sequence[Instance],
    actual: Sequence[GpuInstanceInfo],
    protected: Mapping[int, Sequence[Holder]] | None = None,
    *,
    gpu: int = 0,
) -> GpuDiff:
    """Steps that turn ``actual`` into ``desired`` on one GPU: destroys, then creates.

    ``protected`` maps GI ids to their holders. A healthy instance at a desired (profile,
    start) is kept; a broken one (no compute instance, or a partial one) is destroyed and
    made again unless held. If an instance that must go is held, there are no steps, only
    blockers: nothing on the GPU may change. ``desired`` must be valid for the GPU's model.
    """
    protected = protected or {}
    wanted = set(desired)
    keep: set[Instance] = set()
    remove: list[GpuInstanceInfo] = []
    for inst in sorted(actual, key=lambda i: (i.start, i.profile)):
        if (
            inst.instance in wanted
            and inst.instance not in keep
            and (inst.healthy or inst.gi_id in protected)
        ):
            keep.add(inst.instance)
        else:
            remove.append(inst)
    blockers = tuple(Blocker(i, tuple(protected[i.gi_id])) for i in remove if i.gi_id in protected)
    if blockers:
        return GpuDiff(gpu, (), blockers)
    steps = [Step("destroy", gpu, i.profile, i.start, i.gi_id, i.uuid) for i in remove]
    steps += [Step("create", gpu, i.profile, i.start) for i in sort_layout(wanted - keep)]
    return GpuDiff(gpu, tuple(steps))


# --- planning and running -------------------------------------------------------------------


@dataclass(frozen=True)
class GpuPlan:
    """The decision for one GPU index (a spec entry, or a GPU the node has)."""

    index: int
    info: GpuInfo | None
    desired: tuple[Instance, ...] | None
    actual: tuple[GpuInstanceInfo, ...]
    state: GpuState
    reason: str
    message: str
    diff: GpuDiff


@dataclass(frozen=True)
class NodePlan:
    gpus: tuple[GpuPlan, ...]
    in_use: InUse
    desired: Mapping[int, tuple[Instance, ...]]

    @property
    def refusals(self) -> tuple[GpuPlan, ...]:
        """GPUs that cannot get their layout now: refused, MIG off, or blocked."""
        return tuple(
            g for g in self.gpus if g.state in (GpuState.REFUSED, GpuState.MIG_OFF, GpuState.BLOCKED)
        )

    @property
    def steps(self) -> tuple[Step, ...]:
        return tuple(s for g in self.gpus if g.state == GpuState.PENDING for s in g.diff.steps)


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


@dataclass(frozen=True)
class ReconcileResult:
    """The outcome of one pass over a node."""

    gpus: tuple[GpuResult, ...]
    in_use: InUse = field(default_factory=InUse)

    @property
    def created(self) -> tuple[GpuInstanceInfo, ...]:
        return tuple(i for g in self.gpus for i in g.created)

    @property
    def destroyed(self) -> tuple[GpuInstanceInfo, ...]:
        return tuple(i for g in self.gpus for i in g.destroyed)

    @property
    def changed(self) -> bool:
        return any(g.created or g.destroyed for g in self.gpus)

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


def _resolve(in_use: InUseSource) -> InUse:
    return in_use() if callable(in_use) else in_use


def mig_off_message(info: GpuInfo) -> tuple[str, str]:
    """(reason, message) for a GPU whose MIG mode is not on: says the command that fixes it."""
    i = info.index
    model = find_model(info.model_key) if info.model_key else None
    needs_reset = model.mig_mode_change_needs_reset if model else True
    if info.mig_pending and not info.mig_current:
        return (
            Reason.MIG_MODE_RESET_REQUIRED,
            f"MIG mode on GPU {i} ({info.product}) is enabled but pending a GPU reset: stop every "
            f"process on the GPU and run `nvidia-smi -i {i} -r`, or reboot the node",
        )
    fix = f"`nvidia-smi -i {i} -mig 1`"
    if needs_reset:
        fix += f" and then reset the GPU (`nvidia-smi -i {i} -r`) or reboot the node"
    return (
        Reason.MIG_MODE_DISABLED,
        f"MIG mode is off on GPU {i} ({info.product}); enable it with {fix}, or run the agent with --enable-mig",
    )


def plan_node(
    backend: GpuBackend,
    desired: Mapping[int, Sequence[Instance]],
    in_use: InUseSource = EMPTY_IN_USE,
    *,
    enable_mig: bool = False,
    retry: RetryPolicy = DEFAULT_RETRY,
    log: Any = None,
) -> NodePlan:
    """Read the node's GPUs and decide what each needs. Changes nothing, except that with
    ``enable_mig`` it switches MIG on where the spec wants instances and the GPU can do it
    without a reset (Hopper and later)."""
    log = log or _log
    wanted = {int(k): sort_layout(v) for k, v in desired.items()}
    gpus = {g.index: g for g in call_with_retry(retry, backend.list_gpus)}

    # MIG mode first: a GPU that can switch now gets its layout in this same pass.
    mig_errors: dict[int, str] = {}
    for index, layout in sorted(wanted.items()):
        info = gpus.get(index)
        if info is None or info.mig_current or not layout or not enable_mig or info.model_key is None:
            continue
        try:
            change = call_with_retry(retry, backend.set_mig_mode, index, True)
        except Fatal:
            raise
        except NvmlError as exc:
            mig_errors[index] = str(exc)
            log.warning("Failed to switch MIG mode on", gpu=index, nvml_rc=exc.rc)
            continue
        log.info("Switched MIG mode on", gpu=index, current=change.current, reset_needed=change.reset_needed)
        gpus[index] = GpuInfo(
            info.index,
            info.uuid,
            info.product,
            info.model_key,
            change.current,
            change.pending,
            info.pci_device_id,
        )

    actual: dict[int, tuple[GpuInstanceInfo, ...]] = {}
    processes: dict[str, tuple[int, ...]] = {}
    for index, info in sorted(gpus.items()):
        if info.mig_current:
            actual[index] = tuple(call_with_retry(retry, backend.list_instances, index))
            processes.update(call_with_retry(retry, backend.list_processes, index))
        else:
            actual[index] = ()
    current = _resolve(in_use).with_processes(processes)

    plans: dict[int, GpuPlan] = {}
    valid: dict[int, tuple[Instance, ...]] = {}
    for index, layout in sorted(wanted.items()):
        info = gpus.get(index)
        if info is None:
            have = ", ".join(map(str, sorted(gpus))) or "none"
            plans[index] = GpuPlan(
                index,
                None,
                layout,
                (),
                GpuState.REFUSED,
                Reason.UNKNOWN_GPU,
                f"the spec asks for GPU {index}, but this node has GPUs {have}",
                GpuDiff(index),
            )
            continue
        model = find_model(info.model_key) if info.model_key else None
        if model is None:
            plans[index] = GpuPlan(
                index,
                info,
                layout,
                actual[index],
                GpuState.REFUSED,
                Reason.UNKNOWN_MODEL,
                f"GPU {index} is a {info.product}, a model cdmo does not know; nothing on it was changed",
                GpuDiff(index),
            )
            continue
        problems = validate_layout(model, layout)
        if problems:
            plans[index] = GpuPlan(
                index,
                info,
                layout,
                actual[index],
                GpuState.REFUSED,
                Reason.INVALID_LAYOUT,
                f"GPU {index} ({model.key}) cannot hold {format_layout(layout) or 'the empty layout'}: "
                + "; ".join(problems)
                + "; nothing on it was changed",
                GpuDiff(index),
            )
            continue
        if not info.mig_current:
            if layout:
                reason, message = mig_off_message(info)
                if index in mig_errors:
                    message += f"; switching MIG on failed: {mig_errors[index]}"
                plans[index] = GpuPlan(
                    index, info, layout, (), GpuState.MIG_OFF, reason, message, GpuDiff(index)
                )
            else:
                plans[index] = GpuPlan(
                    index,
                    info,
                    layout,
                    (),
                    GpuState.READY,
                    Reason.NOTHING_DESIRED,
                    f"GPU {index}: no instances desired and MIG mode is off",
                    GpuDiff(index),
                )
            continue
        valid[index] = layout

    protected = protected_instances(actual, valid, current)
    for index, layout in valid.items():
        info = gpus[index]
        held = {gi: h for (g, gi), h in protected.items() if g == index}
        diff = diff_layout(layout, actual[index], held, gpu=index)
        if diff.blockers:
            state, reason = GpuState.BLOCKED, Reason.INSTANCE_IN_USE
            message = (
                f"GPU {index} cannot change to {format_layout(layout) or 'the empty layout'}: "
                + "; ".join(b.message for b in diff.blockers)
            )
        elif diff.steps:
            state, reason = GpuState.PENDING, Reason.CHANGES_PLANNED
            message = f"GPU {index}: " + ", ".join(str(s) for s in diff.steps)
        else:
            state, reason = GpuState.READY, Reason.LAYOUT_APPLIED
            message = f"GPU {index} holds {format_layout(layout) or 'no instances'}"
        plans[index] = GpuPlan(index, info, layout, actual[index], state, reason, message, diff)

    for index, info in sorted(gpus.items()):
        if index not in plans:
            plans[index] = GpuPlan(
                index,
                info,
                None,
                actual[index],
                GpuState.UNMANAGED,
                Reason.NOT_MANAGED,
                f"GPU {index} is not in the spec; left as it is",
                GpuDiff(index),
            )
    return NodePlan(tuple(plans[i] for i in sorted(plans)), current, {**wanted})


def _recheck_holders(
    backend: GpuBackend,
    plan: NodePlan,
    gpu: GpuPlan,
    step: Step,
    in_use: InUseSource,
    retry: RetryPolicy,
) -> tuple[Holder, ...]:
    """Who holds the instance of ``step`` right now (read again: the plan may be seconds old)."""
    fresh = _resolve(in_use).with_processes(call_with_retry(retry, backend.list_processes, gpu.index))
    now = tuple(call_with_retry(retry, backend.list_instances, gpu.index))
    same = [i for i in now if i.gi_id == step.gi_id]
    if same and same[0].uuid != step.uuid:
        # Someone re-made this GPU instance since the plan: leave it to the next pass.
        return (Holder("process", "unknown (the instance changed since the plan)"),)
    actual = {g.index: g.actual for g in plan.gpus}
    actual[gpu.index] = now
    desired = {g.index: g.desired for g in plan.gpus if g.desired is not None and g.state != GpuState.REFUSED}
    held = protected_instances(actual, desired, fresh)  # type: ignore[arg-type]
    return held.get((gpu.index, step.gi_id), ()) if step.gi_id is not None else ()


def _run_gpu(
    backend: GpuBackend,
    plan: NodePlan,
    gpu: GpuPlan,
    in_use: InUseSource,
    retry: RetryPolicy,
    log: Any,
    advertiser: DeviceAdvertiser,
) -> GpuResult:
    # Withdraw before the re-check: no pod may be admitted to a device that is about to go.
    doomed = [s.uuid for s in gpu.diff.destroys if s.uuid]
    if doomed:
        advertiser.withdraw(doomed)
    created: list[GpuInstanceInfo] = []
    destroyed: list[GpuInstanceInfo] = []
    errors: list[str] = []
    by_gi = {i.gi_id: i for i in gpu.actual}
    log = log.bind(gpu=gpu.index)
    blockers: list[Blocker] = []
    for step in gpu.diff.steps:
        if step.action == "destroy":
            assert step.gi_id is not None  # destroy steps always name their GPU instance
            inst = by_gi[step.gi_id]
            try:
                holders = _recheck_holders(backend, plan, gpu, step, in_use, retry)
            except Fatal:
                raise
            except CdmoError as exc:
                errors.append(
                    f"GPU {gpu.index}: could not check who holds {inst.profile}@{inst.start}: {exc}"
                )
                break
            if holders:
                blockers.append(Blocker(inst, holders))
                log.warning(
                    "Kept GPU instance found in use right before destroy",
                    profile=inst.profile,
                    start=inst.start,
                    gi_id=inst.gi_id,
                    holders=[str(h) for h in holders],
                )
                break
            try:
                call_with_retry(retry, backend.destroy_instance, gpu.index, inst.gi_id)
            except AlreadyGone:
                log.info("GPU instance already gone", profile=inst.profile, start=inst.start)
            except Fatal:
                raise
            except NvmlError as exc:
                errors.append(str(exc))
                log.warning(
                    "Failed to destroy GPU instance",
                    profile=inst.profile,
                    start=inst.start,
                    gi_id=inst.gi_id,
                    nvml_rc=exc.rc,
                )
                break  # its space is not free: creating next to it would only fail
            destroyed.append(inst)
            log.info(
                "Destroyed GPU instance",
                profile=inst.profile,
                start=inst.start,
                gi_id=inst.gi_id,
                uuid=inst.uuid,
            )
        else:
            try:
                made = call_with_retry(retry, backend.create_instance, gpu.index, step.profile, step.start)
            except Fatal:
                raise
            except NvmlError as exc:
                errors.append(str(exc))
                log.warning(
                    "Failed to create GPU instance",
                    profile=step.profile,
                    start=step.start,
                    nvml_rc=exc.rc,
                )
                continue
            created.append(made)
            log.info(
                "Created GPU instance",
                profile=made.profile,
                start=made.start,
                gi_id=made.gi_id,
                ci_id=made.ci_id,
                uuid=made.uuid,
            )

    if blockers:
        state, reason = GpuState.BLOCKED, Reason.INSTANCE_IN_USE
        message = f"GPU {gpu.index} stopped changing: " + "; ".join(b.message for b in blockers)
    elif errors:
        state, reason = GpuState.FAILED, Reason.NVML_ERROR
        message = f"GPU {gpu.index}: " + "; ".join(errors) + "; will retry"
    else:
        state, reason = GpuState.READY, Reason.LAYOUT_APPLIED
        message = f"GPU {gpu.index} holds {format_layout(gpu.desired or ()) or 'no instances'}"
    return GpuResult(
        gpu.index,
        gpu.info,
        gpu.desired,
        state,
        reason,
        message,
        created=tuple(created),
        destroyed=tuple(destroyed),
        blockers=tuple(blockers),
        errors=tuple(errors),
    )


def execute_plan(
    backend: GpuBackend,
    plan: NodePlan,
    in_use: InUseSource = EMPTY_IN_USE,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
    log: Any = None,
    advertiser: DeviceAdvertiser | None = None,
) -> ReconcileResult:
    """Run the planned steps, GPU by GPU, then read what every GPU holds.

    Before each destroy, the holders are read again (``in_use`` is called again when it is a
    callable; NVML processes always are); a held instance stops that GPU. Transient NVML errors
    are retried per ``retry``; other failures are reported in the GPU's result.
    """
    log = log or _log
    advertiser = advertiser or NoAdvertiser()
    try:
        return _execute(backend, plan, in_use, retry, log, advertiser)
    finally:
        advertiser.refresh()  # also after a failed pass: offer what the GPUs hold now


def _execute(
    backend: GpuBackend,
    plan: NodePlan,
    in_use: InUseSource,
    retry: RetryPolicy,
    log: Any,
    advertiser: DeviceAdvertiser,
) -> ReconcileResult:
    results: list[GpuResult] = []
    for gp in plan.gpus:
        if gp.state == GpuState.PENDING:
            results.append(_run_gpu(backend, plan, gp, in_use, retry, log, advertiser))
        else:
            results.append(
                GpuResult(
                    gp.index, gp.info, gp.desired, gp.state, gp.reason, gp.message, blockers=gp.diff.blockers
                )
            )
    final: list[GpuResult] = []
    for res in results:
        if res.info is None or not res.info.mig_current:
            final.append(res)
            continue
        now = tuple(call_with_retry(retry, backend.list_instances, res.index))
        if res.state == GpuState.READY and res.desired is not None:
            have = sort_layout(i.instance for i in now if i.healthy)
            if have != sort_layout(res.desired) or len(now) != len(have):
                res = GpuResult(
                    res.index,
                    res.info,
                    res.desired,
                    GpuState.FAILED,
                    Reason.NVML_ERROR,
                    f"GPU {res.index} holds {format_layout(i.instance for i in now) or 'no instances'} "
                    f"but the spec asks for {format_layout(res.desired) or 'no instances'}; will retry",
                    created=res.created,
                    destroyed=res.destroyed,
                    errors=(f"GPU {res.index} does not hold its desired layout after the pass",),
                )
        final.append(
            GpuResult(
                res.index,
                res.info,
                res.desired,
                res.state,
                res.reason,
                res.message,
                now,
                res.created,
                res.destroyed,
                res.blockers,
                res.errors,
            )
        )
    return ReconcileResult(tuple(final), plan.in_use)


def reconcile_node(
    backend: GpuBackend,
    desired: Mapping[int, Sequence[Instance]],
    in_use: InUseSource = EMPTY_IN_USE,
    *,
    enable_mig: bool = False,
    retry: RetryPolicy = DEFAULT_RETRY,
    log: Any = None,
    advertiser: DeviceAdvertiser | None = None,
) -> ReconcileResult:
    """One level-triggered pass: plan every GPU, run the steps, report what the GPUs hold.

    ``desired`` maps GPU index -> instances (a GPU not in it is left alone). ``in_use`` is an
    InUse or a callable returning a fresh one (called again before each destroy). Raises Fatal
    (NoPermission) when NVML refuses for lack of privileges; other problems are in the result.
    """
    plan = plan_node(backend, desired, in_use, enable_mig=enable_mig, retry=retry, log=log)
    return execute_plan(backend, plan, in_use, retry=retry, log=log, advertiser=advertiser)
