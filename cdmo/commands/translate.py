"""``cdmo translate POD.yaml [--model MODEL] [-o yaml|json|table]``: a pod as cdmo's webhook would change it.

Reads a Pod (or a workload with a pod template: Job, Deployment, CronJob, ...) from a YAML or
JSON file, or stdin with ``-``, and prints it with its fractional GPU ask (ClearML CFGI, KAI,
MetaGPU) replaced by a MIG device, plus the reason (``-o table``: only the decisions, one row a
pod). Without a cluster to look at, the GPU model
is the pod's own ``nvidia.com/gpu.product`` selector, else ``--model``. A pod no model can
serve exits 1 with the webhook's refusal.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from datetime import date
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    DocumentStartEvent,
    ScalarEvent,
)

from cdmo.errors import CdmoError, InvalidInput
from cdmo.inputfile import POD_MANIFEST, read_input_text
from cdmo.mig.catalog import get_model
from cdmo.output import build_table, print_table
from cdmo.translate.jsonpatch import apply_patch
from cdmo.translate.pods import Translation, check_pod_shape, require_shape, selected_products, translate_pod
from cdmo.yamlload import StrictSafeLoader

#: The largest pod file read (cdmo.inputfile.POD_MANIFEST, one Kubernetes object).
MAX_FILE_BYTES = POD_MANIFEST.limit
#: Deepest nesting of a document: a pod template in a CronJob is about 15 levels deep; the
#: bound keeps the loader, deepcopy and the JSON writer off Python's recursion limit.
MAX_DEPTH = 100
#: Most values (scalars, mappings, lists) in one document, each YAML alias counted as the values
#: it repeats: nine nested aliases of ten repeat a value 10^9 times from a few hundred bytes.
#: The text of its scalars is bounded too, by MAX_FILE_BYTES: aliases may not make a document
#: mean more text than the largest file read without them (one 100 KB string aliased 9^5 times
#: is 5.9 GB of JSON in 59,000 values).
MAX_VALUES = 1 << 20


class Refused(CdmoError):
    """The webhook would refuse the pod."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "pod", metavar="POD.yaml", help="a Pod or a workload with a pod template, YAML or JSON; - reads stdin"
    )
    parser.add_argument(
        "--model",
        help="GPU model to translate for when the pod does not select one with nvidia.com/gpu.product"
        " (a catalog key such as h100-80gb, or a product name); the webhook uses the model most"
        " labelled nodes carry",
    )
    # The manifest is what people pipe on, so yaml is the default here; table shows the decisions.
    parser.add_argument(
        "--output",
        "-o",
        choices=("table", "json", "yaml"),
        default="yaml",
        help="yaml (default) or json: the changed manifest; table: what was decided for each pod",
    )


#: libyaml's safe loader where PyYAML has it (the same data as yaml.safe_load, ten times faster
#: on a large file), refusing a key given twice as every cdmo command does (cdmo.yamlload).
_LOADER: type[yaml.SafeLoader] = StrictSafeLoader


