"""``cdmo agent --standalone``: in process, for the passes, the file following and the CLI's errors.

The subprocess test against an independent kubelet is tests/integration/test_agent_standalone.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
import time
from pathlib import Path

import pytest

from cdmo.cli import main
from cdmo.commands.node import read_layout_file
from cdmo.config import AgentConfig
from cdmo.node_agent.deviceplugin.plugin import KubeletDevicePlugin, PluginSettings
from cdmo.node_agent.inuse import InUse
from cdmo.node_agent.refresh import BuiltinRefresh, NoRefresh, RefreshOutcome
from cdmo.node_agent.simulated import SimulatedBackend, SimulatedNode
from cdmo.node_agent.standalone import StandaloneAgent
from tests.node.conftest import RETRY

ONE = "gpus:\n- index: 0\n  instances: [{profile: 3g.40gb, start: 0}]\n"
TWO = "gpus:\n- index: 0\n  instances: [{profile: 7g.80gb, start: 0}]\n"


def docs(out: io.StringIO) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in out.getvalue().splitlines()]


def started(folder: Path, seed: str) -> tuple[SimulatedNode, Path, io.StringIO, StandaloneAgent]:
    """An H100 node, a layout file holding ONE, and a standalone agent writing to a buffer."""
    node = SimulatedNode.from_models(["h100-80gb"], seed=seed)
    layout = folder / "layout.yaml"
    layout.write_text(ONE)
    out = io.StringIO()
    return node, layout, out, make(node, layout, out)


def make(node: SimulatedNode, layout: Path, out: io.StringIO, **kw: object) -> StandaloneAgent:
    conf = AgentConfig(backend="simulated", resync_seconds=30.0, backoff_initial_seconds=0.05)
    return StandaloneAgent(
        conf,
        SimulatedBackend(node),
        str(layout),
        read_layout_file,
        InUse,
        NoRefresh(),
        out,
        retry=RETRY,
        **kw,  # type: ignore[arg-type]
    )


def test_one_json_document_per_pass_and_errors_wait_for_the_next_change(tmp_path: Path) -> None:
    _node, layout, out, agent = started(tmp_path, "st")
    assert agent.sync_once() is True
    layout.write_text("gpus: [{index: 0, instances: [{profile: 9g.99gb, start: 0}]}]\n")
    assert agent.sync_once() is True  # refused spec: nothing to retry until the file changes
    layout.write_text("gpus: [oops")
    assert agent.sync_once() is True
    first, second, third = docs(out)
    assert first["pass"] == 1 and first["status"]["phase"] == "Ready"
    assert [i["profile"] for i in first["status"]["gpus"][0]["instances"]] == ["3g.40gb"]
    assert second["pass"] == 2 and "status" in second  # a profile the model lacks: Refused in status
    assert "error" in third and "not valid YAML" in third["error"]


def test_a_layout_file_that_is_not_utf8_or_misspells_a_field_is_an_error_line(tmp_path: Path) -> None:
    """Both once ended a running agent (exit 3) or, for ``instance:``, read as a GPU to empty."""
    node, layout, out, agent = started(tmp_path, "st")
    assert agent.sync_once() is True
    layout.write_bytes(b"\xff\xfe gpus")
    assert agent.sync_once() is True
    layout.write_text("gpus: [{index: 0, instance: []}]\n")
    assert agent.sync_once() is True
    _, not_utf8, typo = docs(out)
    assert "not a UTF-8 text file" in not_utf8["error"]
    assert "unknown field 'instance'" in typo["error"] and "status" not in typo
    assert [i.profile for i in SimulatedBackend(node).list_instances(0)] == ["3g.40gb"]


class _NotRegistered:
    strategy = "builtin"

    def __init__(self) -> None:
        self.calls = 0

    def refresh(self, stop: threading.Event) -> RefreshOutcome:
        self.calls += 1
        return RefreshOutcome(False, "NotRegistered", "the kubelet has not registered the plugin")


def test_a_pass_retries_a_refresh_that_failed_and_is_not_ready_until_it_succeeds(tmp_path: Path) -> None:
    """As the cluster agent: a pass that changes nothing refreshes again while the last failed."""
    _node, _layout, out, agent = started(tmp_path, "st")
    agent.refresher = refresher = _NotRegistered()
    assert agent.sync_once() is False
    assert agent.sync_once() is False  # nothing changed on the GPUs, the plugin still unregistered
    assert refresher.calls == 2
    agent.refresher = NoRefresh()
    assert agent.sync_once() is True
    phases = [d["status"]["phase"] for d in docs(out)]
    assert phases[-1] == "Ready" and "Ready" not in phases[:2]


def test_run_follows_the_file_and_advertises(short_dir: Path) -> None:
    node = SimulatedNode.from_models(["h100-80gb"], seed="st2")
    layout = short_dir / "layout.yaml"
    layout.write_text(ONE)
    out = io.StringIO()
    plugin = KubeletDevicePlugin(
        SimulatedBackend(node), PluginSettings(plugin_dir=str(short_dir / "dp"), event_wait_seconds=0.1)
    )
    plugin.start()
    agent = make(node, layout, out, advertiser=plugin)
    agent.refresher = BuiltinRefresh()
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30  # bounds a hang; speed is not asserted in tests
        while not docs(out) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert list(docs(out)[-1]["advertised"]) == ["nvidia.com/mig-3g.40gb"]
        layout.write_text(TWO)
        while time.monotonic() < deadline and not docs(out)[-1]["advertised"].get("nvidia.com/mig-7g.80gb"):
            time.sleep(0.02)
        last = docs(out)[-1]
        assert last["advertised"].get("nvidia.com/mig-7g.80gb"), "the edit was not followed"
        assert last["advertised"]["nvidia.com/mig-3g.40gb"] == []
        assert last["status"]["conditions"]
    finally:
        stop.set()
        thread.join(5)
        plugin.stop()
    assert not thread.is_alive()


def test_a_layout_file_replaced_by_a_named_pipe_is_an_error_line_not_a_hang(tmp_path: Path) -> None:
    """The loop that looks for changes read the whole file: a named pipe there blocked the agent in
    open() for good (it no longer stopped), /dev/zero filled its memory. Both are refused by kind."""
    _node, layout, out, agent = started(tmp_path, "fifo")
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10  # bounds a hang; speed is not asserted in tests
        while not docs(out) and time.monotonic() < deadline:
            time.sleep(0.02)
        layout.unlink()
        os.mkfifo(layout)
        while time.monotonic() < deadline and "error" not in docs(out)[-1]:
            time.sleep(0.02)
        assert "it is a named pipe (FIFO), not a file" in docs(out)[-1].get("error", ""), docs(out)[-1]
    finally:
        stop.set()
        thread.join(5)
        stuck = thread.is_alive()
        if stuck:  # waiting in open() for a writer: give it one, so that the thread can end
            with contextlib.suppress(OSError):
                os.close(os.open(layout, os.O_WRONLY | os.O_NONBLOCK))
    assert not stuck


def test_cli_standalone_once_and_its_errors(short_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layout = short_dir / "layout.yaml"
    layout.write_text(ONE)
    base = [
        "agent",
        "--standalone",
        str(layout),
        "--sim-state",
        str(short_dir / "s.json"),
        "--metrics-port",
        "0",
    ]
    code = main([*base, "--sim-gpus", "h100-80gb", "--device-plugin-dir", str(short_dir / "dp"), "--once"])
    out, _ = capsys.readouterr()
    assert code == 0
    (doc,) = [json.loads(line) for line in out.splitlines()]
    assert list(doc["advertised"]) == ["nvidia.com/mig-3g.40gb"]
    # no kubelet in the directory: the layout is there, but the devices reach no kubelet
    refreshed = next(c for c in doc["status"]["conditions"] if c["type"] == "DevicePluginRefreshed")
    assert (doc["status"]["phase"], refreshed["reason"]) == ("Applying", "NotRegistered")
    assert "no kubelet socket" in refreshed["message"]
    # external modes without Kubernetes: none works, delete-pod is refused
    assert main([*base, "--refresh-strategy", "none", "--once"]) == 0
    capsys.readouterr()
    assert main([*base, "--refresh-strategy", "delete-pod", "--once"]) == 2
    assert "needs Kubernetes" in capsys.readouterr().err
    missing = ["agent", "--standalone", str(short_dir / "nope.yaml"), "--sim-gpus", "h100-80gb"]
    assert main(missing) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and "Traceback" not in err
    bad = [*base, "--device-list-strategy", "env", "--once"]
    assert main(bad) == 2
    assert "device list strategy" in capsys.readouterr().err
    # a device-plugins directory that cannot be made: one line, not an unexpected error
    unusable = [*base, "--sim-gpus", "h100-80gb", "--device-plugin-dir", "/proc/cdmo-nope", "--once"]
    assert main(unusable) == 2
    err = capsys.readouterr().err
    assert "cannot use the device-plugins directory" in err and "unexpected" not in err


def test_standalone_turns_mig_back_on_after_a_reboot_as_the_cluster_agent_does(tmp_path: Path) -> None:
    node, _layout, out, agent = started(tmp_path, "st-reboot")
    assert agent.sync_once() is True
    node.reboot()  # Hopper comes back with MIG off
    agent.sync_once()
    last = docs(out)[-1]["status"]
    assert last["gpus"][0]["migEnabled"] is True
    assert [i["profile"] for i in last["gpus"][0]["instances"]] == ["3g.40gb"]


def test_a_pass_that_fails_writes_its_error_line(tmp_path: Path) -> None:
    """A pod-resources socket nothing listens on once gave stderr warnings and no line at all."""
    from cdmo.errors import Transient

    _node, _layout, out, agent = started(tmp_path, "st")

    def unreachable() -> InUse:
        raise Transient("cannot reach the kubelet's pod-resources socket")

    agent.read_in_use = unreachable
    with pytest.raises(Transient):
        agent.sync_once()
    (line,) = docs(out)
    assert line["pass"] == 1 and "pod-resources" in line["error"] and "status" not in line
