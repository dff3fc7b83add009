"""Reading a snapshot (spec/planner-io.md) into frozen dataclasses, and writing it back.

Every problem raises :class:`cdmo.errors.InvalidSnapshot` with the path of the bad field
(``nodes[1].gpus[0].instances[2].start``) and a sentence that says what is expected. Extra
fields are ignored, as the contract allows.

Unknown GPU models: by default (``allow_unknown_models=False``, what ``cdmo plan`` uses) a
labelled node's GPU whose model the catalog does not know is refused with its path, because a
typo there would otherwise silently keep the GPU out of every plan. An unlabelled node's GPUs
are never partitioned, so their model is only checked for shape. Callers that build snapshots
from a live cluster (the operator) pass ``allow_unknown_models=True``: such a GPU is then left
exactly as it is (contract rule 3) and pods that only it could serve are unsatisfied.

Pure: imports nothing of Kubernetes or NVML.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

from cdmo.api import MAX_GPUS_PER_NODE
from cdmo.demand import MAX_COUNT, parse_count
from cdmo.errors import InvalidInput, InvalidSnapshot
from cdmo.mig.catalog import GpuModel, all_models, find_model, is_profile_name, model_keys
from cdmo.mig.layouts import Instance, validate_layout
from cdmo.mig.resources import RESOURCE_PREFIX, profile_from_resource
from cdmo.planner.geometry import geometry
from cdmo.planner.models import (
    AFFINITY_OPERATORS,
    TAINT_EFFECTS,
    TOLERATION_OPERATORS,
    Gpu,
    GpuInstance,
    Node,
    NodeSelectorRequirement,
    NodeSelectorTerm,
    PendingPod,
    Snapshot,
    Taint,
    Toleration,
)

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
#: The only field a node selector term may match on (Kubernetes validation).
NAME_FIELD = "metadata.name"


def _at(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _PLAIN_KEY.match(key):
        return f"{path}.{key}" if path else key
    return f'{path}["{key}"]'


def _fail(path: str, message: str) -> InvalidSnapshot:
    return InvalidSnapshot(path, message)


def _mapping(value: Any, path: str, what: str = "an object (mapping)") -> Mapping[str, Any]:
    if type(value) is dict:  # what JSON and YAML give; skips the slower Mapping ABC check
        return value
    if not isinstance(value, Mapping):
        raise _fail(path, f"must be {what}, not {_kind(value)}")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if type(value) is list:  # read only here: no copy needed
        return value
    if not isinstance(value, list | tuple):
        raise _fail(path, f"must be a list, not {_kind(value)}")
    return list(value)


def _kind(value: Any) -> str:
    if value is None:
        return "empty (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _required(data: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in data or data[key] is None:
        raise _fail(_at(path, key), "missing field")
    return data[key]


def _string(value: Any, path: str, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise _fail(path, f"must be a string, not {_kind(value)}")
    if not empty_ok and not value.strip():
        raise _fail(path, "must not be empty")
    return value


def _whole(value: Any, path: str, *, minimum: int | None = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise _fail(path, f"must be a whole number{bound}, not {_kind(value)}")
    return value


def _boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, f"must be true or false, not {_kind(value)}")
    return value


def _label_value(value: Any, path: str) -> str:
    # YAML reads `rack: 7` or `gpu: true` as numbers and booleans; Kubernetes label values are
    # strings, so write them back the way kubectl would show them.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return value
    raise _fail(path, f"must be a string, not {_kind(value)}")


def _string_map(value: Any, path: str) -> dict[str, str]:
    if value is None:
        return {}
    raw = _mapping(value, path, "an object of key: value strings")
    out: dict[str, str] = {}
    for k in sorted(raw, key=str):
        if not isinstance(k, str) or not k:
            raise _fail(path, f"keys must be non-empty strings, not {_kind(k)}")
        out[k] = _label_value(raw[k], _at(path, k))
    return out


#: GPU instances on one GPU of a model the catalog does not know: the most any model holds.
_MOST_INSTANCES = max(m.max_instances for m in all_models())


def parse_snapshot(data: Mapping[str, Any], *, allow_unknown_models: bool = False) -> Snapshot:
    """A :class:`Snapshot` from the contract's dict shape; raises InvalidSnapshot(path, message).

    Nodes keep the file's order (the planner sorts them itself); a labelled node's GPUs must
    hold valid layouts for their model, and every instance must say whether it is ``used``.
    """
    root = _mapping(data, "", "an object with nodes and pending")
    raw_nodes = _list(_required(root, "nodes", ""), "nodes")
    nodes = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_nodes):
        node = _parse_node(raw, f"nodes[{i}]", allow_unknown_models)
        if node.name in seen:
            raise _fail(f"nodes[{i}].name", f"node {node.name} appears twice (also nodes[{seen[node.name]}])")
        seen[node.name] = i
        nodes.append(node)
    raw_pending = root.get("pending")
    pods = []
    seen_pods: dict[str, int] = {}
    for i, raw in enumerate(_list(raw_pending, "pending") if raw_pending is not None else []):
        pod = _pod_fast(raw, i) or _parse_pod(raw, f"pending[{i}]")
        if pod.key in seen_pods:
            raise _fail(
                f"pending[{i}].name", f"pod {pod.key} appears twice (also pending[{seen_pods[pod.key]}])"
            )
        seen_pods[pod.key] = i
        pods.append(pod)
    return Snapshot(nodes=tuple(nodes), pending=tuple(pods))


def _parse_node(raw: Any, path: str, allow_unknown_models: bool) -> Node:
    data = _mapping(raw, path)
    name = _string(_required(data, "name", path), _at(path, "name"))
    labels = _string_map(data.get("labels"), _at(path, "labels"))
    taints = tuple(
        _parse_taint(t, f"{path}.taints[{j}]")
        for j, t in enumerate(
            _list(data["taints"], f"{path}.taints") if data.get("taints") is not None else []
        )
    )
    unschedulable = (
        _boolean(data["unschedulable"], f"{path}.unschedulable")
        if data.get("unschedulable") is not None
        else False
    )
    node = Node(name=name, labels=labels, taints=taints, unschedulable=unschedulable)
    raw_gpus = _list(data["gpus"], f"{path}.gpus") if data.get("gpus") is not None else []
    if len(raw_gpus) > MAX_GPUS_PER_NODE:
        raise _fail(
            f"{path}.gpus", f"{len(raw_gpus)} GPUs on one node; a node holds at most {MAX_GPUS_PER_NODE} here"
        )
    gpus = []
    indexes: dict[int, int] = {}
    for j, g in enumerate(raw_gpus):
        gpu = _gpu_fast(g) or _parse_gpu(
            g, f"{path}.gpus[{j}]", check_model=node.labelled and not allow_unknown_models
        )
        if gpu.index in indexes:
            raise _fail(
                f"{path}.gpus[{j}].index",
                f"GPU {gpu.index} appears twice (also {path}.gpus[{indexes[gpu.index]}])",
            )
        indexes[gpu.index] = j
        gpus.append(gpu)
    return Node(
        name=name,
        labels=labels,
        taints=taints,
        unschedulable=unschedulable,
        gpus=tuple(sorted(gpus, key=lambda g: g.index)),
    )


def _parse_taint(raw: Any, path: str) -> Taint:
    data = _mapping(raw, path)
    key = _string(_required(data, "key", path), f"{path}.key")
    effect = _string(_required(data, "effect", path), f"{path}.effect")
    if effect not in TAINT_EFFECTS:
        raise _fail(
            f"{path}.effect", f"{effect!r} is not a taint effect; use one of {', '.join(TAINT_EFFECTS)}"
        )
    value = _label_value(data["value"], f"{path}.value") if data.get("value") is not None else ""
    return Taint(key=key, effect=effect, value=value)


def _parse_gpu(raw: Any, path: str, *, check_model: bool) -> Gpu:
    data = _mapping(raw, path)
    index = _whole(_required(data, "index", path), f"{path}.index")
    model_text = _string(_required(data, "model", path), f"{path}.model")
    model = find_model(model_text)
    if model is None and check_model:
        raise _fail(
            f"{path}.model",
            f"unknown GPU model {model_text!r}; known models are {', '.join(model_keys())} "
            "(a catalog key, or the product name exactly as NVML reports it, e.g. 'NVIDIA H100 80GB HBM3'); "
            "a GPU cdmo cannot partition belongs on a node without the partitioning label",
        )
    key = _layout_key(data.get("instances")) if model is not None else None
    if key is not None:
        known = _LAYOUTS.get((model_text, key))
        if known is not None:
            return Gpu(index=index, model=model_text, instances=known)
    raw_instances = _list(data["instances"], f"{path}.instances") if data.get("instances") is not None else []
    most = model.max_instances if model is not None else _MOST_INSTANCES
    if len(raw_instances) > most:  # before reading each: a list of a million costs minutes
        raise _fail(
            f"{path}.instances",
            f"{len(raw_instances)} instances on one GPU; {model.key if model else 'a GPU'} holds at most {most}",
        )
    instances = []
    for k, item in enumerate(raw_instances):
        ipath = f"{path}.instances[{k}]"
        inst = _mapping(item, ipath, "an object with profile, start and used")
        profile = _required(inst, "profile", ipath)
        if not isinstance(profile, str) or not is_profile_name(profile):
            raise _fail(
                f"{ipath}.profile",
                f"{profile!r} is not a MIG profile name; profiles look like 1g.10gb, 3g.40gb or 1g.10gb+me",
            )
        start = _whole(_required(inst, "start", ipath), f"{ipath}.start")
        used = _boolean(_required(inst, "used", ipath), f"{ipath}.used")
        if model is not None:
            if not model.has_profile(profile):
                raise _fail(
                    f"{ipath}.profile",
                    f"{profile} is not a MIG profile of {model.key}; its profiles are {', '.join(model.profile_names)}",
                )
            starts = model.profile(profile).starts
            if start not in starts:
                raise _fail(
                    f"{ipath}.start",
                    f"{profile} cannot start at {start} on {model.key}; legal starts are "
                    f"{', '.join(map(str, starts))}",
                )
        instances.append(GpuInstance(profile=profile, start=start, used=used))
    if model is not None and not _holds(model, instances):
        problems = validate_layout(model, [Instance(i.profile, i.start) for i in instances])
        if problems:
            raise _fail(f"{path}.instances", f"not a layout {model.key} can hold: " + "; ".join(problems))
    ordered = tuple(sorted(instances, key=lambda i: (i.start, i.profile)))
    if key is not None:
        if len(_LAYOUTS) >= _LAYOUT_CACHE_LIMIT:
            _LAYOUTS.clear()
        _LAYOUTS[(model_text, key)] = ordered
    return Gpu(index=index, model=model_text, instances=ordered)


#: Checked layouts by (model as written, instances as written): a big cluster repeats a few
#: hundred layouts over thousands of GPUs, and checking one (placements, overlaps, counts) was
#: most of the parse time. Only layouts that passed are kept, keyed by values of exactly the
#: types that pass (``start: true`` or ``used: 1`` never match a cached ``1`` or ``True``), so a
#: hit gives what the full check would give. Bounded: snapshots may hold any number of layouts.
_LAYOUTS: dict[tuple[str, tuple[tuple[str, int, bool], ...]], tuple[GpuInstance, ...]] = {}
_LAYOUT_CACHE_LIMIT = 4096
#: More instances than any GPU can hold is never cached (the full check says why it is wrong).
_MAX_CACHED_INSTANCES = 16


def _layout_key(raw: Any) -> tuple[tuple[str, int, bool], ...] | None:
    """``raw`` instances as a cache key, or None where one is not plainly well typed."""
    if raw is None:
        return ()
    if type(raw) is not list or len(raw) > _MAX_CACHED_INSTANCES:
        return None
    key = []
    for item in raw:
        if type(item) is not dict:
            return None
        profile, start, used = item.get("profile"), item.get("start"), item.get("used")
        if type(profile) is not str or type(start) is not int or type(used) is not bool:
            return None
        key.append((profile, start, used))
    return tuple(key)


def _holds(model: GpuModel, instances: list[GpuInstance]) -> bool:
    """Whether ``model`` can hold ``instances`` (one set look-up among its valid layouts; only a
    layout this says no to is checked rule by rule, for the reasons)."""
    geo = geometry(model)
    bits = 0
    for inst in instances:
        i = geo.slot.get((inst.profile, inst.start))
        if i is None or (bits >> i) & 1:
            return False
        bits |= 1 << i
    return bits in geo.valid


#: Parsed GPUs by (index, model as written, id of their checked layout): a big cluster's GPUs
#: repeat, and equal frozen values may be one object (fewer objects for every plan to walk).
_GPUS: dict[tuple[int, str, int], Gpu] = {}


def _gpu_fast(raw: Any) -> Gpu | None:
    """A GPU whose index and model are plainly well typed and whose layout, as written, was
    checked before (_LAYOUTS) or is plainly valid for a known model (_layout_fast), without
    building the paths of its fields; None otherwise (then the full check runs, and names the
    field of any problem)."""
    if type(raw) is not dict:
        return None
    index, model_text = raw.get("index"), raw.get("model")
    if type(index) is not int or index < 0 or type(model_text) is not str:
        return None
    key = _layout_key(raw.get("instances"))
    if key is None:
        return None
    # Only layouts of known models that passed the full check are kept, so a hit passes it.
    known = _LAYOUTS.get((model_text, key)) or _layout_fast(model_text, key)
    if known is None:
        return None
    gkey = (index, model_text, id(known))
    gpu = _GPUS.get(gkey)
    if gpu is None or gpu.instances is not known:
        if len(_GPUS) >= _LAYOUT_CACHE_LIMIT:
            _GPUS.clear()
        gpu = _GPUS[gkey] = Gpu(index=index, model=model_text, instances=known)
    return gpu


#: Instances by (profile, start, used): a fleet has a few hundred distinct ones.
_INSTANCES: dict[tuple[str, int, bool], GpuInstance] = {}


def _layout_fast(model_text: str, key: tuple[tuple[str, int, bool], ...]) -> tuple[GpuInstance, ...] | None:
    """The layout ``key`` of a known model when every instance is at a legal placement and the
    model can hold them all (what the full check of _parse_gpu accepts), kept in _LAYOUTS; None
    for anything else (then the full check runs and says what is wrong)."""
    model = find_model(model_text)
    if model is None:
        return None
    geo = geometry(model)
    bits = 0
    instances = []
    for item in key:
        profile, start, _ = item
        i = geo.slot.get((profile, start))
        if i is None or (bits >> i) & 1:
            return None
        bits |= 1 << i
        inst = _INSTANCES.get(item)
        if inst is None:
            if len(_INSTANCES) >= _LAYOUT_CACHE_LIMIT:
                _INSTANCES.clear()
            inst = _INSTANCES[item] = GpuInstance(profile=profile, start=start, used=item[2])
        instances.append(inst)
    if bits not in geo.valid:
        return None
    ordered = tuple(sorted(instances, key=lambda i: (i.start, i.profile)))
    if len(_LAYOUTS) >= _LAYOUT_CACHE_LIMIT:
        _LAYOUTS.clear()
    _LAYOUTS[(model_text, key)] = ordered
    return ordered


#: The fields a toleration is made of (others are ignored, as the contract allows).
_TOLERATION_FIELDS = ("key", "operator", "value", "effect")
#: Checked tolerations by their four fields as written (strings or absent): few distinct ones.
_TOLERATIONS: dict[tuple[str | None, ...], Toleration] = {}
_TOLERATION_CACHE_LIMIT = 1024


def _pod_fast(raw: Any, i: int) -> PendingPod | None:
    """The pod ``pending[i]`` when every field is plainly well typed (strings, whole numbers, MIG
    counts, string selectors, known tolerations), without building the paths of its fields, as
    10,000 pods would; None otherwise: then :func:`_parse_pod` reads it again and names the field
    of any problem. Both give equal pods (tests/unit/planner/test_parse.py)."""
    if type(raw) is not dict:
        return None
    name = raw.get("name")
    if type(name) is not str or not name.strip():
        return None
    namespace = raw.get("namespace")
    if namespace is None:
        namespace = "default"
    elif type(namespace) is not str or not namespace.strip():
        return None
    raw_requests = raw.get("requests")
    if raw_requests is None:
        return None  # the full check says it is missing
    # The full check itself (it builds a field's path only for a problem, raising what
    # _parse_pod would: name and namespace, checked first there too, passed above).
    requests = _parse_requests(raw_requests, f"pending[{i}].requests")
    priority = raw.get("priority")
    if priority is None:
        priority = 0
    elif type(priority) is not int:
        return None
    selector: dict[str, str] = {}
    raw_selector = raw.get("nodeSelector")
    if raw_selector is not None:
        if type(raw_selector) is not dict:
            return None
        for k in sorted(raw_selector, key=str):
            v = raw_selector[k]
            if type(k) is not str or not k or type(v) is not str:
                return None
            selector[k] = v
    tolerations: tuple[Toleration, ...] = ()
    raw_tolerations = raw.get("tolerations")
    if raw_tolerations is not None:
        if type(raw_tolerations) is not list:
            return None
        found = []
        for item in raw_tolerations:
            toleration = _toleration_fast(item)
            if toleration is None:
                return None
            found.append(toleration)
        tolerations = tuple(found)
    affinity = raw.get("affinity")
    terms = _parse_affinity(affinity, f"pending[{i}].affinity") if affinity is not None else None
    return _pending_pod(name, namespace, requests, priority, selector, tolerations, terms)


def _pending_pod(
    name: str,
    namespace: str,
    requests: dict[str, int],
    priority: int,
    selector: dict[str, str],
    tolerations: tuple[Toleration, ...],
    affinity: tuple[NodeSelectorTerm, ...] | None,
) -> PendingPod:
    """The pod, its parts shared with every equal pod's (both parse paths end here)."""
    shared_requests = _shared(_REQUESTS, tuple(requests.items()), requests)
    shared_selector = _shared(_SELECTORS, tuple(selector.items()), selector)
    if tolerations:
        tolerations = _shared(_TOLERATION_SETS, tuple(_toleration_key(t) for t in tolerations), tolerations)
    if affinity is not None:
        affinity = _shared(_AFFINITIES, affinity, affinity)
    return PendingPod(
        name=name,
        namespace=namespace,
        requests=shared_requests,
        priority=priority,
        node_selector=shared_selector,
        tolerations=tolerations,
        node_affinity=affinity,
    )


