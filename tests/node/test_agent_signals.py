"""The agent's stop signals: SIGTERM must stop it whatever its main thread is doing."""

from __future__ import annotations

import subprocess
import sys

HOLDING_THE_LOCK = """\
import signal, threading
from cdmo.commands.agent import set_on_signals

stop = threading.Event()
set_on_signals(stop, (signal.SIGTERM,))
# The interleaving of the CI hang: the signal arrives while the main thread, inside stop.wait(),
# holds the event's lock (Event._cond is CPython's own; the test reaches in to hold it).
with stop._cond:
    signal.raise_signal(signal.SIGTERM)
print("set" if stop.wait(10) else "not set")
"""


def test_a_stop_signal_that_arrives_inside_wait_sets_the_event_without_a_deadlock() -> None:
    # A handler that called stop.set() itself would wait forever for the lock its thread holds
    # (the agent outlived SIGTERM until it was killed); the timeout turns that into a failure.
    proc = subprocess.run(
        [sys.executable, "-c", HOLDING_THE_LOCK], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "set"
