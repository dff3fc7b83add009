"""The webhook's HTTPS server: POST /mutate takes an AdmissionReview, GET /healthz says it is up,
GET /readyz whether it has read the nodes' GPU models (and so can answer).

The certificate is read again when its files change, so a certificate that cert-manager (or a
``helm upgrade`` that made a new one) renews in the mounted Secret is served without a restart.
Each review is counted and timed, and the served certificate's end published, in
:class:`cdmo.webhook.metrics.WebhookMetrics` when one is given.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import structlog
from aiohttp import web

from cdmo.errors import InvalidInput
from cdmo.translate.pods import pod_name
from cdmo.translate.rule import DEFAULT_RULE, Rule
from cdmo.webhook.certificate import expiry_state, read_not_after
from cdmo.webhook.metrics import WebhookMetrics
from cdmo.webhook.nodes import NodesUnreadable
from cdmo.webhook.review import BadReview, build_review_response

log = structlog.get_logger("cdmo.webhook")

#: A pod manifest is at most about 1.5 MiB; the AdmissionReview around it a little more.
MAX_BODY_BYTES = 8 << 20

#: How long a stopping webhook waits for the requests in flight: the API server waits for an answer
#: no longer than the webhook's timeoutSeconds (10 in the chart, 30 at most), and the kubelet kills
#: the pod 30 s after SIGTERM (aiohttp would wait 60 s for a client stuck halfway through its body).
SHUTDOWN_SECONDS = 10.0

ModelSource = Callable[[], Awaitable[Mapping[str, int]]]
_MESSAGES = {"mutate": "Translated fractional GPU ask", "refuse": "Refused pod"}
_OUTCOMES = {"mutate": "mutated", "refuse": "refused", "skip": "skipped"}
#: The next step when the certificate ends soon, as docs/coming-from-fractions.md describes it.
_ROTATE = (
    "renew it before the API server stops calling the webhook: with cert-manager, see why its "
    "Certificate was not renewed (kubectl describe certificate); without, delete the webhook's TLS "
    "Secret (<release>-webhook-tls) and run helm upgrade (docs/coming-from-fractions.md, "
    "Certificates and their rotation)"
)


@dataclass(frozen=True)
class Settings:
    default_model: str | None = None
    rule: Rule = DEFAULT_RULE


def build_app(
    models: ModelSource,
    settings: Settings = Settings(),
    ready: Callable[[], str | None] | None = None,
    metrics: WebhookMetrics | None = None,
) -> web.Application:
    """The aiohttp application; ``models`` returns the cluster's {model key: labelled nodes}.

    ``ready`` says why the webhook cannot answer yet (None: it can); GET /readyz answers 503 with
    that, so a replica that has never read the nodes is out of the Service while another answers
    (/healthz says only that the process is up, for the liveness probe). ``metrics`` counts every
    POST /mutate by outcome and times it.
    """

    async def mutate(request: web.Request) -> web.Response:
        started = time.perf_counter()
        outcome = "error"  # what escapes answer() becomes aiohttp's 500 (or a client gone away)
        try:
            response, outcome = await answer(request)
            return response
        finally:
            if metrics is not None:
                metrics.observe_review(outcome, time.perf_counter() - started)

    async def answer(request: web.Request) -> tuple[web.Response, str]:
        """The response to one review, and its outcome (cdmo.webhook.metrics.OUTCOMES)."""
        try:
            review = json.loads(await request.read())
        except (ValueError, RecursionError):  # not JSON, not UTF-8, nested past the parser's depth
            return web.json_response({"error": "the body is not JSON"}, status=400), "bad_review"
        try:
            cluster = await models()
            body, action, reason = build_review_response(
                review, cluster, default_model=settings.default_model, rule=settings.rule
            )
        except BadReview as exc:
            return web.json_response({"error": str(exc)}, status=400), "bad_review"
        except NodesUnreadable as exc:  # the API server applies the webhook's failurePolicy
            log.warning("Cannot answer: nodes unread", error=str(exc))
            return web.json_response({"error": str(exc)}, status=503), "nodes_unread"
        req = review.get("request") or {}
        obj = req.get("object")
        meta = obj.get("metadata") if isinstance(obj, dict) else None  # any kind's, when skipped
        meta = meta if isinstance(meta, dict) else {}
        pod = pod_name({"metadata": {**meta, "namespace": req.get("namespace")}})
        if action == "skip":  # nothing to do: other pods, already translated ones
            log.debug("Passed pod unchanged", pod=pod, reason=reason)
        else:
            log.info(_MESSAGES[action], pod=pod, reason=reason)
        return web.json_response(body), _OUTCOMES[action]

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        why = ready() if ready is not None else None
        return web.Response(text="ok") if why is None else web.Response(text=why, status=503)

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/mutate", mutate)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def server_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A TLS 1.2+ server context serving ``cert_file`` with ``key_file``.

    Raises InvalidInput naming both files when they do not load (missing, not PEM, a key that is
    not the certificate's).
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except OSError as exc:  # ssl.SSLError is an OSError
        raise InvalidInput(
            f"TLS certificate {cert_file} and key {key_file} do not load: {exc}",
            hint="give a PEM certificate and the private key it was made for",
        ) from None
    return context


def note_certificate(cert_file: str, metrics: WebhookMetrics | None, now: float) -> None:
    """Publish when the certificate in ``cert_file`` ends, and log a warning when that is within
    EXPIRY_WARNING_SECONDS of ``now`` (an error when it has passed): the log line and the alert
    on the metric are the only notice before the API server refuses the webhook's answers.

    A certificate whose end does not read is logged and published as NaN: OpenSSL has loaded it,
    so it is served all the same, and an end left over from the last one would be wrong.
    """
    try:
        not_after = read_not_after(cert_file)
    except (OSError, InvalidInput) as exc:
        log.warning("Failed to read webhook certificate expiry", cert_file=cert_file, error=str(exc))
        if metrics is not None:
            metrics.certificate_expiry.set(float("nan"))
        return
    if metrics is not None:
        metrics.certificate_expiry.set(not_after)
    state = expiry_state(not_after, now)
    if state == "valid":
        return
    fields = {
        "cert_file": cert_file,
        "not_after": datetime.datetime.fromtimestamp(not_after, datetime.UTC).isoformat(),
        "days_left": round((not_after - now) / 86400, 1),
        "hint": _ROTATE,
    }
    if state == "expired":
        log.error("Webhook certificate has expired", **fields)
    else:
        log.warning("Webhook certificate expires soon", **fields)


async def reload_certificate(
    context: ssl.SSLContext,
    cert_file: str,
    key_file: str,
    every: float,
    metrics: WebhookMetrics | None = None,
    clock: Callable[[], float] = time.time,
) -> None:
    """Serve the certificate again whenever its files change; new connections get the new one.

    The certificate's end is noted (:func:`note_certificate`) before the first wait, for the one
    ``context`` was made with, and again after each change that loads.

    Each change is loaded into a context of its own, which ``context`` (the one the server listens
    with) hands to every new connection from its ``sni_callback``; OpenSSL calls that on every
    ClientHello, with or without a server name. A pair that does not load (a Secret caught half
    written, a key that is not the certificate's) is logged and the last good pair served on:
    loading it into ``context`` itself would leave the new certificate there without a key, and
    every handshake would fail until a good pair came.
    """
    serving = context

    def hand_over(conn: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext) -> None:
        if serving is not context:
            conn.context = serving

    context.sni_callback = hand_over

    def stamp() -> tuple[tuple[int, int, int], ...]:
        # the kubelet swaps a Secret volume's files for new ones: a new inode, whatever the mtime
        return tuple(
            (st.st_ino, st.st_mtime_ns, st.st_size) for st in (os.stat(cert_file), os.stat(key_file))
        )

    last = stamp()
    note_certificate(cert_file, metrics, clock())
    while True:
        await asyncio.sleep(every)
        try:
            now = stamp()
            if now != last:
                serving, last = server_ssl_context(cert_file, key_file), now
                log.info("Reloaded webhook certificate", cert_file=cert_file)
                # read after the load: should the files change in between, the next pass sees
                # a new stamp and loads and notes them again
                note_certificate(cert_file, metrics, clock())
        except (OSError, InvalidInput) as exc:  # the next pass tries again
            log.warning("Failed to reload webhook certificate", error=str(exc))