#: Pods of one kind share their requests, selector, tolerations and affinity as one object each
#: (frozen with the pod, never changed), so the planner reads each distinct kind once (PlanCache).
_SELECTORS: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
_TOLERATION_SETS: dict[tuple[tuple[str, str, str, str], ...], tuple[Toleration, ...]] = {}
_AFFINITIES: dict[tuple[NodeSelectorTerm, ...], tuple[NodeSelectorTerm, ...]] = {}
#: (Requests by their (resource, count) pairs in order.)
_REQUESTS: dict[tuple[tuple[str, int], ...], dict[str, int]] = {}
_SHARED_LIMIT = 4096

_K = TypeVar("_K")
_V = TypeVar("_V")


def _shared(table: dict[_K, _V], key: _K, value: _V) -> _V:
    """The value kept under ``key``, or ``value`` kept from now on (bounded: starts over)."""
    found = table.get(key)
    if found is None:
        if len(table) >= _SHARED_LIMIT:
            table.clear()
        found = table[key] = value
    return found


def _toleration_key(t: Toleration) -> tuple[str, str, str, str]:
    return (t.key, t.operator, t.value, t.effect)


def _toleration_fast(raw: Any) -> Toleration | None:
    """A toleration whose fields, as written, were checked before (one object per distinct one)."""
    if type(raw) is not dict:
        return None
    key = tuple(raw.get(f) for f in _TOLERATION_FIELDS)
    if not all(v is None or type(v) is str for v in key):
        return None
    found = _TOLERATIONS.get(key)
    if found is None:
        try:
            found = _parse_toleration(raw, "")
        except InvalidSnapshot:
            return None  # the full check says where
        if len(_TOLERATIONS) >= _TOLERATION_CACHE_LIMIT:
            _TOLERATIONS.clear()
        _TOLERATIONS[key] = found
    return found


