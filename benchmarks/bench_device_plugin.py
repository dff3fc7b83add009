"""How fast the agent's device plugin tells the kubelet (issue 11: within one second of a change).

    .venv/bin/python benchmarks/bench_device_plugin.py            # the table for docs/benchmarks.md
    .venv/bin/python benchmarks/bench_device_plugin.py --rounds 50

On one H100 80GB of simulated GPUs, with the harness's SimKubelet on real unix sockets:

- withdraw: ``withdraw(uuids)`` called -> it returned (every ListAndWatch stream sent the list
  without them); that is the time a destroy waits;
- reconcile: a whole repack pass (7 x 1g.10gb <-> 3g.40gb + 2g.20gb + 1g.10gb) with the plugin,
  from the start of the pass to the kubelet holding the new lists;
- outside change: an instance created behind the agent's back -> the kubelet lists it (the
  plugin's NVML poll, every 0.5 s by default).

Median and max over ``--rounds`` rounds, in milliseconds.
"""

from __future__ import annotations

import argparse
import logging
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdmo.mig.layouts import parse_layout
from cdmo.node_agent.backend import NO_WAIT_RETRY
from cdmo.node_agent.deviceplugin.plugin import KubeletDevicePlugin, PluginSettings
from cdmo.node_agent.reconcile import reconcile_node
from cdmo.node_agent.simulated import SimulatedBackend, SimulatedNode
from tests.harness.kubelet import SimKubelet

SEVEN = parse_layout("1g.10gb@0,1g.10gb@1,1g.10gb@2,1g.10gb@3,1g.10gb@4,1g.10gb@5,1g.10gb@6")
MIXED = parse_layout("3g.40gb@0,2g.20gb@4,1g.10gb@6")
R1 = "nvidia.com/mig-1g.10gb"


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms / {max(values) * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    d = Path(tempfile.mkdtemp(prefix="cdmo-bench-", dir="/tmp"))
    node = SimulatedNode.from_models(["h100-80gb"], seed="bench")
    kubelet = SimKubelet(d).start()
    plugin = KubeletDevicePlugin(SimulatedBackend(node), PluginSettings(plugin_dir=str(d)))
    plugin.start()
    withdraw: list[float] = []
    passes: list[float] = []
    outside: list[float] = []
    try:
        for n in range(args.rounds):
            want = SEVEN if n % 2 == 0 else MIXED
            plugin.set_desired({0: want})
            began = time.perf_counter()
            reconcile_node(SimulatedBackend(node), {0: want}, retry=NO_WAIT_RETRY, advertiser=plugin)
            have = {r: set(ids) for r, ids in plugin.advertised().items() if ids}
            kubelet.wait_for(lambda k, have=have: {r: set(k.devices(r)) for r in have} == have, 5)
            passes.append(time.perf_counter() - began)
        plugin.set_desired({0: SEVEN})
        reconcile_node(SimulatedBackend(node), {0: SEVEN}, retry=NO_WAIT_RETRY, advertiser=plugin)
        kubelet.wait_for(lambda k: len(k.devices(R1)) == 7, 5)
        for _ in range(args.rounds):
            one = sorted(kubelet.devices(R1))[:1]
            began = time.perf_counter()
            plugin.withdraw(one)
            withdraw.append(time.perf_counter() - began)
            plugin.refresh()
            kubelet.wait_for(lambda k: len(k.devices(R1)) == 7, 5)
        backend = SimulatedBackend(node)
        for _ in range(args.rounds):
            victim = next(i for i in backend.list_instances(0) if i.start == 6)
            backend.destroy_instance(0, victim.gi_id)
            kubelet.wait_for(lambda k: len(k.devices(R1)) == 6, 5)
            began = time.perf_counter()
            backend.create_instance(0, "1g.10gb", 6)
            kubelet.wait_for(lambda k: len(k.devices(R1)) == 7, 5)
            outside.append(time.perf_counter() - began)
    finally:
        plugin.stop()
        kubelet.stop()
        shutil.rmtree(d, ignore_errors=True)
    print(f"Python {platform.python_version()}, {platform.machine()}, {args.rounds} rounds, median / max:")
    print()
    print("| step | time |")
    print("| --- | --- |")
    print(f"| withdraw returns (streams sent) | {_ms(withdraw)} |")
    print(f"| repack pass until the kubelet holds the new lists | {_ms(passes)} |")
    print(f"| change outside the agent until the kubelet lists it | {_ms(outside)} |")


if __name__ == "__main__":
    main()
