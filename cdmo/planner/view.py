"""What the explanations of waiting pods may ask of a finished planning run: a narrow interface.

:mod:`cdmo.planner.reasons` reads a run only through :class:`RunView`, never through the search's
own classes, so the search can change its insides without touching the explanations. The
planner (:class:`cdmo.planner.algorithm.Planner`) implements it; a test checks that it does.

Pure: imports nothing of Kubernetes or NVML.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cdmo.planner.geometry import Demand
from cdmo.planner.models import Node, PendingPod


@dataclass(frozen=True)
class WaitingPod:
    """A pod the run left waiting, as the explanations see it."""

    pod: PendingPod
    key: str
    #: Sorted (profile, count); None when the pod asks for no MIG device.
    demand: Demand | None
    #: Resource names that name no profile.
    bad_resources: tuple[str, ...]


class RunView(Protocol):
    """A finished planning run, as :mod:`cdmo.planner.reasons` may see it."""

    #: Every node of the snapshot, by name.
    src_nodes: tuple[Node, ...]
    #: Catalog keys of the known GPU models on labelled nodes.
    cluster_models: tuple[str, ...]

    def pending_pods(self) -> Sequence[PendingPod]:
        """Every pending pod of the snapshot, by name."""
        ...

    def gpu_models(self, node: str) -> tuple[str, ...]:
        """Catalog keys of the plannable GPUs of labelled ``node`` (known model, valid layout)."""
        ...

    def offers(self, node: str, profile: str) -> bool:
        """Whether a plannable GPU of ``node`` has ``profile``."""
        ...

    def fits_empty(self, node: str, demand: Demand) -> bool:
        """Whether ``demand`` fits on ``node`` with all its plannable GPUs empty."""
        ...

    def fits_used_only(self, node: str, demand: Demand) -> bool:
        """Whether ``demand`` fits on ``node`` beside the snapshot's used instances alone."""
        ...

    def work_done(self) -> int:
        """Walks over a node's GPUs the run has made so far (a node the planner's cheap screen
        rules out costs none): explain bounds its own work by it."""
        ...

    def top_priority_on(self, node: str) -> int | None:
        """The highest priority among the pods the run puts on ``node`` (None: none)."""
        ...
