"""Reading the fractional-GPU asks that other systems put on pods.

- ClearML fractional GPU injector (CFGI): the label ``clearml-injector/fraction: "0.250"``;
  versions before 1.3 also ask ``nvidia.com/gpu: N`` of the GPU's 8 time-sliced replicas.
- KAI scheduler: the annotations ``gpu-fraction: "0.5"`` or ``gpu-memory: "2000"`` (MiB), ``gpu-fraction-num-devices`` (the share on each of N GPUs), and
  ``gpu-fraction-container-name`` for the container that gets the GPU (else the first).
- cnvrg MetaGPU: ``cnvrg.io/metagpu: 25`` (of 100 units per GPU) in a container's resources.

Each ask names the container the source system would give the GPU to, what it asked as
written (recorded on the pod), and which of the source system's own resources to remove.

Pure: reads a pod as a plain dict; imports nothing of Kubernetes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

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


def _containers(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list(((pod.get("spec") or {}).get("containers")) or [])


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
    """Every container's fractional ask on ``pod``; empty when the pod carries none.

    Raises InvalidAsk (one line, naming the label, annotation or resource) on unreadable values.
    """
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    containers = _containers(pod)
    if not containers:
        return []
    asks: dict[int, Ask] = {}

    def add(
        index: int,
        source: str,
        need: Need,
        original: dict[str, str],
        remove: tuple[str, ...],
        devices: int = 1,
    ) -> None:
        prev = asks.get(index)
        if prev is not None:
            need = _combine(prev.need, need)
            source = f"{prev.source}+{source}"
            original = {**prev.original, **original}
            remove = tuple(dict.fromkeys(prev.remove_resources + remove))
            devices = max(devices, prev.devices)
        asks[index] = Ask(
            source, str(containers[index].get("name", "")), index, need, original, remove, devices
        )

    if CFGI_LABEL in labels:
        fraction = parse_number(labels[CFGI_LABEL], f"label {CFGI_LABEL}")
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
        add(index, "cfgi", Need(fraction=fraction), original, remove)

    if KAI_FRACTION in annotations or KAI_MEMORY in annotations:
        name = annotations.get(KAI_CONTAINER)
        index = 0
        if name:
            found = [i for i, c in enumerate(containers) if c.get("name") == name]
            if not found:
                raise InvalidAsk(
                    f"annotation {KAI_CONTAINER}={name!r} names no container of the pod",
                    hint="containers are " + ", ".join(str(c.get("name")) for c in containers),
                )
            index = found[0]
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
        add(index, "kai", need, original, (), devices)

    for index, c in enumerate(containers):
        units = _resource(c, METAGPU_RESOURCE)
        if units is None:
            continue
        n = _whole_number(units, f"resource {METAGPU_RESOURCE}", METAGPU_HINT)
        add(
            index,
            "metagpu",
            Need(fraction=Fraction(n, rule.metagpu_units_per_gpu)),
            {METAGPU_RESOURCE: str(units)},
            (METAGPU_RESOURCE,),
        )
    return [asks[i] for i in sorted(asks)]
