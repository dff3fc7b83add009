"""The scheduler's filters as the planner applies them: selectors, required affinity, taints, cordons."""

from __future__ import annotations

from typing import Any

import pytest

from cdmo.planner import (
    Node,
    NodeSelectorRequirement,
    NodeSelectorTerm,
    PendingPod,
    Taint,
    Toleration,
    parse_snapshot,
)
from cdmo.planner.eligibility import (
    matches_affinity,
    matches_requirement,
    node_admits,
    tolerates,
    untolerated_taints,
)

LABELS = {
    "zone": "a",
    "rack": "7",
    "gpu": "h100",
    "word": "seven",
    "arabic": "\u0663",  # ARABIC-INDIC DIGIT THREE: int() reads 3, Kubernetes' ParseInt nothing
    "spaced": " 7 ",
    "grouped": "1_000",
    "plus": "+7",
    "huge": "9223372036854775808",  # 2^63: past int64
}

REQUIREMENTS = [
    ("In hit", "zone", "In", ("a", "b"), True),
    ("In miss", "zone", "In", ("b",), False),
    ("In absent", "row", "In", ("a",), False),
    ("NotIn hit", "zone", "NotIn", ("b",), True),
    ("NotIn miss", "zone", "NotIn", ("a",), False),
    ("NotIn absent key matches", "row", "NotIn", ("a",), True),
    ("Exists", "rack", "Exists", (), True),
    ("Exists absent", "row", "Exists", (), False),
    ("DoesNotExist", "row", "DoesNotExist", (), True),
    ("DoesNotExist present", "rack", "DoesNotExist", (), False),
    ("Gt hit", "rack", "Gt", ("4",), True),
    ("Gt equal is not greater", "rack", "Gt", ("7",), False),
    ("Gt negative bound", "rack", "Gt", ("-1",), True),
    ("Lt hit", "rack", "Lt", ("10",), True),
    ("Lt miss", "rack", "Lt", ("7",), False),
    ("Gt absent", "row", "Gt", ("1",), False),
    ("Gt on a word", "word", "Gt", ("1",), False),
    ("Lt on a word", "word", "Lt", ("100",), False),
    # Kubernetes reads Gt and Lt with strconv.ParseInt(s, 10, 64): a sign and ASCII digits only
    ("Gt on other digits", "arabic", "Gt", ("1",), False),
    ("Gt with other digits as the bound", "rack", "Gt", ("\u0663",), False),
    ("Gt on spaces", "spaced", "Gt", ("1",), False),
    ("Gt on underscores", "grouped", "Gt", ("1",), False),
    ("Gt on a plus sign", "plus", "Gt", ("6",), True),
    ("Gt past int64", "huge", "Gt", ("1",), False),
]


@pytest.mark.parametrize(
    ("key", "op", "values", "expected"), [r[1:] for r in REQUIREMENTS], ids=[r[0] for r in REQUIREMENTS]
)
def test_requirement(key: str, op: str, values: tuple[str, ...], expected: bool) -> None:
    assert matches_requirement(NodeSelectorRequirement(key, op, values), LABELS) is expected


def _term(
    *reqs: tuple[str, str, tuple[str, ...]], fields: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
) -> NodeSelectorTerm:
    return NodeSelectorTerm(
        tuple(NodeSelectorRequirement(*r) for r in reqs), tuple(NodeSelectorRequirement(*f) for f in fields)
    )


def test_terms_are_ored_and_requirements_anded() -> None:
    both = _term(("zone", "In", ("a",)), ("rack", "Gt", ("8",)))
    either = (_term(("zone", "In", ("b",))), _term(("gpu", "Exists", ())))
    assert not matches_affinity((both,), LABELS, "n")
    assert matches_affinity(either, LABELS, "n")
    assert matches_affinity(None, LABELS, "n")


def test_empty_term_matches_no_node() -> None:
    assert not matches_affinity((NodeSelectorTerm(),), LABELS, "n")


def test_match_fields_select_the_node_name() -> None:
    term = _term(fields=(("metadata.name", "In", ("gpu-1",)),))
    assert matches_affinity((term,), {}, "gpu-1")
    assert not matches_affinity((term,), {}, "gpu-2")


