"""Why a pod stays unsatisfied, in words that say what to do, and a stable code for Events.

The first cause that applies wins, from the pod's own request outwards to the room left:

=================  ==========================================================================
code               cause
=================  ==========================================================================
TooManyDevices     more devices than any labelled node can hold (decided before the search,
                   see cdmo.planner.bounds)
NoMigRequest       the pod asks for no ``nvidia.com/mig-*`` resource
UnknownProfile     a resource names no profile, or no GPU model of the cluster has the profile
NoLabelledNode     no node carries the partitioning label
NoMatchingNode     no labelled node matches the nodeSelector / required node affinity
TaintNotTolerated  every matching node has a NoSchedule/NoExecute taint the pod does not tolerate
NodeCordoned       every node left is cordoned (unschedulable)
NoFittingGpu       no eligible node has GPUs that could hold the demand even if they were empty
NoRoom             used instances leave no room for the demand on any eligible node
Outranked          pods of higher priority in this plan take the room that is left
NoRoomLeft         pods of the same priority in this plan take the room that is left
Draining           (set by the planner) a GPU is drained for the pod; it waits for the pods there
=================  ==========================================================================

Pure: imports nothing of Kubernetes or NVML.
"""

from __future__ import annotations

from collections.abc import Sequence

from cdmo.api import PARTITIONING_LABEL_KEY, PARTITIONING_LABEL_VALUE
from cdmo.mig.catalog import find_model, models_with_profile
from cdmo.mig.resources import RESOURCE_PREFIX
from cdmo.planner.demand import format_demand
from cdmo.planner.eligibility import (
    matches_affinity,
    matches_selector,
    name_in_signature,
    named_nodes,
    names_told_apart,
    referenced_label_keys,
    untolerated_taints,
)
from cdmo.planner.models import Node, Unsatisfied
from cdmo.planner.view import RunView, WaitingPod

LABEL = f"{PARTITIONING_LABEL_KEY}={PARTITIONING_LABEL_VALUE}"
#: A waiting pod's reason names at most this many of the nodes that would have room for it
#: beside their used instances (see Explainer._room), counting the rest as "at least N more".
ROOM_NAMES_LIMIT = 64
#: Walks over a node's GPUs (RunView.work_done) one plan's explanations may make, about a second.
#: Each waiting pod is explained against every eligible node, and a pod whose demand is its own
#: (several profiles at once) gets no cached answer: 2,000 such pods on 1,000 nodes took minutes.
#: Past the bound the pods not yet explained get EXPLAIN_CUT, a code of its own: NoRoom would say
#: that no node has room, which nothing checked.
#: The plans of tests/data and the benchmarks stay far below it (0 to a few hundred).
EXPLAIN_WORK = 20_000
EXPLAIN_CUT = (
    "NotExplained",
    f"the planner found no room for it on its eligible nodes (not explained further: this plan's "
    f"explanations reached their bound of {EXPLAIN_WORK} walks over nodes); it waits for the next plan",
)


def name_list(names: Sequence[str], limit: int = 3, *, at_least: bool = False) -> str:
    """``a, b and c`` or ``a, b, c and 4 more``; ``at_least``: ``names`` are the first of more
    (``a, b, c and at least 5 more``)."""
    names = list(names)
    if at_least:
        shown = names[:limit]
        return ", ".join(shown) + f" and at least {len(names) + 1 - len(shown)} more"
    if len(names) <= 1:
        return "".join(names)
    if len(names) <= limit:
        return ", ".join(names[:-1]) + " and " + names[-1]
    return ", ".join(names[:limit]) + f" and {len(names) - limit} more"


def explain(planner: RunView, pods: Sequence[WaitingPod]) -> list[Unsatisfied]:
    """One :class:`Unsatisfied` per pod, with the first cause that applies."""
    if not pods:
        return []  # every pod served: no node classes to build
    cache: dict[tuple[object, ...], tuple[str, str]] = {}
    classes = _node_classes(planner)
    by_name: dict[str, int] = {}  # filled by the first pod pinned by name
    start = planner.work_done()
    out = []
    for pod in pods:
        sig = (
            tuple(pod.pod.node_selector.items()),
            pod.pod.node_affinity,
            pod.pod.tolerations,
            pod.demand,
            pod.bad_resources,
            pod.pod.priority,
        )
        if sig not in cache:
            room = planner.work_done() - start < EXPLAIN_WORK
            cache[sig] = _Explainer(planner, pod, classes, by_name).reason(room=room)
        code, reason = cache[sig]
        out.append(Unsatisfied(pod=pod.key, reason=reason, code=code, priority=pod.pod.priority))
    return out


