"""Per-model tables the planner searches: candidate instances as bits, valid layouts as bit sets.

A GPU's state is two bit sets over its model's candidates (every legal (profile, start)):
``fixed`` (instances that must stay where they are: used in the snapshot, or handed to a pod by
this plan) and ``free`` (instances that exist free in the snapshot and have not been handed out
or destroyed yet). Whether a set of candidates is a layout the hardware can hold is one set
membership test against every valid layout of the model (all rules of cdmo.mig.layouts:
placements, overlap, max counts, exclusive groups, compute slices); valid layouts are closed
under removal, so partial layouts are tested the same way while searching.

:meth:`Geometry.options` answers "the ways to add this multiset of profiles to a GPU in this
state": the placements beside the used instances are searched depth-first once per (used
instances, multiset) and costed for each set of free instances the planner asks about (a big
cluster holds many free sets beside the same used ones); both are cached. ``cap`` says how many
instances of each profile a set of free placement units could still hold. The valid layouts
come as bit sets straight from cdmo.mig.layouts (valid_layout_bits).

Pure: imports nothing of Kubernetes or NVML.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from fractions import Fraction

from cdmo.mig.catalog import GpuModel, get_model, model_keys
from cdmo.mig.layouts import Instance, layout_candidates, valid_layout_bits
from cdmo.planner.fragmentation import block_classes, frag_vector

#: Entries kept per model in the search cache (about 3 kB each) before it starts over.
_ADD_CACHE_LIMIT = 20_000

#: Entries kept per model by creates_at_least (about 100 bytes each; a 1000-node plan asks
#: about 80,000) before it starts over.
_BOUND_CACHE_LIMIT = 200_000

#: A demand: (profile, count) pairs sorted by profile name, counts > 0.
Demand = tuple[tuple[str, int], ...]


def bits_of(bits: int) -> Iterable[int]:
    """Indexes of the set bits of ``bits``, lowest first."""
    while bits:
        low = bits & -bits
        yield low.bit_length() - 1
        bits ^= low


#: What Geometry.creates_at_least keeps per demand (see Geometry._bound_cache).
BoundEntry = tuple[dict[int, int], tuple[tuple[int, int], ...], dict[int, bool]]

#: One placement of a demand beside a GPU's fixed instances, as :meth:`Geometry._ways` keeps it:
#: (candidates placed, how many, free candidates it may keep, fixed | placed, units occupied
#: afterwards, loss of large free blocks).
Way = tuple[int, int, int, int, int, tuple[int, ...]]


class AddOption:
    """One way to add a demand to one GPU: what the pod gets and the GPU's state afterwards."""

    __slots__ = ("assigned", "created", "destroyed", "fixed", "free", "loss", "units")

    def __init__(
        self,
        destroyed: int,
        created: int,
        loss: tuple[int, ...],
        assigned: int,
        fixed: int,
        free: int,
        units: int,
    ) -> None:
        self.destroyed = destroyed
        self.created = created
        self.loss = loss
        #: Candidates that go to the pod (existing free ones handed out, or new ones).
        self.assigned = assigned
        #: The GPU's state afterwards.
        self.fixed = fixed
        self.free = free
        #: Placement units that ``fixed`` occupies.
        self.units = units


