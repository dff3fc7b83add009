"""A real cluster: K3s in a container (testcontainers), the CRD from crds/, ``cdmo operator`` briefly.

Checks what only a real API server can: that it accepts the CRD (structural schema, CEL cost
limits), refuses a bad spec with its own CEL and pattern checks, and that the operator creates
a MigLayout for a labelled node. Skipped, with the reason printed (``pytest -rs``), when no
Docker engine is reachable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e

CRD = Path(__file__).resolve().parents[2] / "crds" / "miglayouts.yaml"
GROUP, VERSION, PLURAL = "cdmo.clear.ml", "v1alpha1", "miglayouts"


def _docker_unreachable() -> str | None:
    """Why Docker cannot be used here, or None when it can."""
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        return f"the docker package is missing: {exc}"
    try:
        client = docker.from_env(timeout=5)
        client.ping()
    except Exception as exc:
        return f"no Docker engine reachable ({type(exc).__name__}: {exc}); this test needs one to run K3s"
    return None


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    reason = _docker_unreachable()
    if reason:
        pytest.skip(reason)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from testcontainers.k3s import K3SContainer

    with K3SContainer() as k3s:
        path = tmp_path_factory.mktemp("k3s") / "kubeconfig.yaml"
        path.write_text(k3s.config_yaml())
        yield path


@pytest.fixture(scope="module")
def api(kubeconfig: Path) -> Iterator[Any]:
    import kubernetes

    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    ext = kubernetes.client.ApiextensionsV1Api(client)
    ext.create_custom_resource_definition(yaml.safe_load(CRD.read_text()))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        crd = ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
        conditions = {c.type: c.status for c in (crd.status.conditions or [])}
        if conditions.get("Established") == "True":
            break
        time.sleep(0.5)
    else:
        pytest.fail("the MigLayout CRD was not Established within 60 s")
    yield client
    client.close()


def test_real_api_server_refuses_an_invalid_profile(api: Any) -> None:
    import kubernetes
    from kubernetes.client.exceptions import ApiException

    custom = kubernetes.client.CustomObjectsApi(api)
    bad = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MigLayout",
        "metadata": {"name": "bad"},
        "spec": {"gpus": [{"index": 0, "instances": [{"profile": "big", "start": 0}]}, {"index": 0}]},
    }
    with pytest.raises(ApiException) as err:
        custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, bad)
    assert err.value.status == 422


def test_operator_creates_a_miglayout_for_a_labelled_node(api: Any, kubeconfig: Path) -> None:
    import kubernetes

    core = kubernetes.client.CoreV1Api(api)
    node = core.list_node().items[0].metadata.name
    core.patch_node(node, {"metadata": {"labels": {"cdmo.clear.ml/gpu-partitioning": "mig"}}})
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "CDMO_BATCH_IDLE_SECONDS": "0.2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdmo.cli", "operator", "--standalone", "--metrics-port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    custom = kubernetes.client.CustomObjectsApi(api)
    try:
        deadline = time.monotonic() + 60
        found = None
        while time.monotonic() < deadline and found is None:
            items = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
            found = next((i for i in items if i["metadata"]["name"] == node), None)
            if found is None:
                time.sleep(0.5)
        assert found is not None, "the operator did not create the node's MigLayout"
        assert found["spec"] == {}
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()[-2000:]
