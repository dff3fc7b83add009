"""Decide, the pure part of reconcile: truth tables from desired + observed to a per-GPU decision."""

from __future__ import annotations

import pytest

from cdmo.node_agent.backend import ComputeInstanceInfo, GpuInfo, GpuInstanceInfo, build_instance_info
from cdmo.node_agent.decide import (
    GpuState,
    Reason,
    as_if_mig_switched_on,
    decide_mig_mode,
    decide_node,
    diff_layout,
    holders_of_instance,
)
from cdmo.node_agent.inuse import Holder, InUse
from cdmo.node_agent.observe import NodeObservation
from tests.node.conftest import layout

H100 = "h100-80gb"


def gpu(
    index: int = 0, *, mig: bool = True, pending: bool | None = None, model: str | None = H100
) -> GpuInfo:
    return GpuInfo(
        index, f"GPU-{index}", "NVIDIA H100 80GB HBM3", model, mig, mig if pending is None else pending
    )


def inst(profile: str, start: int, gi_id: int, *uuids: str, gpu: int = 0, size: int = 1) -> GpuInstanceInfo:
    cis = [ComputeInstanceInfo(k, u) for k, u in enumerate(uuids)]
    return build_instance_info(gpu, profile, start, size, gi_id, cis)


FREE = inst("1g.10gb", 0, 7, "MIG-a")
SPLIT = build_instance_info(
    0, "2g.20gb", 2, 2, 4, [ComputeInstanceInfo(0, "MIG-s0", False), ComputeInstanceInfo(1, "MIG-s1", False)]
)
EMPTY = inst("3g.40gb", 4, 2, size=4)
PROC = InUse(holders={"MIG-a": (Holder("process", "5"),)})
POD_ON_SECOND_CI = InUse(holders={"MIG-s1": (Holder("pod", "ml/p"),)})
RESERVED = InUse(reservations={"1g.10gb": ("ml/w",)})
UNKNOWN = InUse(unknown={"1g.10gb": ("ml/u",)})
WHOLE_GPU_POD = InUse(holders={"GPU-0": (Holder("pod", "ml/full"),)})
WHOLE_GPU_PROCESS = InUse(holders={"GPU-0": (Holder("process", "77"),)})
#: a whole-GPU pod the agent cannot tie to one GPU (index device id, or bound and not admitted)
WHOLE_GPU_ANYWHERE = InUse(whole_gpus=(Holder("reservation", "ml/full"),))


# One row per rule: (desired on GPU 0, what GPU 0 holds, who holds what) -> state, reason, steps.
@pytest.mark.parametrize(
    ("desired", "info", "actual", "in_use", "state", "reason", "steps"),
    [
        ("1g.10gb@0", gpu(), [FREE], InUse(), GpuState.READY, Reason.LAYOUT_APPLIED, []),
        (
            "7g.80gb@0",
            gpu(),
            [FREE],
            InUse(),
            GpuState.PENDING,
            Reason.CHANGES_PLANNED,
            ["destroy 1g.10gb@0", "create 7g.80gb@0"],
        ),
        ("7g.80gb@0", gpu(), [FREE], PROC, GpuState.BLOCKED, Reason.INSTANCE_IN_USE, []),
        ("7g.80gb@0", gpu(), [FREE], RESERVED, GpuState.BLOCKED, Reason.INSTANCE_IN_USE, []),
        ("7g.80gb@0", gpu(), [FREE], UNKNOWN, GpuState.BLOCKED, Reason.INSTANCE_IN_USE, []),
        ("7g.80gb@0", gpu(), [SPLIT], POD_ON_SECOND_CI, GpuState.BLOCKED, Reason.INSTANCE_IN_USE, []),
        (
            "2g.20gb@2",
            gpu(),
            [SPLIT],
            InUse(),
            GpuState.PENDING,
            Reason.CHANGES_PLANNED,
            ["destroy 2g.20gb@2", "create 2g.20gb@2"],
        ),
        ("2g.20gb@2", gpu(), [SPLIT], POD_ON_SECOND_CI, GpuState.READY, Reason.LAYOUT_APPLIED, []),
        (
            "3g.40gb@4",
            gpu(),
            [EMPTY],
            InUse(),
            GpuState.PENDING,
            Reason.CHANGES_PLANNED,
            ["repair 3g.40gb@4"],
        ),
        (
            "3g.40gb@0",
            gpu(),
            [EMPTY],
            InUse(),
            GpuState.PENDING,
            Reason.CHANGES_PLANNED,
            ["destroy 3g.40gb@4", "create 3g.40gb@0"],
        ),
        (
            "1g.10gb@0,3g.40gb@4",
            gpu(),
            [FREE, EMPTY],
            PROC,
            GpuState.PENDING,
            Reason.CHANGES_PLANNED,
            ["repair 3g.40gb@4"],
        ),
        ("4g.40gb@0,4g.40gb@4", gpu(), [], InUse(), GpuState.REFUSED, Reason.INVALID_LAYOUT, []),
        ("1g.10gb@0", gpu(model=None), [FREE], InUse(), GpuState.REFUSED, Reason.UNKNOWN_MODEL, []),
        ("1g.10gb@0", gpu(mig=False), [], InUse(), GpuState.MIG_OFF, Reason.MIG_MODE_DISABLED, []),
        (
            "1g.10gb@0",
            gpu(mig=False, pending=True),
            [],
            InUse(),
            GpuState.MIG_OFF,
            Reason.MIG_MODE_RESET_REQUIRED,
            [],
        ),
        ("", gpu(mig=False), [], InUse(), GpuState.READY, Reason.NOTHING_DESIRED, []),
        (
            "1g.10gb@0,3g.40gb@4",
            gpu(pending=False),
            [FREE],
            InUse(),
            GpuState.MIG_OFF,
            Reason.MIG_DISABLE_PENDING,
            [],
        ),
        ("1g.10gb@0", gpu(pending=False), [FREE], InUse(), GpuState.READY, Reason.LAYOUT_APPLIED, []),
        (
            "",
            gpu(pending=False),
            [FREE],
            InUse(),
            GpuState.PENDING,
            Reason.CHANGES_PLANNED,
            ["destroy 1g.10gb@0"],
        ),
    ],
    ids=[
        "holds-it",
        "free-unwanted-goes",
        "process-blocks",
        "reservation-blocks",
        "unknown-pod-blocks",
        "pod-on-second-ci-blocks",
        "free-split-gi-remade",
        "held-split-gi-at-desired-kept",
        "empty-gi-kept-is-repaired",
        "empty-gi-unwanted-goes",
        "repair-beside-a-busy-instance",
        "invalid-layout-refused",
        "unknown-model-refused",
        "mig-off",
        "mig-pending-reset",
        "mig-off-nothing-wanted",
        "mig-pending-disable-creates-nothing",
        "mig-pending-disable-keeps-what-it-holds",
        "mig-pending-disable-may-destroy",
    ],
)
def test_decide_one_gpu(
    desired: str,
    info: GpuInfo,
    actual: list[GpuInstanceInfo],
    in_use: InUse,
    state: GpuState,
    reason: Reason,
    steps: list[str],
) -> None:
    observed = NodeObservation({0: info}, {0: tuple(actual) if info.mig_current else ()}, in_use)
    (d,) = decide_node({0: layout(desired)}, observed).gpus
    assert (d.state, d.reason) == (state, reason), d.message
    assert [f"{s.action} {s.profile}@{s.start}" for s in d.diff.steps] == steps


