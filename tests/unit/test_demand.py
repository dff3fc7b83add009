"""A pod spec's device demand (cdmo.demand): the one reader the operator and the agent share."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdmo.demand import MAX_COUNT, BadCount, PodDemand, parse_count, read_demand
from cdmo.node_agent.inuse import MAX_RESERVATIONS_PER_POD
from cdmo.node_agent.inuse import mig_requests as agent_requests
from cdmo.operator.demand import mig_requests as operator_requests

R1 = "nvidia.com/mig-1g.10gb"
R3 = "nvidia.com/mig-3g.40gb"
SHARED = "nvidia.com/mig-1g.10gb.shared"


def container(name: str, limits: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "resources": {}}
    if limits is not None:
        c["resources"]["limits"] = limits
    if "requests" in extra:
        c["resources"]["requests"] = extra.pop("requests")
    c.update(extra)
    return c


def pod(*containers: dict[str, Any], init: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": list(containers)}
    if init is not None:
        spec["initContainers"] = init
    return {"metadata": {"name": "p", "namespace": "ml"}, "spec": spec}


COUNTS = [
    ("int", 2, 2),
    ("string", "2", 2),
    ("spaces", " 3 ", 3),
    ("plus sign", "+4", 4),
    ("zero", "0", 0),
    ("kilo", "1k", 1000),
    ("exponent", "2e3", 2000),
    ("decimal exponent", "1.5e1", 15),
    ("milli whole", "2000m", 2),
    ("binary", "1Ki", 1024),
    ("float whole", 3.0, 3),
    ("int64 max", str(MAX_COUNT), MAX_COUNT),
    ("negative zero", "-0", 0),
]


@pytest.mark.parametrize(("value", "count"), [c[1:] for c in COUNTS], ids=[c[0] for c in COUNTS])
def test_counts_are_kubernetes_quantities(value: object, count: int) -> None:
    assert parse_count(value) == (count, "")


BAD = [
    ("negative", "-1", "negative"),
    ("negative int", -2, "negative"),
    ("fraction", "1.5", "whole number"),
    ("milli fraction", "1500m", "whole number"),
    ("float fraction", 0.5, "whole number"),
    ("nan", float("nan"), "finite"),
    ("words", "two", "Kubernetes quantity"),
    ("boolean", True, "boolean"),
    ("list", [1], "not list"),
    ("beyond 64 bits", 2**70, "more than Kubernetes can count"),
    ("beyond 64 bits text", "99999999999999999999", "more than Kubernetes can count"),
    ("huge exponent", "1e999999999", "more than Kubernetes can count"),
    ("tiny exponent", "1e-999999999", "whole number"),
    ("exa", "10E", "more than Kubernetes can count"),
    ("very long", "1" * 5000, "longer than 64"),
]


@pytest.mark.parametrize(("value", "needle"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_counts_are_a_reason_never_an_exception(value: object, needle: str) -> None:
    count, reason = parse_count(value)
    assert count is None
    assert needle in reason


@given(st.integers(min_value=-(2**80), max_value=2**80))
def test_every_integer_is_a_count_or_a_reason(n: int) -> None:
    for value in (n, str(n)):
        count, reason = parse_count(value)
        if 0 <= n <= MAX_COUNT:
            assert (count, reason) == (n, "")
        else:
            assert count is None and reason


@given(st.text(max_size=80))
def test_any_text_is_a_count_or_a_reason(text: str) -> None:
    count, reason = parse_count(text)
    assert (count is None) != (reason == "")
    assert count is None or 0 <= count <= MAX_COUNT


DEMANDS = [
    ("one container", pod(container("a", {R1: 2})), {R1: 2}),
    ("containers summed", pod(container("a", {R1: 1}), container("b", {R1: "2", R3: 1})), {R1: 3, R3: 1}),
    ("requests when no limits", pod(container("a", requests={R1: 1})), {R1: 1}),
    ("limits win over requests", pod(container("a", {R1: 2}, requests={R1: 1})), {R1: 2}),
    ("cpu ignored", pod(container("a", {"cpu": "2", "nvidia.com/gpu": 1})), {}),
    ("init larger than app", pod(container("a", {R1: 1}), init=[container("i", {R1: 3})]), {R1: 3}),
    ("init smaller than app", pod(container("a", {R1: 2}), init=[container("i", {R1: 1})]), {R1: 2}),
    (
        "plain inits maxed, not summed",
        pod(container("a"), init=[container("i", {R1: 2}), container("j", {R1: 2})]),
        {R1: 2},
    ),
    (
        "native sidecar adds to the app",
        pod(container("a", {R1: 1}), init=[container("s", {R1: 1}, restartPolicy="Always")]),
        {R1: 2},
    ),
    (
        "init after a sidecar runs beside it",
        pod(
            container("a"),
            init=[container("s", {R1: 1}, restartPolicy="Always"), container("i", {R1: 2})],
        ),
        {R1: 3},
    ),
    (
        "init before a sidecar runs alone",
        pod(
            container("a"),
            init=[container("i", {R1: 2}), container("s", {R1: 1}, restartPolicy="Always")],
        ),
        {R1: 2},
    ),
    ("shared name kept as asked", pod(container("a", {SHARED: 1})), {SHARED: 1}),
    ("no spec", {"metadata": {}}, {}),
    ("spec of the wrong type", {"spec": ["x"]}, {}),
    ("containers of the wrong type", {"spec": {"containers": "x"}}, {}),
    ("resources of the wrong type", pod({"name": "a", "resources": "x"}), {}),
]


@pytest.mark.parametrize(("body", "expected"), [d[1:] for d in DEMANDS], ids=[d[0] for d in DEMANDS])
def test_demand_is_counted_as_the_kubelet_counts(body: dict[str, Any], expected: dict[str, int]) -> None:
    demand = read_demand(body)
    assert dict(demand.requests) == expected
    assert demand.bad == ()


def test_bad_values_are_named_with_container_and_reason() -> None:
    demand = read_demand(pod(container("main", {R1: "1.5", R3: 1}), container("side", {R1: "-1"})))
    assert dict(demand.requests) == {R3: 1}
    assert demand.bad == (
        BadCount(R1, "main", "'1.5'", "a count of devices must be a whole number"),
        BadCount(R1, "side", "'-1'", "a count of devices cannot be negative"),
    )
    assert (
        str(demand.bad[0]) == f"container main asks for '1.5' {R1}: a count of devices must be a whole number"
    )


def test_shared_names_count_for_their_profile() -> None:
    demand = PodDemand({R1: 1, SHARED: 2, "nvidia.com/mig-bogus": 1})
    assert demand.by_profile() == {"1g.10gb": 3}
    assert demand.unknown_resources() == ("nvidia.com/mig-bogus",)
    assert demand.total == 4


SIDECAR_POD = pod(
    container("app", {R1: 1}),
    init=[container("proxy", {R1: 1}, restartPolicy="Always"), container("setup", {R1: 1})],
)


def test_operator_and_agent_agree_on_a_native_sidecar_pod() -> None:
    # Issue 10: the agent counted this pod as 1 device and destroyed the instance it was about to get.
    assert operator_requests(SIDECAR_POD) == {R1: 2}
    assert agent_requests(SIDECAR_POD) == {"1g.10gb": 2}


def test_agent_caps_huge_counts_and_reserves_one_for_a_bad_value() -> None:
    huge = pod(container("a", {R1: str(10**12)}))
    assert agent_requests(huge) == {"1g.10gb": MAX_RESERVATIONS_PER_POD}
    beyond = pod(container("a", {SHARED: str(2**70)}))
    assert agent_requests(beyond) == {"1g.10gb": MAX_RESERVATIONS_PER_POD}
    assert read_demand(beyond).bad[0].too_big
    assert agent_requests(pod(container("a", {R3: "lots"}))) == {"3g.40gb": 1}


def test_operator_tells_a_pod_with_a_bad_count_why_and_plans_the_others() -> None:
    from cdmo.operator.demand import is_unbound_mig_pod, summarize_pod
    from cdmo.operator.snapshot import screen_pods

    bad = pod(container("main", {R1: "1.5"}))
    good = pod(container("main", {R1: "1"}))
    good["metadata"]["name"] = "q"
    assert is_unbound_mig_pod(bad)  # seen by the operator, so that it gets an Event
    ok, rejected = screen_pods([summarize_pod(bad), summarize_pod(good)])
    assert [p["key"] for p in ok] == ["ml/q"]
    assert [(r.pod["key"], r.code) for r in rejected] == [("ml/p", "InvalidCount")]
    assert "container main asks for '1.5' nvidia.com/mig-1g.10gb" in rejected[0].message
