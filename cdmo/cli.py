"""The ``cdmo`` command: one registry of verbs, each in its own module under cdmo.commands.

A verb module has ``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported
lazily so ``cdmo profiles`` does not pay for kopf or grpc. Known errors print one line on
stderr and exit non-zero; tracebacks only with ``--debug``, which may stand anywhere on the
line (``cdmo node show --debug`` as well as ``cdmo --debug node show``). Ctrl-C exits 130 and
a closed stdout (``cdmo ... | head``) exits 141 quietly, as kubectl-style tools do. Output
conventions (``-o table|json|yaml``, camelCase keys, tables that never cut a cell) live in
:mod:`cdmo.output`.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from cdmo import __version__, exit_codes
from cdmo.errors import CdmoError, InvalidInput

#: verb -> (module, one-line summary for --help)
COMMANDS: dict[str, tuple[str, str]] = {
    "profiles": ("cdmo.commands.profiles", "GPU models, their MIG profiles and placements; check a layout"),
    "plan": ("cdmo.commands.plan", "plan MIG layouts for the pending pods of a cluster snapshot (YAML/JSON)"),
    "agent": ("cdmo.commands.agent", "the node agent: apply this node's MigLayout with NVML, report status"),
    "node": (
        "cdmo.commands.node",
        "this node's MIG instances: show them, or apply a layout without Kubernetes",
    ),
    "teardown": (
        "cdmo.commands.teardown",
        "destroy all of this node's MIG instances, then optionally MIG off; "
        "refuses, changing nothing, while any instance is in use",
    ),
    "simulate": (
        "cdmo.commands.simulate",
        "simulate a cluster: dynamic MIG against static layouts and first-fit",
    ),
    "operator": ("cdmo.commands.operator", "the cluster operator: plan MIG layouts for pending pods (kopf)"),
    "translate": (
        "cdmo.commands.translate",
        "show a pod with its fractional GPU ask (CFGI, KAI, MetaGPU) turned into a MIG slice",
    ),
    "webhook": (
        "cdmo.commands.webhook",
        "the admission webhook that turns fractional GPU asks into MIG slices on pod create (HTTPS)",
    ),
}


class _Parser(argparse.ArgumentParser):
    """argparse that suggests the closest verb when one is mistyped."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if "invalid choice" in message and self.prog == "cdmo":
            word = message.split("'")[1] if "'" in message else ""
            close = difflib.get_close_matches(word, list(COMMANDS), n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
        super().error(message)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given ``argv``, only the verb it names gets its arguments (and its module
    imported), so ``cdmo plan`` does not pay for importing every other verb (about 0.2 s), and
    ``cdmo --help`` (no verb: the verbs' one-line summaries only) imports none."""
    chosen = _verb_of(argv)
    parser = _Parser(prog="cdmo", description="cdmo: dynamic MIG partitioning for Kubernetes")
    parser.add_argument("--version", action="version", version=f"cdmo {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show tracebacks of errors and debug logs; may stand anywhere on the line",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=argparse.ArgumentParser)
    sub.required = True
    for verb, (module_name, summary) in COMMANDS.items():
        p = sub.add_parser(verb, help=summary, description=summary)
        p.set_defaults(_module=module_name)
        if argv is None or chosen == verb:
            _LazyArgs(module_name).add(p)
    return parser


def _verb_of(argv: Sequence[str] | None) -> str | None:
    """The verb ``argv`` names (its first word that is not an option), if it is a known one."""
    if argv is None:
        return None
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


class _LazyArgs:
    def __init__(self, module_name: str) -> None:
        self.module_name = module_name

    def add(self, parser: argparse.ArgumentParser) -> None:
        # Argument definitions are light; the heavy imports happen inside run().
        importlib.import_module(self.module_name).add_arguments(parser)


def split_debug(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``argv`` without its ``--debug`` flags, and whether there was one.

    Errors tell users to add ``--debug``; they add it at the end of the line, after the verb,
    where argparse's subcommands would not see a top-level flag. Words after ``--`` are
    arguments, not flags, and stay.
    """
    rest: list[str] = []
    debug = False
    for i, word in enumerate(argv):
        if word == "--":
            rest.extend(argv[i:])
            break
        if word == "--debug":
            debug = True
        else:
            rest.append(word)
    return rest, debug


def main(argv: Sequence[str] | None = None) -> int:
    """Run the verb ``argv`` names (the process's own command line when None)."""
    try:
        return _main(sys.argv[1:] if argv is None else argv, exits_after=argv is None)
    except KeyboardInterrupt:
        # Ctrl-C while parsing or importing, before _main's own handler is in place.
        return exit_codes.INTERRUPTED
    except BrokenPipeError:
        return _quiet_broken_pipe()


def _main(argv: Sequence[str], *, exits_after: bool = False) -> int:
    words, debug = split_debug(argv)
    parser = build_parser(words)
    args = parser.parse_args(words)
    args.debug = args.debug or debug
    # True when the process ends with this verb (cdmo run from a shell, not main() called by a
    # test): a verb may then leave process-wide state, such as frozen objects, as it is.
    args.exits_after = exits_after
    try:
        module = importlib.import_module(args._module)
        code = int(module.run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below
        return code
    except InvalidInput as exc:
        _report(exc, args.debug)
        return exit_codes.USAGE
    except CdmoError as exc:
        _report(exc, args.debug)
        return exit_codes.ERROR
    except KeyboardInterrupt:
        print("cdmo: interrupted", file=sys.stderr)
        return exit_codes.INTERRUPTED
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except Exception as exc:  # the edge: anything unexpected becomes one line plus a pointer
        if args.debug:
            traceback.print_exc()
        print(
            f"cdmo: unexpected error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return exit_codes.UNEXPECTED


def _quiet_broken_pipe() -> int:
    """The reader of stdout went away: say nothing, exit 141.

    Python would print an error when it flushes stdout at exit; pointing stdout at /dev/null
    first keeps that quiet (the recipe of Python's signal module docs, "Note on SIGPIPE").
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # stdout has no file descriptor (a test's capture): nothing will flush into a pipe
    return exit_codes.BROKEN_PIPE


def _report(exc: CdmoError, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    print(f"cdmo: error: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
