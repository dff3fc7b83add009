"""The MigLayout CRD in crds/ agrees with cdmo.api and cdmo.mig, and is a valid Kubernetes object."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cdmo import api
from cdmo.mig.catalog import PROFILE_NAME_PATTERN, all_models

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "miglayouts.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def _version(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version


def _instance_schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema = _version(crd)["schema"]["openAPIV3Schema"]
    return schema["properties"]["spec"]["properties"]["gpus"]["items"]["properties"]["instances"]["items"]


def test_crd_names_match_cdmo_api(crd: dict[str, Any]) -> None:
    assert crd["metadata"]["name"] == f"{api.PLURAL}.{api.GROUP}"
    assert crd["spec"]["group"] == api.GROUP
    assert crd["spec"]["scope"] == "Cluster"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["singular"]) == (api.KIND, api.PLURAL, api.SINGULAR)
    assert tuple(names["shortNames"]) == api.SHORT_NAMES
    version = _version(crd)
    assert version["name"] == api.VERSION
    assert version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_crd_profile_pattern_is_the_catalog_pattern(crd: dict[str, Any]) -> None:
    assert _instance_schema(crd)["properties"]["profile"]["pattern"] == PROFILE_NAME_PATTERN


def test_every_catalog_profile_passes_the_crd_pattern(crd: dict[str, Any]) -> None:
    pattern = re.compile(_instance_schema(crd)["properties"]["profile"]["pattern"])
    limit = _instance_schema(crd)["properties"]["profile"]["maxLength"]
    names = {p.name for m in all_models() for p in m.profiles}
    assert names
    assert [n for n in sorted(names) if not pattern.match(n) or len(n) > limit] == []


def test_crd_limits_hold_every_catalog_layout(crd: dict[str, Any]) -> None:
    gpus = _version(crd)["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["gpus"]
    instances = gpus["items"]["properties"]["instances"]
    start = instances["items"]["properties"]["start"]
    assert max(m.max_instances for m in all_models()) <= instances["maxItems"]
    assert max(s for m in all_models() for p in m.profiles for s in p.starts) <= start["maximum"]


def test_crd_gpu_limits_are_cdmo_api_limits(crd: dict[str, Any]) -> None:
    # One cap for the whole project: a node the planner and the agent accept is one whose spec
    # the API server stores (a CRD of 16 once refused 17 GPUs that every other part took).
    gpus = _version(crd)["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["gpus"]
    assert gpus["maxItems"] == api.MAX_GPUS_PER_NODE
    assert gpus["items"]["properties"]["index"]["maximum"] == api.MAX_GPUS_PER_NODE - 1


#: sha256 of the CRD's spec (descriptions left out) at each schema revision. A schema change
#: needs a new revision: raise cdmo.api.SCHEMA_REVISION and the CRD's annotation together, and
#: add the new digest here. Operators then refuse the older CRD until it is applied.
SCHEMA_DIGESTS = {3: "8c304b646b5737d97a3f6eb21aad64e59ad3ea3d3f5c9ea8836e426bf46e9295"}


def _without_descriptions(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_descriptions(v) for k, v in value.items() if k != "description"}
    if isinstance(value, list):
        return [_without_descriptions(v) for v in value]
    return value


def test_crd_carries_the_schema_revision_cdmo_needs(crd: dict[str, Any]) -> None:
    assert crd["metadata"]["annotations"][api.SCHEMA_REVISION_ANNOTATION] == str(api.SCHEMA_REVISION)
    assert api.crd_problem(crd) is None


def test_a_schema_change_comes_with_a_new_revision(crd: dict[str, Any]) -> None:
    text = json.dumps(_without_descriptions(crd["spec"]), sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert SCHEMA_DIGESTS.get(api.SCHEMA_REVISION) == digest, (
        f"the CRD's schema changed: raise cdmo.api.SCHEMA_REVISION and the CRD's"
        f" {api.SCHEMA_REVISION_ANNOTATION} annotation, and add {digest} to SCHEMA_DIGESTS"
    )


def _with_revision(crd: dict[str, Any], value: str | None) -> dict[str, Any]:
    annotations = {} if value is None else {api.SCHEMA_REVISION_ANNOTATION: value}
    return {**crd, "metadata": {**crd["metadata"], "annotations": annotations}}


def test_crd_problem_says_what_is_wrong_and_what_to_apply(crd: dict[str, Any]) -> None:
    apply = "kubectl apply --server-side --force-conflicts -f helm/cdmo/crds/"
    missing = api.crd_problem(None)
    assert missing is not None and "not installed" in missing and apply in missing
    for value, said in ((None, "older than revision"), ("2", "revision 2,"), ("x", "older than revision")):
        problem = api.crd_problem(_with_revision(crd, value))
        assert problem is not None and said in problem and apply in problem, problem
    assert api.crd_problem(_with_revision(crd, str(api.SCHEMA_REVISION + 1))) is None
    unserved = {**crd, "spec": {**crd["spec"], "versions": [{**_version(crd), "served": False}]}}
    problem = api.crd_problem(unserved)
    assert problem is not None and f"does not serve {api.API_VERSION}" in problem


def test_crd_phase_enum_is_api_phase(crd: dict[str, Any]) -> None:
    status = _version(crd)["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["properties"]["phase"]["enum"] == [p.value for p in api.Phase]


def test_crd_printer_columns(crd: dict[str, Any]) -> None:
    columns = {c["name"]: c["jsonPath"] for c in _version(crd)["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["GPUs"] == ".status.gpus[*].model"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_crd_is_a_valid_kubernetes_object(crd: dict[str, Any]) -> None:
    # strict: unknown fields anywhere in the CRD manifest are refused
    kubernetes_validate.validate(crd, "1.30", strict=True)
