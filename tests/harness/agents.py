"""Real cdmo node agents, one thread per simulated node, talking to the API double over HTTP.

In the cluster's ``builtin`` device-plugin mode each agent also serves its real device plugin
in the node's directory, where the node's simulated kubelet registers it.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any

from cdmo.config import AgentConfig
from cdmo.node_agent.agent import Agent
from cdmo.node_agent.kube import KubeClient
from cdmo.node_agent.refresh import BuiltinRefresh, build_refresher
from cdmo.node_agent.wiring import build_device_plugin
from tests.harness.cluster import DEVICE_PLUGIN_NAMESPACE, DEVICE_PLUGIN_SELECTOR, SimCluster


@dataclass
class AgentThread:
    node: str
    agent: Agent
    kube: KubeClient
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    error: BaseException | None = None
    #: the agent's device plugin (builtin mode), stopped with the agent
    plugin: Any = None

    def start(self) -> None:
        self.stop_event = threading.Event()

        def main() -> None:
            try:
                self.agent.run(self.stop_event)
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=main, name=f"cdmo-agent-{self.node}", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout)
            if self.thread.is_alive():
                raise TimeoutError(f"the agent of {self.node} did not stop")
        self.thread = None
        if self.plugin is not None:
            self.plugin.stop()
            self.plugin = None

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


def start_agent(
    cluster: SimCluster, node: str, *, resync_seconds: float = 2.0, token: str | None = None
) -> AgentThread:
    """The real Agent for ``node``: simulated GPUs (guarded), real pod-resources, and its real
    device plugin (builtin) or the delete-pod refresh of the simulated NVIDIA plugin."""
    sim = cluster.nodes[node]
    builtin = cluster.device_plugin == "builtin"
    config = AgentConfig(
        node_name=node,
        backend="simulated",
        pod_resources_socket=str(sim.socket),
        resync_seconds=resync_seconds,
        refresh_strategy="builtin" if builtin else "delete-pod",
        device_plugin_dir=str(sim.plugin_dir),
        device_plugin_namespace=DEVICE_PLUGIN_NAMESPACE,
        device_plugin_selector=DEVICE_PLUGIN_SELECTOR,
        refresh_timeout_seconds=10.0,
        refresh_poll_seconds=0.05,
        watch_timeout_seconds=60.0,
        backoff_initial_seconds=0.2,
    )
    kube = KubeClient.for_host(cluster.api.url, token)
    plugin = None
    if builtin:
        plugin = build_device_plugin(config, sim.guarded)
        # The XID watch's NVML wait bounds how soon stop() returns; short here, as the polls are.
        plugin.settings = dataclasses.replace(plugin.settings, event_wait_seconds=0.1)
        plugin.start()
    refresher = BuiltinRefresh(plugin) if plugin is not None else build_refresher(config, kube)
    agent = Agent(config, sim.guarded, kube, refresher, advertiser=plugin)
    runner = AgentThread(node, agent, kube, plugin=plugin)
    runner.start()
    return runner
