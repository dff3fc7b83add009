"""Why a pod waits: one stable code and one sentence that says what to do."""

from __future__ import annotations

import pytest

from cdmo.planner import parse_snapshot, plan

from .conftest import gpu, load_fixture, node, pod

REASONS = [
    ("default/big", "NoRoom", "every eligible GPU holds used instances that leave no room for 7g.80gb"),
    ("default/zone-b", "NoMatchingNode", "no labelled node matches nodeSelector zone=b"),
    ("default/zone-c", "NodeCordoned", "node gpu-3 is cordoned; uncordon it (kubectl uncordon gpu-3)"),
    ("default/odd", "UnknownProfile", "9g.99gb is not a MIG profile of any GPU model in this cluster"),
    (
        "default/reserved",
        "TaintNotTolerated",
        "gpu-2 (dedicated=ml:NoSchedule); add a toleration or remove the taint",
    ),
    (
        "default/a100-only",
        "NoFittingGpu",
        "no eligible node has a GPU that offers 3g.20gb (eligible: gpu-1 with h100-80gb)",
    ),
    ("default/cpu-only", "NoMigRequest", "asks for no nvidia.com/mig-* resource"),
]


@pytest.mark.parametrize(("pod_key", "code", "text"), REASONS, ids=[r[1] for r in REASONS])
def test_reason_of_each_waiting_pod(pod_key: str, code: str, text: str) -> None:
    result = plan(parse_snapshot(load_fixture("reasons.yaml")))
    u = result.unsatisfied_pod(pod_key)
    assert u is not None
    assert u.code == code
    assert text in u.reason


def test_the_only_servable_pod_of_the_reasons_fixture_is_served() -> None:
    result = plan(parse_snapshot(load_fixture("reasons.yaml")))
    assert [a.pod for a in result.assignments] == ["default/small"]


def _reason(data: dict) -> tuple[str, str]:
    (u,) = plan(parse_snapshot(data)).unsatisfied
    return u.code, u.reason


def test_outranked_names_the_nodes() -> None:
    code, reason = _reason(
        {"nodes": [node("gpu-7", gpu(0))], "pending": [pod("a", "7g.80gb", priority=1), pod("b", "4g.40gb")]}
    )
    assert code == "Outranked"
    assert reason.startswith(
        "pods of higher priority take the room left for 4g.40gb on its eligible nodes (gpu-7)"
    )


def test_same_priority_competition() -> None:
    code, reason = _reason(
        {"nodes": [node("gpu-7", gpu(0))], "pending": [pod("a", "7g.80gb"), pod("b", "4g.40gb")]}
    )
    assert code == "NoRoomLeft" and "other pods of this plan take the room left for" in reason


def test_demand_bigger_than_any_node() -> None:
    code, reason = _reason({"nodes": [node("gpu-1", gpu(0))], "pending": [pod("a", "7g.80gb", "7g.80gb")]})
    assert code == "NoFittingGpu"
    assert "2 x 7g.80gb does not fit on any eligible node even with all its GPUs empty" in reason


def test_profile_of_another_model_says_which() -> None:
    code, reason = _reason({"nodes": [node("gpu-1", gpu(0))], "pending": [pod("a", "1g.5gb")]})
    assert code == "UnknownProfile"
    assert (
        "1g.5gb is not a MIG profile of any GPU model in this cluster (it is a profile of a100-40gb)"
        in reason
    )


def test_no_labelled_node_says_how_to_label_one() -> None:
    code, reason = _reason(
        {"nodes": [node("gpu-1", gpu(0), labelled=False)], "pending": [pod("a", "1g.10gb")]}
    )
    assert code == "NoLabelledNode" and "kubectl label node NODE cdmo.clear.ml/gpu-partitioning=mig" in reason


def test_affinity_mismatch_quotes_the_terms() -> None:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "rack", "operator": "Gt", "values": ["4"]}]}
                ]
            }
        }
    }
    data = {
        "nodes": [node("gpu-1", gpu(0), labels={"rack": "2"})],
        "pending": [pod("a", "1g.10gb", affinity=affinity)],
    }
    code, reason = _reason(data)
    assert code == "NoMatchingNode" and "matches the pod's required node affinity (rack Gt 4)" in reason


def test_several_cordoned_nodes() -> None:
    data = {
        "nodes": [node("gpu-1", gpu(0), unschedulable=True), node("gpu-2", gpu(0), unschedulable=True)],
        "pending": [pod("a", "1g.10gb")],
    }
    assert _reason(data) == (
        "NodeCordoned",
        "nodes gpu-1 and gpu-2 are cordoned; uncordon one (kubectl uncordon NODE) or let the pod match another "
        "labelled node",
    )


def test_eligible_nodes_with_only_unknown_models() -> None:
    data = {
        "nodes": [node("gpu-1", gpu(0, "NVIDIA Tesla T4")), node("gpu-2", gpu(0), labels={"zone": "x"})],
        "pending": [
            pod(
                "a",
                "1g.10gb",
                nodeSelector={"cdmo.clear.ml/gpu-partitioning": "mig"},
                affinity={
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}
                            ]
                        }
                    }
                },
            )
        ],
    }
    (u,) = plan(parse_snapshot(data, allow_unknown_models=True)).unsatisfied
    assert u.code == "NoFittingGpu" and "have no GPU of a model cdmo knows" in u.reason


def test_a_pod_asking_for_zero_devices_is_told_so() -> None:
    """It was told it asks for no nvidia.com/mig-* resource, although it names one."""
    code, reason = _reason(
        {"nodes": [], "pending": [{"name": "p", "requests": {"nvidia.com/mig-1g.10gb": 0}}]}
    )
    assert code == "NoMigRequest" and "asks for 0 of nvidia.com/mig-1g.10gb" in reason
