"""One odd MigLayout never stops the planning of the other nodes (real operator, API double).

Each test has a node whose MigLayout holds something the operator cannot use (written here by
hand, as an older, foreign or broken agent might write it; the CRD lets it through), and a normal
node with a real agent. The pod must still run on the normal node, and the odd node is told why
it is left out.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness.e2e import Harness
from tests.harness.kube_api import Store

PLURAL = "miglayouts"


def _wait_created(harness: Harness, name: str) -> None:
    def created(store: Store) -> bool:
        return store.get(store.type_of(PLURAL), None, name) is not None

    harness.api.wait_for(created, 30, f"the operator did not create MigLayout {name}")


def _write_status(harness: Harness, name: str, gpus: list[dict[str, Any]]) -> None:
    ml = harness.api.get(PLURAL, name)
    assert ml is not None
    status = {"observedGeneration": ml["metadata"]["generation"], "gpus": gpus}
    harness.api.patch(PLURAL, name, {"status": status}, subresource="status")


@pytest.mark.parametrize("with_spec", [False, True], ids=["bootstrap", "planned"])
def test_a_status_instance_without_start_leaves_only_its_node_out(harness: Harness, with_spec: bool) -> None:
    # The CRD does not require status.gpus[].instances[].start: the API server accepts such a
    # report. The operator read it with int(i["start"]), and a KeyError failed every pass.
    harness.add_node("gpu-good")
    harness.add_node("gpu-odd", agent=False)
    harness.start_operator()
    _wait_created(harness, "gpu-odd")
    if with_spec:
        harness.api.patch(PLURAL, "gpu-odd", {"spec": {"gpus": [{"index": 0, "instances": []}]}})
    _write_status(
        harness,
        "gpu-odd",
        [{"index": 0, "model": "h100-80gb", "migEnabled": True, "instances": [{"profile": "1g.10gb"}]}],
    )

    key = harness.submit("job", {"1g.10gb": 1})
    harness.wait_running([key], timeout=60)
    pod = harness.pod(key)
    assert pod is not None and pod["spec"]["nodeName"] == "gpu-good"
    harness.wait_event("gpu-odd", "UnreadableStatus")


def test_a_spec_the_api_server_refuses_leaves_only_its_node_out(harness: Harness) -> None:
    # A report of GPU index 64: adopting it as spec breaks the CRD's index maximum 63, so the API
    # server answers 422 Invalid. That ApiException used to fail every pass, for every node.
    harness.add_node("gpu-good")
    harness.add_node("gpu-odd", agent=False)
    harness.start_operator()
    _wait_created(harness, "gpu-odd")
    _write_status(
        harness,
        "gpu-odd",
        [{"index": 64, "model": "h100-80gb", "migEnabled": True, "instances": []}],
    )

    key = harness.submit("job", {"1g.10gb": 1})
    harness.wait_running([key], timeout=60)
    pod = harness.pod(key)
    assert pod is not None and pod["spec"]["nodeName"] == "gpu-good"
    harness.wait_event("gpu-odd", "SpecRefused")
    ml = harness.api.get(PLURAL, "gpu-odd")
    assert ml is not None and "gpus" not in (ml.get("spec") or {})


def _owners(harness: Harness, name: str) -> list[dict[str, Any]]:
    ml = harness.api.get(PLURAL, name)
    assert ml is not None
    return list(ml["metadata"].get("ownerReferences") or [])


def _node_owner(harness: Harness, name: str) -> list[dict[str, Any]]:
    node = harness.api.get("nodes", name)
    assert node is not None
    return [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}]


def test_a_miglayout_is_owned_by_its_node_so_the_garbage_collector_removes_it_with_the_node(
    harness: Harness,
) -> None:
    # The double has no garbage collector; kube-apiserver's deletes a dependent whose owner (by
    # uid) is gone. Without an owner, the MigLayout of every node an autoscaler ever removed stayed,
    # each with a kopf daemon in the operator; and a node re-created under its name (new uid)
    # inherited the old node's spec instead of adopting what its GPUs hold.
    harness.add_node("gpu-new", agent=False)
    # one made by an older operator, without an owner: the operator adds it
    harness.add_node("gpu-old", agent=False)
    harness.api.create(
        {
            "apiVersion": "cdmo.clear.ml/v1alpha1",
            "kind": "MigLayout",
            "metadata": {"name": "gpu-old", "labels": {"app.kubernetes.io/managed-by": "cdmo"}},
            "spec": {},
        }
    )
    harness.start_operator()
    _wait_created(harness, "gpu-new")

    def owned(store: Store) -> bool:
        rtype = store.type_of(PLURAL)
        mls = [store.get(rtype, None, n) for n in ("gpu-new", "gpu-old")]
        return all(ml is not None and ml["metadata"].get("ownerReferences") for ml in mls)

    harness.api.wait_for(owned, 30, "the MigLayouts got no owner")
    assert _owners(harness, "gpu-new") == _node_owner(harness, "gpu-new")
    assert _owners(harness, "gpu-old") == _node_owner(harness, "gpu-old")


def test_a_node_holding_an_instance_the_catalog_lacks_is_left_out_and_told(harness: Harness) -> None:
    # The agent now reports instances of profiles its catalog lacks (made with nvidia-smi, say:
    # they take space and may be held). The planner cannot place such a GPU's layout, so the
    # node is left out; that was a log line without the reason, and no Event.
    harness.add_node("gpu-good")
    harness.add_node("gpu-odd", agent=False)
    harness.start_operator()
    _wait_created(harness, "gpu-odd")
    harness.api.patch(PLURAL, "gpu-odd", {"spec": {"gpus": [{"index": 0, "instances": []}]}})
    _write_status(
        harness,
        "gpu-odd",
        [
            {
                "index": 0,
                "model": "h100-80gb",
                "migEnabled": True,
                "instances": [{"profile": "2g.20gb+me", "start": 0, "used": False}],
            }
        ],
    )

    key = harness.submit("job", {"1g.10gb": 1})
    harness.wait_running([key], timeout=60)
    pod = harness.pod(key)
    assert pod is not None and pod["spec"]["nodeName"] == "gpu-good"
    event = harness.wait_event("gpu-odd", "UnplannableNode")
    assert "2g.20gb+me is not a MIG profile of h100-80gb" in str(event)
