"""Version skew and upgrades: operator, agents and the installed CRD of different releases.

During a rolling upgrade the operator (Deployment) and the agents (DaemonSet, node by node) run
different releases, and the installed CRD is whichever `kubectl apply` last put there (Helm never
upgrades it). These tests drive the real agent and the real client against the API double, which
prunes and validates custom resources by the CRD it was given, as kube-apiserver does.

Where the double and a real API server may differ, the test name says so.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from cdmo.api import GROUP, PLURAL, VERSION, build_miglayout
from cdmo.config import AgentConfig
from cdmo.node_agent.agent import Agent
from cdmo.node_agent.kube import KubeClient
from cdmo.node_agent.refresh import NoRefresh
from cdmo.node_agent.simulated import SimulatedBackend, SimulatedNode
from tests.harness.kube_api import KubeApiDouble, kopf_peering_crds, load_crds
from tests.node.conftest import RETRY, NoPodResources, layout

NODE = "gpu-node-1"


def _miglayout_crd() -> dict[str, Any]:
    (crd,) = [c for c in load_crds() if c["spec"]["names"]["kind"] == "MigLayout"]
    return copy.deepcopy(crd)


def _gpu_item_schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    item: dict[str, Any] = schema["properties"]["spec"]["properties"]["gpus"]["items"]
    return item


def crd_before_instances_were_required() -> dict[str, Any]:
    """The MigLayout CRD as releases up to this fix shipped it: a GPU entry needed only ``index``."""
    crd = _miglayout_crd()
    _gpu_item_schema(crd)["required"] = ["index"]
    return crd


def _double(crd: dict[str, Any] | None = None) -> Iterator[KubeApiDouble]:
    crds = [crd if crd is not None else _miglayout_crd(), *kopf_peering_crds()]
    double = KubeApiDouble(crds=crds)
    double.start()
    try:
        yield double
    finally:
        double.stop()


@pytest.fixture
def api() -> Iterator[KubeApiDouble]:
    """The API double with this release's CRD."""
    yield from _double()


@pytest.fixture
def api_old_crd() -> Iterator[KubeApiDouble]:
    """The API double with the previous release's CRD (the upgrade's first step not yet done)."""
    yield from _double(crd_before_instances_were_required())


def _custom(api: KubeApiDouble) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(
        kubernetes.client.ApiClient(kubernetes.client.Configuration(host=api.url))
    )


def _agent(api: KubeApiDouble, backend: SimulatedBackend) -> Agent:
    conf = AgentConfig(node_name=NODE, resync_seconds=3600, watch_timeout_seconds=30)
    return Agent(
        conf, backend, KubeClient.for_host(api.url), NoRefresh(), pod_resources=NoPodResources(), retry=RETRY
    )


def _instances(backend: SimulatedBackend) -> list[str]:
    return [str(i.instance) for i in backend.list_instances(0)]


def _applied(api: KubeApiDouble) -> tuple[SimulatedBackend, Agent]:
    """A node whose agent has applied 4g.40gb@0 on GPU 0; nothing holds the instance."""
    _custom(api).create_cluster_custom_object(
        GROUP, VERSION, PLURAL, build_miglayout(NODE, {0: layout("4g.40gb@0")})
    )
    backend = SimulatedBackend(SimulatedNode.from_models(["h100-80gb"], seed=NODE))
    agent = _agent(api, backend)
    agent.sync_once()
    assert _instances(backend) == ["4g.40gb@0"]
    return backend, agent


#: ``kubectl patch --type merge`` with ``instance:`` for ``instances:``. Clients that do not ask
#: for strict field validation (kubectl patch, kubectl apply --validate=false, the Python client)
#: get the API server's default, fieldValidation=Warn: the unknown key is dropped with a warning.
MISSPELT = {"spec": {"gpus": [{"index": 0, "instance": [{"profile": "4g.40gb", "start": 0}]}]}}


def test_a_misspelt_instances_key_is_refused_not_pruned_into_an_empty_gpu(api: KubeApiDouble) -> None:
    """Pruned, ``{index: 0}`` read as "GPU 0 holds nothing", and every free instance on it went.

    The double prunes as a real server does with fieldValidation Warn or Ignore (the default for
    clients that do not ask for Strict); with the CRD requiring ``instances`` the pruned object
    fails validation (422), as on a real server, which validates after pruning.
    """
    backend, agent = _applied(api)
    with pytest.raises(ApiException) as err:
        _custom(api).patch_cluster_custom_object(GROUP, VERSION, PLURAL, NODE, MISSPELT)
    assert err.value.status == 422
    causes = json.loads(err.value.body)["details"]["causes"]
    assert any("instances" in c["field"] or "instances" in c["message"] for c in causes), causes
    agent.sync_once()
    assert _instances(backend) == ["4g.40gb@0"]


def test_a_new_agent_under_the_old_crd_refuses_a_gpu_without_instances(api_old_crd: KubeApiDouble) -> None:
    """The upgrade's CRD step not yet done: the old CRD keeps the pruned ``{index: 0}``; the new
    agent refuses that spec (InvalidSpec) and changes nothing, instead of emptying GPU 0."""
    backend, agent = _applied(api_old_crd)
    patched = _custom(api_old_crd).patch_cluster_custom_object(GROUP, VERSION, PLURAL, NODE, MISSPELT)
    assert patched["spec"] == {"gpus": [{"index": 0}]}  # what the old CRD lets through
    outcome = agent.sync_once()
    assert _instances(backend) == ["4g.40gb@0"]
    assert outcome.status is not None and outcome.status["phase"] == "Error"
    assert "spec.gpus[0].instances" in outcome.status["lastError"]


def test_the_upgrade_docs_check_for_the_new_crd_reads_what_this_crd_holds() -> None:
    """docs/upgrading.md tells how to see that step 1 put this release's CRD in: its jsonpath,
    walked over crds/miglayouts.yaml, gives what the doc says it prints (kubectl itself not run)."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "upgrading.md").read_text()
    m = re.search(r"-o jsonpath='\{\.(spec\.versions\[0\][^}]*\.required)\}", doc)
    assert m is not None, "docs/upgrading.md lost its check of the installed CRD"
    node: Any = _miglayout_crd()
    for part in m.group(1).split("."):
        name, _, index = part.partition("[")
        node = node[name]
        if index:
            node = node[int(index.rstrip("]"))]
    assert json.dumps(node, separators=(",", ":")) == '["index","instances"]'
    assert '# ["index","instances"]' in doc
    old = crd_before_instances_were_required()
    assert _gpu_item_schema(old)["required"] == ["index"]
