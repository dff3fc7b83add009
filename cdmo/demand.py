"""A pod spec's device demand, counted the way the kubelet and the scheduler count it.

One reader for both halves: the operator plans for what pods ask, the node agent reserves
instances for pods bound to its node, and the two must agree on every pod (issue 10: a native
sidecar counted one way by one and another way by the other cost a bound pod its instance).

How a pod's demand is counted (Kubernetes' ``PodRequests``, sidecar KEP-753):

- per container, ``limits`` win over ``requests`` (for extended resources the API server makes
  them equal when both are given, and defaults requests to limits);
- app containers and native sidecars (init containers with ``restartPolicy: Always``) run
  together, so they are summed;
- a plain init container runs alone, beside the sidecars started before it; the pod needs the
  largest of those and of the running sum, per resource.

Counts are Kubernetes quantities (``"2"``, ``2``, ``"1k"``, ``"2e3"``, ``"1000m"``). A value
that is not a whole number >= 0 that fits in 64 bits (Kubernetes' own limit) is a
:class:`BadCount` with a sentence saying why, never an exception: one pod's typo must not stop
the pass that serves every other pod.

Pure: imports nothing of Kubernetes, kopf or NVML.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from cdmo.mig.resources import RESOURCE_PREFIX, parse_mig_resource

#: The largest count Kubernetes can hold (int64); the API server refuses larger quantities.
MAX_COUNT = 2**63 - 1

#: A quantity longer than this is not a count anyone meant; refused before it is parsed.
_MAX_TEXT = 64
#: 10**19 > MAX_COUNT: an exponent past this can only give 0 or a count out of range, so it is
#: decided without building the number (``1e999999999`` must not cost a pass its time).
_MAX_EXPONENT = 40

_TOO_BIG = "more than Kubernetes can count"

_QUANTITY = re.compile(
    r"^(?P<sign>[+-]?)(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE](?P<exp>[+-]?[0-9]+))?$"
)
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


@dataclass(frozen=True)
class BadCount:
    """A resource count that is not a whole number of devices, with the reason in words."""

    resource: str
    container: str
    value: str
    reason: str
    #: A whole number beyond :data:`MAX_COUNT`: "more than any node holds", not a typo.
    too_big: bool = False

    def __str__(self) -> str:
        return f"container {self.container} asks for {self.value} {self.resource}: {self.reason}"


@dataclass(frozen=True)
class PodDemand:
    """What one pod needs at once: resource name -> count (> 0), and the values it could not read."""

    requests: Mapping[str, int] = field(default_factory=dict)
    bad: tuple[BadCount, ...] = ()

    @property
    def total(self) -> int:
        """Devices the pod needs at once, over all resources."""
        return sum(self.requests.values())

    def by_profile(self) -> dict[str, int]:
        """MIG profile -> count; shared names (``...shared``) count as asks for their profile.

        Resource names that name no MIG profile are left out (:func:`unknown_resources` lists them).
        """
        out: dict[str, int] = {}
        for resource, count in self.requests.items():
            parsed = parse_mig_resource(resource)
            if parsed is not None:
                out[parsed.profile] = out.get(parsed.profile, 0) + count
        return dict(sorted(out.items()))

    def unknown_resources(self) -> tuple[str, ...]:
        """Asked-for MIG resource names that name no profile cdmo knows the shape of."""
        return tuple(r for r in self.requests if parse_mig_resource(r) is None)


def parse_count(value: object) -> tuple[int | None, str]:
    """``(count, "")`` for a whole, non-negative quantity that fits in 64 bits, else ``(None, reason)``.

    Decided in time bounded by the text's length (at most 64 characters are read).
    """
    if isinstance(value, bool):
        return None, "a count must be a number, not a boolean"
    if isinstance(value, int):
        return _bounded(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None, "a count must be a finite number"
        if not value.is_integer():
            return None, "a count of devices must be a whole number"
        return _bounded(int(value))
    if not isinstance(value, str):
        return None, f"a count must be a number, not {type(value).__name__}"
    text = value.strip()
    if len(text) > _MAX_TEXT:
        return None, f"a count longer than {_MAX_TEXT} characters is not a number of devices"
    m = _QUANTITY.match(text)
    if m is None:
        return None, "not a Kubernetes quantity; a count of devices is a whole number such as 1 or 2"
    number = Fraction(m["number"] if not m["number"].endswith(".") else m["number"][:-1])
    if m["sign"] == "-" and number:
        return None, "a count of devices cannot be negative"
    if not number:
        return 0, ""
    exp10 = int(m["exp"]) if m["exp"] is not None else _DECIMAL.get(m["suffix"] or "", 0)
    if exp10 > _MAX_EXPONENT:
        return None, f"{_TOO_BIG} (at most {MAX_COUNT})"
    if exp10 < -_MAX_EXPONENT:
        return None, "a count of devices must be a whole number"
    amount = number * Fraction(10) ** exp10 * 2 ** _BINARY.get(m["suffix"] or "", 0)
    if amount.denominator != 1:
        return None, "a count of devices must be a whole number"
    return _bounded(amount.numerator)


def _bounded(count: int) -> tuple[int | None, str]:
    if count < 0:
        return None, "a count of devices cannot be negative"
    if count > MAX_COUNT:
        return None, f"{_TOO_BIG} (at most {MAX_COUNT})"
    return count, ""


def _container_demand(
    container: Mapping[str, Any], wanted: Callable[[str], bool], bad: list[BadCount]
) -> dict[str, int]:
    resources = container.get("resources") or {}
    if not isinstance(resources, Mapping):
        return {}
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    merged: dict[str, Any] = {}
    for source in (requests, limits):  # limits last: they win
        if isinstance(source, Mapping):
            merged.update({k: v for k, v in source.items() if isinstance(k, str) and wanted(k)})
    out: dict[str, int] = {}
    name = str(container.get("name") or "?")
    for resource, raw in sorted(merged.items()):
        count, reason = parse_count(raw)
        if count is None:
            bad.append(BadCount(resource, name, _show(raw), reason, reason.startswith(_TOO_BIG)))
        elif count > 0:
            out[resource] = count
    return out


def _show(value: object) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _add(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


def _max(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    return {k: max(a.get(k, 0), b.get(k, 0)) for k in set(a) | set(b)}


def _containers(spec: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    items = spec.get(key) or []
    return [c for c in items if isinstance(c, Mapping)] if isinstance(items, list) else []


def read_demand(pod: Mapping[str, Any], wanted: Callable[[str], bool] | None = None) -> PodDemand:
    """The pod's demand for the resources ``wanted`` accepts (default: ``nvidia.com/mig-*``).

    Effective count per resource = max(app containers + sidecars, for each plain init container:
    itself + the sidecars started before it). Sums may exceed :data:`MAX_COUNT` only if single
    counts are near it; callers bound counts against what nodes can hold.
    """
    accept = wanted or (lambda name: name.startswith(RESOURCE_PREFIX))
    spec = pod.get("spec") or {}
    if not isinstance(spec, Mapping):
        return PodDemand()
    bad: list[BadCount] = []
    running: dict[str, int] = {}
    for c in _containers(spec, "containers"):
        running = _add(running, _container_demand(c, accept, bad))
    sidecars: dict[str, int] = {}
    peak_init: dict[str, int] = {}
    for c in _containers(spec, "initContainers"):
        own = _container_demand(c, accept, bad)
        if c.get("restartPolicy") == "Always":
            sidecars = _add(sidecars, own)
        else:
            peak_init = _max(peak_init, _add(sidecars, own))
    total = _max(_add(running, sidecars), peak_init)
    return PodDemand(
        requests={k: v for k, v in sorted(total.items()) if v > 0},
        bad=tuple(bad),
    )
