"""``cdmo node show`` and ``cdmo node apply LAYOUT.yaml``: this node's GPUs, without Kubernetes.

``show`` lists what the GPUs hold, like ``nvidia-smi mig -lgi`` with placements and holders.
``apply`` makes them hold a layout written as a MigLayout spec
(``gpus: [{index, instances: [{profile, start}]}]``, or a whole MigLayout object), keeping
used instances: it refuses, changing nothing, where the layout would destroy one.
In use = pod-resources (when the kubelet socket exists) + NVML processes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cdmo import exit_codes
from cdmo.errors import InvalidInput
from cdmo.inputfile import LAYOUT, read_input_text
from cdmo.output import add_output_argument
from cdmo.yamlload import describe_error, load_yaml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cdmo.node_agent.wiring import add_backend_arguments

    sub = parser.add_subparsers(dest="node_command", metavar="COMMAND")
    sub.required = True
    show = sub.add_parser("show", help="what this node's GPUs hold: instances, placements, holders")
    add_output_argument(show)
    add_backend_arguments(show)
    apply = sub.add_parser(
        "apply", help="make this node's GPUs hold LAYOUT (a MigLayout spec), keeping used instances"
    )
    apply.add_argument("layout", metavar="LAYOUT.yaml", help="gpus: [{index, instances: [{profile, start}]}]")
    apply.add_argument("--dry-run", action="store_true", help="say what would change; change nothing")
    apply.add_argument(
        "--enable-mig", action="store_true", help="switch MIG on where needed (Hopper and later)"
    )
    add_output_argument(apply)
    add_backend_arguments(apply)


def run(args: argparse.Namespace) -> int:
    from cdmo.logs import configure_logging

    configure_logging("console" if sys.stderr.isatty() else "json", "warning" if not args.debug else "debug")
    if args.node_command == "show":
        return _show(args)
    return _apply(args)


def _open(args: argparse.Namespace) -> tuple[Any, Any]:
    from cdmo.node_agent.wiring import build_backend, config_from_args, read_local_in_use

    conf = config_from_args(args)
    backend = build_backend(conf)
    return backend, read_local_in_use(conf.pod_resources_socket)


def _emit(data: Any, output: str) -> None:
    from cdmo.output import emit

    emit(data, output)


def build_show(backend: Any, in_use: Any) -> dict[str, Any]:
    """The ``node show`` document: status-shaped GPUs plus sizes and holders per instance."""
    from cdmo.node_agent.backend import DEFAULT_RETRY
    from cdmo.node_agent.decide import gpu_holders, holders_of_instance
    from cdmo.node_agent.observe import observe_node
    from cdmo.node_agent.status import build_gpu_entries

    # The agent's own read, with its retries of transient NVML errors.
    observed = observe_node(backend, in_use, retry=DEFAULT_RETRY)
    gpus = [observed.gpus[i] for i in sorted(observed.gpus)]
    instances = {g.index: list(observed.instances[g.index]) for g in gpus}
    current = observed.in_use
    entries = build_gpu_entries(gpus, instances, current)
    infos = {g.index: g for g in gpus}
    for entry in entries:
        # Pods and processes on the whole GPU (MIG off): what keeps --enable-mig away.
        entry["holders"] = [str(h) for h in gpu_holders(infos[entry["index"]], current)]
        by_gi = {i.gi_id: i for i in instances[entry["index"]]}
        for item in entry["instances"]:
            inst = by_gi[item["giId"]]
            item["size"] = inst.size
            item["holders"] = [str(h) for h in holders_of_instance(inst, current)]
    return {"gpus": entries}


def _show(args: argparse.Namespace) -> int:
    from cdmo.output import build_table, print_table

    backend, in_use = _open(args)
    try:
        doc = build_show(backend, in_use)
    finally:
        backend.close()
    if args.output != "table":
        _emit(doc, args.output)
        return exit_codes.SUCCESS
    rows = []
    for g in doc["gpus"]:
        model = g["model"] or g["product"]
        if not g["migEnabled"]:
            pending = " (pending enable: reset needed)" if g.get("migPending") else ""
            held = ", ".join(g["holders"]) or "free"
            rows.append((g["index"], model, "", f"MIG off{pending}", "", "", "", held))
            continue
        if g.get("migPending") is False:
            # Ampere after a MIG switch-off: a reset turns MIG off and takes every instance with it.
            rows.append(
                (g["index"], model, "", "MIG on (pending disable: a reset removes all)", "", "", "", "")
            )
        if not g["instances"]:
            rows.append((g["index"], model, "", "(no instances)", "", "", "", ""))
        for i in g["instances"]:
            rows.append(
                (
                    g["index"],
                    model,
                    i["giId"],
                    i["profile"],
                    f"{i['start']}:{i['size']}",
                    i.get("ciId", "none"),
                    "\n".join(i.get("uuids") or [i.get("uuid", "")]),
                    ", ".join(i["holders"]) or "free",
                )
            )
    print_table(
        build_table(
            "MIG instances", ("GPU", "MODEL", "GI", "PROFILE", "PLACEMENT", "CI", "MIG UUID", "HELD BY"), rows
        )
    )
    return exit_codes.SUCCESS


def read_layout_file(path: str) -> dict[int, Any]:
    """GPU index -> instances from a MigLayout spec file (or a whole MigLayout object)."""
    from cdmo.api import parse_spec

    # Bounded and a regular file only (cdmo.inputfile.LAYOUT): the agent reads it again on every
    # change, and a named pipe or /dev/zero would hang or fill memory.
    text = read_input_text(path, LAYOUT)
    try:
        doc = load_yaml(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path} is not valid YAML: {describe_error(exc)}") from None
    except ValueError:
        # Python refuses to read an integer of more than 4300 digits (sys.int_info): exit 3 before.
        raise InvalidInput(
            f"{path} holds a number of more than 4300 digits",
            hint="GPU indexes and starts are small whole numbers",
        ) from None
    if isinstance(doc, Mapping) and isinstance(doc.get("spec"), Mapping):
        doc = doc["spec"]
    if not isinstance(doc, Mapping) or "gpus" not in doc:
        raise InvalidInput(
            f"{path} is not a MigLayout spec",
            hint="write gpus: [{index: 0, instances: [{profile: 3g.40gb, start: 0}]}]",
        )
    return parse_spec(doc, strict=True)


def _step_doc(step: Any) -> dict[str, Any]:
    d = {"action": str(step.action), "gpu": step.gpu, "profile": step.profile, "start": step.start}
    if step.gi_id is not None:
        d["giId"] = step.gi_id
    return d


def _apply(args: argparse.Namespace) -> int:
    import dataclasses

    from cdmo.node_agent.backend import DEFAULT_RETRY
    from cdmo.node_agent.reconcile import GpuState, Reason, execute_decision, prepare_node

    desired = read_layout_file(args.layout)
    new_state = _new_state_file(args)
    try:
        backend, in_use = _open(args)
    except BaseException:
        if new_state is not None:  # made by the backend before pod-resources failed: nothing applied
            new_state.unlink(missing_ok=True)
        raise
    changed = False
    try:
        # Decided first as a dry run, so that a GPU refused for its own reasons (a layout it
        # cannot hold, an instance in use) stops the command before MIG mode changes anywhere;
        # only Ampere's reset, which no dry run can avoid, is left for after the switch.
        plan = prepare_node(
            backend, desired, in_use, enable_mig=args.enable_mig, retry=DEFAULT_RETRY, dry_run=True
        )
        blocking = [
            g
            for g in plan.refusals
            if not (g.index in plan.mig_switched_on and g.reason == Reason.MIG_MODE_RESET_REQUIRED)
        ]
        if blocking:
            plan = dataclasses.replace(plan, mig_switched_on=())
        elif not args.dry_run and plan.mig_switched_on:
            plan = prepare_node(backend, desired, in_use, enable_mig=args.enable_mig, retry=DEFAULT_RETRY)
        # A dry run switches nothing: it names the GPUs whose MIG mode it would switch on.
        changed = bool(plan.mig_switched_on) and not args.dry_run
        doc: dict[str, Any] = {
            "applied": False,
            "dryRun": bool(args.dry_run),
            "migSwitchedOn": list(plan.mig_switched_on),
            "steps": [_step_doc(s) for s in plan.steps],
            "refused": [
                {"gpu": g.index, "state": str(g.state), "reason": str(g.reason), "message": g.message}
                for g in plan.refusals
            ],
        }
        if plan.refusals:
            _report(doc, args.output)
            what = "nothing was changed" if not changed else "only MIG mode was switched on"
            print(f"cdmo: error: {what}: " + "; ".join(g.message for g in plan.refusals), file=sys.stderr)
            return exit_codes.ERROR
        if args.dry_run:
            _report(doc, args.output)
            return exit_codes.SUCCESS
        changed = True
        result = execute_decision(backend, plan, in_use, retry=DEFAULT_RETRY)
        doc["applied"] = True
        doc["created"] = [
            {
                "gpu": i.gpu,
                "profile": i.profile,
                "start": i.start,
                "giId": i.gi_id,
                "ciId": i.ci_id,
                "uuid": i.uuid,
            }
            for i in result.created
        ]
        doc["destroyed"] = [
            {"gpu": i.gpu, "profile": i.profile, "start": i.start, "giId": i.gi_id, "uuid": i.uuid}
            for i in result.destroyed
        ]
        problems = [g for g in result.gpus if g.state not in (GpuState.READY, GpuState.UNMANAGED)]
        doc["errors"] = [g.message for g in problems]
        _report(doc, args.output)
        if problems:
            print("cdmo: error: " + "; ".join(g.message for g in problems), file=sys.stderr)
            return exit_codes.ERROR
        return exit_codes.SUCCESS
    finally:
        backend.close()
        if new_state is not None and not changed:
            # A refused or dry-run apply changes nothing, so it leaves no new simulated node.
            new_state.unlink(missing_ok=True)


def _new_state_file(args: argparse.Namespace) -> Path | None:
    """The --sim-state file this command is about to create, or None (it exists, or no file)."""
    from cdmo.node_agent.wiring import config_from_args

    conf = config_from_args(args)
    if conf.backend != "simulated" or not conf.sim_state:
        return None
    path = Path(conf.sim_state)
    return None if path.exists() else path


def _report(doc: dict[str, Any], output: str) -> None:
    if output != "table":
        _emit(doc, output)
        return
    verb = "would" if doc["dryRun"] and not doc["applied"] else "did"
    switched = [f"  switch MIG on on GPU {g}" for g in doc["migSwitchedOn"]]
    if doc["refused"]:
        if switched and not doc["dryRun"]:
            print("applied:", *switched, "refused:", sep="\n")
        else:
            print("refused, nothing changed:")
        for r in doc["refused"]:
            print(f"  GPU {r['gpu']}: {r['reason']}: {r['message']}")
        return
    if not doc["steps"] and not switched:
        print("nothing to do: the GPUs already hold the layout")
        return
    print(f"{'planned' if verb == 'would' else 'applied'}:")
    for line in switched:
        print(line)
    for s in doc["steps"]:
        print(f"  {s['action']} {s['profile']}@{s['start']} on GPU {s['gpu']}")
    for e in doc.get("errors") or []:
        print(f"  failed: {e}")
