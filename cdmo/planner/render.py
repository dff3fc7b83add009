"""A plan as the contract's dict (JSON/YAML), and as rows for the ``cdmo plan`` table.

Pure: imports nothing of Kubernetes or NVML.
"""

from __future__ import annotations

from typing import Any

from cdmo.mig.layouts import Instance, format_layout
from cdmo.planner.models import GpuInstance, Plan


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """The contract's JSON shape (spec/planner-io.md), plus a few extra fields.

    Extra: per node GPU ``model``; per device ``new`` (created by the plan, or an existing free
    instance handed out); per assignment ``priority``; per unsatisfied pod ``code`` and
    ``priority``; a ``summary`` of the plan's score on each objective.
    """
    return {
        "nodes": [
            {
                "name": n.name,
                "changed": n.changed,
                "gpus": [
                    {
                        "index": g.index,
                        "model": g.model_key or g.model,
                        "instances": [{"profile": i.profile, "start": i.start} for i in g.after],
                    }
                    for g in n.gpus
                ],
            }
            for n in plan.nodes
        ],
        "assignments": [
            {
                "pod": a.pod,
                "node": a.node,
                "priority": a.priority,
                "devices": [
                    {"gpu": d.gpu, "profile": d.profile, "start": d.start, "new": d.new} for d in a.devices
                ],
            }
            for a in plan.assignments
        ],
        "unsatisfied": [
            {"pod": u.pod, "reason": u.reason, "code": u.code, "priority": u.priority}
            for u in plan.unsatisfied
        ],
        "summary": {
            "served": [
                {"priority": prio, "served": served, "pending": pending}
                for prio, served, pending in plan.summary.served_by_priority
            ],
            "destroyed": plan.summary.destroyed,
            "created": plan.summary.created,
            "handed_out": plan.summary.handed_out,
            "gpus_touched": plan.summary.gpus_touched,
            "nodes_touched": plan.summary.nodes_touched,
        },
    }


def _before(instances: tuple[GpuInstance, ...]) -> str:
    return ", ".join(f"{i}{' (used)' if i.used else ''}" for i in instances) or "-"


def layout_rows(plan: Plan, *, unchanged: bool = True) -> list[tuple[str, str, str, str, str, str]]:
    """(node, GPU, model, before, after, what changes and for whom) per GPU of each labelled node.

    ``unchanged=False`` leaves out the GPUs whose layout stays and none of whose free instances
    goes to a pod (what a big cluster's table would mostly be).
    """
    owner: dict[tuple[str, int, str, int], str] = {}
    owned: set[tuple[str, int]] = set()
    for a in plan.assignments:
        for d in a.devices:
            owner[(a.node, d.gpu, d.profile, d.start)] = a.pod
            owned.add((a.node, d.gpu))
    rows = []
    # A big cluster repeats a few layouts (the plan shares their tuples): each written once.
    befores: dict[int, tuple[tuple[GpuInstance, ...], str]] = {}
    afters: dict[int, tuple[tuple[Instance, ...], str]] = {}
    for n in plan.nodes:
        for g in n.gpus:
            if not unchanged and not g.changed and g.model_key is not None and (n.name, g.index) not in owned:
                continue  # no note to write: left out below anyway
            notes = []
            created = set(g.created) if g.created else ()
            for inst in g.after:
                pod = owner.get((n.name, g.index, inst.profile, inst.start))
                if inst in created:
                    notes.append(f"+{inst} for {pod}" if pod else f"+{inst}")
                elif pod:
                    notes.append(f"{inst} (free) to {pod}")
            notes += [f"-{inst} (free)" for inst in g.destroyed]
            if g.model_key is None:
                notes.append("left as it is: unknown GPU model")
            if not unchanged and not notes and not g.changed:
                continue
            before = befores.get(id(g.before))
            if before is None or before[0] is not g.before:
                before = befores[id(g.before)] = (g.before, _before(g.before))
            after = afters.get(id(g.after))
            if after is None or after[0] is not g.after:
                after = afters[id(g.after)] = (g.after, format_layout(g.after).replace(",", ", ") or "-")
            rows.append(
                (
                    n.name,
                    str(g.index),
                    g.model_key or g.model,
                    before[1],
                    after[1],
                    "; ".join(notes) or ("unchanged" if not g.changed else ""),
                )
            )
    return rows


def unsatisfied_rows(plan: Plan) -> list[tuple[str, str, str, str]]:
    return [(u.pod, str(u.priority), u.code, u.reason) for u in plan.unsatisfied]
