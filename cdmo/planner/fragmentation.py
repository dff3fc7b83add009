"""The fragmentation measure: what a GPU's free placement units keep for large instances.

:func:`frag_vector` turns a mask of free placement units into FRAG_LEN numbers, larger is better;
a placement's *loss* is the vector before minus after, compared as a tuple (see
:mod:`cdmo.planner.objective` for where it sits in the objective). Precomputed per model and free
mask by :class:`cdmo.planner.geometry.Geometry`, so changing it here costs nothing per plan.

Pure: imports nothing of Kubernetes or NVML.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction

from cdmo.mig.catalog import GpuModel

#: Size classes of the fragmentation vector, as fractions of the placement axis (largest first).
#: 8-unit GPUs have 8/4/2/1-unit profiles, A30 4/2/1, RTX PRO 6000 12/6/3.
SIZE_CLASSES = (Fraction(1), Fraction(1, 2), Fraction(1, 4), Fraction(1, 8))

#: Numbers in a fragmentation vector, the same for every model so that GPUs of different models
#: compare.
FRAG_LEN = 10

#: (block size in units, aligned starts) per size class.
BlockClasses = list[tuple[int, list[int]]]


def block_classes(model: GpuModel, fraction: Mapping[str, Fraction]) -> BlockClasses:
    """The aligned blocks the measure counts on ``model``, largest first.

    Below the whole GPU each size has two classes: the starts where every base profile of that
    size may start ("strict": 4g's start 0 on 8-unit GPUs) and those where any of them may (3g's
    0 and 4). ``fraction`` is each profile's share of the placement axis.
    """
    axis = model.placement_axis_size
    classes: BlockClasses = []
    for frac in SIZE_CLASSES:
        starts = [set(p.starts) for p in model.base_profiles if fraction[p.name] == frac]
        size = int(frac * axis)
        if frac < 1:
            classes.append((size, sorted(set.intersection(*starts)) if starts else []))
        classes.append((size, sorted(set.union(*starts)) if starts else []))
    return classes


def frag_vector(
    free_mask: int, classes: Sequence[tuple[int, Sequence[int]]], unit_scale: int
) -> tuple[int, ...]:
    """What the free units ``free_mask`` keep for large instances: FRAG_LEN numbers, larger is better.

    In the order they are compared (a change's loss is this vector before minus after):

    1. wholly free aligned blocks of the whole GPU, of the strict half (the block only the
       most constrained half-size profile needs: 4g's start 0), of any half;
    2. best fit: for the whole GPU and the two half classes, the sum over their aligned
       blocks of (free units in the block) squared, in 24ths of a GPU (``unit_scale`` 24ths per
       unit). Taking a unit from a block with f free units costs 2f - 1, so the fullest GPU and
       the fuller half lose least, and small instances go next to used ones, away from free space;
    3. wholly free blocks of the strict and any quarter, then of the eighth classes.

    Equal-size intervals packed earliest-first give the maximum count, so each count is exact.
    """
    counts = []
    for size, starts in classes:
        block = (1 << size) - 1
        taken = 0
        count = 0
        for s in starts:
            m = block << s
            if m & free_mask == m and not m & taken:
                taken |= m
                count += 1
        counts.append(count)
    fill = []
    for size, starts in classes[:3]:
        block = (1 << size) - 1
        fill.append(sum((((block << s) & free_mask).bit_count() * unit_scale) ** 2 for s in starts))
    return (*counts[:3], *fill, *counts[3:7])
