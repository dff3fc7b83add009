"""Reading a file the user names (or stdin), never more of it than its kind may hold.

Every command that reads a user's file reads it here: ``cdmo plan`` (a snapshot), ``cdmo
translate`` (a pod manifest), ``cdmo node apply`` and ``cdmo agent --standalone`` (a layout),
``cdmo simulate`` (a scenario and its trace), ``--sim-state`` (a simulated node). Each kind has one
limit, below, chosen from the largest legitimate file of that kind; a file, pipe or device that
gives more is refused after ``limit + 1`` bytes, with one line that names the limit and what to do
(exit 2), instead of being read until memory runs out (``cdmo plan /dev/zero`` once took 3 GB and
ended in a MemoryError).

Where stdin is meant (``-``: ``plan`` and ``translate``), pipes and character devices are read too,
bounded: ``cdmo plan <(kubectl ...)`` names a pipe. Elsewhere a path must be a regular file: a
named pipe would block the command until someone writes to it, and a device is never a layout.

Imports nothing of cdmo but its errors.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from cdmo.errors import InvalidInput


@dataclass(frozen=True)
class InputKind:
    """A kind of file cdmo reads: what it is called, the most of it read, and what to tell the user.

    ``hint``: what to give instead of a missing or unreadable path; ``too_large``: what to do about
    a file past ``limit`` bytes; ``line_limit``: for files read a line at a time (traces), the
    longest line.
    """

    noun: str
    limit: int
    hint: str
    too_large: str
    line_limit: int | None = None


#: A snapshot of a whole cluster. benchmarks/bench_planner.py's largest, 1000 nodes x 8 GPUs with
#: 10,000 pending pods, is 2.7 MB as YAML and 5.2 MB as indented JSON; Kubernetes supports up to
#: 5,000 nodes, which makes about 26 MB of indented JSON: 64 MiB holds that with room to spare.
SNAPSHOT = InputKind(
    "snapshot",
    64 << 20,
    hint="give the path of a snapshot file, or - for stdin",
    too_large="a snapshot of 1000 nodes x 8 GPUs with 10,000 pending pods is about 3 MB; "
    "check that this is a snapshot (docs/planner.md)",
)
#: A Kubernetes object (a pod manifest, a MigLayout): etcd stores at most about 1.5 MiB of one,
#: so anything far larger is not one object.
KUBE_OBJECT_LIMIT = 4 << 20
POD_MANIFEST = InputKind(
    "pod manifest",
    KUBE_OBJECT_LIMIT,
    hint="give the path of a pod manifest, or - for stdin",
    too_large="give a single pod's manifest",
)
#: A MigLayout spec (``cdmo node apply``, ``cdmo agent --standalone``): a node has at most 64 GPUs
#: of at most 7 instances each, a few KB; a whole MigLayout object is one Kubernetes object.
LAYOUT = InputKind(
    "layout",
    KUBE_OBJECT_LIMIT,
    hint="give the path of a MigLayout spec file (gpus: [{index, instances: [{profile, start}]}])",
    too_large="give the MigLayout spec of one node",
)
#: A scenario: node groups, streams and policies, a few KB (examples/large.yaml is 1 KB); even
#: 20,000 node groups of one node each (MAX_NODES) stay under 2 MB. Long pod lists go in a trace.
SCENARIO = InputKind(
    "scenario",
    16 << 20,
    hint="give a scenario file in YAML",
    too_large="a scenario describes its fleet and streams in a few KB; list pods in a trace file",
)
#: A trace: at most 2,000,000 pods (cdmo.sim.scenario.MAX_PODS), a CSV or JSONL row of every
#: field is 50 to 250 bytes; a row is one pod, far below a MiB (csv's own field limit is 128 KiB).
TRACE = InputKind(
    "trace",
    512 << 20,
    hint="give a CSV, JSONL or YAML trace",
    too_large="one run takes at most 2,000,000 pods; split the trace (docs/simulate.md)",
    line_limit=1 << 20,
)
#: A simulated node's state (``--sim-state``): at most 64 GPUs (cdmo.api.MAX_GPUS_PER_NODE) of at
#: most 7 instances and 256 XID events; a full one as cdmo writes it is under 200 KB.
SIM_STATE = InputKind(
    "simulated state",
    4 << 20,
    hint="give --sim-state a JSON file that cdmo wrote, or a new path with --sim-gpus",
    too_large="give a state file that cdmo wrote, or start a new one with --sim-gpus",
)


def describe_size(size: int) -> str:
    """``64 MiB``, ``512 KiB`` or ``100 bytes``: a limit as the messages name it."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} bytes"


def _too_large(name: str, kind: InputKind) -> InvalidInput:
    return InvalidInput(
        f"{name} is larger than {describe_size(kind.limit)}, the most cdmo reads as a {kind.noun}",
        hint=kind.too_large,
    )


