"""Deciding what to do with a pod on create: which GPU model, which profile, which JSON patch.

The webhook and ``cdmo translate`` both call :func:`translate_pod`; only how they learn the
cluster's GPU models differs (a node list, or ``--model``).

Model choice: the pod's own ``nvidia.com/gpu.product`` node selector or required node affinity
when it has one, else the models of the cluster's labelled nodes, the one most nodes carry
first (a configured default model goes before all). The first model that can serve every ask
of the pod wins. A pod no model can serve is refused with one line that says what would fit.
A pod that also asks for whole GPUs (``nvidia.com/gpu``, other than CFGI's replicas) is refused,
as KAI refuses it, with what to remove. Init containers and native sidecars are translated in
place (``/spec/initContainers/N``), as the kubelet counts them (cdmo.demand).

Pure: takes and returns plain data; imports nothing of Kubernetes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from cdmo.api import GPU_PRODUCT_LABEL
from cdmo.errors import InvalidInput
from cdmo.mig.catalog import GpuModel, all_models, find_model
from cdmo.mig.resources import RESOURCE_PREFIX, resource_from_profile
from cdmo.translate.asks import (
    CFGI_LABEL,
    GPU_RESOURCE,
    INIT_CONTAINERS,
    KAI_CONTAINER,
    KAI_DEVICES,
    KAI_FRACTION,
    KAI_MEMORY,
    METAGPU_RESOURCE,
    Ask,
    WholeGpu,
    read_asks,
    read_whole_gpu_asks,
)
from cdmo.translate.rule import (
    DEFAULT_RULE,
    MAX_WHOLE_GPUS,
    Choice,
    NoFit,
    Rule,
    choose_profile,
    describe_need,
    instance_limits,
)

#: Records the original ask and the choice on the pod (JSON list, one entry per container).
ASK_ANNOTATION = "cdmo.clear.ml/fractional-ask"
#: The reason for the choice, in words.
REASON_ANNOTATION = "cdmo.clear.ml/fractional-reason"

Action = Literal["mutate", "skip", "refuse"]


@dataclass(frozen=True)
class Translation:
    """What to do with a pod: mutate it (``patch``), let it pass unchanged, or refuse it."""

    action: Action
    reason: str
    patch: tuple[dict[str, Any], ...] = ()
    choices: tuple[Choice, ...] = ()
    warnings: tuple[str, ...] = ()


def pod_name(pod: Mapping[str, Any]) -> str:
    """``namespace/name``; a pod named by ``generateName`` shows as ``prefix-*``."""
    meta = pod.get("metadata") or {}
    name = meta.get("name") or f"{meta.get('generateName') or ''}*"
    return f"{meta.get('namespace') or 'default'}/{name}"


def selected_products(pod: Mapping[str, Any]) -> list[str]:
    """The ``nvidia.com/gpu.product`` values a pod's node selector or required affinity allows, in order."""
    spec = pod.get("spec") or {}
    values: list[str] = []
    selector = spec.get("nodeSelector") or {}
    if GPU_PRODUCT_LABEL in selector:
        values.append(str(selector[GPU_PRODUCT_LABEL]))
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in required.get("nodeSelectorTerms") or []:
        for expr in term.get("matchExpressions") or []:
            if expr.get("key") == GPU_PRODUCT_LABEL and expr.get("operator") == "In":
                values.extend(str(v) for v in expr.get("values") or [])
    return list(dict.fromkeys(values))


def order_cluster_models(
    cluster_models: Mapping[str, int], default_model: str | None = None
) -> list[GpuModel]:
    """Models of the labelled nodes, most nodes first (then by name); ``default_model`` leads."""
    ranked = sorted(cluster_models.items(), key=lambda kv: (-kv[1], kv[0]))
    models: list[GpuModel] = []
    for key in ([default_model] if default_model else []) + [k for k, _ in ranked]:
        model = find_model(key) if key else None
        if model is not None and model not in models:
            models.append(model)
    return models


def _escape(key: str) -> str:
    """A JSON pointer token (RFC 6901): ``~`` as ``~0``, ``/`` as ``~1``."""
    return key.replace("~", "~0").replace("/", "~1")