class Geometry:
    """Everything the planner needs to know about one GPU model, precomputed once."""

    def __init__(self, model: GpuModel, ordinal: int) -> None:
        self.model = model
        self.key = model.key
        #: Small integer that stands for the model inside state keys.
        self.ordinal = ordinal
        self.axis = model.placement_axis_size
        #: One placement unit in 24ths of a GPU (axes are 4, 8 or 12 units): block fill levels of
        #: different models compare.
        self.unit_scale = 24 // self.axis
        self.full = (1 << self.axis) - 1
        cands = layout_candidates(model)
        self.cands: tuple[Instance, ...] = cands
        self.index = {c: i for i, c in enumerate(cands)}
        #: (profile, start) -> candidate index
        self.slot = {(c.profile, c.start): i for i, c in enumerate(cands)}
        self.units = tuple(model.profile(c.profile).mask(c.start) for c in cands)
        self.by_profile = {
            p.name: tuple(i for i, c in enumerate(cands) if c.profile == p.name) for p in model.profiles
        }
        #: profile -> bits of its candidates
        self.profile_bits = {name: sum(1 << i for i in idx) for name, idx in self.by_profile.items()}
        self.size = {p.name: p.placement_size for p in model.profiles}
        self.fraction = {p.name: Fraction(p.placement_size, self.axis) for p in model.profiles}
        #: Every valid layout as candidate bits, the empty one included (candidates are in the
        #: order valid_layout_bits counts them).
        self.valid = valid_layout_bits(model) | {0}
        #: (block size in units, aligned starts) per size class (cdmo.planner.fragmentation)
        self._classes = block_classes(model, self.fraction)
        self.frag = tuple(frag_vector(mask, self._classes, self.unit_scale) for mask in range(self.full + 1))
        #: Profile names in catalog order; ``cap[mask][i]``: how many of profile i fit in free units ``mask``.
        self.profile_names = model.profile_names
        self.cap = tuple(self._cap_vector(mask) for mask in range(self.full + 1))
        self._units_cache: dict[int, int] = {0: 0}
        self._instances_cache: dict[int, tuple[Instance, ...]] = {}
        self._room_cache: dict[int, int] = {}
        self._loss_cache: dict[tuple[int, int], tuple[int, ...]] = {}
        self._caps_cache: dict[int, tuple[int, ...]] = {}
        #: unit mask -> bits of the candidates that overlap it
        self.hits = tuple(
            sum(1 << i for i, u in enumerate(self.units) if u & mask) for mask in range(self.full + 1)
        )
        self._add_cache: dict[tuple[int, int, Demand], tuple[AddOption, ...]] = {}
        self._ways_cache: dict[tuple[int, Demand], tuple[Way, ...]] = {}
        self._need_cache: dict[Demand, tuple[tuple[int, int], ...] | None] = {}
        #: demand -> ({fixed and free as one int -> creates_at_least}: int keys, so that looking
        #: up makes no tuple (the planner asks this once per GPU state and demand); the candidate
        #: bits of each of its profiles with the count; {fixed -> whether the units beside it
        #: hold the demand}): one entry per demand, so that a call hashes the demand once.
        self._bound_cache: dict[Demand, BoundEntry] = {}
        self._bound_entries = 0

    def bits(self, instances: Iterable[Instance]) -> int:
        """The candidate bit set of ``instances``; raises KeyError for an illegal placement."""
        out = 0
        for inst in instances:
            out |= 1 << self.index[inst]
        return out

    def instances(self, bits: int) -> tuple[Instance, ...]:
        """The instances of candidate set ``bits``, canonical order (cached: every plan lists
        every GPU's layout, and a fleet has few distinct ones)."""
        found = self._instances_cache.get(bits)
        if found is None:
            if len(self._instances_cache) >= _ADD_CACHE_LIMIT:
                self._instances_cache.clear()
            found = self._instances_cache[bits] = tuple(self.cands[i] for i in bits_of(bits))
        return found

    def room(self, fixed: int) -> int:
        """Placement units the candidates in ``fixed`` leave free, in 24ths of a GPU (cached)."""
        found = self._room_cache.get(fixed)
        if found is None:
            if len(self._room_cache) >= _ADD_CACHE_LIMIT:
                self._room_cache.clear()
            found = self._room_cache[fixed] = (self.axis - self.units_of(fixed).bit_count()) * self.unit_scale
        return found

    def units_of(self, bits: int) -> int:
        """The placement units the candidates in ``bits`` occupy."""
        cached = self._units_cache.get(bits)
        if cached is None:
            if len(self._units_cache) >= _ADD_CACHE_LIMIT:
                self._units_cache.clear()
            cached = 0
            for i in bits_of(bits):
                cached |= self.units[i]
            self._units_cache[bits] = cached
        return cached

    def caps_beside(self, fixed: int) -> tuple[int, ...]:
        """``cap`` of the units that the candidates in ``fixed`` leave free (cached)."""
        caps = self._caps_cache.get(fixed)
        if caps is None:
            if len(self._caps_cache) >= _ADD_CACHE_LIMIT:
                self._caps_cache.clear()
            caps = self._caps_cache[fixed] = self.cap[self.full & ~self.units_of(fixed)]
        return caps

    def _cap_vector(self, free_mask: int) -> tuple[int, ...]:
        out = []
        for p in self.model.profiles:
            taken = count = 0
            for s in p.starts:
                m = p.mask(s)
                if m & free_mask == m and not m & taken:
                    taken |= m
                    count += 1
            out.append(min(count, p.max_count))
        return tuple(out)

    def offers(self, demand: Demand) -> bool:
        return all(p in self.by_profile for p, _ in demand)

    def need(self, demand: Demand) -> tuple[tuple[int, int], ...] | None:
        """(profile index in ``cap``, count) per profile of ``demand``; None if no GPU of this
        model could ever hold all of it (cached)."""
        try:
            return self._need_cache[demand]
        except KeyError:
            pass
        need: tuple[tuple[int, int], ...] | None = None
        if self.offers(demand) and self.options(0, 0, demand):
            names = self.profile_names
            need = tuple((names.index(p), c) for p, c in demand)
        self._need_cache[demand] = need
        return need

    def bound_table(self, demand: Demand) -> dict[int, int]:
        """The cache of :meth:`creates_at_least` for ``demand``: ``fixed << len(cands) | free`` ->
        its answer (a caller that asks by the thousand reads it first)."""
        entry = self._bound_cache.get(demand)
        if entry is None:
            entry = self._bound_entry(demand)
        return entry[0]

    def _bound_entry(self, demand: Demand) -> BoundEntry:
        bits = self.profile_bits
        entry = self._bound_cache[demand] = ({}, tuple((bits.get(p, 0), c) for p, c in demand), {})
        return entry

    def creates_at_least(self, fixed: int, free: int, demand: Demand) -> int:
        """Instances that adding ``demand`` to a GPU in state (fixed, free) must create at least
        (what the free instances of its profiles cannot cover); -1 when the units beside ``fixed``
        cannot hold it, whatever is destroyed. A cheap lower bound of :meth:`options` (cached)."""
        entry = self._bound_cache.get(demand)
        if entry is None:
            entry = self._bound_entry(demand)
        table, wants, fits = entry
        key = fixed << len(self.cands) | free
        found = table.get(key)
        if found is not None:
            return found
        # Whether the units beside ``fixed`` hold the demand depends on ``fixed`` alone: decided
        # once per (fixed, demand), not once per (fixed, free, demand) as the planner asks.
        holds = fits.get(fixed)
        if holds is None:
            need = self.need(demand)
            if need is None:
                holds = False
            else:
                caps = self.caps_beside(fixed)
                holds = all(caps[i] >= c for i, c in need)
            fits[fixed] = holds
        create = -1
        if holds:
            create = 0
            for bits, count in wants:
                have = (free & bits).bit_count()
                if have < count:
                    create += count - have
        self._bound_entries += 1
        if self._bound_entries > _BOUND_CACHE_LIMIT:
            # A long-running operator must not grow without bound: start every table over.
            for old, _, old_fits in self._bound_cache.values():
                old.clear()
                old_fits.clear()
            self._bound_entries = 1
        table[key] = create
        return create

    def options(self, fixed: int, free: int, demand: Demand) -> tuple[AddOption, ...]:
        """Every distinct way to add ``demand`` to a GPU in state (fixed, free); () if impossible.

        Sorted cheapest first: fewest existing free instances destroyed, fewest instances created
        (existing free ones of the right profile are handed out first), least loss of large free
        blocks, lowest candidates. Ways that destroy, create and occupy the same are one option
        (the cheapest). Fixed instances never move.
        """
        key = (fixed, free, demand)
        try:
            return self._add_cache[key]
        except KeyError:
            pass
        result = self._search(fixed, free, demand)
        if len(self._add_cache) >= _ADD_CACHE_LIMIT:
            self._add_cache.clear()  # a long-running operator must not grow without bound
        self._add_cache[key] = result
        return result

    def best_add(self, fixed: int, free: int, demand: Demand) -> AddOption | None:
        """The cheapest of :meth:`options`, or None."""
        found = self.options(fixed, free, demand)
        return found[0] if found else None

    def _loss(self, before: int, after: int) -> tuple[int, ...]:
        """Frag vector of free-unit mask ``before`` minus that of ``after`` (cached)."""
        key = (before, after)
        loss = self._loss_cache.get(key)
        if loss is None:
            if len(self._loss_cache) >= _ADD_CACHE_LIMIT:
                self._loss_cache.clear()
            frag = self.frag
            loss = self._loss_cache[key] = tuple(
                b - a for b, a in zip(frag[before], frag[after], strict=True)
            )
        return loss

    def _ways(self, fixed: int, demand: Demand) -> tuple[Way, ...]:
        """Every placement of ``demand`` beside the instances ``fixed`` (whatever is free), each
        with what its cost does not owe to the free instances (cached per (fixed, demand): the
        planner asks :meth:`options` for several free sets beside the same used ones)."""
        key = (fixed, demand)
        found = self._ways_cache.get(key)
        if found is not None:
            return found
        wanted: list[str] = []
        for profile, count in demand:
            wanted.extend([profile] * count)
        wanted.sort(key=lambda p: (-self.size[p], p))
        n = len(wanted)
        valid = self.valid
        units = self.units
        fixed_units = self.units_of(fixed)
        placed: list[tuple[int, int]] = []
        if n == 1:
            for ci in self.by_profile[wanted[0]]:
                u = units[ci]
                if not u & fixed_units and (fixed | (1 << ci)) in valid:
                    placed.append((1 << ci, u))
        else:

            def extend(k: int, assigned: int, assigned_units: int, lo: int) -> None:
                if k == n:
                    placed.append((assigned, assigned_units))
                    return
                profile = wanted[k]
                cands = self.by_profile[profile]
                first = lo if k and wanted[k - 1] == profile else 0
                taken = fixed_units | assigned_units
                for pos in range(first, len(cands)):
                    ci = cands[pos]
                    u = units[ci]
                    if u & taken:
                        continue
                    grown = assigned | (1 << ci)
                    if (fixed | grown) not in valid:
                        continue
                    extend(k + 1, grown, assigned_units | u, pos + 1)

            extend(0, 0, 0, 0)
        full = self.full
        free_before = full & ~fixed_units
        hits = self.hits
        ways = [
            (
                assigned,
                assigned.bit_count(),
                # free instances that may stay: not handed out, overlapping nothing placed
                ~assigned & ~hits[assigned_units],
                fixed | assigned,
                fixed_units | assigned_units,
                self._loss(free_before, full & ~(fixed_units | assigned_units)),
            )
            for assigned, assigned_units in placed
        ]
        # Least loss first, then lowest candidates: the order _search keeps the first of.
        ways.sort(key=lambda w: (w[5], w[0]))
        found = tuple(ways)
        if len(self._ways_cache) >= _ADD_CACHE_LIMIT:
            self._ways_cache.clear()
        self._ways_cache[key] = found
        return found

    def _search(self, fixed: int, free: int, demand: Demand) -> tuple[AddOption, ...]:
        for profile, _ in demand:
            if profile not in self.by_profile:
                return ()
        valid = self.valid
        axis = self.axis
        n_free = free.bit_count()
        seen: set[int] = set()
        found: list[tuple[int, AddOption]] = []
        # Per way: the free instances it hands out, those it keeps (dropping the highest first
        # while the rest would not make a valid layout), and those it must destroy. Ways that
        # destroy, create and occupy alike are one option, the cheapest: the ways come least
        # loss and lowest candidates first, so the first of them is it.
        for assigned, size, spare, base, occupied, loss in self._ways(fixed, demand):
            keep = free & spare
            while keep and (base | keep) not in valid:
                keep &= ~(1 << (keep.bit_length() - 1))  # drop the highest free instance first
            handed = (assigned & free).bit_count()
            destroyed = n_free - handed - keep.bit_count()
            created = size - handed
            # (destroyed, created) as one number that orders as the pair (created < 2**16)
            cheap = destroyed << 16 | created
            sig = cheap << axis | occupied
            if sig in seen:
                continue
            seen.add(sig)
            found.append((cheap, AddOption(destroyed, created, loss, assigned, base, keep, occupied)))
        # Fewest destroyed, then fewest created; a stable sort keeps least loss first within.
        found.sort(key=_first)
        return tuple(option for _, option in found)


def _first(entry: tuple[int, AddOption]) -> int:
    return entry[0]


@functools.cache
def _geometry(key: str, ordinal: int) -> Geometry:
    return Geometry(get_model(key), ordinal)


@functools.cache
def _ordinals() -> dict[str, int]:
    return {k: i for i, k in enumerate(model_keys())}


def geometry(model: GpuModel) -> Geometry:
    """The (cached) geometry of ``model``."""
    return _geometry(model.key, _ordinals()[model.key])
