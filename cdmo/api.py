"""The MigLayout resource: names, and the spec/status shapes that operator and agent share.

The operator writes ``spec`` only; the node agent writes ``status`` only (through /status).
The CRD in ``crds/`` is the schema's single source; this module builds and reads the objects.

Must not import kopf, kubernetes or NVML: both halves and the simulator import it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cdmo.errors import InvalidLayout
from cdmo.mig.catalog import is_profile_name
from cdmo.mig.layouts import Instance, sort_layout

GROUP = "cdmo.clear.ml"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "MigLayout"
PLURAL = "miglayouts"
SINGULAR = "miglayout"
SHORT_NAMES = ("mgl",)

#: Nodes opt in with this label and value.
PARTITIONING_LABEL_KEY = "cdmo.clear.ml/gpu-partitioning"
PARTITIONING_LABEL_VALUE = "mig"
#: GPU feature discovery's product label (``NVIDIA-H100-80GB-HBM3``).
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
#: Label the operator puts on every MigLayout it manages.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "cdmo"

#: The MigLayout CRD's name, and the annotation on it that numbers its schema.
CRD_NAME = f"{PLURAL}.{GROUP}"
SCHEMA_REVISION_ANNOTATION = f"{GROUP}/schema-revision"
#: The MigLayout schema this release relies on; crds/miglayouts.yaml carries it in
#: SCHEMA_REVISION_ANNOTATION (tests/unit/test_crd.py keeps the two equal and asks for a new
#: number when the schema changes). 2: a listed GPU requires ``instances``; 3: 64 GPUs a node,
#: ``healthy`` in status.
#: CRDs older than 3 carry no annotation. Helm never upgrades a CRD (docs/upgrading.md), so the
#: operator reads it at start and refuses to run on an older one.
SCHEMA_REVISION = 3


class Phase(StrEnum):
    """``status.phase``: derived for display, never read as input."""

    PENDING = "Pending"
    APPLYING = "Applying"
    READY = "Ready"
    BLOCKED = "Blocked"
    ERROR = "Error"


class ConditionType(StrEnum):
    MIG_MODE_ENABLED = "MigModeEnabled"
    APPLIED = "Applied"
    DEVICE_PLUGIN_REFRESHED = "DevicePluginRefreshed"
    BLOCKED = "Blocked"


@dataclass(frozen=True)
class GpuLayout:
    """The desired (or actual) instances of one GPU, by index."""

    index: int
    instances: tuple[Instance, ...]


def build_spec(layouts: Mapping[int, Iterable[Instance]]) -> dict[str, Any]:
    """``spec`` for a complete desired layout, GPUs by index, instances in canonical order."""
    return {
        "gpus": [
            {
                "index": index,
                "instances": [{"profile": i.profile, "start": i.start} for i in sort_layout(layouts[index])],
            }
            for index in sorted(layouts)
        ]
    }


#: GPUs on one node: no server holds more than 16 today. Far above that is an input error (a
#: snapshot, a layout or simulated GPUs), and left unbounded it was slow: a million GPUs on one
#: node took 23 s to plan, 1,000 simulated GPUs 48 s to apply. The CRD's ``spec.gpus`` has the
#: same ``maxItems``, and its GPU ``index`` this maximum less one (tests/unit/test_crd.py).
MAX_GPUS_PER_NODE = 64


def parse_spec(spec: Mapping[str, Any] | None, *, strict: bool = False) -> dict[int, tuple[Instance, ...]]:
    """GPU index -> instances from a MigLayout ``spec``; raises InvalidLayout naming the bad field.

    ``strict`` (layout files) also refuses fields the CRD lacks.

    Checks the shape only (what the CRD also checks); whether a GPU can hold its layout is
    for the catalog to say once the GPU's model is known.
    """
    if spec is None:
        return {}
    check = _known_keys if strict else _any_keys
    check(spec, ("gpus",), "spec")
    gpus = spec.get("gpus") or []
    if not isinstance(gpus, list):
        raise InvalidLayout("spec.gpus: must be a list")
    if len(gpus) > MAX_GPUS_PER_NODE:
        raise InvalidLayout(f"spec.gpus: {len(gpus)} GPUs; a node holds at most {MAX_GPUS_PER_NODE} here")
    result: dict[int, tuple[Instance, ...]] = {}
    for gi, gpu in enumerate(gpus):
        path = f"spec.gpus[{gi}]"
        if not isinstance(gpu, Mapping):
            raise InvalidLayout(f"{path}: must be an object with index and instances")
        check(gpu, ("index", "instances"), path)
        index = gpu.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < MAX_GPUS_PER_NODE:
            raise InvalidLayout(
                f"{path}.index: must be a whole number from 0 to {MAX_GPUS_PER_NODE - 1}, not {index!r}"
            )
        if index in result:
            raise InvalidLayout(f"{path}.index: GPU {index} appears twice")
        items = gpu.get("instances")
        if items is None:
            # Never read as "hold nothing": that destroys every free instance on the GPU. A GPU
            # entry without it is a misspelt key the API server pruned (instance:), or a newer
            # release's spec this agent cannot read; either way, change nothing.
            raise InvalidLayout(
                f"{path}.instances: missing; list the GPU's instances (instances: [] for none)"
            )
        if not isinstance(items, list):
            raise InvalidLayout(f"{path}.instances: must be a list")
        instances = []
        for ii, item in enumerate(items):
            ipath = f"{path}.instances[{ii}]"
            if not isinstance(item, Mapping):
                raise InvalidLayout(f"{ipath}: must be an object with profile and start")
            check(item, ("profile", "start"), ipath)
            profile, start = item.get("profile"), item.get("start")
            if not isinstance(profile, str) or not is_profile_name(profile):
                raise InvalidLayout(f"{ipath}.profile: {profile!r} is not a MIG profile name")
            if not isinstance(start, int) or isinstance(start, bool) or start < 0:
                raise InvalidLayout(f"{ipath}.start: must be a whole number >= 0, not {start!r}")
            instances.append(Instance(profile, start))
        result[index] = sort_layout(instances)
    return result


def _any_keys(data: Mapping[str, Any], known: tuple[str, ...], path: str) -> None:
    """A MigLayout from the API server: keys it kept are the CRD's (it prunes others), and a
    newer CRD's during an upgrade, which an older agent ignores rather than refuses."""


