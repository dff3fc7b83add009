"""``cdmo agent --standalone`` as a subprocess against a kubelet stand-in that is not cdmo's code.

The stand-in (tests/kubelet_standin/kubelet_standin.py) imports nothing from cdmo: it compiles
its own stubs from its own copy of the kubelet's api.proto with grpcio-tools and talks to the
agent over unix sockets only. The GPUs are simulated in a state file, which this test watches
to see when an instance is destroyed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

STANDIN = Path(__file__).resolve().parents[1] / "kubelet_standin" / "kubelet_standin.py"
CDMO = [sys.executable, "-c", "import sys; from cdmo.cli import main; sys.exit(main())"]

FIRST = """\
gpus:
- index: 0
  instances: [{profile: 3g.40gb, start: 0}, {profile: 3g.40gb, start: 4}]
- index: 1
  instances: [{profile: 2g.20gb, start: 0}, {profile: 1g.10gb, start: 6}]
"""
SECOND = """\
gpus:
- index: 0
  instances: [{profile: 7g.80gb, start: 0}]
- index: 1
  instances: [{profile: 2g.20gb, start: 0}, {profile: 1g.10gb, start: 6}]
"""


class Lines:
    """JSON lines of a subprocess's stdout, collected by a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.items: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self.cond:
                self.items.append(json.loads(line))
                self.cond.notify_all()

    def wait(self, check: Callable[[list[dict[str, Any]]], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = check(self.items)
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; last lines: {self.items[-5:]}")
                self.cond.wait(left)


def latest_lists(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in events:
        if e["event"] == "list":
            out[e["resource"]] = sorted(d[0] for d in e["devices"])
    return out


def state_uuids(state: Path) -> dict[str, list[str]]:
    """resource -> MIG UUIDs the simulated GPUs hold (from the state file)."""
    doc = json.loads(state.read_text())
    out: dict[str, list[str]] = {}
    for gpu in doc["gpus"]:
        for gi in gpu["instances"]:
            for ci in gi["compute_instances"]:
                out.setdefault("nvidia.com/mig-" + gi["profile"], []).append(ci["uuid"])
    return {k: sorted(v) for k, v in out.items()}


class StateWatch:
    """When each MIG UUID first vanished from the state file (polled every 2 ms)."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.gone: dict[str, float] = {}
        self.stop = threading.Event()
        self.seen = {u for us in state_uuids(state).values() for u in us}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.002):
            self._poll()
        # Once more after the stop: on a loaded machine this thread may not have run between the
        # destroy and the test's stop, and an instance gone by then must not count as kept.
        for _ in range(100):
            if self._poll():
                break
            time.sleep(0.002)

    def _poll(self) -> bool:
        try:
            now = {u for us in state_uuids(self.state).values() for u in us}
        except (OSError, ValueError):
            return False  # caught between write and rename
        t = time.time()
        for u in self.seen - now:
            self.gone.setdefault(u, t)
        return True


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cdmo-sa-", dir="/tmp"))  # unix socket paths are short
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.mark.parametrize("strategy", ["volume-mounts", "envvar", "cdi-annotations"])
def test_standalone_agent_against_an_independent_kubelet(workdir: Path, strategy: str) -> None:
    dp = workdir / "dp"
    dp.mkdir()
    layout, state = workdir / "layout.yaml", workdir / "state.json"
    layout.write_text(FIRST)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kubelet = subprocess.Popen(
        [sys.executable, str(STANDIN), str(dp)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    agent = None
    try:
        kl = Lines(kubelet)
        kl.wait(lambda ev: any(e["event"] == "ready" for e in ev), 60)
        agent = subprocess.Popen(
            [
                *CDMO,
                "agent",
                "--standalone",
                str(layout),
                "--sim-state",
                str(state),
                "--sim-gpus",
                "h100-80gb,h100-80gb",
                "--device-plugin-dir",
                str(dp),
                "--device-list-strategy",
                strategy,
                "--metrics-port",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        out = Lines(agent)
        out.wait(lambda docs: docs and "status" in docs[-1], 30)

        # Every profile resource of the layout registered; the lists are exactly the MIG UUIDs.
        want = state_uuids(state)
        assert set(want) == {"nvidia.com/mig-3g.40gb", "nvidia.com/mig-2g.20gb", "nvidia.com/mig-1g.10gb"}
        kl.wait(lambda ev: latest_lists(ev) == want, 5)
        registered = {e["resource"] for e in kl.items if e["event"] == "register"}
        assert registered == set(want)
        assert all(e["version"] == "v1beta1" for e in kl.items if e["event"] == "register")

        # Allocate of a listed device answers with that device in the strategy's form. (One the
        # next layout keeps: a device just handed out is kept until pod-resources can list it.)
        dev = want["nvidia.com/mig-2g.20gb"][0]
        kubelet.stdin.write(
            json.dumps({"op": "allocate", "resource": "nvidia.com/mig-2g.20gb", "ids": [dev]}) + "\n"
        )  # type: ignore[union-attr]
        kubelet.stdin.flush()  # type: ignore[union-attr]
        ans = kl.wait(lambda ev: [e for e in ev if e["event"].startswith("allocate")], 5)[0]
        assert ans["event"] == "allocate", ans
        if strategy == "envvar":
            assert ans["envs"] == {"NVIDIA_VISIBLE_DEVICES": dev}
        elif strategy == "volume-mounts":
            assert ans["envs"] == {"NVIDIA_VISIBLE_DEVICES": "/var/run/nvidia-container-devices"}
            assert ans["mounts"] == [[f"/var/run/nvidia-container-devices/{dev}", "/dev/null", False]]
        else:
            assert ans["annotations"] == {f"cdi.k8s.io/cdmo-device-plugin_{dev}": f"nvidia.com/gpu={dev}"}

        # An edit of the file is followed (the file is looked at every FILE_POLL_SECONDS; the
        # bounded wait below only guards against a hang: speed is not asserted in tests);
        # withdrawn devices leave the stream before NVML destroys them.
        doomed = want["nvidia.com/mig-3g.40gb"]
        watch = StateWatch(state)
        edited = time.time()
        layout.write_text(SECOND)
        kl.wait(
            lambda ev: (
                latest_lists(ev).get("nvidia.com/mig-3g.40gb") == []
                and len(latest_lists(ev).get("nvidia.com/mig-7g.80gb", [])) == 1
            ),
            5,
        )
        watch.stop.set()
        watch.thread.join()
        assert any(
            e["event"] == "list"
            and e["resource"] == "nvidia.com/mig-7g.80gb"
            and e["devices"]
            and e["t"] >= edited
            for e in kl.items
        )
        for uuid in doomed:
            withdrawn = next(
                e["t"]
                for e in kl.items
                if e["event"] == "list"
                and e["resource"] == "nvidia.com/mig-3g.40gb"
                and e["t"] >= edited
                and uuid not in [d[0] for d in e["devices"]]
            )
            assert uuid in watch.gone, "the instance was never destroyed"
            assert withdrawn <= watch.gone[uuid], (uuid, withdrawn, watch.gone[uuid])
        assert (
            latest_lists(kl.items)["nvidia.com/mig-7g.80gb"] == state_uuids(state)["nvidia.com/mig-7g.80gb"]
        )
        # Each pass wrote one JSON document; the last one says what is advertised.
        last = out.wait(
            lambda docs: docs[-1].get("advertised", {}).get("nvidia.com/mig-7g.80gb") and docs[-1], 5
        )
        assert last["advertised"]["nvidia.com/mig-3g.40gb"] == []
        # the kubelet has every resource registered: the pass settled
        ready = out.wait(lambda docs: docs[-1]["status"]["phase"] == "Ready" and docs[-1], 5)
        refreshed = next(c for c in ready["status"]["conditions"] if c["type"] == "DevicePluginRefreshed")
        assert refreshed["status"] == "True" and refreshed["reason"] == "Advertised"
    finally:
        if agent is not None:
            _stop(agent)
        kubelet.stdin.close()  # type: ignore[union-attr]
        _stop(kubelet)
    assert agent.returncode == 0
    assert not list(dp.glob("cdmo-*.sock")), "the agent left its sockets behind"
