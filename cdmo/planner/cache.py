"""What the planner may keep between plans: facts derived from one immutable node or pod.

A :class:`PlanCache` is optional and small. Pass the same one to every plan
(``plan(snapshot, options, cache=cache)``) when the caller hands unchanged nodes and pods over as
the *same* objects plan after plan (the simulator re-parses only the nodes that changed, see
cdmo.sim.dynamic). Everything in it is derived from a :class:`~cdmo.planner.models.Node` or
:class:`~cdmo.planner.models.PendingPod` alone, so a plan is the same with a cache, without one,
or with one that saw other snapshots before (tests/unit/planner/test_cache.py checks it):

- per node (:class:`NodeFacts`): each GPU's model tables and its layout as bits, or why it is left
  as it is; placement room; the profiles it holds free; the device capacity that the count screen
  (cdmo.planner.bounds) reads; the node's entry in the plan for a plan that leaves it as it is,
  built once and reused by every such plan (the plan lists every labelled node); and the
  planner's search records of the node and its GPUs, set back to the snapshot's state by each
  plan that takes them;
- per pod (:class:`PodFacts`): its demand and what the node filters read;
- per GPU model and instances tuple (:data:`GpuMemo`): what a GPU gives whatever node it is on,
  shared by the many GPUs of a big cluster that hold the same layout.

Entries are keyed by object identity and hold the object itself, so an id is never reused while
its entry lives; after each plan, entries of objects that plan did not see are dropped (kept alive
only while the node or pod is current). Nothing in it points both ways once a plan has ended (the
plan cuts its search records' links to its groups and from node to GPUs), so dropped entries are
freed by reference counting alone.

Pure: imports nothing of Kubernetes or NVML.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from cdmo.mig.catalog import GpuModel
from cdmo.mig.layouts import Instance, sort_layout
from cdmo.planner.demand import demand_of
from cdmo.planner.geometry import Demand, Geometry, bits_of, geometry
from cdmo.planner.models import Gpu, GpuInstance, GpuPlan, Node, NodePlan, PendingPod
from cdmo.planner.search import SearchGpu, SearchNode

#: Distinct pod filter signatures numbered before the numbering starts over.
_SIG_LIMIT = 100_000

#: A plannable GPU: (index in the snapshot, used instances as bits, free instances as bits); its
#: model's tables are in NodeFacts.geos at the same position.
GpuFacts = tuple[int, int, int]


#: What one GPU's model and instances give, whatever node it is on: (its instances, the most
#: MIG devices it could hold, catalog key or None, model tables or None where the layout is not
#: valid, used instances as bits, free instances as bits, placement room beside the used ones,
#: profiles of the free instances in candidate order).
GpuMemo = tuple[tuple[GpuInstance, ...], int, str | None, Geometry | None, int, int, int, tuple[str, ...]]

#: GPU entries kept by a PlanCache before it starts over (a few hundred bytes each).
_GPU_MEMO_LIMIT = 100_000


def _gpu_facts(
    model_text: str, instances: tuple[GpuInstance, ...], model_of: Callable[[str], GpuModel | None]
) -> GpuMemo:
    model = model_of(model_text)
    if model is None:
        return (instances, 0, None, None, 0, 0, 0, ())
    capacity = max(p.max_count for p in model.profiles) if model.profiles else 0
    geo = geometry(model)
    fixed = free = 0
    for inst in instances:
        i = geo.slot.get((inst.profile, inst.start))
        if i is None:
            fixed = -1
            break
        if inst.used:
            fixed |= 1 << i
        else:
            free |= 1 << i
    if fixed < 0 or (fixed | free) not in geo.valid or fixed & free:
        return (instances, capacity, model.key, None, 0, 0, 0, ())
    profiles = tuple(dict.fromkeys(geo.cands[i].profile for i in bits_of(free)))
    return (instances, capacity, model.key, geo, fixed, free, geo.room(fixed), profiles)


class NodeFacts:
    """What the planner derives from one node, whatever the rest of the snapshot holds."""

    __slots__ = (
        "_unchanged",
        "capacity",
        "claimed",
        "free_profiles",
        "frozen",
        "geos",
        "gpus",
        "models",
        "node",
        "room",
        "search",
        "sig",
    )

    def __init__(
        self,
        node: Node,
        model_of: Callable[[str], GpuModel | None],
        memo: dict[tuple[str, int], GpuMemo] | None = None,
    ) -> None:
        self.node = node
        #: Plannable GPUs in snapshot order (labelled nodes only).
        self.gpus: tuple[GpuFacts, ...] = ()
        #: The model tables of each plannable GPU.
        self.geos: tuple[Geometry, ...] = ()
        #: (GPU index, reason) of GPUs left exactly as they are: unknown model, or an invalid layout.
        self.frozen: tuple[tuple[int, str], ...] = ()
        #: Catalog keys of the GPUs' known models (labelled nodes only).
        self.models: tuple[str, ...] = ()
        #: Placement units that used instances leave, in 24ths of a GPU, summed over the GPUs.
        self.room = 0
        #: Profiles of the free instances, in the order they first appear (candidates by GPU).
        self.free_profiles: tuple[str, ...] = ()
        #: Most MIG devices the node could hold at once (cdmo.planner.bounds.node_capacity).
        self.capacity = 0
        #: (label keys some pod selects on) -> what of the node's labels and taints goes into its
        #: group signature; the last one asked (pods change far less often than nodes).
        self.sig: tuple[Any, Any] | None = None
        self._unchanged: NodePlan | None = None
        #: The planner's search records of this node and its plannable GPUs, made by the first
        #: plan that saw it and set back to the snapshot's state by each later one (a plan cuts
        #: their links to its groups when it ends, so they point at nothing of an old plan).
        self.search: tuple[SearchNode, tuple[SearchGpu, ...]] | None = None
        #: PlanCache.stamp of the last plan that took ``search``.
        self.claimed = -1
        gpus: list[GpuFacts] = []
        geos: list[Geometry] = []
        frozen: list[tuple[int, str]] = []
        models: list[str] = []
        free_profiles: dict[str, None] = {}
        labelled = node.labelled
        for g in node.gpus:
            # What a GPU's model and instances give, shared by the GPUs that equal it (a cluster
            # repeats a few layouts over thousands of GPUs; parse_snapshot hands equal layouts
            # over as one tuple). The entry holds the tuple, so its id stays its own.
            key = (g.model, id(g.instances))
            found = memo.get(key) if memo is not None else None
            if found is None or found[0] is not g.instances:
                found = _gpu_facts(g.model, g.instances, model_of)
                if memo is not None:
                    memo[key] = found
            _, capacity, model_key, geo, fixed, free, room, profiles = found
            self.capacity += capacity
            if not labelled:
                continue
            if model_key is None:
                frozen.append((g.index, "unknown-model"))
                continue
            models.append(model_key)
            if geo is None:
                # Only a snapshot built in code can get here (parse_snapshot refuses it).
                frozen.append((g.index, "invalid-layout"))
                continue
            gpus.append((g.index, fixed, free))
            geos.append(geo)
            self.room += room
            for profile in profiles:
                free_profiles[profile] = None
        self.gpus = tuple(gpus)
        self.geos = tuple(geos)
        self.frozen = tuple(frozen)
        self.models = tuple(models)
        self.free_profiles = tuple(free_profiles)

    def unchanged_plan(
        self, model_of: Callable[[str], GpuModel | None], shared: dict[KeptKey, GpuPlan]
    ) -> NodePlan:
        """The node's entry in a plan that leaves every GPU of it as it is (built once).

        ``shared``: the plan's unchanged GPU entries (see :func:`kept_gpu_plan`).
        """
        if self._unchanged is None:
            self._unchanged = NodePlan(
                self.node.name,
                tuple(
                    shared.get((g.index, g.model, id(g.instances))) or kept_gpu_plan(g, model_of, shared)
                    for g in self.node.gpus
                ),
            )
        return self._unchanged


#: (GPU index, model as written, id of its instances tuple): what an unchanged GPU's entry in a
#: plan is made of.
KeptKey = tuple[int, str, int]


def kept_gpu_plan(
    gpu: Gpu, model_of: Callable[[str], GpuModel | None], shared: dict[KeptKey, GpuPlan]
) -> GpuPlan:
    """The plan's entry for ``gpu`` left as it is, shared by the GPUs that equal it.

    An unchanged GPU's entry depends on its index, model and instances alone (its desired layout
    is its instances in canonical order, whether the planner searched it or left it frozen), and
    a cluster repeats a few layouts over thousands of GPUs (parse_snapshot hands equal layouts
    over as one tuple): one frozen value per distinct GPU means fewer objects for each plan to
    make and for the collector to walk. ``shared`` lives for one plan, whose snapshot keeps the
    instance tuples alive, so their ids stay theirs; entries kept longer (_KEPT) hold their tuple.
    """
    key = (gpu.index, gpu.model, id(gpu.instances))
    found = shared.get(key)
    if found is not None:
        return found
    # Kept between plans too: parse_snapshot hands a layout it read before over as the same
    # tuple, so a planning loop builds each distinct entry once (the entry holds the tuple).
    kept = _KEPT.get(key)
    if kept is not None and kept[0] is gpu.instances:
        found = shared[key] = kept[1]
        return found
    known = model_of(gpu.model)
    after: tuple[Instance, ...] | None = None
    if known is not None:
        # The model's own candidates where it has them (values shared by every plan).
        slot = geometry(known).slot
        bits = 0
        for inst in gpu.instances:
            i = slot.get((inst.profile, inst.start))
            if i is None:
                break
            bits |= 1 << i
        else:
            if bits.bit_count() == len(gpu.instances):
                after = geometry(known).instances(bits)
    if after is None:
        after = sort_layout(i.instance for i in gpu.instances)
    found = shared[key] = GpuPlan(
        gpu.index, gpu.model, known.key if known is not None else None, gpu.instances, after
    )
    if len(_KEPT) >= _KEPT_LIMIT:
        _KEPT.clear()
    _KEPT[key] = (gpu.instances, found)
    return found


#: Unchanged GPUs' entries kept between plans (see kept_gpu_plan), bounded: then starts over.
_KEPT: dict[KeptKey, tuple[tuple[GpuInstance, ...], GpuPlan]] = {}
_KEPT_LIMIT = 16_384


#: What the planner derives from one pending pod: (demand: sorted (profile, count) or None when
#: it asks for no MIG device, resource names that name no profile, device count, label keys its
#: selector and affinity look at, whether its affinity selects on ``metadata.name``, a number equal
#: for pods whose selector, affinity and tolerations are equal). Numbers and strings only, so the
#: cyclic collector does not track the thousands a big plan holds.
PodFacts = tuple[Demand | None, tuple[str, ...], int, tuple[str, ...], bool, int]


def _label_keys(pod: PendingPod) -> tuple[str, ...]:
    if not pod.node_selector and not pod.node_affinity:
        return ()
    keys = set(pod.node_selector)
    for term in pod.node_affinity or ():
        keys.update(r.key for r in term.match_expressions)
    return tuple(sorted(keys))


class PlanCache:
    """Facts about nodes and pods kept between plans (see the module docstring).

    Not thread-safe: one cache per planning loop. ``plan()`` without a cache uses a fresh one, so
    both paths run the same code.
    """

    def __init__(self) -> None:
        self._nodes: dict[int, NodeFacts] = {}
        #: (GPU model as written, id of its instances tuple) -> what they give (NodeFacts)
        self._gpus: dict[tuple[str, int], GpuMemo] = {}
        # Pods: facts and the pod itself in two maps, so that no small object per pod is tracked
        # by the cyclic collector (the facts are numbers and strings only).
        self._pods: dict[int, PodFacts] = {}
        self._pod_refs: dict[int, PendingPod] = {}
        self._seen_nodes: dict[int, NodeFacts] = {}
        self._seen_pods: dict[int, PodFacts] = {}
        self._seen_pod_refs: dict[int, PendingPod] = {}
        #: pod filter signature -> a small number, equal for equal signatures
        self._sig_ids: dict[tuple[Any, ...], int] = {}
        #: demand -> the facts of a pod without selector, affinity or tolerations asking for it
        self._plain: dict[Demand, PodFacts] = {}
        #: ids of a pod's requests, selector, affinity and tolerations -> (those objects, the
        #: pod's facts); one plan's only (it holds the objects, so their ids stay theirs)
        self._kinds: dict[tuple[int, int, int, int], tuple[Any, Any, Any, Any, PodFacts]] = {}
        #: Counts the plans (NodeFacts.claimed).
        self.stamp = 0
        #: Node facts built and reused by the last plan (for tests and benchmarks).
        self.built = 0
        self.reused = 0

    def node(self, node: Node, model_of: Callable[[str], GpuModel | None]) -> NodeFacts:
        """The facts of ``node``: kept from an earlier plan if it passed this very object."""
        key = id(node)
        facts = self._seen_nodes.get(key)
        if facts is not None and facts.node is node:
            return facts
        facts = self._nodes.get(key)
        if facts is None or facts.node is not node:
            facts = NodeFacts(node, model_of, self._gpus)
            self.built += 1
        else:
            self.reused += 1
        self._seen_nodes[key] = facts
        return facts

    def pods(self, pods: Iterable[PendingPod]) -> list[PodFacts]:
        """The facts of each pod, in order: kept from an earlier plan for a pod it passed as this
        very object, else derived (once per kind of pod)."""
        seen, seen_refs = self._seen_pods, self._seen_pod_refs
        kept, kept_refs = self._pods, self._pod_refs
        out = []
        for pod in pods:
            key = id(pod)
            if seen_refs.get(key) is pod:
                out.append(seen[key])
                continue
            facts = kept[key] if kept_refs.get(key) is pod else self._facts(pod)
            seen[key] = facts
            seen_refs[key] = pod
            out.append(facts)
        return out

    def _facts(self, pod: PendingPod) -> PodFacts:
        # parse_snapshot hands pods of one kind over with one requests mapping, one selector, one
        # tuple of tolerations and one affinity: a kind's facts are derived once per plan.
        requests, selector = pod.requests, pod.node_selector
        affinity, tolerations = pod.node_affinity, pod.tolerations
        key = (id(requests), id(selector), id(affinity), id(tolerations))
        kind = self._kinds.get(key)
        if (
            kind is None
            or kind[0] is not requests
            or kind[1] is not selector
            or kind[2] is not affinity
            or kind[3] is not tolerations
        ):
            kind = self._kinds[key] = (requests, selector, affinity, tolerations, self._derive(pod))
        return kind[4]

    def _derive(self, pod: PendingPod) -> PodFacts:
        demand, bad = demand_of(pod)
        if not pod.node_selector and pod.node_affinity is None and not pod.tolerations:
            # Most pods: their facts depend on the demand alone, so equal asks share one tuple.
            plain = self._plain.get(demand)
            if plain is None or plain[1] != bad:
                plain = (demand or None, bad, sum(c for _, c in demand), (), False, self._no_filters())
                if len(self._plain) >= _SIG_LIMIT:
                    self._plain = {}
                self._plain[demand] = plain
            return plain
        sig = (tuple(pod.node_selector.items()), pod.node_affinity, pod.tolerations)
        return (
            demand or None,
            bad,
            sum(c for _, c in demand),
            _label_keys(pod),
            any(term.match_fields for term in pod.node_affinity or ()),
            self._sig_ids.setdefault(sig, len(self._sig_ids)),
        )

    def _no_filters(self) -> int:
        """The number of a pod without selector, affinity or tolerations (most pods)."""
        return self._sig_ids.setdefault(((), None, ()), len(self._sig_ids))

    def begin(self) -> None:
        """Start a plan: count afresh what it builds and reuses."""
        self.built = self.reused = 0
        self.stamp += 1
        self._seen_nodes = {}
        self._seen_pods = {}
        self._seen_pod_refs = {}
        self._kinds = {}
        if len(self._gpus) >= _GPU_MEMO_LIMIT:
            self._gpus = {}
        if len(self._sig_ids) >= _SIG_LIMIT:
            # Start the numbering over, and forget the pods numbered before.
            self._sig_ids = {}
            self._plain = {}
            self._pods = {}
            self._pod_refs = {}

    def end(self) -> None:
        """End a plan: keep only the nodes and pods it saw (the current ones)."""
        self._kinds = {}
        self._nodes, self._seen_nodes = self._seen_nodes, {}
        self._pods, self._seen_pods = self._seen_pods, {}
        self._pod_refs, self._seen_pod_refs = self._seen_pod_refs, {}

    def __len__(self) -> int:
        return len(self._nodes)


__all__ = ["KeptKey", "NodeFacts", "PlanCache", "PodFacts", "kept_gpu_plan"]