def _node_classes(planner: RunView) -> list[list[Node]]:
    """Labelled nodes grouped by all that the pods' filters can see of them."""
    pending = planner.pending_pods()
    keys = referenced_label_keys(pending)
    told_apart = names_told_apart(pending)
    classes: dict[tuple[object, ...], list[Node]] = {}
    for node in planner.src_nodes:
        if not node.labelled:
            continue
        sig = (
            tuple((k, v) for k, v in node.labels.items() if k in keys),
            tuple((t.key, t.value, t.effect) for t in node.taints),
            node.unschedulable,
            name_in_signature(node.name, told_apart),
        )
        classes.setdefault(sig, []).append(node)
    return list(classes.values())


class _Explainer:
    def __init__(
        self,
        planner: RunView,
        pod: WaitingPod,
        classes: list[list[Node]],
        by_name: dict[str, int] | None = None,
    ) -> None:
        self.planner = planner
        self.pod = pod
        self.classes = classes
        #: Node name -> position of its class in ``classes`` (shared by every pod of one run).
        self.by_name = by_name if by_name is not None else {}

    def _classes_named(self, names: frozenset[str]) -> list[list[Node]]:
        """The classes holding nodes of ``names``, in the order of ``classes``."""
        if not self.by_name:
            self.by_name.update((n.name, i) for i, c in enumerate(self.classes) for n in c)
        found = sorted({self.by_name[n] for n in names if n in self.by_name})
        return [self.classes[i] for i in found]

    def reason(self, *, room: bool = True) -> tuple[str, str]:
        """The first cause that applies; ``room``: False once explain's work is spent (EXPLAIN_CUT
        instead of the room check, the one that walks nodes)."""
        for check in (self._request, self._labelled, self._profiles, self._filters, self._gpus):
            found = check()
            if found is not None:
                return found
        if not room:
            return EXPLAIN_CUT
        found = self._room()
        if found is not None:
            return found
        return "NoRoom", "the planner found no room for it on its eligible nodes; it waits for the next plan"

    # --- the pod's own request ---------------------------------------------------------------

    def _request(self) -> tuple[str, str] | None:
        if self.pod.bad_resources:
            return (
                "UnknownProfile",
                f"{self.pod.bad_resources[0]} does not name a MIG profile; ask for a resource like "
                "nvidia.com/mig-1g.10gb",
            )
        if not self.pod.demand:
            zero = sorted(
                r for r, n in self.pod.pod.requests.items() if r.startswith(RESOURCE_PREFIX) and n == 0
            )
            if zero:
                return (
                    "NoMigRequest",
                    f"the pod asks for 0 of {zero[0]}, so there is nothing for cdmo to partition; "
                    "ask for at least 1",
                )
            return (
                "NoMigRequest",
                "the pod asks for no nvidia.com/mig-* resource, so there is nothing for cdmo to partition; "
                "add a MIG resource request such as nvidia.com/mig-1g.10gb: 1",
            )
        return None

    def _labelled(self) -> tuple[str, str] | None:
        if not any(n.labelled for n in self.planner.src_nodes):
            return (
                "NoLabelledNode",
                f"no node is labelled {LABEL}, so cdmo may partition none; label a MIG-capable GPU node "
                f"(kubectl label node NODE {LABEL})",
            )
        return None

    def _cluster_models(self) -> list[str]:
        return list(self.planner.cluster_models)

    def _profiles(self) -> tuple[str, str] | None:
        assert self.pod.demand is not None
        cluster = self._cluster_models()
        offered: set[str] = set()
        for key in cluster:
            model = find_model(key)
            assert model is not None
            offered.update(model.profile_names)
        for profile, _ in self.pod.demand:
            if profile in offered:
                continue
            if not cluster:
                return (
                    "NoFittingGpu",
                    f"no labelled node has a GPU of a model cdmo knows, so none can hold {profile}; "
                    "check the GPU models the nodes report (cdmo profiles lists the known ones)",
                )
            elsewhere = [m.key for m in models_with_profile(profile)]
            where = f" (it is a profile of {name_list(elsewhere)})" if elsewhere else ""
            ask = sorted({p for key in cluster for p in find_model(key).profile_names})  # type: ignore[union-attr]
            return (
                "UnknownProfile",
                f"{profile} is not a MIG profile of any GPU model in this cluster{where}; "
                f"the cluster's models ({name_list(cluster)}) offer {', '.join(ask)}",
            )
        return None

    # --- the scheduler's filters -------------------------------------------------------------

    def _filters(self) -> tuple[str, str] | None:
        pod = self.pod.pod
        classes = self.classes
        # A pod pinned by name can match only its nodes' classes: the others fail its affinity
        # whatever their labels, so the answer is the same when they are not looked at.
        named = named_nodes(pod.node_affinity)
        pool = classes if named is None else self._classes_named(named)
        selected = (
            [c for c in pool if matches_selector(c[0].labels, pod.node_selector)]
            if pod.node_selector
            else pool
        )
        selector = ",".join(f"{k}={v}" for k, v in pod.node_selector.items())
        if not selected and not any(matches_selector(c[0].labels, pod.node_selector) for c in classes):
            return (
                "NoMatchingNode",
                f"no labelled node matches nodeSelector {selector}; label a node {selector} "
                "or change the pod's nodeSelector",
            )
        matching = [c for c in selected if matches_affinity(pod.node_affinity, c[0].labels, c[0].name)]
        if not matching:
            terms = " or ".join(f"({t})" for t in pod.node_affinity or ())
            also = f" with nodeSelector {selector}" if selector else ""
            return (
                "NoMatchingNode",
                f"no labelled node{also} matches the pod's required node affinity {terms}; "
                "label a node to match or relax the affinity",
            )
        tolerated = [c for c in matching if not untolerated_taints(c[0].taints, pod.tolerations)]
        if not tolerated:
            blocked = sorted(
                f"{n.name} ({untolerated_taints(n.taints, pod.tolerations)[0]})" for c in matching for n in c
            )
            return (
                "TaintNotTolerated",
                f"every labelled node that matches the pod has a taint it does not tolerate: "
                f"{name_list(blocked)}; add a toleration or remove the taint",
            )
        open_nodes = sorted((n for c in tolerated if not c[0].unschedulable for n in c), key=lambda n: n.name)
        if not open_nodes:
            names = sorted(n.name for c in tolerated for n in c)
            if len(names) == 1:
                return (
                    "NodeCordoned",
                    f"node {names[0]} is cordoned; uncordon it (kubectl uncordon {names[0]}) or let the pod "
                    "match another labelled node",
                )
            return (
                "NodeCordoned",
                f"nodes {name_list(names)} are cordoned; uncordon one (kubectl uncordon NODE) or let the pod "
                "match another labelled node",
            )
        self.eligible: list[Node] = open_nodes
        return None

    # --- the GPUs of the eligible nodes ------------------------------------------------------

    def _eligible_planner_nodes(self) -> list[str]:
        return [n.name for n in self.eligible if self.planner.gpu_models(n.name)]

    def _gpus(self) -> tuple[str, str] | None:
        assert self.pod.demand is not None
        nodes = self._eligible_planner_nodes()
        eligible_names = [n.name for n in self.eligible]
        if not nodes:
            return (
                "NoFittingGpu",
                f"the eligible nodes ({name_list(eligible_names)}) have no GPU of a model cdmo knows; "
                "check the GPU models they report (cdmo profiles lists the known ones)",
            )
        for profile, _ in self.pod.demand:
            if not any(self.planner.offers(n, profile) for n in nodes):
                models = sorted({m for n in nodes for m in self.planner.gpu_models(n)})
                return (
                    "NoFittingGpu",
                    f"no eligible node has a GPU that offers {profile} (eligible: {name_list(eligible_names)} "
                    f"with {name_list(models)}); ask for a profile of those models or make a node with "
                    "such a GPU eligible",
                )
        empty = [n for n in nodes if self.planner.fits_empty(n, self.pod.demand)]
        if not empty:
            return (
                "NoFittingGpu",
                f"{format_demand(self.pod.demand)} does not fit on any eligible node even with all its GPUs "
                f"empty (eligible: {name_list(eligible_names)}); ask for fewer or smaller devices",
            )
        self.empty_fit = empty
        return None

    # --- the room left -----------------------------------------------------------------------

    def _room(self) -> tuple[str, str] | None:
        assert self.pod.demand is not None
        demand = format_demand(self.pod.demand)
        fits = self.planner.fits_used_only
        # The nodes where it would fit beside the used instances, at most ROOM_NAMES_LIMIT of them
        # named: a waiting pod is explained against every eligible node, and a pod that asks
        # several profiles at once (a demand of its own, so nothing cached answers for it) costs
        # two walks over a node's GPUs each; past the limit the message says "at least".
        # One pass: the nodes with room (named up to the limit) and whether pods of higher priority
        # hold one of them (cheap test first); it stops once both answers are known.
        priority = self.pod.pod.priority
        used_fit: list[str] = []
        capped = outranked = False
        for n in self.empty_fit:
            if capped and outranked:
                break
            higher = (top := self.planner.top_priority_on(n)) is not None and top > priority
            if (capped and not higher) or not fits(n, self.pod.demand):
                continue
            outranked = outranked or higher
            if len(used_fit) == ROOM_NAMES_LIMIT:
                capped = True
            else:
                used_fit.append(n)
        if not used_fit:
            return (
                "NoRoom",
                f"every eligible GPU holds used instances that leave no room for {demand}; it can run when "
                "pods on those GPUs finish, or when a GPU that can hold it joins an eligible node",
            )
        where = name_list(used_fit, at_least=capped)
        if outranked:
            return (
                "Outranked",
                f"pods of higher priority take the room left for {demand} on its eligible nodes ({where}); "
                "it waits for the next plan, or raise its priority",
            )
        return (
            "NoRoomLeft",
            f"other pods of this plan take the room left for {demand} on its eligible nodes ({where}); "
            "it waits until instances free up, or give it a higher priority",
        )
