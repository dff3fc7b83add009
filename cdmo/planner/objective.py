"""The planner's objective in one place: how placements are ranked, and the bounds that prune them.

A plan is judged in this order (spec/planner-io.md, "What a plan aims for"):

1. **Priority first.** Levels are planned highest first, and the polish step
   (``Planner._polish``) keeps a change only if the pods served, compared level by level from the
   highest, improve: a pod never waits while lower-priority pods hold room it could have.
2. **Pods served**, within a level.
3. **Free instances destroyed**, fewest first.
4. **Instances created**, fewest first.
5. **GPUs, then nodes, newly touched**, fewest first.
6. **Fragmentation**: first the loss of what the waiting demand could still use
   (``dloss``, weighted by how much demand may go to the group), then the loss of large free
   blocks and best fit (:mod:`cdmo.planner.fragmentation`).

One pod at a time, each placement is ranked by :func:`rank` (smaller is better). The
``STANDARD`` ranking follows the order above. A level whose pods do not all fit is planned a
second time with the ``COUNT`` ranking, which puts fragmentation first (more pods fit when
free space stays whole); the pass that serves more is kept (docs/planner.md, "How it plans").

Exceptions to the order, each bounded and written down in docs/planner.md, each only when the
caller asks (:class:`cdmo.planner.options.PlanOptions`): a GPU drained for a large pod that
waited long (free instances destroyed although no pod gets them this plan; at most a share of
all GPUs and of each model's, and never on a model whose smaller pods have waited long
themselves), reclaim (free instances of nearly empty GPUs destroyed while such a pod waits; off
by default), idle defragmentation (free instances moved, within an hourly budget), and
pre-warmed instances (created although no pod asks for them yet).

To change the objective, change the tuples here; every search step compares only these.
Pure: imports nothing of Kubernetes or NVML.
"""

from __future__ import annotations

from cdmo.planner.fragmentation import FRAG_LEN

#: Rankings: the objective's order, or fragmentation first (the second pass of a crowded level).
STANDARD, COUNT = 0, 1

#: A rank: compared as a tuple, smaller is better.
Rank = tuple[object, ...]

_NO_LOSS = (0,) * FRAG_LEN


def rank(
    mode: int, destroyed: int, created: int, gpus: int, nodes: int, dloss: int, loss: tuple[int, ...]
) -> Rank:
    """The rank of one placement: instances destroyed and created, GPUs and nodes newly
    changed, loss of value to the waiting demand, loss of large free blocks."""
    if mode == STANDARD:
        return (destroyed, created, gpus, nodes, dloss, loss)
    return (dloss, destroyed, created, gpus, nodes, loss)


def lower_bound(mode: int, created: int, gpus: int, nodes: int) -> Rank:
    """A rank no placement with these creations can beat: nothing destroyed, no loss at all."""
    return rank(mode, 0, created, gpus, nodes, 0, _NO_LOSS)


def gpu_option_rank(mode: int, dloss: int, destroyed: int, created: int, loss: tuple[int, ...]) -> Rank:
    """How two ways to add a demand to the same GPU compare (the touched flags are equal)."""
    if mode == STANDARD:
        return (destroyed, created, dloss, loss)
    return (dloss, destroyed, created, loss)