def test_a_gpu_the_spec_does_not_list_is_left_alone_and_a_missing_one_refused() -> None:
    observed = NodeObservation({0: gpu()}, {0: (FREE,)}, InUse())
    decision = decide_node({3: layout("1g.10gb@0")}, observed)
    assert [(d.index, d.state, d.reason) for d in decision.gpus] == [
        (0, GpuState.UNMANAGED, Reason.NOT_MANAGED),
        (3, GpuState.REFUSED, Reason.UNKNOWN_GPU),
    ]


def test_reservations_cross_gpus_and_prefer_instances_the_layout_keeps() -> None:
    a, b = inst("1g.10gb", 0, 7, "MIG-a"), inst("1g.10gb", 0, 7, "MIG-b", gpu=1)
    observed = NodeObservation({0: gpu(0), 1: gpu(1)}, {0: (a,), 1: (b,)}, RESERVED)
    decision = decide_node({0: layout("7g.80gb@0"), 1: layout("1g.10gb@0")}, observed)
    assert [d.state for d in decision.gpus] == [GpuState.PENDING, GpuState.READY]


def test_holders_of_any_ci_hold_the_instance() -> None:
    assert holders_of_instance(SPLIT, POD_ON_SECOND_CI) == [Holder("pod", "ml/p")]
    assert holders_of_instance(SPLIT, PROC) == []


#: A pod bound for 3g.40gb while pod-resources is unreadable; a pod holding a MIG device by index id.
UNKNOWN_3G = InUse(unknown={"3g.40gb": ("ml/u",)})
INDEXED = InUse(any_instance=(Holder("indexed", "ml/i"),))
INDEX_POOL_RESERVATION = InUse(any_instance=(Holder("reservation", "ml/r"),))


@pytest.mark.parametrize(
    "in_use", [UNKNOWN_3G, INDEXED, INDEX_POOL_RESERVATION], ids=["unknown", "indexed", "index-pool"]
)
def test_a_gpu_instance_without_a_compute_instance_is_held_by_nobody(in_use: InUse) -> None:
    """No compute instance: no MIG device, no UUID, no MIG device index (the agent's plugin and
    NVML number only MIG devices), nothing a device plugin offers or a container is given. A pod
    that may hold "any instance" of its profile or of the node holds a device, so not this one:
    the unwanted GI goes and a wanted one is repaired, where they used to make the GPU Blocked
    (or leave the GI without its device)."""
    held_twin = inst("3g.40gb", 0, 1, "MIG-h", size=4)
    assert holders_of_instance(EMPTY, in_use) == []
    assert holders_of_instance(held_twin, in_use) != []  # a device: it may be the one held
    observed = NodeObservation({0: gpu()}, {0: (held_twin, EMPTY)}, in_use)
    (gone,) = decide_node({0: layout("3g.40gb@0")}, observed).gpus
    assert gone.state == GpuState.PENDING, gone.message
    assert [str(s) for s in gone.diff.steps] == ["destroy 3g.40gb@4 on GPU 0"]
    (kept,) = decide_node({0: layout("3g.40gb@0,3g.40gb@4")}, observed).gpus
    assert [str(s) for s in kept.diff.steps] == ["repair 3g.40gb@4 on GPU 0"]


