"""The webhook's Prometheus metrics, in a registry of their own, served over plain HTTP.

- ``cdmo_webhook_reviews_total{outcome}`` (counter): admission reviews answered, by outcome
  (OUTCOMES);
- ``cdmo_webhook_review_seconds`` (histogram): from the request's headers to the answer;
- ``cdmo_webhook_certificate_expiry_timestamp_seconds`` (gauge): notAfter of the certificate
  being served, as a Unix time (NaN while it cannot be read).

A registry per instance, as the operator's and the agent's, so that several webhooks in one
process (the tests) count apart. Served by aiohttp in the webhook's own event loop rather than by
prometheus_client's thread: one loop, one shutdown, and a port that cannot be bound stops
``cdmo webhook`` before it says it started.
"""

from __future__ import annotations

import math

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

#: How a review ended: its answer (mutated, refused, skipped: allowed unchanged), or an error
#: answer: bad_review (400, a body no API server would send), nodes_unread (503, the API server
#: applies failurePolicy), error (500, a fault in the webhook).
OUTCOMES = ("mutated", "refused", "skipped", "bad_review", "nodes_unread", "error")

#: The API server waits timeoutSeconds (10 in the chart, 30 at most) for an answer.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.reviews = Counter(
            "cdmo_webhook_reviews", "Admission reviews answered, by outcome", ["outcome"], registry=r
        )
        for outcome in OUTCOMES:  # every series from the start: rate() and alerts need no first event
            self.reviews.labels(outcome=outcome)
        self.review_seconds = Histogram(
            "cdmo_webhook_review_seconds",
            "Time to answer an admission review",
            buckets=_BUCKETS,
            registry=r,
        )
        self.certificate_expiry = Gauge(
            "cdmo_webhook_certificate_expiry_timestamp_seconds",
            "notAfter of the serving certificate, as a Unix time",
            registry=r,
        )
        # NaN, not 0, until the certificate is read: 0 would fire every "expires soon" alert
        self.certificate_expiry.set(math.nan)

    def observe_review(self, outcome: str, seconds: float) -> None:
        self.reviews.labels(outcome=outcome).inc()
        self.review_seconds.observe(seconds)

    def value(self, name: str, **labels: str) -> float | None:
        """The current value of a sample (for tests); None when absent."""
        return self.registry.get_sample_value(name, labels or None)

    def render(self) -> bytes:
        """The text exposition format, as GET /metrics serves it."""
        return bytes(generate_latest(self.registry))


def build_metrics_app(metrics: WebhookMetrics) -> web.Application:
    """GET /metrics: ``metrics`` in Prometheus' text format."""

    async def scrape(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app
