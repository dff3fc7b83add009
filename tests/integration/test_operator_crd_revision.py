"""The operator checks the installed MigLayout CRD at start (real kopf, API double).

Helm installs a chart's CRDs once and never upgrades them, so a release can meet the CRD of an
older one. The operator then refuses to start, before it watches or writes anything, and says
which command applies the new CRD. The double serves the CRD from crds/, as `kubectl apply` of
docs/upgrading.md step 1 would install it.
"""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from cdmo.api import CRD_NAME, SCHEMA_REVISION, SCHEMA_REVISION_ANNOTATION
from cdmo.operator.kube import LayoutWriter, build_api_client
from tests.harness.auth import service_account_user
from tests.harness.e2e import Harness

CRDS = "customresourcedefinitions"
EXTENSIONS = "apiextensions.k8s.io"


def _set_revision(harness: Harness, value: str | None) -> None:
    harness.api.patch(
        CRDS, CRD_NAME, {"metadata": {"annotations": {SCHEMA_REVISION_ANNOTATION: value}}}, group=EXTENSIONS
    )


@pytest.mark.parametrize(
    ("revision", "said"),
    [
        (None, f"older than revision {SCHEMA_REVISION}"),
        (str(SCHEMA_REVISION - 1), f"revision {SCHEMA_REVISION - 1}"),
    ],
    ids=["unmarked", "one-older"],
)
def test_an_older_crd_stops_the_operator_before_it_writes_anything(
    harness: Harness, revision: str | None, said: str
) -> None:
    harness.add_node("gpu-a", agent=False)
    _set_revision(harness, revision)
    with pytest.raises(RuntimeError, match="stopped before it was ready") as info:
        harness.start_operator()
    message = str(info.value)
    assert said in message and f"needs revision {SCHEMA_REVISION}" in message
    assert "kubectl apply --server-side --force-conflicts -f helm/cdmo/crds/" in message
    # Nothing watched, nothing written: the labelled node got no MigLayout.
    assert harness.api.list("miglayouts") == []


def test_the_shipped_and_a_newer_crd_let_the_operator_start(harness: Harness) -> None:
    harness.add_node("gpu-a", agent=False)
    crd = harness.api.get(CRDS, CRD_NAME, group=EXTENSIONS)
    assert crd is not None
    assert crd["metadata"]["annotations"][SCHEMA_REVISION_ANNOTATION] == str(SCHEMA_REVISION)
    _set_revision(harness, str(SCHEMA_REVISION + 1))
    harness.start_operator()
    harness.api.wait_for(
        lambda store: store.get(store.type_of("miglayouts"), None, "gpu-a") is not None,
        30,
        "the operator did not create the node's MigLayout",
    )


def test_an_identity_that_may_not_list_crds_skips_the_check_and_says_so(harness: Harness) -> None:
    """The chart grants the operator list on CRDs (kopf needs it); where a hand-made role does
    not, the check is skipped with a warning rather than stopping the operator."""
    if harness.security is None:
        pytest.skip("needs the chart's RBAC, which needs helm")
    _set_revision(harness, None)
    admin = LayoutWriter(build_api_client(harness.api.url, harness.security.admin_token))
    assert asyncio.run(admin.crd_problem()) is not None  # the same call sees the old CRD
    # A ServiceAccount of a hand-made install, with no rule on CRDs: 403.
    token = harness.security.auth.issue(service_account_user("gpu-ops", "cdmo-operator"))
    other = LayoutWriter(build_api_client(harness.api.url, token))
    with capture_logs() as logs:
        assert asyncio.run(other.crd_problem()) is None
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "Cannot read the MigLayout CRD to check its schema"
    ]
