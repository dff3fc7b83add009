"""``cdmo plan SNAPSHOT [--output table|json|yaml]``: what cdmo would do with this cluster.

Reads a snapshot (spec/planner-io.md) from a YAML or JSON file, or from stdin with ``-``, and
prints the plan: per node and GPU the layout before and after, which pod each instance is for,
and why each pod that stays waiting could not be served. Unsatisfied pods are a normal outcome
(exit 0); a malformed snapshot exits 2 with the path of the bad field.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from typing import TYPE_CHECKING, Any

import yaml

from cdmo import exit_codes
from cdmo.errors import InvalidInput, InvalidSnapshot
from cdmo.inputfile import SNAPSHOT, read_input_text
from cdmo.jsonload import DuplicateKey, load_json
from cdmo.output import add_output_argument, camel_keys, print_json_items, print_rows, print_yaml_items
from cdmo.yamlload import describe_error, load_yaml

if TYPE_CHECKING:
    from cdmo.planner import Plan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "snapshot",
        metavar="SNAPSHOT",
        help="snapshot file, YAML or JSON (nodes and pending pods, see docs/planner.md); - reads stdin",
    )
    add_output_argument(parser)
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse (exit 2) a labelled node's GPU whose model the catalog does not know, "
        "instead of leaving that GPU as it is",
    )


def read_snapshot(source: str) -> dict[str, Any]:
    """The snapshot's data from a file (or ``-`` for stdin); raises InvalidInput/InvalidSnapshot."""
    # Bounded (cdmo.inputfile.SNAPSHOT): /dev/zero or an endless pipe is refused, not read whole.
    text = read_input_text(source, SNAPSHOT, stdin=True)
    name = "stdin" if source == "-" else source
    if not text.strip():
        raise InvalidSnapshot(
            "", f"{name} is empty; a snapshot has nodes and pending pods (see docs/planner.md)"
        )
    data = _load(text, name, json_first=name.endswith(".json") or text.lstrip().startswith("{"))
    if not isinstance(data, dict):
        kind = "empty (null)" if data is None else type(data).__name__
        raise InvalidSnapshot("", f"{name} must hold an object with nodes and pending, not {kind}")
    if "nodes" not in data and {"fleet", "workload"} & data.keys():
        raise InvalidInput(
            f"{name} is a `cdmo simulate` scenario, not a snapshot",
            hint=f"run `cdmo simulate {name}`, or give `cdmo plan` a snapshot of nodes and pending pods "
            "(docs/planner.md)",
        )
    return data


def _load(text: str, name: str, *, json_first: bool) -> Any:
    try:
        return _parse_text(text, name, json_first=json_first)
    except json.JSONDecodeError:
        raise
    except DuplicateKey as exc:
        raise InvalidSnapshot("", f"{name} is not valid JSON: {exc}; give each key once") from None
    except RecursionError:
        # json.loads nests by recursion (YAML's loaders say "maximum nesting depth" themselves).
        raise InvalidSnapshot("", f"{name} is nested too deeply; a snapshot is a few levels deep") from None
    except ValueError:
        # Python refuses to read an integer of more than 4300 digits (sys.int_info); no count
        # or index in a snapshot is meant to be that long.
        raise InvalidSnapshot(
            "", f"{name} holds a number of more than 4300 digits; counts and indexes are small whole numbers"
        ) from None


def _parse_text(text: str, name: str, *, json_first: bool) -> Any:
    if json_first:
        try:
            return load_json(text)
        except json.JSONDecodeError as exc:
            if name.endswith(".json"):
                raise InvalidSnapshot(
                    "", f"{name} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
                ) from None
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        raise InvalidSnapshot("", f"{name} is not valid YAML or JSON: {describe_error(exc)}") from None


#: Up to this many GPUs the table lists every GPU; above, only those the plan changes or whose
#: free instances go to pods, and a line says how many others stay as they are.
LIST_EVERY_GPU_UP_TO = 100