def _parse_pod(raw: Any, path: str) -> PendingPod:
    data = _mapping(raw, path)
    name = _string(_required(data, "name", path), f"{path}.name")
    namespace = (
        _string(data["namespace"], f"{path}.namespace") if data.get("namespace") is not None else "default"
    )
    requests = _parse_requests(_required(data, "requests", path), f"{path}.requests")
    priority = (
        _whole(data["priority"], f"{path}.priority", minimum=None) if data.get("priority") is not None else 0
    )
    selector = _string_map(data.get("nodeSelector"), f"{path}.nodeSelector")
    tolerations = tuple(
        _parse_toleration(t, f"{path}.tolerations[{j}]")
        for j, t in enumerate(
            _list(data["tolerations"], f"{path}.tolerations") if data.get("tolerations") is not None else []
        )
    )
    affinity = _parse_affinity(data.get("affinity"), f"{path}.affinity")
    return _pending_pod(name, namespace, requests, priority, selector, tolerations, affinity)


#: Resource names already found to name a MIG profile: 10,000 pods ask for a dozen (bounded).
_MIG_RESOURCES: set[str] = set()
_MIG_RESOURCES_LIMIT = 1024


def _parse_requests(value: Any, path: str) -> dict[str, int]:
    raw = _mapping(value, path, "an object of resource: count")
    out: dict[str, int] = {}
    for key in sorted(raw, key=str):
        if not isinstance(key, str):
            raise _fail(path, f"resource names must be strings, not {_kind(key)}")
        if not key.startswith(RESOURCE_PREFIX):
            continue  # cpu, memory and the like: the planner has nothing to say about them
        if key not in _MIG_RESOURCES:
            try:
                profile_from_resource(key)
            except InvalidInput:
                raise _fail(
                    _at(path, key),
                    f"{key[len(RESOURCE_PREFIX) :]!r} is not a MIG profile; MIG resources look like "
                    "nvidia.com/mig-1g.10gb or nvidia.com/mig-1g.10gb.me",
                ) from None
            if len(_MIG_RESOURCES) < _MIG_RESOURCES_LIMIT:
                _MIG_RESOURCES.add(key)
        count = raw[key]
        # a plain whole number is the common case; anything else gets the full check and path
        out[key] = count if type(count) is int and count >= 0 else _count(count, _at(path, key))
    return out


