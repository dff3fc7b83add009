"""``cdmo agent --standalone LAYOUT.yaml``: the node agent without the Kubernetes API.

The desired layout comes from a file (a MigLayout spec, or a whole MigLayout object), read
again whenever it changes; who holds what comes from the kubelet's pod-resources socket when
it exists, and NVML processes. Each pass reconciles the GPUs (withdrawing doomed devices from
the agent's device plugin first) and writes one JSON document, on one line, to ``out``:
``{"pass", "time", "layout", "status", "advertised"}`` (or ``"error"`` when the file cannot be
used; the agent keeps going and reads it again when it changes).

Level-triggered: a pass also runs every ``resync_seconds`` and, after a failed pass, with a
backoff, whether or not the file changed.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import structlog

from cdmo.config import AgentConfig
from cdmo.errors import CdmoError, Fatal
from cdmo.inputfile import LAYOUT, read_input_bytes
from cdmo.mig.layouts import Instance
from cdmo.node_agent.advertise import AgentAdvertiser, NoAdvertiser
from cdmo.node_agent.agent import agent_pass, backoff_delay
from cdmo.node_agent.backend import DEFAULT_RETRY, GpuBackend, RetryPolicy
from cdmo.node_agent.inuse import InUse
from cdmo.node_agent.refresh import Refresher
from cdmo.node_agent.status import build_status, needs_refresh

log = structlog.get_logger("cdmo.node_agent.standalone")

#: How often the layout file is looked at (a change is followed within this plus one pass).
FILE_POLL_SECONDS = 0.2


def _fingerprint(path: Path) -> str | None:
    """A hash of the layout file, or None where it cannot be read as one (missing, a directory, a
    pipe, past its size bound: a pass then says why). Read with the layout's bound, and only a
    regular file: a named pipe would hang the agent here, /dev/zero would fill its memory."""
    try:
        return hashlib.sha256(read_input_bytes(path, LAYOUT)).hexdigest()
    except CdmoError:
        return None


class StandaloneAgent:
    """Reconcile the GPUs to a layout file until stopped; one JSON status line per pass."""

    def __init__(
        self,
        config: AgentConfig,
        backend: GpuBackend,
        layout_path: str,
        read_layout: Callable[[str], Mapping[int, Sequence[Instance]]],
        read_in_use: Callable[[], InUse],
        refresher: Refresher,
        out: TextIO,
        *,
        advertiser: AgentAdvertiser | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self.config = config
        self.backend = backend
        self.path = Path(layout_path)
        self.read_layout = read_layout
        self.read_in_use = read_in_use
        self.refresher = refresher
        self.out = out
        self.advertiser = advertiser or NoAdvertiser()
        self.retry = retry
        self.passes = 0
        self._previous: dict[str, Any] = {}

    def sync_once(self, stop: threading.Event | None = None) -> bool:
        """One pass; returns whether it settled."""
        stop = stop or threading.Event()
        self.passes += 1
        doc: dict[str, Any] = {
            "pass": self.passes,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "layout": str(self.path),
        }
        try:
            desired = self.read_layout(str(self.path))
        except CdmoError as exc:
            doc["error"] = str(exc)
            log.warning("Refused layout file", path=str(self.path), error=str(exc))
            self._emit(doc)
            return True  # nothing to retry until the file changes
        self.advertiser.set_desired(desired)
        try:
            result = agent_pass(
                self.config,
                self.backend,
                desired,
                self.read_in_use,
                self._previous,
                retry=self.retry,
                log=log,
                advertiser=self.advertiser,
            )
        except CdmoError as exc:  # a pass that failed (pod-resources, NVML) has its line too
            doc["error"] = str(exc)
            self._emit(doc)
            raise
        refresh = self.refresher.refresh(stop) if needs_refresh(result, self._previous) else None
        status = build_status(
            result,
            generation=None,
            now=datetime.now(UTC),
            previous=self._previous,
            refresh=refresh,
            unhealthy=self.advertiser.unhealthy(),
        )
        self._previous = status
        doc["status"] = status
        advertised = self.advertiser.advertised()
        if advertised is not None:
            doc["advertised"] = advertised
        self._emit(doc)
        return result.settled and (refresh is None or refresh.ok)

    def _emit(self, doc: Mapping[str, Any]) -> None:
        self.out.write(json.dumps(doc, sort_keys=True, default=str) + "\n")
        self.out.flush()

    def run(self, stop: threading.Event) -> None:
        """Pass on start, on every change of the file, every resync, and with backoff after failures."""
        failures = 0
        seen = _fingerprint(self.path)
        while not stop.is_set():
            try:
                settled = self.sync_once(stop)
            except Fatal:
                raise
            except CdmoError as exc:
                log.warning("Failed reconcile pass", error=str(exc))
                settled = False
            failures = 0 if settled else failures + 1
            delay = backoff_delay(self.config, failures)
            deadline = time.monotonic() + delay
            while not stop.wait(min(FILE_POLL_SECONDS, max(deadline - time.monotonic(), 0))):
                now = _fingerprint(self.path)
                if now != seen:
                    seen = now
                    log.info("Read changed layout file", path=str(self.path))
                    break
                if time.monotonic() >= deadline:
                    break
