"""Build the MigLayout ``status`` the agent writes, from a reconcile result.

Shape (ARCHITECTURE.md and crds/miglayouts.yaml): ``observedGeneration``, ``phase``,
``conditions`` (MigModeEnabled, Applied, Blocked, DevicePluginRefreshed), ``gpus[]`` with
their instances (profile, start, giId, ciId, uuid, allocated, pod), ``lastError``,
``lastAppliedTime``. Fields without a value are left out, except ``lastError: None``, which
a merge patch turns into "remove the old error".

Pure: ``now`` is passed in; conditions go through cdmo.api.set_condition so that
lastTransitionTime moves only when a condition's status flips.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from cdmo.api import ConditionType, Phase, format_time, get_condition, set_condition
from cdmo.node_agent.advertise import NOTHING_UNHEALTHY, Unhealthy
from cdmo.node_agent.backend import GpuInfo, GpuInstanceInfo
from cdmo.node_agent.decide import GpuState, protected_instances
from cdmo.node_agent.execute import GpuResult, ReconcileResult
from cdmo.node_agent.inuse import InUse
from cdmo.node_agent.refresh import RefreshOutcome

#: Condition reason and Event reason when the agent switched MIG back on after a reboot or reset.
MIG_MODE_RESTORED = "MigModeRestored"

_NOT_READY_ORDER = (GpuState.REFUSED, GpuState.MIG_OFF, GpuState.BLOCKED, GpuState.FAILED, GpuState.PENDING)


def build_instance_entry(
    inst: GpuInstanceInfo, holders: Sequence[Any], marked: bool = False
) -> dict[str, Any]:
    """One ``status.gpus[].instances[]`` entry; ``healthy: false`` when its compute instance does
    not span it, or the device plugin withholds it after a critical XID (``marked``)."""
    entry: dict[str, Any] = {"profile": inst.profile, "start": inst.start, "giId": inst.gi_id}
    if inst.ci_id is not None:
        entry["ciId"] = inst.ci_id
    if inst.uuid:
        entry["uuid"] = inst.uuid
    if len(inst.uuids) > 1:
        # A GI split by another tool: a pod may hold any of its MIG devices.
        entry["uuids"] = list(inst.uuids)
    entry["allocated"] = bool(holders)
    pods = [h.pod for h in holders if h.pod]
    if pods:
        entry["pod"] = pods[0]
    if not inst.healthy or marked:
        entry["healthy"] = False
    return entry


def build_gpu_entries(
    infos: Iterable[GpuInfo],
    instances: Mapping[int, Sequence[GpuInstanceInfo]],
    in_use: InUse,
    results: Mapping[int, GpuResult] | None = None,
    managed: frozenset[str] = frozenset(),
    unhealthy: Unhealthy = NOTHING_UNHEALTHY,
) -> list[dict[str, Any]]:
    """``status.gpus``: every GPU of the node with what it holds and who holds each instance.

    ``migManaged`` marks a GPU the spec lists that cdmo has run with MIG on (now, or by
    ``managed``, the previous status's word): it stays marked while MIG is off after a reboot,
    so that the agent knows to switch MIG back on. ``healthy: false`` on a GPU or an instance
    says the device plugin withholds it (``unhealthy``: critical XIDs), so that the operator
    plans around it.
    """
    results = results or {}
    infos = sorted(infos, key=lambda g: g.index)
    desired = {i: r.desired for i, r in results.items() if r.desired is not None}
    held = protected_instances(instances, desired, in_use)  # type: ignore[arg-type]
    entries = []
    for info in infos:
        entry: dict[str, Any] = {
            "index": info.index,
            "uuid": info.uuid,
            "model": info.model_key or "",
            "product": info.product,
            "migEnabled": info.mig_current,
        }
        if info.mig_pending != info.mig_current:
            entry["migPending"] = info.mig_pending
        gpu_marked = info.index in unhealthy.gpus
        if gpu_marked:
            entry["healthy"] = False
        res = results.get(info.index)
        if res is not None and res.desired is not None and (info.mig_current or info.uuid in managed):
            entry["migManaged"] = True
        if res is not None and res.state not in (GpuState.READY, GpuState.UNMANAGED):
            entry["state"] = str(res.state)
            entry["message"] = res.message
        entry["instances"] = [
            build_instance_entry(
                inst,
                held.get((info.index, inst.gi_id), ()),
                gpu_marked or not unhealthy.uuids.isdisjoint(inst.uuids),
            )
            for inst in sorted(instances.get(info.index, ()), key=lambda i: (i.start, i.profile))
        ]
        entries.append(entry)
    return entries


def derive_phase(result: ReconcileResult, refresh: RefreshOutcome | None = None) -> Phase:
    """Error when a GPU is refused or has MIG off; Blocked; Applying while retrying; else Ready."""
    states = {g.state for g in result.gpus}
    if states & {GpuState.REFUSED, GpuState.MIG_OFF}:
        return Phase.ERROR
    if GpuState.BLOCKED in states:
        return Phase.BLOCKED
    if states & {GpuState.FAILED, GpuState.PENDING} or (refresh is not None and not refresh.ok):
        return Phase.APPLYING
    return Phase.READY


def _first_not_ready(result: ReconcileResult) -> GpuResult | None:
    for state in _NOT_READY_ORDER:
        for g in result.gpus:
            if g.state == state:
                return g
    return None


def managed_gpus(status: Mapping[str, Any] | None) -> frozenset[str]:
    """UUIDs of the GPUs a (previous) status reports cdmo managed with MIG on.

    A GPU among them that now has MIG off came back from a reboot or reset (Hopper and later
    lose MIG mode on one); the agent may switch it back on (autoEnableMig).
    """
    return frozenset(
        str(g["uuid"])
        for g in (status or {}).get("gpus") or []
        if g.get("uuid") and (g.get("migManaged") or g.get("migEnabled"))
    )


def mig_restored_message(result: ReconcileResult) -> str:
    names = []
    for index in result.mig_restored:
        g = next((r for r in result.gpus if r.index == index), None)
        product = f" ({g.info.product})" if g is not None and g.info is not None else ""
        names.append(f"GPU {index}{product}")
    return (
        "MIG mode was off on "
        + ", ".join(names)
        + " after a reboot or GPU reset, where cdmo had managed MIG; the agent switched it back on "
        "(turn this off with the chart value agent.autoEnableMig: false)"
    )


def mig_uuids(status: Mapping[str, Any] | None) -> frozenset[str]:
    """The healthy MIG device UUIDs a (previous) status lists."""
    return frozenset(
        i["uuid"]
        for g in (status or {}).get("gpus") or []
        for i in g.get("instances") or []
        if i.get("uuid") and i.get("healthy", True)
    )


def result_mig_uuids(result: ReconcileResult) -> frozenset[str]:
    return frozenset(i.uuid for g in result.gpus for i in g.instances if i.uuid and i.healthy)


def needs_refresh(result: ReconcileResult, previous: Mapping[str, Any] | None) -> bool:
    """Whether the device plugin must be refreshed after this pass: the GPUs changed, the last
    refresh did not succeed (so a pass that changes nothing still retries it, rather than
    reporting Ready over a plugin that never registered), or the MIG devices are not those the
    last status listed."""
    last = get_condition((previous or {}).get("conditions"), ConditionType.DEVICE_PLUGIN_REFRESHED)
    return (
        result.changed
        or (last is not None and last.get("status") != "True")
        or result_mig_uuids(result) != mig_uuids(previous)
    )


def build_status(
    result: ReconcileResult,
    *,
    generation: int | None,
    now: datetime,
    previous: Mapping[str, Any] | None = None,
    refresh: RefreshOutcome | None = None,
    unhealthy: Unhealthy = NOTHING_UNHEALTHY,
) -> dict[str, Any]:
    """The whole ``status`` after a pass. ``refresh`` is None when no refresh was attempted;
    ``unhealthy``: what the device plugin withholds after critical XIDs."""
    previous = previous or {}
    conds: list[dict[str, Any]] = [dict(c) for c in previous.get("conditions") or []]
    gen = generation

    managed = [g for g in result.gpus if g.desired is not None]
    mig_off = [g for g in managed if g.state == GpuState.MIG_OFF]
    if mig_off:
        conds = set_condition(
            conds,
            ConditionType.MIG_MODE_ENABLED,
            "False",
            str(mig_off[0].reason),
            "; ".join(g.message for g in mig_off),
            now,
            gen,
        )
    elif result.mig_restored:
        conds = set_condition(
            conds,
            ConditionType.MIG_MODE_ENABLED,
            "True",
            MIG_MODE_RESTORED,
            mig_restored_message(result),
            now,
            gen,
        )
    else:
        conds = set_condition(
            conds,
            ConditionType.MIG_MODE_ENABLED,
            "True",
            "MigModeOn",
            "MIG mode is on where the spec asks for instances",
            now,
            gen,
        )

    blocked = result.blocked
    if blocked:
        conds = set_condition(
            conds,
            ConditionType.BLOCKED,
            "True",
            "InstanceInUse",
            "; ".join(b.message for g in blocked for b in g.blockers),
            now,
            gen,
        )
    else:
        conds = set_condition(
            conds, ConditionType.BLOCKED, "False", "NotBlocked", "no instance in use is in the way", now, gen
        )

    worst = _first_not_ready(result)
    if worst is None:
        done = [g for g in managed if g.state == GpuState.READY]
        message = "; ".join(g.message for g in done) or "the spec lists no GPU"
        conds = set_condition(conds, ConditionType.APPLIED, "True", "LayoutApplied", message, now, gen)
    else:
        not_ready = [g for g in result.gpus if g.state == worst.state]
        conds = set_condition(
            conds,
            ConditionType.APPLIED,
            "False",
            str(worst.reason),
            "; ".join(g.message for g in not_ready),
            now,
            gen,
        )

    if refresh is not None:
        conds = set_condition(
            conds,
            ConditionType.DEVICE_PLUGIN_REFRESHED,
            "True" if refresh.ok else "False",
            refresh.reason,
            refresh.message,
            now,
            gen,
        )
    elif get_condition(conds, ConditionType.DEVICE_PLUGIN_REFRESHED) is None:
        conds = set_condition(
            conds,
            ConditionType.DEVICE_PLUGIN_REFRESHED,
            "True",
            "NoChange",
            "no MIG device changed since the agent started",
            now,
            gen,
        )

    phase = derive_phase(result, refresh)
    errors = list(result.errors)
    if worst is not None and worst.state in (GpuState.REFUSED, GpuState.MIG_OFF, GpuState.BLOCKED):
        errors.insert(0, worst.message)
    if refresh is not None and not refresh.ok:
        errors.append(refresh.message)

    last_applied = previous.get("lastAppliedTime")
    if phase == Phase.READY and (
        result.changed or last_applied is None or previous.get("observedGeneration") != generation
    ):
        last_applied = format_time(now)

    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": str(phase),
        "conditions": conds,
        "gpus": build_gpu_entries(
            [g.info for g in result.gpus if g.info is not None],
            {g.index: g.instances for g in result.gpus},
            result.in_use,
            {g.index: g for g in result.gpus},
            managed_gpus(previous),
            unhealthy,
        ),
        "lastError": errors[0] if errors else None,
    }
    if last_applied:
        status["lastAppliedTime"] = last_applied
    if generation is None:
        del status["observedGeneration"]
    return status


def build_error_status(
    *,
    generation: int | None,
    reason: str,
    message: str,
    now: datetime,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Status for a pass that could not run at all (a spec the agent cannot read, no privileges).

    Keeps the previous ``gpus`` report: nothing was changed.
    """
    previous = previous or {}
    conds = set_condition(
        previous.get("conditions") or [], ConditionType.APPLIED, "False", reason, message, now, generation
    )
    status: dict[str, Any] = {
        "phase": str(Phase.ERROR),
        "conditions": conds,
        "lastError": message,
    }
    if generation is not None:
        status["observedGeneration"] = generation
    if previous.get("gpus") is not None:
        status["gpus"] = previous["gpus"]
    if previous.get("lastAppliedTime"):
        status["lastAppliedTime"] = previous["lastAppliedTime"]
    return status