def _check_expansion(text: str, name: str) -> None:
    """Refuse, before any data is built, a document too deep, too large once expanded, or cyclic.

    The file's size bounds what it writes, not what it means: an alias (``*a``) repeats its
    anchor's whole value, and an alias inside its own anchor makes a value that holds itself.
    The output writers expand both (JSON without end), so the events are counted first: the
    values (MAX_VALUES) and the characters of the scalars (MAX_FILE_BYTES), each alias counted
    as all that its anchor holds.
    """
    hint = "a pod manifest needs no YAML anchors (&a) or aliases (*a); write the values out"
    doc = 0
    #: (values, characters) under each closed anchor of this document, its own included.
    sizes: dict[str | None, tuple[int, int]] = {}
    #: The open mappings and lists, outermost first: their anchors, values and characters so far.
    anchors: list[str | None] = []
    counts: list[list[int]] = []
    for event in yaml.parse(text, Loader=_LOADER):
        size = (0, 0)
        if isinstance(event, DocumentStartEvent):
            doc += 1
            sizes = {}  # anchors name values only within their document
        elif isinstance(event, CollectionStartEvent):
            if len(counts) >= MAX_DEPTH:
                raise InvalidInput(
                    f"{name}: document {doc} is nested more than {MAX_DEPTH} levels deep",
                    hint="give a pod manifest",
                )
            anchors.append(event.anchor)
            counts.append([1, 0])
        elif isinstance(event, CollectionEndEvent):
            anchor, (values, chars) = anchors.pop(), counts.pop()
            size = (values, chars)
            if anchor is not None:
                sizes[anchor] = size
        elif isinstance(event, ScalarEvent):
            size = (1, len(event.value))
            if event.anchor is not None:
                sizes[event.anchor] = size
        elif isinstance(event, AliasEvent):
            if event.anchor in anchors:
                raise InvalidInput(
                    f"{name}: document {doc}: alias *{event.anchor} stands inside its own anchor"
                    " (a value that holds itself)",
                    hint=hint,
                )
            # An alias of no anchor is the loader's error to report, with its line.
            size = sizes.get(event.anchor, (1, 0))
        if counts:
            counts[-1][0] += size[0]
            counts[-1][1] += size[1]
            if counts[-1][0] > MAX_VALUES:
                raise InvalidInput(
                    f"{name}: document {doc} holds more than {MAX_VALUES} values"
                    " once its YAML aliases are expanded",
                    hint=hint,
                )
            if counts[-1][1] > MAX_FILE_BYTES:
                raise InvalidInput(
                    f"{name}: document {doc} holds more than {MAX_FILE_BYTES >> 20} MiB of text"
                    " once its YAML aliases are expanded",
                    hint=hint,
                )


def _read(source: str) -> list[Any]:
    # Bounded (cdmo.inputfile.POD_MANIFEST) for files, pipes, devices and stdin alike: a pipe or
    # /dev/zero has no size to look at first, and was read until memory ran out.
    text = read_input_text(source, POD_MANIFEST, stdin=True)
    name = "stdin" if source == "-" else source
    try:
        _check_expansion(text, name)
        docs = [d for d in yaml.load_all(text, Loader=_LOADER) if d is not None]
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{name}: not YAML or JSON ({str(exc).splitlines()[0]})") from None
    except ValueError:
        # Python refuses to read an integer of more than 4300 digits (sys.int_info): exit 3 before.
        raise InvalidInput(f"{name} holds a number of more than 4300 digits; give a Pod manifest") from None
    if not docs:
        raise InvalidInput(f"{name} is empty; give a Pod manifest")
    for i, doc in enumerate(docs):
        if not isinstance(doc, Mapping):
            raise InvalidInput(f"{name}: document {i + 1} is not a Kubernetes object (a mapping)")
    return docs


def _template_path(obj: Mapping[str, Any]) -> tuple[str, ...] | None:
    """Where the pod is in ``obj``: () for a Pod, the pod template's path for workloads.

    Refuses, naming the field, a workload whose parts on the way to its pod are not mappings
    (the pod itself is check_pod_shape's).
    """
    if obj.get("kind") == "Pod":
        return ()
    kind = obj.get("kind")
    where = f"the {kind}" if isinstance(kind, str) and kind else "the object"
    require_shape(obj.get("metadata"), dict, "metadata", where)
    require_shape(obj.get("spec"), dict, "spec", where)
    spec = obj.get("spec") or {}
    if spec.get("template") is not None:
        require_shape(spec["template"], dict, "spec.template", where)
        return ("spec", "template")
    require_shape(spec.get("jobTemplate"), dict, "spec.jobTemplate", where)
    require_shape((spec.get("jobTemplate") or {}).get("spec"), dict, "spec.jobTemplate.spec", where)
    job = (spec.get("jobTemplate") or {}).get("spec") or {}
    if job.get("template") is not None:
        require_shape(job["template"], dict, "spec.jobTemplate.spec.template", where)
        return ("spec", "jobTemplate", "spec", "template")
    return None


