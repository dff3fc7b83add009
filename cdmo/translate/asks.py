"""Reading the fractional-GPU asks that other systems put on pods.

- ClearML fractional GPU injector (CFGI): the label ``clearml-injector/fraction: "0.250"``;
  versions before 1.3 also ask ``nvidia.com/gpu: N`` of the GPU's 8 time-sliced replicas.
- KAI scheduler: the annotations ``gpu-fraction: "0.5"`` or ``gpu-memory: "2000"`` (MiB), ``gpu-fraction-num-devices`` (the share on each of N GPUs), and
  ``gpu-fraction-container-name`` for the container that gets the GPU (an init container too, as
  KAI allows; else the first app container).
- cnvrg MetaGPU: ``cnvrg.io/metagpu: 25`` (of 100 units per GPU) in a container's resources,
  init containers (native sidecars among them) included.

Each ask names the container the source system would give the GPU to, what it asked as
written (recorded on the pod), and which of the source system's own resources to remove.
:func:`read_whole_gpu_asks` reads the ``nvidia.com/gpu`` asks a translation would leave.

Pure: reads a pod as a plain dict; imports nothing of Kubernetes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

from cdmo.demand import parse_count
from cdmo.errors import InvalidInput
from cdmo.translate.rule import DEFAULT_RULE, MAX_WHOLE_GPUS, Need, Rule

CFGI_LABEL = "clearml-injector/fraction"
KAI_FRACTION = "gpu-fraction"
KAI_MEMORY = "gpu-memory"
KAI_CONTAINER = "gpu-fraction-container-name"
#: KAI: the fraction (or memory) on each of this many GPUs.
KAI_DEVICES = "gpu-fraction-num-devices"
METAGPU_RESOURCE = "cnvrg.io/metagpu"
GPU_RESOURCE = "nvidia.com/gpu"
#: The pod spec's two lists of containers; native sidecars are init containers.
CONTAINERS = "containers"
INIT_CONTAINERS = "initContainers"

#: Longest value accepted for a number (a label or annotation is bounded anyway; this keeps
#: Decimal from parsing absurd inputs such as "1e999999").
_MAX_NUMBER_TEXT = 32
#: A number as the source systems write one: ASCII digits, an optional sign, a decimal point
#: and an exponent. Decimal alone also takes "1_0" (as 10), Arabic-Indic and other non-ASCII
#: digits, "Infinity" and "NaN", none of which anyone means as a share of a GPU.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
#: What to write instead of an unreadable ask, by kind (the simulator's mix items use them too).
FRACTION_HINT = "write it like 0.25"
MEMORY_HINT = "write whole MiB, e.g. 20480 for 20 GiB"
METAGPU_HINT = "write whole units (100 to a GPU), e.g. 25"


class InvalidAsk(InvalidInput):
    """A fractional ask that cannot be read (not a number, out of range)."""


@dataclass(frozen=True)
class Ask:
    """One container's share of a GPU, as a source system asked it."""

    #: "cfgi", "kai" or "metagpu" (several joined by "+" when a pod carries more than one).
    source: str
    container: str
    container_index: int
    need: Need
    #: What was asked, as written: {"clearml-injector/fraction": "0.250", ...}.
    original: dict[str, str] = field(default_factory=dict)
    #: The source system's own resources to take out of the container.
    remove_resources: tuple[str, ...] = ()
    #: The share on each of this many GPUs (KAI's gpu-fraction-num-devices): as many MIG devices.
    devices: int = 1
    #: The pod spec list the container is in: CONTAINERS or INIT_CONTAINERS.
    spec_list: str = CONTAINERS

    @property
    def pointer(self) -> str:
        """The container's JSON pointer: ``/spec/containers/0``, ``/spec/initContainers/1``."""
        return f"/spec/{self.spec_list}/{self.container_index}"

    @property
    def where(self) -> str:
        """``container main`` or ``init container setup``, for messages."""
        return describe_container(self.spec_list, self.container)


@dataclass(frozen=True)
class WholeGpu:
    """A container's ``nvidia.com/gpu`` ask (whole GPUs), as written."""

    spec_list: str
    container: str
    container_index: int
    value: str

    @property
    def where(self) -> str:
        """``container main`` or ``init container setup``, for messages."""
        return describe_container(self.spec_list, self.container)


def describe_container(spec_list: str, name: str) -> str:
    """``container main`` or ``init container setup``, as messages name a container."""
    return f"{'init container' if spec_list == INIT_CONTAINERS else 'container'} {name}"


