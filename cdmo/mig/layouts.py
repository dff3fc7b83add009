"""The layout engine: which sets of (profile, start) a GPU model can hold.

Rules (see data/mig-profiles.yaml ``combination_rules``): every instance starts at one of its
profile's legal starts; no two instances overlap on the placement axis; no profile beyond its
``max_count``; at most one instance per exclusive group (``+me``); compute slices within the
GPU's total. RTX PRO's ``+me.all`` additionally allows only ``-me`` profiles beside it (nvml.h).

Pure: imports nothing of Kubernetes or NVML.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from cdmo.errors import InvalidInput, InvalidLayout
from cdmo.mig.catalog import GpuModel, Profile, all_models, get_model, is_profile_name
from cdmo.yamlload import load_yaml

#: nvml.h: an ALL_ME instance "prevents allocation of all but _NO_ME profiles".
_ALL_ME_GROUP = "media-all"


@dataclass(frozen=True, order=True)
class Instance:
    """A GPU instance of ``profile`` at placement ``start`` (what a layout is made of)."""

    profile: str
    start: int

    def __str__(self) -> str:
        return f"{self.profile}@{self.start}"


def _sort_key(inst: Instance) -> tuple[int, str]:
    return (inst.start, inst.profile)


def sort_layout(instances: Iterable[Instance]) -> tuple[Instance, ...]:
    """Instances ordered by start, then profile: the canonical order of a layout."""
    return tuple(sorted(instances, key=_sort_key))


def validate_layout(model: GpuModel, instances: Iterable[Instance]) -> list[str]:
    """Every reason why ``model`` cannot hold ``instances``; an empty list means valid."""
    items = sort_layout(instances)
    if len(items) > model.max_instances:
        # That alone: each pair of a long list would be checked and named, in time and lines
        # that grow with the square of an input no GPU can hold.
        return [f"{len(items)} instances exceed the {model.max_instances} of {model.key}"]
    problems: list[str] = []
    known: list[tuple[Instance, Profile]] = []
    for inst in items:
        if not model.has_profile(inst.profile):
            problems.append(
                f"{inst.profile} is not a MIG profile of {model.key}; "
                f"its profiles are {', '.join(model.profile_names)}"
            )
            continue
        prof = model.profile(inst.profile)
        if inst.start not in prof.starts:
            problems.append(
                f"{inst.profile} cannot start at {inst.start} on {model.key}; "
                f"legal starts are {', '.join(map(str, prof.starts))}"
            )
            continue
        known.append((inst, prof))

    for i, (a, pa) in enumerate(known):
        for b, pb in known[i + 1 :]:
            if pa.mask(a.start) & pb.mask(b.start):
                units = sorted(set(pa.units(a.start)) & set(pb.units(b.start)))
                problems.append(f"{a} overlaps {b} on placement units {_span(units)}")

    counts = Counter(p.name for _, p in known)
    for name, n in sorted(counts.items()):
        limit = model.profile(name).max_count
        if n > limit:
            problems.append(f"{n} x {name} exceeds its max count of {limit} on {model.key}")

    groups: dict[str, list[Instance]] = {}
    for inst, prof in known:
        if prof.exclusive_group:
            groups.setdefault(prof.exclusive_group, []).append(inst)
    for group, members in sorted(groups.items()):
        if len(members) > 1:
            problems.append(
                f"{' and '.join(map(str, members))} share exclusive group {group}; "
                "at most one such instance per GPU"
            )
    all_me = [inst for inst, p in known if p.exclusive_group == _ALL_ME_GROUP]
    if all_me:
        blocked = [i for i, p in known if p.exclusive_group != _ALL_ME_GROUP and not p.name.endswith("-me")]
        if blocked:
            problems.append(
                f"{all_me[0]} allows only -me profiles beside it; remove " + ", ".join(map(str, blocked))
            )

    slices = sum(p.compute_slices for _, p in known)
    if slices > model.compute_slices_total:
        problems.append(f"{slices} compute slices exceed the {model.compute_slices_total} of {model.key}")
    return problems


def _span(units: Sequence[int]) -> str:
    return str(units[0]) if len(units) == 1 else f"{units[0]}-{units[-1]}"


def is_valid_layout(model: GpuModel, instances: Iterable[Instance]) -> bool:
    return not validate_layout(model, instances)


def check_layout(model: GpuModel, instances: Iterable[Instance]) -> tuple[Instance, ...]:
    """The layout in canonical order; raises InvalidLayout with every problem when invalid."""
    items = sort_layout(instances)
    problems = validate_layout(model, items)
    if problems:
        raise InvalidLayout(
            f"{format_layout(items) or 'the empty layout'} is not valid on {model.key}: "
            + "; ".join(problems),
            problems,
        )
    return items


def free_placements(
    model: GpuModel, instances: Iterable[Instance], *, include_variants: bool = True
) -> tuple[Instance, ...]:
    """Every (profile, start) that can be added beside ``instances`` keeping the layout valid.

    ``instances`` must be valid themselves; the result is in canonical order.
    """
    current = sort_layout(instances)
    check_layout(model, current)
    result = []
    for prof in model.profiles:
        if prof.is_variant and not include_variants:
            continue
        for start in prof.starts:
            candidate = Instance(prof.name, start)
            if not validate_layout(model, (*current, candidate)):
                result.append(candidate)
    return sort_layout(result)


def _candidates(model: GpuModel, include_variants: bool) -> tuple[Instance, ...]:
    return sort_layout(
        Instance(p.name, s) for p in model.profiles if include_variants or not p.is_variant for s in p.starts
    )


@functools.cache
def _index_sets(key: str, include_variants: bool) -> tuple[tuple[int, ...], ...]:
    """Every non-empty valid layout as ascending indexes into ``_candidates(model, ...)``, in the
    order the depth-first search finds them."""
    model = get_model(key)
    cands = _candidates(model, include_variants)
    profiles = [model.profile(c.profile) for c in cands]
    masks = [p.mask(c.start) for p, c in zip(profiles, cands, strict=True)]
    all_me = [p.exclusive_group == _ALL_ME_GROUP for p in profiles]
    # What the all-me rule refuses beside an all-me instance (see validate_layout).
    blocks = [not me and not p.name.endswith("-me") for p, me in zip(profiles, all_me, strict=True)]
    out: list[tuple[int, ...]] = []
    counts: Counter[str] = Counter()
    groups: set[str] = set()

    # Depth-first over candidates in canonical order, judging each grown layout as
    # validate_layout would, but incrementally: the layout being grown is valid, so adding one
    # candidate breaks a rule only through that candidate (its count, its exclusive group, the
    # all-me rule, slices, instances). Judging every grown layout from scratch took 3,000
    # validate_layout calls per model, most of a cold planner's set-up; tests/unit/mig checks
    # that both give the same layouts for every model.
    def extend(chosen: tuple[int, ...], used: int, slices: int, has_all_me: bool, has_blocked: bool) -> None:
        for i in range(chosen[-1] + 1 if chosen else 0, len(cands)):
            prof = profiles[i]
            group = prof.exclusive_group
            if (
                masks[i] & used
                or counts[prof.name] >= prof.max_count
                or (group is not None and group in groups)
                or ((has_all_me or all_me[i]) and (has_blocked or blocks[i]))
                or slices + prof.compute_slices > model.compute_slices_total
                or len(chosen) >= model.max_instances
            ):
                continue
            grown = (*chosen, i)
            out.append(grown)
            counts[prof.name] += 1
            if group is not None:
                groups.add(group)
            extend(
                grown,
                used | masks[i],
                slices + prof.compute_slices,
                has_all_me or all_me[i],
                has_blocked or blocks[i],
            )
            counts[prof.name] -= 1
            if group is not None:
                groups.discard(group)

    extend((), 0, 0, False, False)
    return tuple(out)


@functools.cache
def _enumerate(key: str, include_variants: bool) -> tuple[tuple[Instance, ...], ...]:
    cands = _candidates(get_model(key), include_variants)
    # Candidates are in canonical (start, profile) order, so ascending indexes give canonical
    # layouts, and comparing indexes orders layouts as comparing their (start, profile) lists.
    ordered = sorted(_index_sets(key, include_variants), key=lambda s: (len(s), s))
    return tuple(tuple(cands[i] for i in s) for s in ordered)


def layout_candidates(model: GpuModel) -> tuple[Instance, ...]:
    """Every legal (profile, start) of ``model``, variants included, in canonical order."""
    return _candidates(model, True)


@functools.cache
def _bit_sets(key: str) -> frozenset[int]:
    return frozenset(sum(1 << i for i in s) for s in _index_sets(key, True))


def valid_layout_bits(model: GpuModel) -> frozenset[int]:
    """Every non-empty valid layout of ``model`` as a bit set over :func:`layout_candidates`
    (bit i: candidate i); what the planner tests layouts against (computed once per model)."""
    return _bit_sets(model.key)


def enumerate_layouts(model: GpuModel, *, include_variants: bool = True) -> tuple[tuple[Instance, ...], ...]:
    """Every non-empty valid layout of ``model`` (computed once per model, then cached)."""
    return _enumerate(model.key, include_variants)


def layout_multiset(instances: Iterable[Instance]) -> tuple[tuple[str, int], ...]:
    """The profile counts of a layout, sorted by profile name."""
    return tuple(sorted(Counter(i.profile for i in instances).items()))


@functools.cache
def _multisets(key: str, include_variants: bool) -> frozenset[tuple[tuple[str, int], ...]]:
    return frozenset(layout_multiset(lay) for lay in _enumerate(key, include_variants))


def feasible_multisets(
    model: GpuModel, *, include_variants: bool = False
) -> frozenset[tuple[tuple[str, int], ...]]:
    """Every distinct profile multiset that some valid layout of ``model`` realises."""
    return _multisets(model.key, include_variants)


def maximal_multisets(
    model: GpuModel, *, include_variants: bool = False
) -> tuple[tuple[tuple[str, int], ...], ...]:
    """Feasible multisets to which no further profile can be added in any placement."""
    feasible = _multisets(model.key, include_variants)
    names = [p.name for p in model.profiles if include_variants or not p.is_variant]
    result = []
    for ms in feasible:
        counts = Counter(dict(ms))
        grown = False
        for name in names:
            bigger = counts.copy()
            bigger[name] += 1
            if tuple(sorted(bigger.items())) in feasible:
                grown = True
                break
        if not grown:
            result.append(ms)
    return tuple(sorted(result))


def pack_layout(model: GpuModel, counts: Mapping[str, int]) -> tuple[Instance, ...] | None:
    """A valid layout holding exactly ``counts`` of each profile, or None if none exists.

    Deterministic: the first such layout in canonical (start, profile) order.
    """
    wanted = tuple(sorted((k, v) for k, v in counts.items() if v > 0))
    for name, _ in wanted:
        model.profile(name)  # raises UnknownProfile with the model's profiles
    include_variants = any(model.profile(n).is_variant for n, _ in wanted)
    best: tuple[Instance, ...] | None = None
    for lay in _enumerate(model.key, include_variants):
        if layout_multiset(lay) == wanted:
            key = [(i.start, i.profile) for i in lay]
            if best is None or key < [(i.start, i.profile) for i in best]:
                best = lay
    return best


# [0-9], not \d: \d (like int() and str.isdigit()) also takes other scripts' digits, so "1g.10gb@\u0663"
# read as 1g.10gb@3; a start is written in ASCII digits only.
_LAYOUT_ITEM_RE = re.compile(r"^\s*(?P<profile>[^@\s]+)\s*@\s*(?P<start>-?[0-9]+)\s*$")


def parse_layout(text: str) -> tuple[Instance, ...]:
    """Parse ``"4g.40gb@0,3g.40gb@4"``; raises InvalidInput naming the bad item.

    Blank text is the empty layout; an empty item between commas is refused by its position
    (``4g.40gb@0,,3g.40gb@4`` is most likely an instance left out, not a layout of two).
    """
    if not text.strip():
        return ()
    result = []
    for position, raw in enumerate(text.split(","), start=1):
        item = raw.strip()
        if not item:
            raise InvalidInput(
                f"item {position} of the layout is empty",
                hint='separate instances with single commas, like "4g.40gb@0,3g.40gb@4"',
            )
        m = _LAYOUT_ITEM_RE.match(item)
        if not m:
            raise InvalidInput(
                f"cannot read {item!r} as PROFILE@START",
                hint='write a layout like "4g.40gb@0,3g.40gb@4" (starts in digits 0-9)',
            )
        if not is_profile_name(m["profile"]):
            raise InvalidInput(
                f"{m['profile']!r} is not a MIG profile name",
                hint="profiles look like 1g.10gb, 3g.40gb or 1g.10gb+me",
            )
        if len(m["start"].lstrip("-")) > 4:  # placement starts are 0..11; int() refuses 4300 digits
            raise InvalidInput(
                f"{m['start'][:12]}... is not a placement start",
                hint="starts are small whole numbers, such as 0 or 4",
            )
        result.append(Instance(m["profile"], int(m["start"])))
    return tuple(result)


def format_layout(instances: Iterable[Instance]) -> str:
    """The ``profile@start,...`` form, in canonical order."""
    return ",".join(str(i) for i in sort_layout(instances))


# --- static named layouts (mig-parted's config-default.yaml) ---------------------------------

#: Generic names for "every instance of the smallest profile with N compute slices".
_GENERIC_SLICES = {"all-1g": 1, "all-2g": 2, "all-3g": 3, "all-4g": 4, "all-7g": 7}


@functools.cache
def _named_data() -> dict[str, Any]:
    text = resources.files("cdmo.mig").joinpath("data/named-layouts.yaml").read_text()
    data: dict[str, Any] = load_yaml(text)  # packaged with cdmo: a mapping, checked by tests
    return data


def _max_fill(model: GpuModel, prof: Profile) -> int:
    n = 0
    for lay in _enumerate(model.key, prof.is_variant):
        if all(i.profile == prof.name for i in lay):
            n = max(n, len(lay))
    return n


@functools.cache
def _named_layouts(key: str) -> dict[str, tuple[Instance, ...]]:
    model = get_model(key)
    result: dict[str, tuple[Instance, ...]] = {}
    # mig-parted ships all-<profile> (with + written as .) at the profile's fullest count.
    for prof in model.base_profiles:
        lay = pack_layout(model, {prof.name: _max_fill(model, prof)})
        if lay:
            result["all-" + prof.name.replace("+", ".")] = lay
    for name, slices in _GENERIC_SLICES.items():
        fits = [p for p in model.base_profiles if p.compute_slices == slices]
        if fits:
            smallest = min(fits, key=lambda p: (p.placement_size, p.name))
            result[name] = result["all-" + smallest.name]
    balanced = _named_data()["all_balanced"].get(key)
    if balanced:
        lay = pack_layout(model, balanced)
        if lay is None:
            raise ValueError(f"named-layouts.yaml: all-balanced of {key} does not fit")
        result["all-balanced"] = lay
    return dict(sorted(result.items()))


def named_layouts(model: GpuModel) -> dict[str, tuple[Instance, ...]]:
    """mig-parted's static layouts for ``model`` (all-1g, all-2g, ..., all-balanced, all-<profile>)."""
    return _named_layouts(model.key)


def named_layout(model: GpuModel, name: str) -> tuple[Instance, ...]:
    """One named layout; raises InvalidInput listing the model's names."""
    layouts = named_layouts(model)
    if name not in layouts:
        raise InvalidInput(
            f"{model.key} has no named layout {name!r}",
            hint="its named layouts are " + ", ".join(layouts),
        )
    return layouts[name]


def check_catalog() -> None:
    """Load every model and its named layouts; raises if the data files disagree with the rules."""
    for model in all_models():
        _named_layouts(model.key)
