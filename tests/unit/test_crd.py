"""The MigLayout CRD in crds/ agrees with cdmo.api and cdmo.mig, and is a valid Kubernetes object."""

from __future__ import annotations

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