def _known_keys(data: Mapping[str, Any], known: tuple[str, ...], path: str) -> None:
    """A layout file (``strict``): refuse keys the CRD does not have. ``instance:`` for
    ``instances:`` would otherwise read as a GPU that should hold nothing, and every free
    instance on it would be destroyed; no API server prunes a file."""
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise InvalidLayout(f"{path}: unknown field {unknown[0]!r}; the fields are {', '.join(known)}")


def build_miglayout(
    node_name: str, layouts: Mapping[int, Iterable[Instance]], labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A whole MigLayout object for ``node_name`` (cluster-scoped, named after the node)."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": node_name,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE, **(labels or {})},
        },
        "spec": build_spec(layouts),
    }


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC, seconds precision, as Kubernetes writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    now: datetime,
    observed_generation: int | None = None,
) -> list[dict[str, Any]]:
    """A new conditions list with ``type_`` set; lastTransitionTime moves only when status flips.

    Mirrors apimachinery's SetStatusCondition; conditions stay sorted by type.
    """
    result = [dict(c) for c in conditions if c.get("type") != type_]
    old = next((c for c in conditions if c.get("type") == type_), None)
    changed = old is None or old.get("status") != status
    cond: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": format_time(now)
        if changed
        else old.get("lastTransitionTime", format_time(now)),  # type: ignore[union-attr]
    }
    if observed_generation is not None:
        cond["observedGeneration"] = observed_generation
    result.append(cond)
    return sorted(result, key=lambda c: str(c.get("type")))


def get_condition(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for c in conditions or ():
        if c.get("type") == type_:
            return c
    return None


def crd_problem(crd: Mapping[str, Any] | None) -> str | None:
    """Why this release must not run on the installed MigLayout CRD (None: it may).

    ``crd`` is the CustomResourceDefinition as the API server returns it, None when there is none.
    A newer revision is fine: within one API version a schema only ever gains what older
    releases may ignore.
    """
    apply = "kubectl apply --server-side --force-conflicts -f helm/cdmo/crds/ (docs/upgrading.md)"
    if crd is None:
        return f"the MigLayout CRD ({CRD_NAME}) is not installed; install it first: {apply}"
    versions = [v for v in (crd.get("spec") or {}).get("versions") or [] if isinstance(v, Mapping)]
    if not any(v.get("name") == VERSION and v.get("served") for v in versions):
        return f"the installed MigLayout CRD does not serve {API_VERSION}; apply this release's CRD: {apply}"
    raw = ((crd.get("metadata") or {}).get("annotations") or {}).get(SCHEMA_REVISION_ANNOTATION)
    try:
        revision = int(str(raw)) if raw is not None else 0
    except ValueError:
        revision = 0
    if revision < SCHEMA_REVISION:
        found = f"revision {revision}" if revision else f"older than revision {SCHEMA_REVISION}"
        return (
            f"the installed MigLayout CRD is {found}, and this cdmo needs revision {SCHEMA_REVISION}"
            f" (Helm does not upgrade CRDs); apply this release's CRD first: {apply}"
        )
    return None