def parse_number(text: Any, what: str, hint: str = FRACTION_HINT) -> Fraction:
    """An exact fraction from a label, annotation or quantity (``"0.250"``, ``25``, ``"1.000"``).

    ``hint`` says what to write instead; the default suits a fraction.
    """
    raw = str(text).strip()
    if len(raw) > _MAX_NUMBER_TEXT:
        raise InvalidAsk(f"{what} {raw[:_MAX_NUMBER_TEXT]!r}... is not a number", hint=hint)
    if not _NUMBER.fullmatch(raw):
        raise InvalidAsk(f"{what} {raw!r} is not a number", hint=hint)
    value = Decimal(raw)
    # From 10^7 up nothing is a share, MiB or count of GPUs; below 10^-32 nothing is written out
    # in 32 characters, and Fraction would build a 10^N denominator for "1e-N" (minutes for N=10^8).
    if not -_MAX_NUMBER_TEXT <= value.adjusted() <= 6:
        raise InvalidAsk(f"{what} {raw!r} is not a usable number", hint=hint)
    return Fraction(value)


def _containers(pod: Mapping[str, Any], spec_list: str = CONTAINERS) -> list[Mapping[str, Any]]:
    return list(((pod.get("spec") or {}).get(spec_list)) or [])


def _resource(container: Mapping[str, Any], name: str) -> Any | None:
    res = container.get("resources") or {}
    for part in ("limits", "requests"):
        value = (res.get(part) or {}).get(name)
        if value is not None:
            return value
    return None


def _whole_number(value: Any, what: str, hint: str) -> int:
    """A count or an amount that must be whole and not negative; ``hint`` says how to write one."""
    number = parse_number(value, what, hint)
    raw = str(value).strip()
    if number < 0:
        raise InvalidAsk(f"{what} {raw!r} is negative", hint=hint)
    if number.denominator != 1:
        raise InvalidAsk(f"{what} {raw!r} is not a whole number", hint=hint)
    return int(number)


def _combine(a: Need, b: Need) -> Need:
    """Both needs at once: the larger fraction and the larger memory."""
    fractions = [f for f in (a.fraction, b.fraction) if f is not None]
    memories = [m for m in (a.memory_mib, b.memory_mib) if m is not None]
    return Need(max(fractions) if fractions else None, max(memories) if memories else None)


