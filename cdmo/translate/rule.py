"""The rule that turns a share of a GPU into a MIG profile of one GPU model.

A share is a fraction of the GPU (CFGI, KAI ``gpu-fraction``, MetaGPU units), an amount of
memory in MiB (KAI ``gpu-memory``), or both. Default rule: a fraction ``f`` needs at least
``ceil(f x compute slices of the GPU)`` compute slices and ``ceil(f x memory slices of the GPU)``
memory slices; a memory ask needs a profile that holds at least that many MiB. Among the
profiles that meet every need, the one with the fewest compute slices, then the least memory,
wins. A profile is never granted less than asked, media-extension and other variant profiles
(``+me``, ``+gfx``, ``-me``) are never chosen, and whole numbers keep whole GPUs.

Pure: imports nothing of Kubernetes or NVML; fractions are exact (``fractions.Fraction``), so
``0.125 x 8`` is 1, not 1.0000000001.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from cdmo.mig.catalog import GpuModel, Profile

#: Largest whole-GPU count an ask may name (a pod asking more is refused, not computed).
MAX_WHOLE_GPUS = 64
#: Largest memory ask accepted, in MiB (1 TiB): more is refused as absurd rather than compared.
MAX_MEMORY_MIB = 1 << 20


@dataclass(frozen=True)
class Rule:
    """The configurable parts of the rule; the defaults are the documented rule."""

    #: A fraction must get at least its share of the GPU's compute slices ...
    fraction_compute: bool = True
    #: ... and of its memory slices.
    fraction_memory: bool = True
    #: ClearML's fractional GPU injector shares a GPU as this many ``nvidia.com/gpu`` replicas.
    cfgi_replicas_per_gpu: int = 8
    #: cnvrg MetaGPU divides each GPU into this many units.
    metagpu_units_per_gpu: int = 100


#: The documented rule.
DEFAULT_RULE = Rule()


@dataclass(frozen=True)
class Need:
    """What an ask needs of one GPU: a share and/or memory. ``fraction`` above 1 is whole GPUs."""

    fraction: Fraction | None = None
    memory_mib: int | None = None


@dataclass(frozen=True)
class Choice:
    """The answer for one model: ``count`` instances of ``profile``, and why."""

    model: str
    profile: str
    count: int
    reason: str


@dataclass(frozen=True)
class NoFit:
    """No profile of the model meets the need; ``reason`` says why and what would fit."""

    model: str
    reason: str
    #: The largest fraction and memory (MiB) one instance of this model can serve.
    max_fraction: Fraction
    max_memory_mib: int


def profile_memory_mib(model: GpuModel, profile: Profile) -> tuple[int, bool]:
    """The profile's memory in MiB and whether it is an estimate.

    Where the catalog lacks a figure (B200's larger profiles), the estimate is a lower bound:
    the smallest known MiB per memory slice of the model times the profile's slices, so that a
    memory ask is never promised more than the instance holds.
    """
    if profile.memory_mib is not None:
        return int(profile.memory_mib), False
    known = [p.memory_mib / p.placement_size for p in model.profiles if p.memory_mib is not None]
    if not known:
        return 0, True
    return int(min(known) * profile.placement_size), True


def candidate_profiles(model: GpuModel) -> tuple[Profile, ...]:
    """Profiles the rule may choose: base profiles only (never +me or other variants), smallest first."""
    return tuple(sorted(model.base_profiles, key=lambda p: _rank(model, p)))


def _rank(model: GpuModel, p: Profile) -> tuple[int, int, int, str]:
    return (p.compute_slices, p.placement_size, profile_memory_mib(model, p)[0], p.name)


def whole_gpu_profile(model: GpuModel) -> Profile:
    """The profile that spans the whole GPU (most compute slices, then most memory)."""
    return max(model.base_profiles, key=lambda p: _rank(model, p))


def _fmt_fraction(f: Fraction) -> str:
    return format(float(f), "g")


def describe_need(need: Need) -> str:
    parts = []
    if need.fraction is not None:
        parts.append(f"{_fmt_fraction(need.fraction)} of a GPU")
    if need.memory_mib is not None:
        parts.append(f"{need.memory_mib} MiB of GPU memory")
    return " and ".join(parts) or "nothing"


def instance_limits(model: GpuModel) -> tuple[Fraction, int]:
    """The largest fraction and memory one instance of ``model`` serves (a whole GPU)."""
    whole = whole_gpu_profile(model)
    return Fraction(1), profile_memory_mib(model, whole)[0]


def choose_profile(model: GpuModel, need: Need, rule: Rule = DEFAULT_RULE) -> Choice | NoFit:
    """The smallest profile of ``model`` that meets ``need`` under ``rule``, or why none does.

    Invariants: the chosen profile has at least the asked share of compute and memory slices
    (as the rule enables them) and at least the asked MiB; it is never a variant profile.
    """
    max_fraction, max_memory = instance_limits(model)
    if need.fraction is None and need.memory_mib is None:
        return NoFit(model.key, "the pod asks for no share of a GPU", max_fraction, max_memory)
    whole = whole_gpu_profile(model)
    f = need.fraction
    if f is not None and f <= 0:
        return NoFit(
            model.key, f"a GPU fraction must be above 0, not {_fmt_fraction(f)}", max_fraction, max_memory
        )
    if f is not None and f >= 1:
        if f.denominator != 1:
            return NoFit(
                model.key,
                f"{_fmt_fraction(f)} GPUs is neither a fraction of one GPU nor a whole number of GPUs;"
                " ask at most 1, or a whole number",
                max_fraction,
                max_memory,
            )
        if f > MAX_WHOLE_GPUS:
            return NoFit(
                model.key, f"{f} GPUs is more than {MAX_WHOLE_GPUS} for one pod", max_fraction, max_memory
            )
        count = int(f)
        mem = need.memory_mib
        if mem is not None and mem > max_memory:
            return NoFit(
                model.key,
                f"{mem} MiB per GPU is more than {model.key}'s {whole.name} holds ({max_memory} MiB)",
                max_fraction,
                max_memory,
            )
        return Choice(
            model.key,
            whole.name,
            count,
            f"{count} whole GPU{'s' if count > 1 else ''} of {model.key} stay whole: {count} x {whole.name}",
        )
    mem = need.memory_mib
    if mem is not None and (mem <= 0 or mem > MAX_MEMORY_MIB):
        return NoFit(
            model.key,
            f"a GPU memory ask must be 1 to {MAX_MEMORY_MIB} MiB, not {mem}",
            max_fraction,
            max_memory,
        )
    min_compute = math.ceil(f * model.compute_slices_total) if f is not None and rule.fraction_compute else 0
    min_slices = math.ceil(f * model.placement_axis_size) if f is not None and rule.fraction_memory else 0
    for p in candidate_profiles(model):
        p_mem, estimated = profile_memory_mib(model, p)
        if p.compute_slices < min_compute or p.placement_size < min_slices:
            continue
        if mem is not None and p_mem < mem:
            continue
        return Choice(model.key, p.name, 1, _why(model, need, p, min_compute, min_slices, p_mem, estimated))
    if mem is not None:
        why = (
            f"{mem} MiB is more than {model.key}'s largest profile {whole.name} holds ({max_memory} MiB);"
            f" ask at most {max_memory} MiB"
        )
    else:  # unreachable with the default rule: the whole GPU meets any fraction up to 1
        why = f"no profile of {model.key} has {min_compute} compute and {min_slices} memory slices"
    return NoFit(model.key, why, max_fraction, max_memory)


def _why(
    model: GpuModel, need: Need, p: Profile, min_compute: int, min_slices: int, p_mem: int, estimated: bool
) -> str:
    needs = []
    if min_compute:
        needs.append(f">= {min_compute} of {model.compute_slices_total} compute slices")
    if min_slices:
        needs.append(f">= {min_slices} of {model.placement_axis_size} memory slices")
    if need.memory_mib is not None:
        needs.append(f">= {need.memory_mib} MiB")
    mem = f"{'about ' if estimated else ''}{p_mem} MiB"
    return (
        f"{describe_need(need)} on {model.key} needs {', '.join(needs)}:"
        f" {p.name} ({p.compute_slices} compute, {p.placement_size} memory slices, {mem}) is the smallest"
    )