def _count(value: Any, path: str) -> int:
    """A device count: a whole number >= 0, or a Kubernetes quantity string ("2", "1k", "2e3").

    A count too big for any node stays a count here (the planner answers it with
    TooManyDevices, see cdmo.planner.bounds); digit strings too long to read exactly become
    MAX_COUNT + 1, which means the same: more than Kubernetes can count.
    """
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit():  # not "²" or "٣": isdigit() alone says yes to them
            return int(text) if len(text) <= 64 else MAX_COUNT + 1
        count, reason = parse_count(text)
        if count is None:
            raise _fail(path, f"{value!r} is not a count of devices: {reason}")
        return count
    if isinstance(value, float) and value.is_integer() and value >= 0:
        raise _fail(path, f"must be a whole number >= 0 (write {int(value)}, not {value})")
    return _whole(value, path)


def _parse_toleration(raw: Any, path: str) -> Toleration:
    data = _mapping(raw, path)
    key = _string(data["key"], f"{path}.key", empty_ok=True) if data.get("key") is not None else ""
    operator = _string(data["operator"], f"{path}.operator") if data.get("operator") is not None else "Equal"
    if operator not in TOLERATION_OPERATORS:
        raise _fail(f"{path}.operator", f"{operator!r} is not a toleration operator; use Equal or Exists")
    value = _label_value(data["value"], f"{path}.value") if data.get("value") is not None else ""
    effect = (
        _string(data["effect"], f"{path}.effect", empty_ok=True) if data.get("effect") is not None else ""
    )
    if effect and effect not in TAINT_EFFECTS:
        raise _fail(
            f"{path}.effect",
            f"{effect!r} is not a taint effect; use one of {', '.join(TAINT_EFFECTS)} or leave it out",
        )
    if not key and operator != "Exists":
        raise _fail(f"{path}.operator", "must be Exists when key is empty (that tolerates every taint)")
    if operator == "Exists" and value:
        raise _fail(f"{path}.value", "must be empty when operator is Exists")
    return Toleration(key=key, operator=operator, value=value, effect=effect)


