"""The webhook's HTTPS server: POST /mutate takes an AdmissionReview, GET /healthz says it is up.

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

from cdmo.translate.pods import pod_name
from cdmo.translate.rule import DEFAULT_RULE, Rule
from cdmo.webhook.nodes import NodesUnreadable
from cdmo.webhook.review import BadReview, build_review_response

log = structlog.get_logger("cdmo.webhook")

#: A pod manifest is at most about 1.5 MiB; the AdmissionReview around it a little more.
MAX_BODY_BYTES = 8 << 20

ModelSource = Callable[[], Awaitable[Mapping[str, int]]]
_MESSAGES = {"mutate": "Translated fractional GPU ask", "refuse": "Refused pod"}


@dataclass(frozen=True)
class Settings:
    default_model: str | None = None
    rule: Rule = DEFAULT_RULE


def build_app(models: ModelSource, settings: Settings = Settings()) -> web.Application:
    """The aiohttp application; ``models`` returns the cluster's {model key: labelled nodes}."""

    async def mutate(request: web.Request) -> web.Response:
        try:
            review = json.loads(await request.read())
            cluster = await models()
            body, action, reason = build_review_response(
                review, cluster, default_model=settings.default_model, rule=settings.rule
            )
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response({"error": "the body is not JSON"}, status=400)
        except BadReview as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except NodesUnreadable as exc:  # the API server applies the webhook's failurePolicy
            log.warning("Cannot answer: nodes unread", error=str(exc))
            return web.json_response({"error": str(exc)}, status=503)
        req = review.get("request") or {}
        obj = req.get("object")
        obj = obj if isinstance(obj, dict) else {}
        pod = pod_name({"metadata": {**(obj.get("metadata") or {}), "namespace": req.get("namespace")}})
        if action == "skip":  # nothing to do: other pods, already translated ones
            log.debug("Passed pod unchanged", pod=pod, reason=reason)
        else:
            log.info(_MESSAGES[action], pod=pod, reason=reason)
        return web.json_response(body)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/mutate", mutate)
    app.router.add_get("/healthz", healthz)
    return app


def server_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


async def reload_certificate(context: ssl.SSLContext, cert_file: str, key_file: str, every: float) -> None:
    """Load the certificate again whenever its files change; new connections get the new one."""

    def stamp() -> tuple[float, float]:
        return (os.stat(cert_file).st_mtime, os.stat(key_file).st_mtime)

    last = stamp()
    while True:
        await asyncio.sleep(every)
        try:
            now = stamp()
            if now != last:
                context.load_cert_chain(cert_file, key_file)
                last = now
                log.info("Reloaded webhook certificate", cert_file=cert_file)
        except (OSError, ssl.SSLError) as exc:  # a Secret update swaps files; the next pass sees both
            log.warning("Failed to reload webhook certificate", error=str(exc))