def build_patch(
    pod: Mapping[str, Any], asks: Sequence[Ask], choices: Sequence[Choice], reason: str
) -> list[dict[str, Any]]:
    """The JSON patch that asks for the chosen MIG devices and records the original asks."""
    ops: list[dict[str, Any]] = []
    spec = pod.get("spec") or {}
    record = []
    for ask, choice in zip(asks, choices, strict=True):
        base = ask.pointer
        resources = spec[ask.spec_list][ask.container_index].get("resources")
        resource = resource_from_profile(choice.profile)
        quantity = str(choice.count)
        if not isinstance(resources, Mapping):
            ops.append({"op": "add", "path": f"{base}/resources", "value": {"limits": {resource: quantity}}})
            resources = {}
        elif not isinstance(resources.get("limits"), Mapping):
            ops.append({"op": "add", "path": f"{base}/resources/limits", "value": {resource: quantity}})
        else:
            ops.append(
                {"op": "add", "path": f"{base}/resources/limits/{_escape(resource)}", "value": quantity}
            )
        for name in ask.remove_resources:
            for part in ("limits", "requests"):
                if name in (resources.get(part) or {}):
                    ops.append({"op": "remove", "path": f"{base}/resources/{part}/{_escape(name)}"})
        entry: dict[str, Any] = {
            "container": ask.container,
            "source": ask.source,
            "asked": ask.original,
            "model": choice.model,
            "profile": choice.profile,
            "resource": resource,
            "count": choice.count,
        }
        if ask.spec_list == INIT_CONTAINERS:  # app containers' entries keep their old shape
            entry["initContainer"] = True
        record.append(entry)
    notes = {ASK_ANNOTATION: json.dumps(record, sort_keys=True), REASON_ANNOTATION: reason}
    if not isinstance((pod.get("metadata") or {}).get("annotations"), Mapping):
        ops.append({"op": "add", "path": "/metadata/annotations", "value": notes})
    else:
        ops.extend(
            {"op": "add", "path": f"/metadata/annotations/{_escape(k)}", "value": v} for k, v in notes.items()
        )
    return ops


def _has_mig_ask(pod: Mapping[str, Any], asks: Sequence[Ask]) -> bool:
    spec = pod.get("spec") or {}
    for ask in asks:
        res = spec[ask.spec_list][ask.container_index].get("resources") or {}
        for part in ("limits", "requests"):
            if any(str(k).startswith(RESOURCE_PREFIX) for k in res.get(part) or {}):
                return True
    return False


def _serve(model: GpuModel, asks: Sequence[Ask], rule: Rule) -> list[Choice] | NoFit:
    choices = []
    for ask in asks:
        result = choose_profile(model, ask.need, rule)
        if isinstance(result, NoFit):
            return result
        if ask.devices > 1:
            count = result.count * ask.devices
            # Each ask is bounded to MAX_WHOLE_GPUS on one GPU; on many GPUs the product must be too.
            if count > MAX_WHOLE_GPUS:
                max_fraction, max_memory = instance_limits(model)
                return NoFit(
                    model.key,
                    f"{result.count} x {result.profile} on each of {ask.devices} GPUs ({KAI_DEVICES})"
                    f" is {count} GPUs, more than {MAX_WHOLE_GPUS} for one pod",
                    max_fraction,
                    max_memory,
                )
            result = replace(
                result,
                count=count,
                reason=f"{result.reason}; on each of {ask.devices} GPUs ({KAI_DEVICES})",
            )
        choices.append(result)
    return choices


def _would_fit(asks: Sequence[Ask], rule: Rule) -> str:
    """Catalog models that could serve every ask: the 'what would fit' of a refusal."""
    fits = [m.key for m in all_models() if not isinstance(_serve(m, asks, rule), NoFit)]
    if not fits:
        return "no MIG GPU in cdmo's catalog can serve it"
    return "GPUs that could serve it: " + ", ".join(fits)