def _parse_affinity(value: Any, path: str) -> tuple[NodeSelectorTerm, ...] | None:
    if value is None:
        return None
    data = _mapping(value, path)
    node_affinity = data.get("nodeAffinity")
    if node_affinity is None:
        return None  # podAffinity and podAntiAffinity are outside what the planner models
    na_path = f"{path}.nodeAffinity"
    na = _mapping(node_affinity, na_path)
    required = na.get(_REQUIRED)
    if required is None:
        return None  # preferred terms only steer the scheduler; they never keep a pod off a node
    req_path = f"{na_path}.{_REQUIRED}"
    req = _mapping(required, req_path)
    terms_path = f"{req_path}.nodeSelectorTerms"
    raw_terms = _list(_required(req, "nodeSelectorTerms", req_path), terms_path)
    if not raw_terms:
        raise _fail(terms_path, "must list at least one term")
    terms = []
    for t, raw_term in enumerate(raw_terms):
        tpath = f"{terms_path}[{t}]"
        term = _mapping(raw_term, tpath)
        exprs = tuple(
            _parse_requirement(e, f"{tpath}.matchExpressions[{k}]", field=False)
            for k, e in enumerate(
                _list(term["matchExpressions"], f"{tpath}.matchExpressions")
                if term.get("matchExpressions") is not None
                else []
            )
        )
        fields = tuple(
            _parse_requirement(e, f"{tpath}.matchFields[{k}]", field=True)
            for k, e in enumerate(
                _list(term["matchFields"], f"{tpath}.matchFields")
                if term.get("matchFields") is not None
                else []
            )
        )
        terms.append(NodeSelectorTerm(match_expressions=exprs, match_fields=fields))
    return tuple(terms)


