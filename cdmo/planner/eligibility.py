"""Which nodes a pending pod may go to: the scheduler's filters that the planner must honour.

Kubernetes semantics (kube-scheduler's NodeAffinity and TaintToleration plugins):

- ``nodeSelector``: every key=value must be a label of the node.
- required node affinity: the terms are ORed; in a term every expression (and field) must hold;
  a term with neither matches no node. In: the label exists and its value is listed; NotIn: the
  label is absent or its value is not listed; Exists / DoesNotExist; Gt / Lt: the label exists
  and its value, read as a whole number, is greater / less than the one given (a value that is
  not a number matches neither). ``matchFields`` select ``metadata.name``.
- taints: a NoSchedule or NoExecute taint keeps every pod that does not tolerate it off the
  node; PreferNoSchedule does not. A toleration matches a taint when its effect is empty or the
  same, its key is empty (with Exists: every taint) or the same, and with Equal the values match.
- a cordoned (``unschedulable``) node takes no pod at all, whatever the pod tolerates.

Pure: imports nothing of Kubernetes or NVML.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from cdmo.planner.models import (
    BLOCKING_EFFECTS,
    Node,
    NodeSelectorRequirement,
    NodeSelectorTerm,
    PendingPod,
    Taint,
    Toleration,
)


def tolerates(toleration: Toleration, taint: Taint) -> bool:
    if toleration.effect and toleration.effect != taint.effect:
        return False
    if toleration.key and toleration.key != taint.key:
        return False
    if toleration.operator == "Exists":
        return True
    return toleration.value == taint.value


def untolerated_taints(taints: Iterable[Taint], tolerations: Iterable[Toleration]) -> tuple[Taint, ...]:
    """The taints that keep a pod with ``tolerations`` off a node (NoSchedule and NoExecute only)."""
    tols = tuple(tolerations)
    return tuple(
        t for t in taints if t.effect in BLOCKING_EFFECTS and not any(tolerates(tol, t) for tol in tols)
    )


def matches_selector(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


#: What Kubernetes' Gt and Lt read as a number (strconv.ParseInt(s, 10, 64)): an optional sign and
#: ASCII digits, nothing else (Python's int() also takes spaces, underscores and other scripts' digits).
_INT64 = re.compile(r"[+-]?[0-9]+")


def _as_int(text: str) -> int | None:
    if _INT64.fullmatch(text) is None:
        return None
    value = int(text)
    return value if -(1 << 63) <= value < (1 << 63) else None


def matches_requirement(req: NodeSelectorRequirement, values: Mapping[str, str]) -> bool:
    """Whether a node whose labels (or fields) are ``values`` satisfies ``req``."""
    present = req.key in values
    op = req.operator
    if op == "In":
        return present and values[req.key] in req.values
    if op == "NotIn":
        return not present or values[req.key] not in req.values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if not present:
        return False
    have, want = _as_int(values[req.key]), _as_int(req.values[0])
    if have is None or want is None:
        return False
    return have > want if op == "Gt" else have < want


def matches_term(term: NodeSelectorTerm, labels: Mapping[str, str], name: str) -> bool:
    if not term.match_expressions and not term.match_fields:
        return False
    fields = {"metadata.name": name}
    return all(matches_requirement(r, labels) for r in term.match_expressions) and all(
        matches_requirement(r, fields) for r in term.match_fields
    )


def matches_affinity(
    terms: tuple[NodeSelectorTerm, ...] | None, labels: Mapping[str, str], name: str
) -> bool:
    """Required node affinity: no rule matches every node; otherwise any one term must match."""
    if terms is None:
        return True
    return any(matches_term(t, labels, name) for t in terms)


def named_nodes(terms: tuple[NodeSelectorTerm, ...] | None) -> frozenset[str] | None:
    """The only node names the required affinity ``terms`` can match, when every term names them
    (``matchFields: metadata.name In [...]``, as a pod pinned to its node has); None when some
    term may match other nodes. Lets a pinned pod be checked against its nodes alone, not every
    node of the cluster: those outside the set fail every term, so nothing else changes."""
    if not terms:
        return None
    names: set[str] = set()
    for term in terms:
        allowed: set[str] | None = None
        for req in term.match_fields:
            if req.key == "metadata.name" and req.operator == "In":
                allowed = set(req.values) if allowed is None else allowed & set(req.values)
        if allowed is None:
            return None
        names |= allowed
    return frozenset(names)


def node_admits(node: Node, pod: PendingPod) -> bool:
    """Whether the scheduler would let ``pod`` onto ``node`` (labels, affinity, taints, cordon)."""
    return (
        not node.unschedulable
        and matches_selector(node.labels, pod.node_selector)
        and matches_affinity(pod.node_affinity, node.labels, node.name)
        and not untolerated_taints(node.taints, pod.tolerations)
    )


def referenced_label_keys(pods: Iterable[PendingPod]) -> frozenset[str]:
    """Every label key some pod's selector or affinity looks at (what node grouping must keep)."""
    keys: set[str] = set()
    for pod in pods:
        keys.update(pod.node_selector)
        for term in pod.node_affinity or ():
            keys.update(r.key for r in term.match_expressions)
    return frozenset(keys)


def names_told_apart(pods: Iterable[PendingPod]) -> frozenset[str] | None:
    """The node names that some pod's ``matchFields`` tell apart: those an In or NotIn on
    ``metadata.name`` lists. A node whose name no rule lists passes and fails every field rule
    of every pod alike with any other such node, so grouping nodes needs the name only of the
    nodes listed (one pod pinned by name once made every node of a 1000-node cluster its own
    group, and the plan seven times slower). None when a rule reads the name itself (Gt or Lt
    on ``metadata.name``, which the API server refuses but a snapshot may hold): every name then
    matters."""
    names: set[str] = set()
    for pod in pods:
        for term in pod.node_affinity or ():
            for req in term.match_fields:
                if req.key != "metadata.name":
                    continue  # no node has the field: every node alike
                if req.operator in ("In", "NotIn"):
                    names.update(req.values)
                elif req.operator not in ("Exists", "DoesNotExist"):
                    return None
    return frozenset(names)


def name_in_signature(name: str, told_apart: frozenset[str] | None) -> str | None:
    """What of a node's name goes into its group signature (see :func:`names_told_apart`)."""
    return name if told_apart is None or name in told_apart else None