def read_asks(pod: Mapping[str, Any], rule: Rule = DEFAULT_RULE) -> list[Ask]:
    """Every container's fractional ask on ``pod``, app containers first; empty when it carries none.

    Raises InvalidAsk (one line, naming the label, annotation or resource) on unreadable values.
    """
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    lists = {CONTAINERS: _containers(pod), INIT_CONTAINERS: _containers(pod, INIT_CONTAINERS)}
    containers = lists[CONTAINERS]
    if not containers:  # the API server refuses a pod without one; nothing to give a GPU to
        return []
    asks: dict[tuple[str, int], Ask] = {}

    def add(
        spec_list: str,
        index: int,
        source: str,
        need: Need,
        original: dict[str, str],
        remove: tuple[str, ...],
        devices: int = 1,
    ) -> None:
        prev = asks.get((spec_list, index))
        if prev is not None:
            need = _combine(prev.need, need)
            source = f"{prev.source}+{source}"
            original = {**prev.original, **original}
            remove = tuple(dict.fromkeys(prev.remove_resources + remove))
            devices = max(devices, prev.devices)
        name = str(lists[spec_list][index].get("name", ""))
        asks[spec_list, index] = Ask(source, name, index, need, original, remove, devices, spec_list)

    if CFGI_LABEL in labels:
        fraction = parse_number(labels[CFGI_LABEL], f"label {CFGI_LABEL}")
        # CFGI gives the GPU to the task's app container; init containers are not its.
        index = next((i for i, c in enumerate(containers) if _resource(c, GPU_RESOURCE) is not None), 0)
        original = {CFGI_LABEL: str(labels[CFGI_LABEL])}
        replicas = _resource(containers[index], GPU_RESOURCE)
        remove: tuple[str, ...] = ()
        if replicas is not None:
            # CFGI before 1.3: N of the GPU's time-sliced replicas; the label stays the ask, and
            # the larger of the two is served, so the pod never gets less than either says.
            n = _whole_number(
                replicas, f"resource {GPU_RESOURCE}", "write a whole number of CFGI's replicas, e.g. 2"
            )
            fraction = max(fraction, Fraction(n, rule.cfgi_replicas_per_gpu))
            original[GPU_RESOURCE] = str(replicas)
            remove = (GPU_RESOURCE,)
        add(CONTAINERS, index, "cfgi", Need(fraction=fraction), original, remove)

    if KAI_FRACTION in annotations or KAI_MEMORY in annotations:
        spec_list, index = CONTAINERS, 0
        name = annotations.get(KAI_CONTAINER)
        if name:
            spec_list, index = _kai_container(lists, name)
        need = Need()
        original = {}
        if KAI_FRACTION in annotations:
            need = Need(fraction=parse_number(annotations[KAI_FRACTION], f"annotation {KAI_FRACTION}"))
            original[KAI_FRACTION] = str(annotations[KAI_FRACTION])
        if KAI_MEMORY in annotations:
            mib = _whole_number(annotations[KAI_MEMORY], f"annotation {KAI_MEMORY}", MEMORY_HINT)
            need = _combine(need, Need(memory_mib=mib))
            original[KAI_MEMORY] = str(annotations[KAI_MEMORY])
        if name:
            original[KAI_CONTAINER] = name
        devices = 1
        if KAI_DEVICES in annotations:
            devices = _whole_number(
                annotations[KAI_DEVICES], f"annotation {KAI_DEVICES}", "write a whole number of GPUs, e.g. 2"
            )
            if not 1 <= devices <= MAX_WHOLE_GPUS:
                raise InvalidAsk(
                    f"annotation {KAI_DEVICES}={annotations[KAI_DEVICES]!r} must be 1 to {MAX_WHOLE_GPUS}"
                )
            original[KAI_DEVICES] = str(annotations[KAI_DEVICES])
        add(spec_list, index, "kai", need, original, (), devices)

    # MetaGPU's device plugin serves init containers and native sidecars as it serves app
    # containers; left there, cnvrg.io/metagpu is a resource no MIG node offers.
    for spec_list, items in lists.items():
        for index, c in enumerate(items):
            units = _resource(c, METAGPU_RESOURCE)
            if units is None:
                continue
            n = _whole_number(units, f"resource {METAGPU_RESOURCE}", METAGPU_HINT)
            add(
                spec_list,
                index,
                "metagpu",
                Need(fraction=Fraction(n, rule.metagpu_units_per_gpu)),
                {METAGPU_RESOURCE: str(units)},
                (METAGPU_RESOURCE,),
            )
    return [asks[key] for key in sorted(asks, key=lambda k: (k[0] != CONTAINERS, k[1]))]


def _kai_container(lists: Mapping[str, list[Mapping[str, Any]]], name: str) -> tuple[str, int]:
    """Where KAI's ``gpu-fraction-container-name`` points: init containers are looked in first.

    KAI's own lookup (kai-scheduler/api, utilities/resources/gpu_sharing_container_ref.go,
    ``getContainerRefByName``) takes an init container by that name before an app container;
    Kubernetes keeps names unique across both lists, so the order only matters for a file.
    """
    for spec_list in (INIT_CONTAINERS, CONTAINERS):
        for i, c in enumerate(lists[spec_list]):
            if c.get("name") == name:
                return spec_list, i
    hint = "containers are " + ", ".join(str(c.get("name")) for c in lists[CONTAINERS])
    if lists[INIT_CONTAINERS]:
        hint += ", init containers are " + ", ".join(str(c.get("name")) for c in lists[INIT_CONTAINERS])
    raise InvalidAsk(f"annotation {KAI_CONTAINER}={name!r} names no container of the pod", hint=hint)


def read_whole_gpu_asks(pod: Mapping[str, Any], asks: Sequence[Ask]) -> list[WholeGpu]:
    """The ``nvidia.com/gpu`` asks above 0 that translating ``asks`` would leave on the pod.

    CFGI's replicas are the share itself and are taken out with it, so they are not among them;
    a count that is not a readable 0 is (the API server refuses an unreadable one anyway).
    """
    taken = {(a.spec_list, a.container_index) for a in asks if GPU_RESOURCE in a.remove_resources}
    found = []
    for spec_list in (CONTAINERS, INIT_CONTAINERS):
        for i, c in enumerate(_containers(pod, spec_list)):
            value = _resource(c, GPU_RESOURCE)
            if value is None or (spec_list, i) in taken or parse_count(value)[0] == 0:
                continue
            found.append(WholeGpu(spec_list, str(c.get("name", "")), i, str(value)))
    return found
