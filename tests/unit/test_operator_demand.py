"""Which pods wait for MIG devices, and what they ask for (cdmo.operator.demand)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cdmo.operator.demand import (
    is_bound_mig_pod,
    is_unbound_mig_pod,
    is_unschedulable,
    is_waiting,
    mig_requests,
    pending_entry,
    profile_counts,
    summarize_pod,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _container(
    limits: dict[str, Any] | None = None, requests: dict[str, Any] | None = None, **kw: Any
) -> dict:
    res: dict[str, Any] = {}
    if limits is not None:
        res["limits"] = limits
    if requests is not None:
        res["requests"] = requests
    return {"name": "c", "resources": res, **kw}


def _pod(
    containers: list[dict] | None = None,
    *,
    init: list[dict] | None = None,
    node: str = "",
    phase: str = "Pending",
    conditions: list[dict] | None = None,
    deleting: bool = False,
    created: datetime = NOW,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": "p",
        "namespace": "ml",
        "uid": "u-1",
        "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    spec: dict[str, Any] = {"containers": containers or [_container({"nvidia.com/mig-1g.10gb": "1"})]}
    if init:
        spec["initContainers"] = init
    if node:
        spec["nodeName"] = node
    return {"metadata": meta, "spec": spec, "status": {"phase": phase, "conditions": conditions or []}}


UNSCHEDULABLE = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (_pod([_container({"nvidia.com/mig-1g.10gb": "2", "cpu": "1"})]), {"nvidia.com/mig-1g.10gb": 2}),
        (_pod([_container(requests={"nvidia.com/mig-2g.20gb": 1})]), {"nvidia.com/mig-2g.20gb": 1}),
        (
            _pod([_container({"nvidia.com/mig-1g.10gb": "1"}), _container({"nvidia.com/mig-1g.10gb": "2"})]),
            {"nvidia.com/mig-1g.10gb": 3},
        ),
        (
            _pod(
                [_container({"nvidia.com/mig-1g.10gb": "1"})],
                init=[_container({"nvidia.com/mig-1g.10gb": "3"})],
            ),
            {"nvidia.com/mig-1g.10gb": 3},
        ),
        (
            _pod(
                [_container({"nvidia.com/mig-1g.10gb": "1"})],
                init=[_container({"nvidia.com/mig-1g.10gb": "1"}, restartPolicy="Always")],
            ),
            {"nvidia.com/mig-1g.10gb": 2},
        ),
        (_pod([_container({"cpu": "2", "nvidia.com/gpu": "1"})]), {}),
        (_pod([_container({"nvidia.com/mig-1g.10gb": "lots"})]), {}),
    ],
    ids=[
        "limits",
        "requests-only",
        "containers-sum",
        "init-bigger",
        "sidecar-adds",
        "no-mig",
        "bad-quantity",
    ],
)
def test_mig_requests(pod: dict[str, Any], expected: dict[str, int]) -> None:
    assert mig_requests(pod) == expected


@pytest.mark.parametrize(
    ("pod", "unbound", "bound"),
    [
        (_pod(), True, False),
        (_pod(node="n1"), False, True),
        (_pod(node="n1", phase="Running"), False, True),
        (_pod(node="n1", phase="Succeeded"), False, False),
        (_pod(deleting=True), False, False),
        (_pod(phase="Failed"), False, False),
        (_pod([_container({"cpu": "1"})]), False, False),
    ],
    ids=["pending", "bound", "running", "finished", "deleting", "failed-unbound", "no-mig"],
)
def test_unbound_and_bound(pod: dict[str, Any], unbound: bool, bound: bool) -> None:
    assert (is_unbound_mig_pod(pod), is_bound_mig_pod(pod)) == (unbound, bound)


def test_waiting_needs_unschedulable_or_the_grace() -> None:
    fresh = summarize_pod(_pod())
    stuck = summarize_pod(_pod(conditions=UNSCHEDULABLE))
    old = summarize_pod(_pod(created=NOW - timedelta(seconds=61)))
    assert is_unschedulable(_pod(conditions=UNSCHEDULABLE))
    assert not is_waiting(fresh, NOW, 60)
    assert is_waiting(stuck, NOW, 60)
    assert is_waiting(old, NOW, 60)  # a batch scheduler never says Unschedulable


def test_pending_entry_is_the_planner_io_shape() -> None:
    pod = _pod(conditions=UNSCHEDULABLE)
    pod["spec"].update(
        {
            "priority": 5,
            "nodeSelector": {"zone": "a"},
            "tolerations": [{"key": "gpu", "operator": "Exists"}],
            "affinity": {"nodeAffinity": {"x": 1}, "podAntiAffinity": {"y": 2}},
        }
    )
    assert pending_entry(summarize_pod(pod)) == {
        "name": "p",
        "namespace": "ml",
        "requests": {"nvidia.com/mig-1g.10gb": 1},
        "priority": 5,
        "nodeSelector": {"zone": "a"},
        "tolerations": [{"key": "gpu", "operator": "Exists"}],
        "affinity": {"nodeAffinity": {"x": 1}},
    }


def test_profile_counts_counts_pods_per_resource() -> None:
    a = {"requests": {"nvidia.com/mig-1g.10gb": 2}}
    b = {"requests": {"nvidia.com/mig-1g.10gb": 1, "nvidia.com/mig-7g.80gb": 1}}
    assert profile_counts([a, b]) == {"nvidia.com/mig-1g.10gb": 2, "nvidia.com/mig-7g.80gb": 1}
