"""kopf handlers of the cdmo operator, registered on an explicit registry.

An explicit ``kopf.OperatorRegistry`` (not kopf's global one) so that the label filter comes
from the configuration and an operator can be built and run more than once in one process.

- ``@kopf.on.startup``: every kopf setting, in one place; the installed CRD's schema revision
  checked (the operator does not start on an older one).
- ``@kopf.index``: unbound MIG pods, MIG pods bound to nodes and not yet admitted (by node),
  labelled nodes, MigLayouts. Indexes only compute, and keep summaries, never whole objects.
  The API server filters what reaches them (:func:`watch_selectors`): Pending pods only,
  labelled nodes only, initial lists in pages.
- ``@kopf.on.event``: nudge the planning loop; create a labelled node's MigLayout at once.
- ``@kopf.daemon`` on MigLayouts: carries the one planning loop (see cdmo.operator.loop).

Must not import cdmo.node_agent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf
import kubernetes
import structlog

from cdmo.api import GROUP, PLURAL, VERSION
from cdmo.config import OperatorConfig
from cdmo.operator.demand import asks_for_mig, is_bound_mig_pod, is_unbound_mig_pod, pod_key, summarize_pod
from cdmo.operator.kube import LayoutWriter
from cdmo.operator.loop import Indexes, PlanningLoop
from cdmo.operator.metrics import OperatorMetrics
from cdmo.operator.snapshot import summarize_miglayout, summarize_node

log = structlog.get_logger("cdmo.operator")

#: kopf's finalizer on MigLayouts (kopf daemons need one): named after cdmo, not kopf.
FINALIZER = "cdmo.clear.ml/operator"


@dataclass
class OperatorContext:
    """What the handlers share through kopf's memo: configuration, the loop, the writer, metrics."""

    config: OperatorConfig
    loop: PlanningLoop
    writer: LayoutWriter
    metrics: OperatorMetrics


