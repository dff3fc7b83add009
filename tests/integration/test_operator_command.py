"""``cdmo operator`` as a process: serves a labelled node, liveness and metrics, stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from tests.harness.kube_api import KubeApiDouble, Store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_operator_command_runs_against_the_api_and_stops_on_sigterm(kube_api: KubeApiDouble) -> None:
    kube_api.create(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "gpu-node-1", "labels": {"cdmo.clear.ml/gpu-partitioning": "mig"}},
        }
    )
    live, metrics = _free_port(), _free_port()
    env = {**os.environ, "CDMO_BATCH_IDLE_SECONDS": "0.1", "CDMO_BATCH_MAX_SECONDS": "0.5"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cdmo.cli",
            "operator",
            "--standalone",
            "--server",
            kube_api.url,
            "--liveness",
            f"http://127.0.0.1:{live}/healthz",
            "--metrics-port",
            str(metrics),
            "--metrics-address",
            "127.0.0.1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def created(store: Store) -> bool:
            return store.get(store.type_of("miglayouts"), None, "gpu-node-1") is not None

        kube_api.wait_for(created, 60, "the operator process did not create the MigLayout")
        with urllib.request.urlopen(f"http://127.0.0.1:{live}/healthz", timeout=10) as rsp:
            assert rsp.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as rsp:
            body = rsp.read().decode()
        assert "cdmo_plans_total" in body and "cdmo_pending_mig_pods" in body
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out.decode()[-2000:]
    ml = kube_api.get("miglayouts", "gpu-node-1")
    assert ml is not None and ml["spec"] == {}  # bootstrap: no spec.gpus until the agent reports


@pytest.mark.parametrize(
    "env",
    [
        "CDMO_WATCH_SERVER_TIMEOUT=inf",
        "CDMO_PLAN_RESYNC_SECONDS=0",
        "CDMO_BATCH_IDLE_SECONDS=nan",
        "CDMO_STALE_TIMEOUT_SECONDS=-1",
        "CDMO_LIST_CHUNK_SIZE=-5",
        "CDMO_METRICS_PORT=70000",
        "CDMO_DRAIN_MAX_FRACTION=2",
    ],
)
def test_a_bad_setting_is_one_line_at_startup_not_a_traceback_or_a_busy_loop(env: str) -> None:
    # inf made the startup handler raise OverflowError, which kopf retried every 60 s forever;
    # 0 or a negative resync made the loop plan without pause; nan and -1 were taken silently.
    var, value = env.split("=", 1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdmo.cli", "operator", "--standalone", "--server", "http://127.0.0.1:9"],
        env={**os.environ, var: value},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        out, _ = proc.communicate(timeout=60)  # bounded: the old code never exited
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = out.decode()
    assert proc.returncode == 2, text[-2000:]
    assert "Traceback" not in text
    assert var in text and len(text.strip().splitlines()) == 1, text


def test_an_older_crd_is_one_line_and_a_non_zero_exit(kube_api: KubeApiDouble) -> None:
    # Helm never upgrades a CRD: the operator of a new release can meet the old one, and must
    # say so and stop rather than write specs the old schema prunes or refuses.
    kube_api.patch(
        "customresourcedefinitions",
        "miglayouts.cdmo.clear.ml",
        {"metadata": {"annotations": {"cdmo.clear.ml/schema-revision": None}}},
        group="apiextensions.k8s.io",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdmo.cli", "operator", "--standalone", "--server", kube_api.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = err.decode()
    assert proc.returncode == 1, text[-2000:]
    assert "Traceback" not in text
    last = text.strip().splitlines()[-1]
    assert "the installed MigLayout CRD is older than revision" in last
    assert "kubectl apply --server-side --force-conflicts -f helm/cdmo/crds/" in last
