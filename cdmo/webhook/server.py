"""The webhook's HTTPS server: POST /mutate takes an AdmissionReview, GET /healthz says it is up,
GET /readyz whether it has read the nodes' GPU models (and so can answer).

The certificate is read again when its files change, so a certificate that cert-manager (or a
``helm upgrade`` that made a new one) renews in the mounted Secret is served without a restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import structlog
from aiohttp import web

from cdmo.errors import InvalidInput
from cdmo.translate.pods import pod_name
from cdmo.translate.rule import DEFAULT_RULE, Rule
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


@dataclass(frozen=True)
class Settings:
    default_model: str | None = None
    rule: Rule = DEFAULT_RULE


def build_app(
    models: ModelSource, settings: Settings = Settings(), ready: Callable[[], str | None] | None = None
) -> web.Application:
    """The aiohttp application; ``models`` returns the cluster's {model key: labelled nodes}.

    ``ready`` says why the webhook cannot answer yet (None: it can); GET /readyz answers 503 with
    that, so a replica that has never read the nodes is out of the Service while another answers
    (/healthz says only that the process is up, for the liveness probe).
    """

    async def mutate(request: web.Request) -> web.Response:
        try:
            review = json.loads(await request.read())
        except (ValueError, RecursionError):  # not JSON, not UTF-8, nested past the parser's depth
            return web.json_response({"error": "the body is not JSON"}, status=400)
        try:
            cluster = await models()
            body, action, reason = build_review_response(
                review, cluster, default_model=settings.default_model, rule=settings.rule
            )
        except BadReview as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except NodesUnreadable as exc:  # the API server applies the webhook's failurePolicy
            log.warning("Cannot answer: nodes unread", error=str(exc))
            return web.json_response({"error": str(exc)}, status=503)
        req = review.get("request") or {}
        obj = req.get("object")
        meta = obj.get("metadata") if isinstance(obj, dict) else None  # any kind's, when skipped
        meta = meta if isinstance(meta, dict) else {}
        pod = pod_name({"metadata": {**meta, "namespace": req.get("namespace")}})
        if action == "skip":  # nothing to do: other pods, already translated ones
            log.debug("Passed pod unchanged", pod=pod, reason=reason)
        else:
            log.info(_MESSAGES[action], pod=pod, reason=reason)
        return web.json_response(body)

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


async def reload_certificate(context: ssl.SSLContext, cert_file: str, key_file: str, every: float) -> None:
    """Serve the certificate again whenever its files change; new connections get the new one.

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
    while True:
        await asyncio.sleep(every)
        try:
            now = stamp()
            if now != last:
                serving, last = server_ssl_context(cert_file, key_file), now
                log.info("Reloaded webhook certificate", cert_file=cert_file)
        except (OSError, InvalidInput) as exc:  # the next pass tries again
            log.warning("Failed to reload webhook certificate", error=str(exc))
