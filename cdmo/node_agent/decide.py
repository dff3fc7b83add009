"""Decide: from the desired layouts and one observation of the node, what each GPU needs.

The second of reconcile's three parts (observe -> decide -> execute), and the only one that
makes decisions. Pure: frozen data in, frozen data out, no NVML, no clock, no logging, so each
rule reads and tests alone (tests/node/test_decide.py holds its truth tables).

Rules (ARCHITECTURE.md, "Rules that make it safe"):

- a GPU whose desired layout is invalid for its model, whose model cdmo does not know, or
  whose index does not exist is refused, and nothing on it is touched;
- an instance is held when a pod holds any of its compute instances (pod-resources), a process
  runs on any of them (NVML), or a bound pod that is not admitted yet reserves it; a GPU on which
  an unwanted instance is held is Blocked and nothing on it is touched (the plan that asked for
  it is stale; the operator plans again from the status);
- a GPU instance left without a compute instance (an agent that died between the two creates, a
  GI destroy refused after its CI went) is repaired in place when the layout keeps it: its
  full-size compute instance is made again; it is no MIG device, so nothing holds it, even where
  a pod may hold any instance: the layout that drops it has it destroyed;
- MIG mode is switched on only where the spec wants instances, when asked (``--enable-mig``) or
  when the GPU came back from a reboot or reset with MIG off after cdmo managed it, and never
  while a pod holds the whole GPU (``nvidia.com/gpu``) or a process runs on it;
- GPUs that the spec does not list are left as they are. Creates use explicit placements only.

Must not import pynvml, grpc or kubernetes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from cdmo.mig.catalog import find_model
from cdmo.mig.layouts import Instance, format_layout, sort_layout, validate_layout
from cdmo.node_agent.backend import GpuInfo, GpuInstanceInfo
from cdmo.node_agent.inuse import Holder, InUse
from cdmo.node_agent.observe import NodeObservation


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
    #: MIG is on but switched off pending a reset (Ampere): nothing is created on it.
    MIG_DISABLE_PENDING = "MigDisablePending"
    #: MIG is off and may not be switched on: a pod or a process holds the whole GPU.
    GPU_IN_USE = "GpuInUse"
    NVML_ERROR = "NvmlError"
    NOT_MANAGED = "NotManaged"
    CHANGES_PLANNED = "ChangesPlanned"


class Action(StrEnum):
    DESTROY = "destroy"  # the GPU instance and its compute instances
    CREATE = "create"  # a GPU instance at a placement, and its full-size compute instance
    REPAIR = "repair"  # the full-size compute instance of a GPU instance that has none


@dataclass(frozen=True)
class Step:
    """One NVML change on one GPU."""

    action: str
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
        uuids = inst.uuids
        named = f" ({', '.join(uuids)})" if uuids else ""
        return f"GPU {inst.gpu}: {inst.profile}@{inst.start}{named} is held by " + ", ".join(
            str(h) for h in self.holders
        )

    @property
    def pods(self) -> tuple[str, ...]:
        return tuple(h.pod for h in self.holders if h.pod)


@dataclass(frozen=True)
class GpuDiff:
    """What one GPU needs: ordered steps (destroys, repairs, creates), or blockers that forbid them."""

    gpu: int
    steps: tuple[Step, ...] = ()
    blockers: tuple[Blocker, ...] = ()

    @property
    def destroys(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.action == Action.DESTROY)

    @property
    def creates(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.action == Action.CREATE)

    @property
    def repairs(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.action == Action.REPAIR)


# --- who holds what --------------------------------------------------------------------------


def holders_of_instance(inst: GpuInstanceInfo, in_use: InUse) -> list[Holder]:
    """Pods and processes on any compute instance of ``inst``, unknown pods of its profile, and
    pods that may hold any instance (a MIG index id under a name without a profile).

    A GPU instance without a compute instance is held by nobody. It is no MIG device: it has no
    UUID, and no MIG device index either (NVML numbers only MIG devices, and so does the agent's
    own plugin, devices.build_devices), so no device plugin offers it, no pod-resources id or
    index id names it, and no process runs on it. Pods that may hold "any instance" (pod-resources
    unreadable, index ids, DRA claims that name no UUID) hold a device, so not this one; a pod
    about to be handed one is handed a device too (reservations take healthy instances only). A
    compute instance made on it before the destroy changes its UUIDs, and the re-check before
    the destroy then keeps it (execute.recheck_holders). So it is repaired or destroyed as the
    layout says, not left to block its GPU.
    """
    if inst.empty:
        return []
    holders: list[Holder] = []
    for uuid in inst.uuids:
        holders.extend(h for h in in_use.holders_of(uuid) if h not in holders)
    holders.extend(Holder("unknown", pod) for pod in in_use.unknown.get(inst.profile, ()))
    holders.extend(in_use.any_instance)
    return holders


def protected_instances(
    actual: Mapping[int, Sequence[GpuInstanceInfo]],
    desired: Mapping[int, Sequence[Instance]],
    in_use: InUse,
) -> dict[tuple[int, int], tuple[Holder, ...]]:
    """(gpu, gi_id) -> holders, for every instance that must not be destroyed.

    Reservations of a profile take free healthy instances of it that the desired layout keeps
    first, then others in (gpu, start) order: a bound pod keeps an instance to land on. Those of
    a renamed resource (``InUse.pool_reservations``) take, the same way, free healthy instances
    whose device the kubelet lists under that name. Only
    instances in ``actual`` can be reserved: pass the node's current instances.
    """
    result: dict[tuple[int, int], list[Holder]] = {}
    free: dict[str, list[tuple[int, int, GpuInstanceInfo]]] = {}
    for gpu in sorted(actual):
        wanted = set(desired.get(gpu, ()))
        for inst in actual[gpu]:
            holders = holders_of_instance(inst, in_use)
            if holders:
                result[(gpu, inst.gi_id)] = holders
            elif inst.healthy:
                kept = 0 if inst.instance in wanted or gpu not in desired else 1
                free.setdefault(inst.profile, []).append((kept, gpu, inst))
    for profile, pods in sorted(in_use.reservations.items()):
        candidates = sorted(free.get(profile, []), key=lambda c: (c[0], c[1], c[2].start))
        for pod, (_, gpu, inst) in zip(pods, candidates, strict=False):
            result.setdefault((gpu, inst.gi_id), []).append(Holder("reservation", pod))
    # A renamed resource's pods take free instances among the devices listed under its name.
    for _resource, (uuids, pods) in sorted(in_use.pool_reservations.items()):
        candidates = sorted(
            (
                c
                for cs in free.values()
                for c in cs
                if (c[1], c[2].gi_id) not in result and uuids & set(c[2].uuids)
            ),
            key=lambda c: (c[0], c[1], c[2].start),
        )
        for pod, (_, gpu, inst) in zip(pods, candidates, strict=False):
            result.setdefault((gpu, inst.gi_id), []).append(Holder("reservation", pod))
    return {k: tuple(v) for k, v in sorted(result.items())}


def gpu_holders(info: GpuInfo, in_use: InUse) -> tuple[Holder, ...]:
    """Pods holding the whole GPU (``nvidia.com/gpu`` ids are GPU UUIDs) and processes on it,
    and the whole-GPU pods that may be on any GPU of the node (index ids, not yet admitted)."""
    return (*in_use.holders_of(info.uuid), *in_use.whole_gpus)


# --- one GPU ---------------------------------------------------------------------------------


def diff_layout(
    desired: Sequence[Instance],
    actual: Sequence[GpuInstanceInfo],
    protected: Mapping[int, Sequence[Holder]] | None = None,
    *,
    gpu: int = 0,
) -> GpuDiff:
    """Steps that turn ``actual`` into ``desired`` on one GPU: destroys, repairs, then creates.

    ``protected`` maps GI ids to their holders. A healthy instance at a desired (profile,
    start) is kept; one without a compute instance there is kept and repaired (its CI made
    again); another broken one (a partial CI, several CIs) is destroyed and made again unless
    held. If an instance that must go is held, there are no steps, only blockers: nothing on
    the GPU may change. ``desired`` must be valid for the GPU's model.
    """
    protected = protected or {}
    wanted = set(desired)
    keep: set[Instance] = set()
    remove: list[GpuInstanceInfo] = []
    repair: list[GpuInstanceInfo] = []
    for inst in sorted(actual, key=lambda i: (i.start, i.profile)):
        if inst.instance in wanted and inst.instance not in keep:
            if inst.healthy or inst.gi_id in protected:
                keep.add(inst.instance)
                continue
            if inst.empty:
                keep.add(inst.instance)
                repair.append(inst)
                continue
        remove.append(inst)
    blockers = tuple(Blocker(i, tuple(protected[i.gi_id])) for i in remove if i.gi_id in protected)
    if blockers:
        return GpuDiff(gpu, (), blockers)
    steps = [Step(Action.DESTROY, gpu, i.profile, i.start, i.gi_id, i.uuid) for i in remove]
    steps += [Step(Action.REPAIR, gpu, i.profile, i.start, i.gi_id) for i in repair]
    steps += [Step(Action.CREATE, gpu, i.profile, i.start) for i in sort_layout(wanted - keep)]
    return GpuDiff(gpu, tuple(steps))


# --- MIG mode ---------------------------------------------------------------------------------


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


def mig_disable_pending_message(info: GpuInfo) -> str:
    """Why nothing is created on a GPU whose MIG mode waits for a reset to go off."""
    i = info.index
    return (
        f"MIG mode on GPU {i} ({info.product}) is switched off pending a GPU reset, which removes "
        f"every instance, so no instance is created on it: reset it (`nvidia-smi -i {i} -r`) or "
        f"reboot the node to finish switching MIG off, or switch MIG back on (`nvidia-smi -i {i} -mig 1`) "
        "to keep using it"
    )


@dataclass(frozen=True)
class MigModeDecision:
    """Which GPUs get MIG switched on now, and which may not, with why."""

    #: GPU indexes to switch on, in order
    switch_on: tuple[int, ...] = ()
    #: the subset switched on automatically (back from a reboot or reset), not by --enable-mig
    restored: frozenset[int] = frozenset()
    #: GPU index -> why MIG stays off although asked for (a pod or process holds the GPU)
    refused: Mapping[int, str] = field(default_factory=dict)


def decide_mig_mode(
    desired: Mapping[int, Sequence[Instance]],
    observed: NodeObservation,
    *,
    enable_mig: bool = False,
    restore_mig: Collection[str] = (),
    handed: Collection[str] = (),
) -> MigModeDecision:
    """Switch MIG on where the spec wants instances, MIG is off (and not pending a reset), the
    model is known, and either ``enable_mig`` is set or the GPU's UUID is in ``restore_mig``
    (GPUs that cdmo managed with MIG on before a reboot or reset). Refused while a pod holds
    the whole GPU or a process runs on it: switching would pull the GPU away from them (and on
    Ampere bare metal NVML may reset it). ``handed``: GPU UUIDs the kubelet was just given
    (DeviceAdvertiser.withdraw), held whatever pod-resources says."""
    switch: list[int] = []
    restored: set[int] = set()
    refused: dict[int, str] = {}
    for index, layout in sorted(desired.items()):
        info = observed.gpus.get(index)
        if info is None or info.mig_current or info.mig_pending or not layout or info.model_key is None:
            continue
        automatic = not enable_mig and info.uuid in restore_mig
        if not enable_mig and not automatic:
            continue
        model = find_model(info.model_key)
        if model is None or validate_layout(model, layout):
            continue  # refused below; MIG mode is no business of a layout that cannot apply
        holders = gpu_holders(info, observed.in_use)
        if info.uuid in handed:
            holders = (*holders, Holder("allocated", info.uuid))
        if holders:
            refused[index] = (
                f"MIG mode stays off on GPU {index} ({info.product}): "
                + ", ".join(str(h) for h in holders)
                + " uses the whole GPU; switching MIG on would take it away. Switch it on once they are done"
            )
            continue
        switch.append(index)
        if automatic:
            restored.add(index)
    return MigModeDecision(tuple(switch), frozenset(restored), refused)


def as_if_mig_switched_on(observed: NodeObservation, indexes: Collection[int]) -> NodeObservation:
    """``observed`` as it would read once MIG is switched on for ``indexes``: on at once on
    Hopper and later, enabled but pending a reset on Ampere. What a dry run decides from."""
    if not indexes:
        return observed
    gpus = dict(observed.gpus)
    for index in indexes:
        info = gpus[index]
        model = find_model(info.model_key) if info.model_key else None
        needs_reset = model.mig_mode_change_needs_reset if model else True
        gpus[index] = dataclasses.replace(info, mig_current=not needs_reset, mig_pending=True)
    return dataclasses.replace(observed, gpus=gpus)


# --- the node ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuDecision:
    """What one GPU index (a spec entry, or a GPU the node has) gets in this pass, and why."""

    index: int
    info: GpuInfo | None
    desired: tuple[Instance, ...] | None
    actual: tuple[GpuInstanceInfo, ...]
    state: GpuState
    reason: str
    message: str
    diff: GpuDiff


@dataclass(frozen=True)
class NodeDecision:
    """The decision for every GPU of a node, and what it was decided from."""

    gpus: tuple[GpuDecision, ...]
    in_use: InUse
    desired: Mapping[int, tuple[Instance, ...]]
    #: GPUs whose MIG mode was switched on automatically before deciding (back from a reboot)
    mig_restored: tuple[int, ...] = ()
    #: GPUs whose MIG mode was switched on before deciding; in a dry run, those it would be
    mig_switched_on: tuple[int, ...] = ()

    @property
    def refusals(self) -> tuple[GpuDecision, ...]:
        """GPUs that cannot get their layout now: refused, MIG off, or blocked."""
        return tuple(
            g for g in self.gpus if g.state in (GpuState.REFUSED, GpuState.MIG_OFF, GpuState.BLOCKED)
        )

    @property
    def steps(self) -> tuple[Step, ...]:
        return tuple(s for g in self.gpus if g.state == GpuState.PENDING for s in g.diff.steps)

    @property
    def valid_desired(self) -> dict[int, tuple[Instance, ...]]:
        """The layouts of GPUs whose spec entry is not refused (the re-check keeps these)."""
        return {
            g.index: g.desired for g in self.gpus if g.desired is not None and g.state != GpuState.REFUSED
        }


def _refuse(
    index: int,
    info: GpuInfo | None,
    layout: tuple[Instance, ...],
    actual: tuple[GpuInstanceInfo, ...],
    reason: str,
    message: str,
) -> GpuDecision:
    return GpuDecision(index, info, layout, actual, GpuState.REFUSED, reason, message, GpuDiff(index))


def decide_node(
    desired: Mapping[int, Sequence[Instance]],
    observed: NodeObservation,
    *,
    mig_refused: Mapping[int, str] | None = None,
    mig_errors: Mapping[int, str] | None = None,
) -> NodeDecision:
    """The decision for every GPU: desired layouts (GPU index -> instances) against one
    observation. ``mig_refused`` (from :func:`decide_mig_mode`) and ``mig_errors`` (NVML's
    answers to a switch) say, per GPU with MIG off, why it was not switched on."""
    mig_refused = mig_refused or {}
    mig_errors = mig_errors or {}
    wanted = {int(k): sort_layout(v) for k, v in desired.items()}
    gpus = observed.gpus
    decisions: dict[int, GpuDecision] = {}
    valid: dict[int, tuple[Instance, ...]] = {}
    for index, layout in sorted(wanted.items()):
        info = gpus.get(index)
        if info is None:
            have = ", ".join(map(str, sorted(gpus))) or "none"
            decisions[index] = _refuse(
                index,
                None,
                layout,
                (),
                Reason.UNKNOWN_GPU,
                f"the spec asks for GPU {index}, but this node has GPUs {have}",
            )
            continue
        actual = observed.instances.get(index, ())
        model = find_model(info.model_key) if info.model_key else None
        if model is None:
            decisions[index] = _refuse(
                index,
                info,
                layout,
                actual,
                Reason.UNKNOWN_MODEL,
                f"GPU {index} is a {info.product}, a model cdmo does not know; nothing on it was changed",
            )
            continue
        problems = validate_layout(model, layout)
        if problems:
            decisions[index] = _refuse(
                index,
                info,
                layout,
                actual,
                Reason.INVALID_LAYOUT,
                f"GPU {index} ({model.key}) cannot hold {format_layout(layout) or 'the empty layout'}: "
                + "; ".join(problems)
                + "; nothing on it was changed",
            )
            continue
        if not info.mig_current:
            if layout:
                reason, message = mig_off_message(info)
                if index in mig_refused:
                    reason, message = Reason.GPU_IN_USE, mig_refused[index]
                if index in mig_errors:
                    message += f"; switching MIG on failed: {mig_errors[index]}"
                decisions[index] = GpuDecision(
                    index, info, layout, (), GpuState.MIG_OFF, reason, message, GpuDiff(index)
                )
            else:
                decisions[index] = GpuDecision(
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

    protected = protected_instances(observed.instances, valid, observed.in_use)
    for index, layout in valid.items():
        info = gpus[index]
        actual = observed.instances.get(index, ())
        held = {gi: h for (g, gi), h in protected.items() if g == index}
        diff = diff_layout(layout, actual, held, gpu=index)
        if diff.creates and not info.mig_pending:
            # MIG on, switched off pending a reset (Ampere, after `cdmo teardown --disable-mig` or
            # nvidia-smi): the reset removes every instance, so one made now would be pulled from
            # under the pod that gets it. Destroying what the spec drops stays allowed.
            state, reason = GpuState.MIG_OFF, Reason.MIG_DISABLE_PENDING
            message = mig_disable_pending_message(info)
            diff = GpuDiff(index)
        elif diff.blockers:
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
        decisions[index] = GpuDecision(index, info, layout, actual, state, reason, message, diff)

    for index, info in sorted(gpus.items()):
        if index not in decisions:
            decisions[index] = GpuDecision(
                index,
                info,
                None,
                observed.instances.get(index, ()),
                GpuState.UNMANAGED,
                Reason.NOT_MANAGED,
                f"GPU {index} is not in the spec; left as it is",
                GpuDiff(index),
            )
    return NodeDecision(tuple(decisions[i] for i in sorted(decisions)), observed.in_use, {**wanted})