def _parse_requirement(raw: Any, path: str, *, field: bool) -> NodeSelectorRequirement:
    data = _mapping(raw, path)
    key = _string(_required(data, "key", path), f"{path}.key")
    operator = _string(_required(data, "operator", path), f"{path}.operator")
    if operator not in AFFINITY_OPERATORS:
        raise _fail(
            f"{path}.operator",
            f"{operator!r} is not a node selector operator; use one of {', '.join(AFFINITY_OPERATORS)}",
        )
    raw_values = data.get("values")
    values = tuple(
        _label_value(v, f"{path}.values[{k}]")
        for k, v in enumerate(_list(raw_values, f"{path}.values") if raw_values is not None else [])
    )
    if field:
        if key != NAME_FIELD:
            raise _fail(f"{path}.key", f"{key!r} is not a field a node can be selected on; use {NAME_FIELD}")
        if operator not in ("In", "NotIn"):
            raise _fail(f"{path}.operator", f"matchFields take In or NotIn, not {operator}")
    if operator in ("In", "NotIn") and not values:
        raise _fail(f"{path}.values", f"{operator} needs at least one value")
    if operator in ("Exists", "DoesNotExist") and values:
        raise _fail(f"{path}.values", f"{operator} takes no values")
    if operator in ("Gt", "Lt") and (len(values) != 1 or not re.fullmatch(r"-?[0-9]+", values[0])):
        raise _fail(f"{path}.values", f"{operator} takes exactly one whole number, e.g. ['4']")
    return NodeSelectorRequirement(key=key, operator=operator, values=values)


