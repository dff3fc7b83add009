"""Fixtures of the end-to-end harness: the Kubernetes API double and clients pointed at it."""

from __future__ import annotations

from collections.abc import Iterator

import kubernetes
import pytest

from tests.harness.chart import cdmo_violations
from tests.harness.e2e import Harness
from tests.harness.kube_api import KubeApiDouble


@pytest.fixture
def kube_api() -> Iterator[KubeApiDouble]:
    """A fresh API double on 127.0.0.1 with the CRDs of crds/ and kopf's peering CRDs installed."""
    double = KubeApiDouble(bookmark_interval=0.5)
    double.start()
    try:
        yield double
    finally:
        double.stop()


@pytest.fixture
def api_client(kube_api: KubeApiDouble) -> Iterator[kubernetes.client.ApiClient]:
    """A kubernetes client ApiClient that talks to the double."""
    config = kubernetes.client.Configuration(host=kube_api.url)
    client = kubernetes.client.ApiClient(config)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def harness() -> Iterator[Harness]:
    """A simulated cluster (API double, scheduler, device plugin, kubelet) with no nodes yet.

    After the test: no running pod ever lost its device, and the operator did not crash.
    """
    h = Harness()
    try:
        yield h
        assert h.cluster.violations == [], h.cluster.violations
        # The chart's identities got every request they needed, and wrote no pod or node they should not.
        assert cdmo_violations(h.api.server.audit) == []
        if h.operator is not None:
            assert h.operator.alive, f"the operator died: {h.operator.error!r}"
    finally:
        h.close()