def _get(obj: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for key in path:
        obj = obj[key]
    return dict(obj)


def _put(obj: dict[str, Any], path: tuple[str, ...], value: dict[str, Any]) -> dict[str, Any]:
    if not path:
        return value
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return obj


def _copy_tree(value: Any) -> Any:
    """A copy of ``value`` in which no mapping or list stands in two places.

    A YAML alias makes one object stand wherever it is repeated (``resources: *r`` in two
    containers), and copy.deepcopy keeps that sharing; a JSON patch treats each place as its own
    (JSON, which the API server reads, has no aliases). _check_expansion has bounded the depth
    and the size.
    """
    if isinstance(value, dict):
        return {key: _copy_tree(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_tree(item) for item in value]
    return value  # scalars: str, numbers, dates, bytes are never changed in place


def translate_object(obj: dict[str, Any], model: str | None) -> tuple[dict[str, Any], Translation]:
    """The object with its pod translated, and the decision; raises Refused or InvalidInput."""
    path = _template_path(obj)
    if path is None:
        raise InvalidInput(
            f"{obj.get('kind') or 'the object'} {((obj.get('metadata') or {}).get('name') or '')!r} is neither"
            " a Pod nor a workload with a pod template"
        )
    need_kind = "the pod" if not path else "the pod template (" + ".".join(path) + ")"
    check_pod_shape(_get(obj, path), need_kind)
    pod = _copy_tree(_get(obj, path))
    if pod.get("metadata") is None:  # `metadata:` left empty is no metadata, as check_pod_shape reads it
        pod["metadata"] = {}
    pod["metadata"].setdefault("namespace", (obj.get("metadata") or {}).get("namespace", "default"))
    if not pod["metadata"].get("name"):
        pod["metadata"]["name"] = (obj.get("metadata") or {}).get("name") or "pod"
    cluster = {get_model(model).key: 1} if model else {}
    result = translate_pod(pod, cluster, cluster_origin="--model")
    if result.action == "refuse":
        if model is None and not selected_products(pod):
            raise InvalidInput(
                "the pod does not select a GPU model (nvidia.com/gpu.product)",
                hint="give --model, e.g. --model h100-80gb (the webhook uses the model most labelled nodes carry)",
            )
        raise Refused(f"the webhook would refuse it: {result.reason}")
    if result.action == "mutate":
        changed = apply_patch(pod, result.patch)
        original_meta = _get(obj, path).get("metadata")
        if original_meta is None or "namespace" not in original_meta:
            changed["metadata"].pop("namespace", None)
        if original_meta is None or "name" not in original_meta:
            changed["metadata"].pop("name", None)
        obj = _put(obj, path, changed)
    return obj, result


def _json_value(value: Any) -> str:
    """A value JSON has no type for: YAML reads an unquoted 2024-01-01 as a date, Kubernetes as text."""
    if isinstance(value, date):
        return value.isoformat()
    raise InvalidInput(
        f"a value of type {type(value).__name__} in the manifest has no JSON form",
        hint="quote it, or use -o yaml",
    )


def run(args: argparse.Namespace) -> int:
    # An empty --model would read as no --model at all, and the pod then as one with no model.
    if args.model is not None and not args.model.strip():
        raise InvalidInput(
            "--model is empty", hint="name a GPU model, e.g. --model h100-80gb (cdmo profiles lists them)"
        )
    docs = _read(args.pod)
    results = [translate_object(dict(doc), args.model) for doc in docs]
    if args.output == "table":
        rows = []
        for obj, t in results:
            name = (obj.get("metadata") or {}).get("name") or ""
            profiles = ", ".join(f"{c.count} x {c.profile}" for c in t.choices) or "-"
            model = ", ".join(sorted({c.model for c in t.choices})) or "-"
            rows.append((f"{obj.get('kind') or 'Pod'}/{name}", t.action, model, profiles, t.reason))
        print_table(build_table(None, ("OBJECT", "ACTION", "MODEL", "MIG DEVICES", "REASON"), rows))
        return 0
    if args.output == "json":
        objs = [obj for obj, _ in results]
        # A manifest: its keys (label keys such as gpu_fraction) are data, never renamed.
        doc = objs[0] if len(objs) == 1 else {"apiVersion": "v1", "kind": "List", "items": objs}
        sys.stdout.write(json.dumps(doc, indent=2, default=_json_value) + "\n")
        for _, t in results:
            print(f"cdmo: {t.reason}", file=sys.stderr)
        return 0
    out = []
    for obj, t in results:
        out.append(
            f"# {t.action}: {t.reason}\n" + yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)
        )
    sys.stdout.write("---\n".join(out))
    return 0