# --- writing back ----------------------------------------------------------------------------


def snapshot_to_dict(snapshot: Snapshot) -> dict[str, Any]:
    """The contract's dict shape of ``snapshot``; ``parse_snapshot`` of it gives it back."""
    return {
        "nodes": [_node_to_dict(n) for n in snapshot.nodes],
        "pending": [_pod_to_dict(p) for p in snapshot.pending],
    }


def _node_to_dict(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {"name": node.name, "labels": dict(node.labels)}
    if node.taints:
        out["taints"] = [
            {"key": t.key, **({"value": t.value} if t.value else {}), "effect": t.effect} for t in node.taints
        ]
    if node.unschedulable:
        out["unschedulable"] = True
    out["gpus"] = [
        {
            "index": g.index,
            "model": g.model,
            "instances": [{"profile": i.profile, "start": i.start, "used": i.used} for i in g.instances],
        }
        for g in node.gpus
    ]
    return out


def _requirement_to_dict(r: NodeSelectorRequirement) -> dict[str, Any]:
    out: dict[str, Any] = {"key": r.key, "operator": r.operator}
    if r.values:
        out["values"] = list(r.values)
    return out


def _pod_to_dict(pod: PendingPod) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": pod.name,
        "namespace": pod.namespace,
        "requests": dict(pod.requests),
        "priority": pod.priority,
    }
    if pod.node_selector:
        out["nodeSelector"] = dict(pod.node_selector)
    if pod.tolerations:
        out["tolerations"] = [
            {
                **({"key": t.key} if t.key else {}),
                "operator": t.operator,
                **({"value": t.value} if t.value else {}),
                **({"effect": t.effect} if t.effect else {}),
            }
            for t in pod.tolerations
        ]
    if pod.node_affinity is not None:
        out["affinity"] = {
            "nodeAffinity": {
                _REQUIRED: {
                    "nodeSelectorTerms": [
                        {
                            **(
                                {
                                    "matchExpressions": [
                                        _requirement_to_dict(r) for r in term.match_expressions
                                    ]
                                }
                                if term.match_expressions
                                else {}
                            ),
                            **(
                                {"matchFields": [_requirement_to_dict(r) for r in term.match_fields]}
                                if term.match_fields
                                else {}
                            ),
                        }
                        for term in pod.node_affinity
                    ]
                }
            }
        }
    return out