def test_diff_keeps_one_instance_per_desired_place() -> None:
    twin = inst("1g.10gb", 0, 9, "MIG-t")
    diff = diff_layout(layout("1g.10gb@0"), [FREE, twin])
    assert [(s.action, s.gi_id) for s in diff.steps] == [("destroy", 9)]


# MIG mode: (asked by flag, GPU managed before, GPU state, holders) -> switched, automatic, refused.
@pytest.mark.parametrize(
    ("enable", "restore", "info", "in_use", "desired", "switched", "restored", "refused"),
    [
        (True, False, gpu(mig=False), InUse(), "1g.10gb@0", (0,), set(), False),
        (False, False, gpu(mig=False), InUse(), "1g.10gb@0", (), set(), False),
        (False, True, gpu(mig=False), InUse(), "1g.10gb@0", (0,), {0}, False),
        (True, False, gpu(mig=False), WHOLE_GPU_POD, "1g.10gb@0", (), set(), True),
        (True, False, gpu(mig=False), WHOLE_GPU_PROCESS, "1g.10gb@0", (), set(), True),
        (False, True, gpu(mig=False), WHOLE_GPU_PROCESS, "1g.10gb@0", (), set(), True),
        (True, False, gpu(mig=False), WHOLE_GPU_ANYWHERE, "1g.10gb@0", (), set(), True),
        (False, True, gpu(mig=False), WHOLE_GPU_ANYWHERE, "1g.10gb@0", (), set(), True),
        (True, False, gpu(mig=False), InUse(), "", (), set(), False),
        (True, False, gpu(mig=True), InUse(), "1g.10gb@0", (), set(), False),
        (True, False, gpu(mig=False, pending=True), InUse(), "1g.10gb@0", (), set(), False),
        (True, False, gpu(mig=False, model=None), InUse(), "1g.10gb@0", (), set(), False),
        (True, False, gpu(mig=False), InUse(), "4g.40gb@0,4g.40gb@4", (), set(), False),
    ],
    ids=[
        "flag-switches",
        "not-asked",
        "restored-after-reboot",
        "pod-holds-whole-gpu",
        "process-on-gpu",
        "restore-waits-for-idle",
        "whole-gpu-pod-on-an-unknown-gpu",
        "restore-waits-for-an-unknown-whole-gpu-pod",
        "nothing-wanted",
        "already-on",
        "pending-reset",
        "unknown-model",
        "invalid-layout",
    ],
)
def test_decide_mig_mode(
    enable: bool,
    restore: bool,
    info: GpuInfo,
    in_use: InUse,
    desired: str,
    switched: tuple[int, ...],
    restored: set[int],
    refused: bool,
) -> None:
    observed = NodeObservation({0: info}, {0: ()}, in_use)
    mig = decide_mig_mode(
        {0: layout(desired)}, observed, enable_mig=enable, restore_mig={"GPU-0"} if restore else set()
    )
    assert mig.switch_on == switched
    assert mig.restored == restored
    assert (0 in mig.refused) == refused
    if refused:
        holder = next(iter(in_use.holders.values()))[0] if in_use.holders else in_use.whole_gpus[0]
        assert str(holder) in mig.refused[0]
        decision = decide_node({0: layout(desired)}, observed, mig_refused=mig.refused)
        assert decision.gpus[0].reason == Reason.GPU_IN_USE
        assert str(holder) in decision.gpus[0].message


@pytest.mark.parametrize(
    ("model", "current", "pending"),
    [(H100, True, True), ("a100-40gb", False, True), (None, False, True)],
    ids=["hopper-switches-at-once", "ampere-waits-for-a-reset", "unknown-model-assumed-to-wait"],
)
def test_a_dry_run_decides_as_if_mig_were_switched_on(
    model: str | None, current: bool, pending: bool
) -> None:
    """What `cdmo node apply --dry-run --enable-mig` decides from, with nothing switched."""
    observed = NodeObservation({0: gpu(mig=False, model=model), 1: gpu(1, mig=False)}, {0: (), 1: ()})
    after = as_if_mig_switched_on(observed, [0])
    assert (after.gpus[0].mig_current, after.gpus[0].mig_pending) == (current, pending)
    assert after.gpus[1] == observed.gpus[1] and observed.gpus[0].mig_current is False
    assert as_if_mig_switched_on(observed, []) is observed