def translate_pod(
    pod: Mapping[str, Any],
    cluster_models: Mapping[str, int],
    *,
    default_model: str | None = None,
    rule: Rule = DEFAULT_RULE,
    cluster_origin: str = "the cluster's labelled nodes",
) -> Translation:
    """Decide one pod. Deterministic; never raises for a readable pod (InvalidAsk for an unreadable ask)."""
    name = pod_name(pod)
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if ASK_ANNOTATION in annotations:
        return Translation("skip", f"pod {name} is already translated")
    asks = read_asks(pod, rule)
    if not asks:
        return Translation("skip", f"pod {name} carries no fractional GPU ask")
    if _has_mig_ask(pod, asks):
        return Translation(
            "skip", f"pod {name} already asks for a MIG device; its fractional ask is left alone"
        )
    what = "; ".join(f"{a.source} {_original(a)}" for a in asks)
    products = selected_products(pod)
    if products:
        models = [m for m in (find_model(p) for p in products) if m is not None]
        if not models:
            return Translation(
                "skip",
                f"pod {name} selects {GPU_PRODUCT_LABEL}={','.join(products)}, not a MIG GPU that cdmo knows;"
                " its fractional ask is left to its own system",
                warnings=(
                    f"cdmo left the fractional GPU ask unchanged: {','.join(products)} is not a MIG GPU model",
                ),
            )
        origin = f"the pod's {GPU_PRODUCT_LABEL} selector"
    else:
        models = order_cluster_models(cluster_models, default_model)
        origin = cluster_origin
    wholes = read_whole_gpu_asks(pod, asks)
    if wholes:
        return Translation("refuse", _whole_and_share(name, asks, wholes))
    if not models:
        return Translation(
            "refuse",
            f"pod {name} asks {what}, but no labelled node carries a known MIG GPU model;"
            " label MIG GPU nodes cdmo.clear.ml/gpu-partitioning=mig or set the webhook's default model",
        )
    failures = []
    for model in models:
        served = _serve(model, asks, rule)
        if isinstance(served, NoFit):
            failures.append(f"{model.key}: {served.reason}")
            continue
        reason = (
            f"{what} -> {', '.join(f'{c.count} x {c.profile}' for c in served)} on {model.key} (from {origin}): "
            + "; ".join(c.reason for c in served)
        )
        return Translation("mutate", reason, tuple(build_patch(pod, asks, served, reason)), tuple(served))
    needs = "; ".join(describe_need(a.need) for a in asks)
    return Translation(
        "refuse",
        f"pod {name} asks {what} ({needs}), which no GPU model of {origin} can serve: "
        + "; ".join(failures)
        + f"; {_would_fit(asks, rule)}",
    )


def _original(ask: Ask) -> str:
    return ",".join(f"{k}={v}" for k, v in ask.original.items())