def run(args: argparse.Namespace) -> int:
    from cdmo.planner import parse_snapshot, plan

    # The contract (spec/planner-io.md, rule 3) leaves a GPU of an unknown model exactly as it
    # is; a typo would then silently keep the GPU out of every plan, so say so on stderr and let
    # --strict turn it into an error with the field's path.
    snapshot = parse_snapshot(read_snapshot(args.snapshot), allow_unknown_models=not args.strict)
    for warning in unknown_model_warnings(snapshot):
        print(f"cdmo: warning: {warning}", file=sys.stderr)
    # One command, one snapshot: it and then the plan live until the process exits. Moved to
    # the collector's permanent generation, they are not scanned again by each full collection
    # while the plan and its output are built (a 10,000-pod snapshot is a million objects; this
    # saves 0.1-0.3 s). The collector still runs for everything made afterwards; the operator
    # and the simulator, which live on, do not do this.
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    try:
        return _write_plan(plan(snapshot), args.output)
    finally:
        # A caller in the same process (a test) gets its collector back as it was; a process
        # that ends now need not pay for a last full collection of everything (0.04 s).
        if not frozen_before and not getattr(args, "exits_after", False):
            gc.unfreeze()


def _write_plan(result: Plan, output: str) -> int:
    gc.freeze()
    if output == "table":
        print_plan_table(result)
        return exit_codes.SUCCESS
    from cdmo.planner import plan_to_dict

    doc = plan_to_dict(result)
    # Only the summary has snake_case keys (handed_out, ...): camel-casing it alone gives what
    # camel_keys(doc) would, without copying 10,000 assignments first.
    doc["summary"] = camel_keys(doc["summary"])
    if output == "json":
        print_json_items(doc, camel=False)  # an item at a time, each by the C encoder
    else:
        print_yaml_items(doc, camel=False)  # the same text as one dump, 6x faster on big plans
    return exit_codes.SUCCESS


def print_plan_table(result: Plan) -> None:
    """Layouts before and after, owners, waiting pods and their reasons, and a summary line."""
    from cdmo.planner.render import layout_rows, unsatisfied_rows

    gpus = sum(len(n.gpus) for n in result.nodes)
    rows = layout_rows(result, unchanged=gpus <= LIST_EVERY_GPU_UP_TO)
    if rows:
        print_rows("Layouts", ("NODE", "GPU", "MODEL", "BEFORE", "AFTER", "CHANGES"), rows)
    elif not gpus:
        print("No labelled node: nothing to partition.")
    hidden = gpus - len(rows)
    if hidden:
        print(
            f"{_n(hidden, 'other GPU' if rows else 'GPU')} "
            f"{'stays' if hidden == 1 else 'stay'} as {'it is' if hidden == 1 else 'they are'} with "
            "no free instance handed out (not listed; -o json or -o yaml lists every GPU)"
        )
    waiting = unsatisfied_rows(result)
    if waiting:
        print_rows("Unsatisfied pods", ("POD", "PRIORITY", "CODE", "REASON"), waiting)
    s = result.summary
    served = sum(x for _, x, _ in s.served_by_priority)
    pending = sum(x for _, _, x in s.served_by_priority)
    print(
        f"{served} of {_n(pending, 'pending pod')} served; {_n(s.created, 'instance')} created, "
        f"{s.destroyed} free destroyed, {s.handed_out} free handed out; "
        f"{_n(s.gpus_touched, 'GPU')} on {_n(s.nodes_touched, 'node')} repartitioned"
    )


def unknown_model_warnings(snapshot: Any) -> list[str]:
    """One line per labelled node's GPU whose model the catalog does not know."""
    from cdmo.mig.catalog import find_model, model_keys

    warnings = []
    for i, node in enumerate(snapshot.nodes):
        if not node.labelled:
            continue
        for j, gpu in enumerate(node.gpus):
            if find_model(gpu.model) is None:
                warnings.append(
                    f"nodes[{i}].gpus[{j}].model: unknown GPU model {gpu.model!r}: GPU {gpu.index} of "
                    f"node {node.name} is left as it is and serves no pod; known models are "
                    f"{', '.join(model_keys())} (--strict refuses the snapshot instead)"
                )
    return warnings


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