def build_context(
    config: OperatorConfig,
    api_client: kubernetes.client.ApiClient,
    *,
    metrics: OperatorMetrics | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> OperatorContext:
    metrics = metrics if metrics is not None else OperatorMetrics()
    writer = LayoutWriter(api_client)
    return OperatorContext(config, PlanningLoop(config, writer, metrics, clock=clock), writer, metrics)


def _unbound(body: kopf.Body, **_: Any) -> bool:
    return is_unbound_mig_pod(body)


def _bound(body: kopf.Body, **_: Any) -> bool:
    return is_bound_mig_pod(body)


def _asks_mig(body: kopf.Body, **_: Any) -> bool:
    return asks_for_mig(body)


def _first(store: Any) -> Any:
    return next(iter(store))


def read_indexes(
    labelled_nodes: kopf.Index[str, Any],
    miglayouts: kopf.Index[str, Any],
    unbound_mig_pods: kopf.Index[str, Any],
    bound_mig_pods: kopf.Index[str, Any],
) -> Indexes:
    """Plain data from kopf's live indexes (copied, so a pass sees one consistent state)."""
    return Indexes(
        nodes={k: _first(v) for k, v in list(labelled_nodes.items())},
        miglayouts={k: _first(v) for k, v in list(miglayouts.items())},
        pending=tuple(_first(v) for _, v in sorted(unbound_mig_pods.items())),
        bound=tuple(p for _, v in sorted(bound_mig_pods.items()) for p in v),
    )


#: Pods the operator needs: unbound pending ones (demand) and bound ones not yet admitted
#: (reservations). Both are Pending; a Running pod's instances come from its node's MigLayout
#: status (the agent reports who holds what). So the API server sends only Pending pods: in a
#: cluster of 50,000 running pods the operator receives the few that wait.
POD_FIELD_SELECTOR = "status.phase=Pending"


def watch_selectors(config: OperatorConfig) -> dict[str, tuple[str, str]]:
    """Server-side selectors per watched resource: ``{resource: (label|field, selector)}``."""
    return {
        "pods": ("field", POD_FIELD_SELECTOR),
        "nodes": ("label", f"{config.label_key}={config.label_value}"),
    }


def _apply_watch_selectors(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    # kopf >= 1.45 (the lower bound in pyproject.toml) has server-side selectors and paged lists.
    watching: Any = settings.watching
    for resource, (kind, selector) in watch_selectors(config).items():
        (watching.label_selectors if kind == "label" else watching.field_selectors)[resource] = selector
    if config.list_chunk_size > 0:
        watching.chunk_size = config.list_chunk_size


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    """A registry with every cdmo handler. The caller adds a ``@kopf.on.login`` handler."""
    registry = kopf.OperatorRegistry()
    label = {config.label_key: config.label_value}

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Watches end server-side before the client gives up, so reconnects are clean; both
        # stay below kube-apiserver's own 30-60 min to notice silently dropped connections.
        # The server timeout goes out as ?timeoutSeconds=, which the API server reads as an integer.
        settings.watching.server_timeout = int(config.watch_server_timeout)
        settings.watching.client_timeout = config.watch_client_timeout
        settings.watching.connect_timeout = config.watch_connect_timeout
        settings.persistence.finalizer = FINALIZER
        # Bounded watches: paged initial lists, labelled nodes and Pending pods only (server-side).
        _apply_watch_selectors(settings, config)
        settings.posting.reporting_component = "cdmo-operator"
        # Only cdmo's own Events reach users; kopf's handler chatter stays in the logs.
        settings.posting.level = logging.WARNING

    @kopf.on.startup(registry=registry)
    async def check_crd(memo: kopf.Memo, **_: Any) -> None:
        # Before any watch: an older CRD (Helm never upgrades CRDs) would prune or refuse what
        # this release writes. A failed startup handler stops kopf before it watches anything.
        problem = await memo.cdmo.writer.crd_problem()
        if problem is not None:
            raise kopf.PermanentError(problem)

    @kopf.index("pods", id="unbound_mig_pods", when=_unbound, registry=registry)
    def unbound_mig_pods(body: kopf.Body, **_: Any) -> dict[str, Any]:
        return {pod_key(body): summarize_pod(body)}

    @kopf.index("pods", id="bound_mig_pods", when=_bound, registry=registry)
    def bound_mig_pods(body: kopf.Body, spec: kopf.Spec, **_: Any) -> dict[str, Any]:
        return {spec["nodeName"]: summarize_pod(body)}

    @kopf.index("nodes", id="labelled_nodes", labels=label, registry=registry)
    def labelled_nodes(body: kopf.Body, name: str, **_: Any) -> dict[str, Any]:
        return {name: summarize_node(body)}

    @kopf.index(GROUP, VERSION, PLURAL, id="miglayouts", registry=registry)
    def miglayouts(body: kopf.Body, name: str, **_: Any) -> dict[str, Any]:
        return {name: summarize_miglayout(body)}

    @kopf.on.event("pods", id="mig_pod_changed", when=_asks_mig, registry=registry)
    def mig_pod_changed(memo: kopf.Memo, **_: Any) -> None:
        memo.cdmo.loop.nudge()

    # The ignores below: kopf hands indexes to handlers as extra kwargs (docs/indexing.rst), which
    # its callback protocols do not list, so a handler that names one does not match them.
    @kopf.on.event("nodes", id="labelled_node_changed", labels=label, registry=registry)  # type: ignore[arg-type]
    async def labelled_node_changed(
        name: str, uid: str, type: str | None, memo: kopf.Memo, miglayouts: kopf.Index[str, Any], **_: Any
    ) -> None:
        # A node joins at once, not after a batch window: its MigLayout's daemon may be the
        # one that starts the planning loop.
        if type != "DELETED" and name not in miglayouts:
            await memo.cdmo.writer.create_miglayout(name, uid or "")
        memo.cdmo.loop.nudge()

    @kopf.on.event(GROUP, VERSION, PLURAL, id="miglayout_changed", registry=registry)  # type: ignore[arg-type]
    async def miglayout_changed(
        name: str, type: str | None, memo: kopf.Memo, labelled_nodes: kopf.Index[str, Any], **_: Any
    ) -> None:
        # The planning loop rides on MigLayout daemons: when a labelled node's MigLayout is
        # deleted (perhaps the only one), make it again at once rather than when the node
        # next changes, or nothing may carry the loop meanwhile.
        if type == "DELETED" and name in labelled_nodes:
            await memo.cdmo.writer.create_miglayout(name, _first(labelled_nodes[name]).get("uid") or "")
        memo.cdmo.loop.nudge()

    @kopf.daemon(GROUP, VERSION, PLURAL, id="planning_loop", cancellation_timeout=2.0, registry=registry)  # type: ignore[arg-type]
    async def planning_loop(
        stopped: kopf.DaemonStopped,
        memo: kopf.Memo,
        labelled_nodes: kopf.Index[str, Any],
        miglayouts: kopf.Index[str, Any],
        unbound_mig_pods: kopf.Index[str, Any],
        bound_mig_pods: kopf.Index[str, Any],
        **_: Any,
    ) -> None:
        await memo.cdmo.loop.carry(
            stopped, lambda: read_indexes(labelled_nodes, miglayouts, unbound_mig_pods, bound_mig_pods)
        )

    return registry