def _joined(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _whole_and_share(name: str, asks: Sequence[Ask], wholes: Sequence[WholeGpu]) -> str:
    """Why a pod that asks for whole GPUs next to a share is refused, and what to remove.

    KAI refuses every such pod, whichever container asks which: its admission check
    ``ValidateGPUFractionRequest`` (kai-scheduler/api, utilities/resources/
    gpu_sharing_validation.go) denies "cannot have both GPU fraction request and whole GPU
    resource request/limit" when any container or init container has an ``nvidia.com/gpu``
    limit. cdmo holds MetaGPU and CFGI pods to the same rule: with the MIG limit added next to
    ``nvidia.com/gpu`` the pod needs a MIG-off GPU and a slice on one node at once, and cdmo
    plans slices only (``nvidia.com/gpu`` is ignored, docs/planner.md), so it would pend for
    good. Unlike KAI, ``nvidia.com/gpu: 0`` asks for nothing and is let through.
    """
    one = len(wholes) == 1 and wholes[0].value.strip() == "1"
    whole_where = _joined([w.where for w in wholes])
    shares = "; ".join(
        f"{a.source} " + ",".join(f"{k}={v}" for k, v in a.original.items() if k != KAI_CONTAINER)
        for a in asks
    )
    share_where = _joined([a.where for a in asks])
    text = (
        f"pod {name}: {whole_where} {'asks' if len(wholes) == 1 else 'ask'} for {'a whole GPU' if one else 'whole GPUs'}"
        f" ({', '.join(f'{GPU_RESOURCE}={w.value}' for w in wholes)})"
    )
    if share_where == whole_where:
        text += f" and a share of one ({shares})"
    else:
        text += f" and {share_where} for a share of one ({shares})"
    removals: list[str] = []
    for a in asks:
        for key in a.original:
            if key == CFGI_LABEL:
                removals.append(f"label {key}")
            elif key in (KAI_FRACTION, KAI_MEMORY):
                removals.append(f"annotation {key}")
            elif key == METAGPU_RESOURCE:
                removals.append(f"{key} from {a.where}")
    kai = " (KAI refuses such a pod too)" if any("kai" in a.source.split("+") for a in asks) else ""
    return (
        f"{text}; cdmo makes room for the share as a MIG slice, never for whole GPUs in the same pod,"
        f" which would wait forever{kai}: remove {GPU_RESOURCE} from {whole_where} to run on a MIG slice,"
        f" or remove {_joined(list(dict.fromkeys(removals)))} to keep {'the whole GPU' if one else 'whole GPUs'}"
    )


def require_shape(value: Any, kind: type, path: str, where: str, *, item: bool = False) -> None:
    """Refuse ``value`` at ``path`` unless it is a ``kind`` (dict or list), or absent (None).

    A field given as null is one left out, as Kubernetes reads it; a list ``item`` is never
    absent, so a null entry (``[null]``, a lone ``-`` in YAML) is refused like any other shape.
    """
    if isinstance(value, kind) or (value is None and not item):
        return
    shape = "a mapping" if kind is dict else "a list"
    if value is None:
        raise InvalidInput(
            f"{where}: {path} must be {shape}, not null", hint="fill the entry in or remove it"
        )
    raise InvalidInput(f"{where}: {path} must be {shape}, not {type(value).__name__}")


def check_pod_shape(pod: Mapping[str, Any], where: str) -> None:
    """Refuse, with the field's path, a pod whose parts are not the shapes Kubernetes gives them.

    The API server checks this before the webhook sees a pod; a file given to ``cdmo translate``
    may not be, nor a body sent to the webhook by anything but an API server. Both call this.
    Every mapping and list the pod walk (asks, model selection, patch) reads is checked here, so
    that walk may call ``.get`` on each.
    """

    def need(value: Any, kind: type, path: str, *, item: bool = False) -> None:
        require_shape(value, kind, path, where, item=item)

    need(pod.get("metadata"), dict, "metadata")
    for key in ("labels", "annotations"):
        need((pod.get("metadata") or {}).get(key), dict, f"metadata.{key}")
    need(pod.get("spec"), dict, "spec")
    spec = pod.get("spec") or {}
    for kind in ("containers", "initContainers"):
        need(spec.get(kind), list, f"spec.{kind}")
        for i, container in enumerate(spec.get(kind) or []):
            need(container, dict, f"spec.{kind}[{i}]", item=True)
            need(container.get("resources"), dict, f"spec.{kind}[{i}].resources")
            for part in ("limits", "requests"):
                need((container.get("resources") or {}).get(part), dict, f"spec.{kind}[{i}].resources.{part}")
    # The GPU model the pod selects: its node selector and required node affinity.
    need(spec.get("nodeSelector"), dict, "spec.nodeSelector")
    need(spec.get("affinity"), dict, "spec.affinity")
    node_affinity = (spec.get("affinity") or {}).get("nodeAffinity")
    need(node_affinity, dict, "spec.affinity.nodeAffinity")
    path = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
    required = (node_affinity or {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    need(required, dict, path)
    terms = (required or {}).get("nodeSelectorTerms")
    need(terms, list, f"{path}.nodeSelectorTerms")
    for i, term in enumerate(terms or []):
        need(term, dict, f"{path}.nodeSelectorTerms[{i}]", item=True)
        exprs = term.get("matchExpressions")
        need(exprs, list, f"{path}.nodeSelectorTerms[{i}].matchExpressions")
        for j, expr in enumerate(exprs or []):
            need(expr, dict, f"{path}.nodeSelectorTerms[{i}].matchExpressions[{j}]", item=True)
            need(expr.get("values"), list, f"{path}.nodeSelectorTerms[{i}].matchExpressions[{j}].values")
