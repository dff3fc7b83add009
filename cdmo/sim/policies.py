"""Policies behind one interface: ``static:<layout>``, ``first-fit`` (nos), ``dynamic`` (cdmo) and
``dynamic-sighup`` (cdmo with NVIDIA's device plugin refreshed by SIGHUP, for comparison).

:func:`make_policy` builds one by name. The batch window shared by the two dynamic policies lives
here too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from cdmo.config import OperatorConfig
from cdmo.mig.layouts import Instance, named_layout
from cdmo.sim.engine import Policy, SimGpu
from cdmo.sim.scenario import Scenario, check_policy


class StaticPolicy(Policy):
    """mig-parted's named layout on every GPU from time 0, never changed.

    A pod whose profile the layout does not offer on any node never starts.
    """

    def __init__(self, layout: str) -> None:
        self.name = f"static:{layout}"
        self.layout = layout

    def initial_layout(self, gpu: SimGpu) -> Sequence[Instance]:
        return named_layout(gpu.model, self.layout)


class BatchWindow:
    """Debounce demand: fire ``idle`` seconds after the last change, at most ``most`` after the first."""

    def __init__(self, idle: float, most: float) -> None:
        self.idle = idle
        self.most = most
        self.opened: float | None = None
        self.last = 0.0
        self.token = 0

    def touch(self, now: float) -> tuple[float, int]:
        """Record a change; returns (when the window fires, the token of that timer)."""
        if self.opened is None:
            self.opened = now
        self.last = now
        self.token += 1
        return min(self.last + self.idle, self.opened + self.most), self.token

    @property
    def is_open(self) -> bool:
        return self.opened is not None

    def close(self) -> None:
        self.opened = None
        self.token += 1  # timers set before are stale now


def make_policy(name: str, scenario: Scenario, operator: OperatorConfig | None = None) -> Policy:
    """The policy called ``name`` (dynamic, first-fit, static:<layout>) for ``scenario``.

    ``operator`` is the operator configuration the dynamic policies plan with (pre-warming,
    draining, defragmentation); the operator's defaults when None, as ``cdmo simulate`` runs.
    """
    check_policy(name, scenario.models)
    if name.startswith("static:"):
        return StaticPolicy(name.removeprefix("static:"))
    if name == "first-fit":
        from cdmo.sim.firstfit import FirstFitPolicy

        return FirstFitPolicy(scenario.first_fit, scenario.time_model)
    from cdmo.sim.dynamic import DynamicPolicy

    if name == "dynamic-sighup":
        # The same agent and planner, NVIDIA's plugin refreshed by SIGHUP after each change
        # instead of the built-in plugin that advertises during the pass.
        policy = DynamicPolicy(
            dataclasses.replace(scenario.dynamic, refresh="sighup"), scenario.time_model, operator
        )
        policy.name = "dynamic-sighup"
        return policy
    return DynamicPolicy(scenario.dynamic, scenario.time_model, operator)
