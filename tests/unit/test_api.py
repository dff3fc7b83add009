from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cdmo.api import build_miglayout, build_spec, get_condition, parse_spec, set_condition
from cdmo.errors import InvalidLayout
from cdmo.mig.layouts import Instance

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
T1 = datetime(2026, 1, 1, 12, 5, tzinfo=UTC)


def test_spec_round_trips_in_canonical_order() -> None:
    layouts = {1: [Instance("3g.40gb", 4), Instance("1g.10gb", 0)], 0: []}
    spec = build_spec(layouts)
    assert spec == {
        "gpus": [
            {"index": 0, "instances": []},
            {
                "index": 1,
                "instances": [{"profile": "1g.10gb", "start": 0}, {"profile": "3g.40gb", "start": 4}],
            },
        ]
    }
    assert parse_spec(spec) == {0: (), 1: (Instance("1g.10gb", 0), Instance("3g.40gb", 4))}


def test_build_miglayout_names_the_object_after_the_node() -> None:
    obj = build_miglayout("gpu-node-1", {0: [Instance("7g.80gb", 0)]})
    assert obj["apiVersion"] == "cdmo.clear.ml/v1alpha1"
    assert obj["kind"] == "MigLayout"
    assert obj["metadata"]["name"] == "gpu-node-1"
    assert obj["spec"]["gpus"][0]["instances"] == [{"profile": "7g.80gb", "start": 0}]


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"gpus": [{"index": -1}]}, "spec.gpus[0].index"),
        # the CRD's maximum (MAX_GPUS_PER_NODE - 1): a file must not hold what the API server refuses
        ({"gpus": [{"index": 64, "instances": []}]}, "spec.gpus[0].index"),
        ({"gpus": [{"index": 0, "instances": []}, {"index": 0, "instances": []}]}, "spec.gpus[1].index"),
        ({"gpus": [{"index": 0}]}, "spec.gpus[0].instances"),
        ({"gpus": [{"index": 0, "instances": None}]}, "spec.gpus[0].instances"),
        (
            {"gpus": [{"index": 0, "instances": [{"profile": "big", "start": 0}]}]},
            "spec.gpus[0].instances[0].profile",
        ),
        (
            {"gpus": [{"index": 0, "instances": [{"profile": "1g.10gb", "start": -2}]}]},
            "spec.gpus[0].instances[0].start",
        ),
        ({"gpus": "all"}, "spec.gpus"),
    ],
)
def test_parse_spec_names_the_bad_field(spec: dict, path: str) -> None:
    with pytest.raises(InvalidLayout, match=path.replace("[", r"\[").replace("]", r"\]")):
        parse_spec(spec)


def test_set_condition_moves_transition_time_only_on_a_flip() -> None:
    conds = set_condition([], "Applied", "False", "Applying", "creating", T0, 1)
    assert conds[0]["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    same = set_condition(conds, "Applied", "False", "Blocked", "in use", T1, 2)
    assert same[0]["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    assert same[0]["reason"] == "Blocked" and same[0]["observedGeneration"] == 2
    flipped = set_condition(same, "Applied", "True", "Applied", "done", T1, 2)
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T12:05:00Z"
    both = set_condition(flipped, "MigModeEnabled", "True", "Enabled", "ok", T1)
    assert [c["type"] for c in both] == ["Applied", "MigModeEnabled"]
    assert get_condition(both, "MigModeEnabled")["status"] == "True"
    assert get_condition(both, "Nope") is None


def test_unknown_spec_fields_are_refused_in_files_and_ignored_from_the_api_server() -> None:
    """A file's typo must not read as an empty GPU; a newer CRD's field must not stop an older agent."""
    from cdmo.api import parse_spec
    from cdmo.errors import InvalidLayout

    spec = {"gpus": [{"index": 0, "instances": [{"profile": "3g.40gb", "start": 0, "new": 1}], "also": 2}]}
    assert [str(i) for i in parse_spec(spec)[0]] == ["3g.40gb@0"]
    with pytest.raises(InvalidLayout, match="unknown field 'also'"):
        parse_spec(spec, strict=True)
    with pytest.raises(InvalidLayout, match="unknown field 'instance'"):
        parse_spec({"gpus": [{"index": 0, "instance": []}]}, strict=True)


def test_a_gpu_without_instances_is_refused_not_read_as_empty() -> None:
    """``{index: 0}`` is what the API server keeps of ``instance:`` misspelt (it prunes unknown
    keys): read as an empty GPU, the agent destroyed every free instance on it. From the API
    server and from files alike it is refused; ``instances: []`` still empties a GPU."""
    for strict in (False, True):
        with pytest.raises(InvalidLayout, match=r"spec\.gpus\[0\]\.instances: missing"):
            parse_spec({"gpus": [{"index": 0}]}, strict=strict)
        assert parse_spec({"gpus": [{"index": 0, "instances": []}]}, strict=strict) == {0: ()}
    # Non-strict (from the API server): the misspelt key is ignored, and the missing one refused.
    with pytest.raises(InvalidLayout, match="instances: missing"):
        parse_spec({"gpus": [{"index": 0, "instance": [{"profile": "1g.10gb", "start": 0}]}]})