TOLERATIONS = [
    ("Equal matches key, value and effect", Toleration("dedicated", "Equal", "ml", "NoSchedule"), True),
    ("Equal with another value", Toleration("dedicated", "Equal", "batch", "NoSchedule"), False),
    ("Equal with another effect", Toleration("dedicated", "Equal", "ml", "NoExecute"), False),
    ("Equal without effect matches every effect", Toleration("dedicated", "Equal", "ml"), True),
    ("Exists on the key", Toleration("dedicated", "Exists"), True),
    ("Exists on another key", Toleration("gpu", "Exists"), False),
    ("Exists with empty key tolerates everything", Toleration("", "Exists"), True),
    ("Exists with empty key but another effect", Toleration("", "Exists", effect="NoExecute"), False),
]


@pytest.mark.parametrize(("tol", "expected"), [t[1:] for t in TOLERATIONS], ids=[t[0] for t in TOLERATIONS])
def test_toleration(tol: Toleration, expected: bool) -> None:
    assert tolerates(tol, Taint("dedicated", "NoSchedule", "ml")) is expected


def test_no_execute_blocks_and_prefer_no_schedule_does_not() -> None:
    taints = (Taint("a", "NoExecute", "x"), Taint("b", "PreferNoSchedule", "y"), Taint("c", "NoSchedule"))
    assert untolerated_taints(taints, ()) == (taints[0], taints[2])
    assert untolerated_taints(taints, (Toleration("a", "Equal", "x", "NoExecute"),)) == (taints[2],)
    assert untolerated_taints(taints, (Toleration("", "Exists"),)) == ()


def _node(**kw: Any) -> Node:
    return Node(name="gpu-1", labels={"zone": "a", "cdmo.clear.ml/gpu-partitioning": "mig"}, **kw)


def test_cordoned_node_admits_no_pod_even_one_that_tolerates_everything() -> None:
    pod = PendingPod(name="p", tolerations=(Toleration("", "Exists"),))
    assert node_admits(_node(), pod)
    assert not node_admits(_node(unschedulable=True), pod)


def test_node_selector_needs_every_pair() -> None:
    assert node_admits(_node(), PendingPod(name="p", node_selector={"zone": "a"}))
    assert not node_admits(_node(), PendingPod(name="p", node_selector={"zone": "a", "rack": "1"}))


def test_planner_honours_each_filter_end_to_end() -> None:
    """Four nodes, each failing one filter but one; the pod lands on the one that passes them all."""
    lab = {"cdmo.clear.ml/gpu-partitioning": "mig"}
    data = {
        "nodes": [
            {
                "name": "a-wrong-zone",
                "labels": {**lab, "zone": "b", "rack": "9"},
                "gpus": [{"index": 0, "model": "h100-80gb"}],
            },
            {
                "name": "b-low-rack",
                "labels": {**lab, "zone": "a", "rack": "2"},
                "gpus": [{"index": 0, "model": "h100-80gb"}],
            },
            {
                "name": "c-tainted",
                "labels": {**lab, "zone": "a", "rack": "9"},
                "taints": [{"key": "x", "effect": "NoExecute"}],
                "gpus": [{"index": 0, "model": "h100-80gb"}],
            },
            {
                "name": "d-cordoned",
                "labels": {**lab, "zone": "a", "rack": "9"},
                "unschedulable": True,
                "gpus": [{"index": 0, "model": "h100-80gb"}],
            },
            {
                "name": "e-right",
                "labels": {**lab, "zone": "a", "rack": "9"},
                "gpus": [{"index": 0, "model": "h100-80gb"}],
            },
        ],
        "pending": [
            {
                "name": "p",
                "requests": {"nvidia.com/mig-1g.10gb": 1},
                "nodeSelector": {"zone": "a"},
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchExpressions": [{"key": "rack", "operator": "Gt", "values": ["4"]}]}
                            ]
                        }
                    }
                },
                "tolerations": [{"key": "y", "operator": "Exists"}],
            }
        ],
    }
    from cdmo.planner import plan

    result = plan(parse_snapshot(data))
    assert [a.node for a in result.assignments] == ["e-right"]
