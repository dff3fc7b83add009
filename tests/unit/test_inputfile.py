"""cdmo.inputfile: every file a user names is read with a bound, and what is not a file is said.

The commands once read ``/dev/zero``, a FIFO or an endless stdin until memory ran out (3 GB, then
exit 3 MemoryError). The readers are tested here with small limits and real pipes, and every
command that reads a user file once on ``/dev/zero``, in a process whose memory is capped so that
a reader without a bound fails fast instead of eating the machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cdmo.errors import InvalidInput
from cdmo.inputfile import (
    LAYOUT,
    POD_MANIFEST,
    SCENARIO,
    SIM_STATE,
    SNAPSHOT,
    TRACE,
    InputKind,
    check_input_file,
    describe_size,
    read_input_bytes,
    read_input_lines,
    read_input_text,
)

SMALL = InputKind("snapshot", 100, hint="give a snapshot", too_large="give a smaller one", line_limit=10)


def _feed(fifo: Path, data: bytes) -> threading.Thread:
    """Write ``data`` into the named pipe from a thread (opening it waits for the reader)."""

    def write() -> None:
        # BrokenPipeError: the reader stopped at its limit, as it should
        with open(fifo, "wb") as fh, contextlib.suppress(BrokenPipeError):
            fh.write(data)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_a_pipe_is_read_up_to_the_limit_and_no_further(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = _feed(fifo, b"x" * 50_000)
    with pytest.raises(
        InvalidInput, match=r"pipe is larger than 100 bytes, the most cdmo reads as a snapshot"
    ):
        read_input_bytes(fifo, SMALL, stdin=True)
    writer.join(5)
    fifo_ok = tmp_path / "ok"
    os.mkfifo(fifo_ok)
    _feed(fifo_ok, b"nodes: []\n").join(0)
    assert read_input_text(fifo_ok, SMALL, stdin=True) == "nodes: []\n"


def test_stdin_is_read_up_to_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"y" * 101)))
    with pytest.raises(InvalidInput, match="stdin is larger than 100 bytes"):
        read_input_text("-", SMALL, stdin=True)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"y" * 100)))
    assert read_input_text("-", SMALL, stdin=True) == "y" * 100
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\xff")))
    with pytest.raises(InvalidInput, match=r"stdin is not UTF-8 text \(byte 0 is not text\)"):
        read_input_text("-", SMALL, stdin=True)


def test_a_regular_file_past_the_limit_is_refused_by_its_size(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"a" * 101)
    with pytest.raises(InvalidInput, match=r"big\.yaml is larger than 100 bytes") as err:
        read_input_text(path, SMALL)
    assert err.value.hint == "give a smaller one"
    with pytest.raises(InvalidInput, match="larger than 100 bytes"):
        check_input_file(path, SMALL)
    path.write_bytes(b"a" * 100)
    assert read_input_text(path, SMALL) == "a" * 100


@pytest.mark.parametrize("stdin", [False, True], ids=["file-only", "stdin-too"])
def test_what_is_not_a_file_is_named(tmp_path: Path, stdin: bool) -> None:
    with pytest.raises(InvalidInput, match=r"cannot read .*nope\.yaml: no such file"):
        read_input_text(tmp_path / "nope.yaml", SMALL, stdin=stdin)
    with pytest.raises(InvalidInput, match=r"cannot read .*: it is a directory"):
        read_input_text(tmp_path, SMALL, stdin=stdin)


def test_where_stdin_is_not_meant_a_pipe_or_device_is_refused_without_opening_it(tmp_path: Path) -> None:
    """Opening a named pipe waits for a writer: the check must come first, or this test hangs."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(InvalidInput, match=r"it is a named pipe \(FIFO\), not a file"):
        read_input_text(fifo, SMALL)
    with pytest.raises(InvalidInput, match="it is a named pipe"):
        check_input_file(fifo, SMALL)
    with pytest.raises(InvalidInput, match="cannot read /dev/zero: it is a character device, not a file"):
        read_input_text("/dev/zero", SMALL)


def test_lines_are_bounded_one_by_one_and_in_all(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"a,b\r\n1,2\n\n3,4")
    assert list(read_input_lines(path, SMALL)) == ["a,b", "1,2", "", "3,4"]  # as str.splitlines
    path.write_bytes(b"a,b\n" + b"9" * 11 + b"\n")
    with pytest.raises(InvalidInput, match=r"t\.csv: line 2 is longer than 10 bytes"):
        list(read_input_lines(path, SMALL))
    path.write_bytes(b"123456789\n" * 11)
    with pytest.raises(InvalidInput, match=r"t\.csv is larger than 100 bytes"):
        list(read_input_lines(path, dataclasses.replace(SMALL, limit=100)))
    path.write_bytes(b"ok\n\xffno\n")
    with pytest.raises(InvalidInput, match=r"not a UTF-8 text file \(byte 0 of line 2 is not text\)"):
        list(read_input_lines(path, SMALL))


def test_the_limits_hold_the_largest_legitimate_inputs() -> None:
    """The figures the limits were chosen from (cdmo/inputfile.py), so that a change is deliberate."""
    assert SNAPSHOT.limit == 64 << 20 and describe_size(SNAPSHOT.limit) == "64 MiB"
    assert POD_MANIFEST.limit == LAYOUT.limit == 4 << 20
    assert SCENARIO.limit == 16 << 20 and SIM_STATE.limit == 4 << 20
    assert TRACE.limit == 512 << 20 and TRACE.line_limit == 1 << 20
    assert describe_size(1536) == "1536 bytes" and describe_size(2048) == "2 KiB"


def test_a_1000_node_snapshot_is_far_below_the_snapshot_limit() -> None:
    import yaml

    from tests.harness.bench import build_snapshot

    text = yaml.safe_dump(build_snapshot(1000))
    assert 2 << 20 < len(text) < SNAPSHOT.limit // 16


def _cap_memory() -> None:
    # 1.5 GiB of address space: a reader without a bound dies of MemoryError within a second or
    # two instead of taking the machine's memory; cdmo itself needs a few hundred MiB.
    resource.setrlimit(resource.RLIMIT_AS, (3 << 29, 3 << 29))


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["plan", "/dev/zero"], "/dev/zero is larger than 64 MiB, the most cdmo reads as a snapshot"),
        (["translate", "/dev/zero"], "/dev/zero is larger than 4 MiB, the most cdmo reads as a pod manifest"),
        (
            ["node", "apply", "/dev/zero", "--dry-run", "--sim-gpus", "h100-80gb"],
            "cannot read /dev/zero: it is a character device, not a file",
        ),
        (
            ["agent", "--standalone", "/dev/zero", "--once", "--sim-gpus", "h100-80gb"],
            "cannot read /dev/zero: it is a character device, not a file",
        ),
        (["simulate", "/dev/zero"], "cannot read /dev/zero: it is a character device, not a file"),
        (["node", "show", "--sim-state", "/dev/zero"], "cannot read /dev/zero: it is a character device"),
    ],
    ids=["plan", "translate", "node-apply", "agent-standalone", "simulate", "sim-state"],
)
def test_dev_zero_is_refused_at_once_with_exit_2(argv: list[str], words: str, tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "cdmo.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        preexec_fn=_cap_memory,
        env={**os.environ, "CDMO_POD_RESOURCES_SOCKET": str(tmp_path / "no-kubelet.sock")},
    )
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert time.monotonic() - started < 20