def _file_type(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _check_path(name: str, kind: InputKind, *, streams: bool) -> None:
    """Refuses a missing path, a directory, a socket and (unless ``streams``) a
    pipe or device. Looked at before opening: opening a named pipe waits for a writer."""
    try:
        st = os.stat(name)
    except FileNotFoundError:
        raise InvalidInput(f"cannot read {name}: no such file", hint=kind.hint) from None
    except OSError as exc:
        raise InvalidInput(f"cannot read {name}: {exc.strerror or exc}", hint=kind.hint) from None
    if stat.S_ISDIR(st.st_mode):
        raise InvalidInput(f"cannot read {name}: it is a directory", hint=kind.hint)
    regular = stat.S_ISREG(st.st_mode)
    if not regular and (not streams or stat.S_ISSOCK(st.st_mode)):
        raise InvalidInput(f"cannot read {name}: it is {_file_type(st.st_mode)}, not a file", hint=kind.hint)
    if regular and st.st_size > kind.limit:
        raise _too_large(name, kind)  # said before reading a byte of it


def check_input_file(path: str | os.PathLike[str], kind: InputKind) -> None:
    """Refuse, without reading it, a path that :func:`read_input_text` would refuse for what it is
    (missing, a directory, not a regular file) or for its size; raises InvalidInput."""
    _check_path(os.fspath(path), kind, streams=False)


def _open(name: str, kind: InputKind, *, streams: bool) -> BinaryIO:
    _check_path(name, kind, streams=streams)
    try:
        return open(name, "rb")  # closed by the callers' with-blocks
    except OSError as exc:
        raise InvalidInput(f"cannot read {name}: {exc.strerror or exc}", hint=kind.hint) from None


def read_input_bytes(source: str | os.PathLike[str], kind: InputKind, *, stdin: bool = False) -> bytes:
    """The bytes of a file (or of stdin for ``-`` where ``stdin``), at most ``kind.limit`` of them;
    raises InvalidInput for more, and for a path that is not a file (pipes and character devices
    are read where ``stdin``, since they are how a shell hands over a stream)."""
    name = os.fspath(source)
    if stdin and name == "-":
        if sys.stdin is None:  # started with stdin closed (`cdmo plan - <&-`)
            raise InvalidInput("cannot read stdin: it is closed", hint=kind.hint)
        raw = getattr(sys.stdin, "buffer", None)
        if raw is None:  # a text stream (tests): already decoded
            text = sys.stdin.read(kind.limit + 1)
            data = text.encode("utf-8", "surrogateescape")
        else:
            data = raw.read(kind.limit + 1)
        name = "stdin"
    else:
        with _open(name, kind, streams=stdin) as fh:
            try:
                data = fh.read(kind.limit + 1)
            except OSError as exc:
                raise InvalidInput(f"cannot read {name}: {exc.strerror or exc}", hint=kind.hint) from None
    if len(data) > kind.limit:
        raise _too_large(name, kind)
    return data


def _not_text(what: str, exc: UnicodeDecodeError, kind: InputKind, where: str = "") -> InvalidInput:
    return InvalidInput(f"{what} (byte {exc.start}{where} is not text)", hint=kind.hint)


def read_input_text(source: str | os.PathLike[str], kind: InputKind, *, stdin: bool = False) -> str:
    """:func:`read_input_bytes` decoded as UTF-8; text that is not UTF-8 is InvalidInput too."""
    data = read_input_bytes(source, kind, stdin=stdin)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        name = os.fspath(source)
        what = "stdin is not UTF-8 text" if stdin and name == "-" else f"{name} is not a UTF-8 text file"
        raise _not_text(what, exc, kind) from None


def read_input_lines(path: str | os.PathLike[str], kind: InputKind) -> Iterator[str]:
    """The lines of a regular file as ``str.splitlines`` gives them, read as they are needed; at
    most ``kind.limit`` bytes in all and ``kind.line_limit`` in one line (a file without line
    breaks is one line: it is refused after that many bytes, not read whole)."""
    name = os.fspath(path)
    line_limit = kind.line_limit or kind.limit
    total = 0
    number = 0
    with _open(name, kind, streams=False) as fh:
        while True:
            try:
                chunk = fh.readline(line_limit + 1)
            except OSError as exc:
                raise InvalidInput(f"cannot read {name}: {exc.strerror or exc}", hint=kind.hint) from None
            if not chunk:
                return
            number += 1
            total += len(chunk)
            if total > kind.limit:
                raise _too_large(name, kind)
            if len(chunk) > line_limit and not chunk.endswith(b"\n"):
                raise InvalidInput(
                    f"{name}: line {number} is longer than {describe_size(line_limit)}, the most cdmo "
                    f"reads in one line of a {kind.noun}",
                    hint=kind.hint,
                )
            try:
                text = chunk.decode("utf-8")  # UTF-8 never has a newline byte inside a character
            except UnicodeDecodeError as exc:
                raise _not_text(f"{name} is not a UTF-8 text file", exc, kind, f" of line {number}") from None
            # splitlines: it also splits where a file's lines do not (\r, \f, \x1c, \u2028, ...),
            # so rows are what reading the whole text would give.
            yield from text.splitlines()
