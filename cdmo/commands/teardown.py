"""``cdmo teardown [--disable-mig] [--output table|json|yaml]``: destroy every MIG instance of this node, then MIG off.

Refuses, changing nothing, while any instance is in use, and names the holders. Switching MIG
off takes effect at once on Hopper and later; on Ampere it needs a GPU reset, which is said.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cdmo import exit_codes
from cdmo.output import add_output_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cdmo.node_agent.wiring import add_backend_arguments

    parser.add_argument(
        "--disable-mig", action="store_true", help="switch MIG mode off after destroying the instances"
    )
    add_output_argument(parser)
    add_backend_arguments(parser)


def build_teardown_doc(result: Any) -> dict[str, Any]:
    return {
        "refused": result.refused,
        "holders": [b.message for b in result.holders],
        "destroyed": [
            {"gpu": i.gpu, "profile": i.profile, "start": i.start, "giId": i.gi_id, "uuid": i.uuid}
            for i in result.destroyed
        ],
        "migMode": [
            {"gpu": m.gpu, "current": m.current, "pending": m.pending, "resetNeeded": m.reset_needed}
            for m in result.mig
        ],
        "errors": list(result.errors),
    }


def run(args: argparse.Namespace) -> int:
    from cdmo.logs import configure_logging
    from cdmo.node_agent.backend import DEFAULT_RETRY
    from cdmo.node_agent.teardown import teardown_node
    from cdmo.node_agent.wiring import build_backend, config_from_args, read_local_in_use
    from cdmo.output import emit

    configure_logging("console" if sys.stderr.isatty() else "json", "debug" if args.debug else "warning")
    conf = config_from_args(args)
    backend = build_backend(conf)
    try:
        result = teardown_node(
            backend,
            read_local_in_use(conf.pod_resources_socket),
            disable_mig=args.disable_mig,
            retry=DEFAULT_RETRY,
        )
    finally:
        backend.close()
    doc = build_teardown_doc(result)
    if args.output != "table":
        emit(doc, args.output)
    else:
        for d in doc["destroyed"]:
            print(f"destroyed {d['profile']}@{d['start']} on GPU {d['gpu']}")
        for m in result.mig:
            if m.reset_needed:
                print(
                    f"GPU {m.gpu}: MIG mode off is pending: reset the GPU (nvidia-smi -i {m.gpu} -r) or reboot the node"
                )
            else:
                print(f"GPU {m.gpu}: MIG mode is off")
        if not doc["destroyed"] and not result.mig and result.ok:
            print("nothing to do: no MIG instances")
    if result.refused:
        print(
            "cdmo: error: refused, nothing was destroyed: instances are in use: "
            + "; ".join(doc["holders"])
            + "; stop those workloads and run cdmo teardown again",
            file=sys.stderr,
        )
        return exit_codes.ERROR
    if result.errors:
        print("cdmo: error: " + "; ".join(result.errors), file=sys.stderr)
        return exit_codes.ERROR
    return exit_codes.SUCCESS
