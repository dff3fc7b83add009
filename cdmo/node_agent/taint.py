"""The reconfiguring taint of the external device-plugin modes.

With NVIDIA's plugin (modes sighup, delete-pod, none) the kubelet keeps advertising destroyed
instances until the plugin looks again: a pod bound in that window fails admission. The agent
cannot close that window, but it narrows it: it taints its node (by default
``cdmo.clear.ml/reconfiguring:NoSchedule``) from before the first destroy of a pass until the
plugin has re-advertised, so the scheduler sends no new pod there meanwhile.

:class:`ReconfiguringTaint` hooks into reconcile as a DeviceAdvertiser: ``withdraw`` (called
before any destroy) sets the taint; the agent calls :meth:`ReconfiguringTaint.settle` once the
refresh succeeded (or nothing needed one), which lifts it. Level-triggered: ``settle`` removes
a taint left by an agent that died mid-change. A taint that cannot be set fails the pass
before anything is destroyed (retried with backoff); turn it off with an empty
CDMO_RECONFIGURING_TAINT.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

import structlog
import tenacity

from cdmo.errors import CdmoError, InvalidInput, Transient
from cdmo.mig.layouts import Instance
from cdmo.node_agent.advertise import NOTHING_UNHEALTHY, Unhealthy
from cdmo.node_agent.kube import NotFound

log = structlog.get_logger("cdmo.node_agent.taint")

EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def parse_taint(text: str) -> tuple[str, str]:
    """``key:Effect`` -> (key, effect)."""
    key, sep, effect = text.rpartition(":")
    if not sep or not key or effect not in EFFECTS:
        raise InvalidInput(
            f"reconfiguring taint {text!r} is not KEY:EFFECT",
            hint="write it like cdmo.clear.ml/reconfiguring:NoSchedule (effects: " + ", ".join(EFFECTS) + ")",
        )
    return key, effect


def build_taints(
    current: Sequence[Mapping[str, Any]], key: str, effect: str, present: bool
) -> list[dict[str, Any]] | None:
    """The node's taints with ours set or removed; None when nothing changes."""
    ours = [t for t in current if t.get("key") == key and t.get("effect") == effect]
    if present and ours:
        return None
    if not present and not ours:
        return None
    others = [dict(t) for t in current if not (t.get("key") == key and t.get("effect") == effect)]
    if present:
        others.append({"key": key, "value": "true", "effect": effect})
    return others


class NodeTaints(Protocol):
    def read_node(self, name: str) -> dict[str, Any]: ...

    def patch_node_taints(
        self, name: str, taints: list[dict[str, Any]], resource_version: str | None
    ) -> None: ...


class ReconfiguringTaint:
    """DeviceAdvertiser of the external modes: taint on withdraw, lift on settle."""

    def __init__(self, kube: NodeTaints, node: str, taint: str) -> None:
        self.kube = kube
        self.node = node
        self.key, self.effect = parse_taint(taint)

    def withdraw(self, uuids: Collection[str]) -> frozenset[str]:
        if uuids:
            self._set(True)
        return frozenset()  # NVIDIA's plugin hands devices out; reservations cover its pods

    def refresh(self) -> None:
        return None  # NVIDIA's plugin is refreshed by the agent's refresher after the pass

    def set_desired(self, desired: Mapping[int, Sequence[Instance]]) -> None:
        return None  # NVIDIA's plugin reads no plan

    def advertised(self) -> dict[str, list[str]] | None:
        return None  # NVIDIA's plugin advertises, not this process

    def unhealthy(self) -> Unhealthy:
        return NOTHING_UNHEALTHY  # NVIDIA's plugin keeps its health to itself

    def settle(self) -> None:
        """The plugin has re-advertised (or nothing needed it): lift the taint if it is there.

        A failure is logged, not raised: the pass's status still gets written, and the next pass
        (every pass settles) tries again."""
        try:
            self._set(False)
        except CdmoError as exc:
            log.warning("Failed to remove reconfiguring taint; will retry", node=self.node, error=str(exc))

    @tenacity.retry(
        stop=tenacity.stop_after_attempt(4),
        wait=tenacity.wait_exponential(multiplier=0.2, max=2.0),
        retry=tenacity.retry_if_exception_type(Transient) & tenacity.retry_if_not_exception_type(NotFound),
        reraise=True,
    )
    def _set(self, present: bool) -> None:
        # Read, change, write with the resourceVersion read: a concurrent change of the node
        # (a 409) is read again, never overwritten.
        try:
            node = self.kube.read_node(self.node)
        except NotFound:
            log.warning("Skipped reconfiguring taint: node not found", node=self.node)
            return
        taints = build_taints((node.get("spec") or {}).get("taints") or [], self.key, self.effect, present)
        if taints is None:
            return
        self.kube.patch_node_taints(self.node, taints, (node.get("metadata") or {}).get("resourceVersion"))
        log.info(
            "Tainted node while reconfiguring" if present else "Removed reconfiguring taint",
            node=self.node,
            taint=f"{self.key}:{self.effect}",
        )
