"""The webhook's Prometheus metrics: reviews counted by outcome and timed, and the end of the
certificate it serves, scraped over plain HTTP while it answers over HTTPS.

Expected certificate ends come from ``cryptography`` (what made the test certificates), not from
cdmo's own reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from cdmo.webhook.metrics import OUTCOMES, WebhookMetrics
from cdmo.webhook.server import build_app, note_certificate, reload_certificate, server_ssl_context
from tests.harness.kube_api import KubeApiDouble
from tests.harness.tls import TlsFiles, make_tls_files
from tests.harness.webhook import WebhookThread, write_kubeconfig
from tests.integration.test_webhook import _post, add_node, pod, review

EXPIRY = "cdmo_webhook_certificate_expiry_timestamp_seconds"
SOON = "Webhook certificate expires soon"
EXPIRED = "Webhook certificate has expired"


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, from GET ``url`` in Prometheus' text format."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def reviews(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, float]:
    return {
        dict(labels)["outcome"]: v
        for (name, labels), v in samples.items()
        if name == "cdmo_webhook_reviews_total"
    }


def not_after(cert_file: Path) -> float:
    return x509.load_pem_x509_certificate(cert_file.read_bytes()).not_valid_after_utc.timestamp()


def expiry_events(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] in (SOON, EXPIRED)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_reviews_over_https_are_counted_by_outcome_and_timed(kube_api: KubeApiDouble, tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    add_node(kube_api, "gpu-1", "NVIDIA-H100-80GB-HBM3")
    with WebhookThread(kube_api.url, tls, metrics=WebhookMetrics()) as hook:
        hook.wait_for_models({"h100-80gb": 1})
        before = scrape(hook.metrics_url)
        # every outcome is a series from the start, at 0 (rate() and absent-series alerts need it)
        assert reviews(before) == dict.fromkeys(OUTCOMES, 0.0)
        assert before[("cdmo_webhook_review_seconds_count", ())] == 0
        mutate = review(pod("half", annotations={"gpu-fraction": "0.5"}))
        refuse = review(pod("big", annotations={"gpu-memory": "100000"}))
        skip = review({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
        skip["request"]["kind"] = {"group": "", "version": "v1", "kind": "ConfigMap"}
        answers = [
            asyncio.run(_post(hook.url + "/mutate", body, tls.ca_file))
            for body in (mutate, refuse, skip, {"kind": "Nope"})
        ]
        samples = scrape(hook.metrics_url)
    assert [status for status, _ in answers] == [200, 200, 200, 400]
    assert answers[0][1]["response"]["patchType"] == "JSONPatch"
    assert answers[1][1]["response"]["allowed"] is False
    assert answers[2][1]["response"] == {"uid": "u-1", "allowed": True}
    assert reviews(samples) == {
        "mutated": 1,
        "refused": 1,
        "skipped": 1,
        "bad_review": 1,
        "nodes_unread": 0,
        "error": 0,
    }
    assert samples[("cdmo_webhook_review_seconds_count", ())] == 4
    assert samples[("cdmo_webhook_review_seconds_bucket", (("le", "+Inf"),))] == 4
    assert samples[("cdmo_webhook_review_seconds_bucket", (("le", "10.0"),))] == 4  # the API server's 10 s
    assert 0 < samples[("cdmo_webhook_review_seconds_sum", ())] < 10


async def test_unread_nodes_and_a_fault_are_counted_as_their_own_outcomes() -> None:
    """503 (the API server then applies failurePolicy) and a 500 from an exception the handler did
    not expect: both still counted and timed, so an alert on errors sees them."""
    from aiohttp.test_utils import TestClient, TestServer

    from cdmo.webhook.nodes import NodeModels

    api = kubernetes.client.ApiClient(kubernetes.client.Configuration(host="http://127.0.0.1:9"))
    nodes = NodeModels(api, "cdmo.clear.ml/gpu-partitioning=mig", 60.0)
    nodes.error = "Forbidden"

    async def broken() -> dict[str, int]:
        raise RuntimeError("a bug")

    unread, faulty = WebhookMetrics(), WebhookMetrics()
    body = review(pod("p", annotations={"gpu-fraction": "0.5"}))
    try:
        async with TestClient(TestServer(build_app(lambda: nodes.current(wait=0.01), metrics=unread))) as c:
            assert (await c.post("/mutate", json=body)).status == 503
        async with TestClient(TestServer(build_app(broken, metrics=faulty))) as c:
            assert (await c.post("/mutate", json=body)).status == 500
    finally:
        api.close()
    assert unread.value("cdmo_webhook_reviews_total", outcome="nodes_unread") == 1
    assert faulty.value("cdmo_webhook_reviews_total", outcome="error") == 1
    for m in (unread, faulty):
        assert m.value("cdmo_webhook_review_seconds_count") == 1
        assert m.value("cdmo_webhook_reviews_total", outcome="mutated") == 0


def test_expiry_gauge_is_the_served_certificates_end_and_follows_a_renewal(
    kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    """A year-long certificate, then a renewal that lasts 5 days (a stuck issuer's): the gauge
    follows the files the webhook reloads, and only the short one is warned about."""
    year, five = make_tls_files(tmp_path / "year", days=365), make_tls_files(tmp_path / "five", days=5)
    assert not_after(year.cert_file) != not_after(five.cert_file)
    live = TlsFiles(year.ca_file, tmp_path / "live" / "tls.crt", tmp_path / "live" / "tls.key")
    live.cert_file.parent.mkdir()
    shutil.copy(year.cert_file, live.cert_file)
    shutil.copy(year.key_file, live.key_file)
    with (
        capture_logs() as logs,
        WebhookThread(kube_api.url, live, metrics=WebhookMetrics(), cert_reload_seconds=0.05) as hook,
    ):
        assert scrape(hook.metrics_url)[(EXPIRY, ())] == not_after(year.cert_file)
        assert expiry_events(logs) == []
        # what the kubelet does when the Secret changes (the key first: no mismatched pair is served)
        shutil.copy(five.key_file, live.key_file)
        shutil.copy(five.cert_file, live.cert_file)
        deadline = time.monotonic() + 15  # only against a hang: the reloader looks every 0.05 s
        while time.monotonic() < deadline:
            seen = scrape(hook.metrics_url)[(EXPIRY, ())]
            if seen != not_after(year.cert_file):
                break
            time.sleep(0.05)
        assert seen == not_after(five.cert_file)
    (warning,) = expiry_events(logs)
    assert (warning["event"], warning["log_level"], warning["cert_file"]) == (
        SOON,
        "warning",
        str(live.cert_file),
    )
    assert 4.9 <= warning["days_left"] <= 5.0
    assert "webhook-tls" in warning["hint"] and "helm upgrade" in warning["hint"]


@pytest.mark.parametrize(
    ("days", "later", "expected"),
    [
        (5, 0, (SOON, "warning")),
        (365, 0, None),
        # 20 days left: a cert-manager certificate of the chart (renewBefore 360h) not yet renewed
        (365, 345, None),
        (365, 366, (EXPIRED, "error")),
    ],
    ids=["5-days", "365-days", "20-days-left", "expired"],
)
def test_the_certificates_end_is_noted_as_the_reloader_starts(
    tmp_path: Path, days: int, later: int, expected: tuple[str, str] | None
) -> None:
    """Real certificates of 5 and 365 days; ``later`` days on a clock of the test's own."""
    tls = make_tls_files(tmp_path, days=days)
    metrics = WebhookMetrics()
    now = time.time() + later * 86400

    async def start() -> None:
        context = server_ssl_context(str(tls.cert_file), str(tls.key_file))
        task = asyncio.get_running_loop().create_task(
            reload_certificate(context, str(tls.cert_file), str(tls.key_file), 60, metrics, lambda: now)
        )
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    with capture_logs() as logs:
        asyncio.run(start())
    assert metrics.value(EXPIRY) == not_after(tls.cert_file)
    assert [(e["event"], e["log_level"]) for e in expiry_events(logs)] == ([expected] if expected else [])


def test_a_certificate_whose_end_does_not_read_is_published_as_nan_not_as_a_stale_end(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path, days=365)
    metrics = WebhookMetrics()
    assert math.isnan(metrics.value(EXPIRY) or 0.0)  # before it is read: not 0, which every alert fires on
    note_certificate(str(tls.cert_file), metrics, time.time())
    assert metrics.value(EXPIRY) == not_after(tls.cert_file)
    tls.cert_file.write_text("-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n")
    with capture_logs() as logs:
        note_certificate(str(tls.cert_file), metrics, time.time())
    assert math.isnan(metrics.value(EXPIRY) or 0.0)
    assert [e["event"] for e in logs] == ["Failed to read webhook certificate expiry"]


@pytest.fixture
def kubeconfig(kube_api: KubeApiDouble, tmp_path: Path) -> Path:
    return write_kubeconfig(tmp_path / "kubeconfig", kube_api.url)


@contextlib.contextmanager
def _webhook_process(args: list[str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdmo.cli", "webhook", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)  # only against a hang
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


def test_cdmo_webhook_serves_its_metrics_on_their_own_http_port_and_warns_at_start(
    kube_api: KubeApiDouble, kubeconfig: Path, tmp_path: Path
) -> None:
    """The real `cdmo webhook` process: metrics over plain HTTP beside HTTPS, the certificate's end
    there from the start, and the warning about a 5-day certificate in its log."""
    tls = make_tls_files(tmp_path / "tls", days=5)
    add_node(kube_api, "gpu-1", "NVIDIA-H200")
    port, metrics_port = _free_port(), _free_port()
    args = ["--port", str(port), "--metrics-port", str(metrics_port), "--cert-file", str(tls.cert_file),
            "--key-file", str(tls.key_file), "--kubeconfig", str(kubeconfig)]  # fmt: skip
    with _webhook_process(args) as proc:
        body = review(pod("p", labels={"clearml-injector/fraction": "0.125"}))
        deadline, answer = time.monotonic() + 30, None
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError, ssl.SSLError):  # not listening yet
                status, answer = asyncio.run(_post(f"https://127.0.0.1:{port}/mutate", body, tls.ca_file))
                if status == 200 and answer["response"].get("patch"):
                    break
            time.sleep(0.2)
        assert answer is not None and proc.poll() is None
        samples = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    output = proc.stdout.read() if proc.stdout else ""
    assert proc.returncode == 0, output
    assert samples[(EXPIRY, ())] == not_after(tls.cert_file)
    assert reviews(samples)["mutated"] >= 1  # a 503 while nodes were unread may come first
    logged = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    (warning,) = [e for e in logged if e["event"] == SOON]
    assert warning["level"] == "warning" and 4.9 <= warning["days_left"] <= 5.0
    started = next(i for i, e in enumerate(logged) if e["event"] == "Started webhook")
    assert logged.index(warning) < started  # noted before the webhook served anything


def test_cdmo_webhook_stops_in_one_line_when_its_metrics_port_is_taken(
    tmp_path: Path, kubeconfig: Path
) -> None:
    tls = make_tls_files(tmp_path / "tls")
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        held = int(taken.getsockname()[1])
        args = ["--port", str(_free_port()), "--metrics-port", str(held),
                "--cert-file", str(tls.cert_file), "--key-file", str(tls.key_file), "--kubeconfig", str(kubeconfig)]  # fmt: skip
        with _webhook_process(args) as proc:
            proc.wait(30)
    output = (proc.stdout.read() if proc.stdout else "").strip().splitlines()
    assert proc.returncode == 1, output
    assert output[-1].startswith(f"cdmo: error: cannot listen on port {held}")
    assert not any("Traceback" in line for line in output)
