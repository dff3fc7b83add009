"""Time of the fractional-GPU webhook: the pure decision per pod, and AdmissionReview round trips over HTTPS.

    .venv/bin/python benchmarks/bench_webhook.py              # the table for docs/benchmarks.md
    .venv/bin/python benchmarks/bench_webhook.py --requests 2000

The API server gives a webhook 10 s at most (``timeoutSeconds``, default 10 in the chart) and
waits on it for every matching pod create; the goal is a p99 round trip far below that (under
50 ms on one shared core), so the webhook never holds pod creation back. Measures
``translate_pod`` for a mutated pod and for a refused one (which also checks every catalog model
to say what would fit), then sequential HTTPS POSTs of AdmissionReviews on one keep-alive
connection to the real aiohttp app with a self-signed certificate.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import platform
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import structlog
from aiohttp import web

from cdmo.translate.pods import translate_pod
from cdmo.webhook.server import build_app, server_ssl_context

CLUSTER = {"h100-80gb": 40, "a100-40gb": 12, "h200-141gb": 8}


def _pod(annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "bench", "namespace": "ml", "annotations": annotations},
        "spec": {"containers": [{"name": "side"}, {"name": "main", "resources": {"limits": {"cpu": "2"}}}]},
    }


def time_decisions(n: int) -> dict[str, float]:
    out = {}
    for label, pod in (
        ("mutate (gpu-fraction 0.25)", _pod({"gpu-fraction": "0.25"})),
        ("refuse (gpu-memory 900000)", _pod({"gpu-memory": "900000"})),
    ):
        started = time.perf_counter()
        for _ in range(n):
            translate_pod(pod, CLUSTER)
        out[label] = (time.perf_counter() - started) / n * 1e6
    return out


def _tls(directory: Path) -> tuple[Path, Path, Path]:
    from tests.harness.tls import make_tls_files

    files = make_tls_files(directory)
    return files.ca_file, files.cert_file, files.key_file


async def time_round_trips(n: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        ca, cert, key = _tls(Path(tmp))

        async def models() -> dict[str, int]:
            return CLUSTER

        runner = web.AppRunner(build_app(models))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl_context(str(cert), str(key)))
        await site.start()
        url = f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/mutate"  # type: ignore[union-attr]
        client_ssl = ssl.create_default_context(cafile=str(ca))
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE",
                "namespace": "ml",
                "object": _pod({"gpu-fraction": "0.25"}),
            },
        }
        times = []
        try:
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=client_ssl, limit=1)
            ) as session:
                for i in range(n + 50):
                    started = time.perf_counter()
                    async with session.post(url, json=review) as resp:
                        body = await resp.json()
                    if i >= 50:  # the first requests warm the connection and the caches
                        times.append(time.perf_counter() - started)
                    assert body["response"]["allowed"] is True
        finally:
            await runner.cleanup()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    # the webhook logs every admission at info; the benchmark times the work, not the terminal
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if not (0 < args.decisions <= 10**6 and 0 < args.requests <= 10**5):
        parser.error("--decisions must be 1..1000000 and --requests 1..100000")
    print(f"Python {platform.python_version()}, {platform.machine()}, {datetime.date.today()}")
    print()
    print("| what | time |")
    print("| --- | --- |")
    for label, micros in time_decisions(args.decisions).items():
        print(f"| translate_pod, {label} | {micros:.0f} µs |")
    times = sorted(asyncio.run(time_round_trips(args.requests)))
    p = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1000  # noqa: E731
    print(f"| HTTPS AdmissionReview round trip, p50 | {p(0.5):.2f} ms |")
    print(f"| HTTPS AdmissionReview round trip, p99 | {p(0.99):.2f} ms |")
    print(f"| HTTPS AdmissionReview round trip, mean | {statistics.mean(times) * 1000:.2f} ms |")


if __name__ == "__main__":
    main()
