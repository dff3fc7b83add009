"""One object that holds a whole simulated cluster: API double, GPUs, agents, operator.

Secured as a cluster with the chart installed (tests.harness.chart) wherever helm is there to
render the chart: the operator and each agent send their own ServiceAccount token (the agent's
bound to a pod on its node), RBAC comes from the chart's roles, its admission policy judges
every write. Without helm (outside CI) the double stays open, and the harness says so once.

Waits are event-driven (``KubeApiDouble.wait_for`` re-checks after every committed change)
with timeouts; nothing sleeps a fixed time.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import kubernetes

from cdmo.config import OperatorConfig
from cdmo.mig.layouts import Instance
from tests.harness.agents import AgentThread, start_agent
from tests.harness.chart import ChartSecurity, find_helm, secure
from tests.harness.cluster import SimCluster, mig_pod
from tests.harness.kube_api import KubeApiDouble, Store
from tests.harness.operator import OperatorRunner

#: Short windows so that scenarios run in seconds (the defaults are 5 s idle / 30 s max).
FAST = OperatorConfig(
    batch_idle_seconds=0.2,
    batch_max_seconds=1.0,
    resync_seconds=1.0,
    stale_timeout_seconds=6.0,
    pending_grace_seconds=30.0,
    watch_server_timeout=60,
    watch_client_timeout=90,
    watch_connect_timeout=5,
    # Pre-warming makes free instances no pod asked for, idle defragmentation moves free ones;
    # these scenarios assert exact layouts and where pods land, so both are off here (tests/unit/test_operator_warmth.py and the
    # simulator cover it).
    prewarm=False,
    defrag_ops_per_hour=0,
)


_warned: list[bool] = []


def _warn_open_once() -> None:
    if not _warned:
        _warned.append(True)
        print(
            "e2e harness: helm not found (run `python3 scripts/get-helm`): the API double runs without "
            "authentication, RBAC and admission policy",
            file=sys.stderr,
        )


class Harness:
    def __init__(
        self,
        config: OperatorConfig = FAST,
        *,
        agent_resync_seconds: float = 2.0,
        bookmark_interval: float = 60.0,
        secured: bool | None = None,
        device_plugin: str = "builtin",
    ) -> None:
        self.config = config
        self.agent_resync_seconds = agent_resync_seconds
        # short path: unix socket paths are limited to about 100 characters
        self.workdir = Path(tempfile.mkdtemp(prefix="cdmo-e2e-"))
        self.api = KubeApiDouble(bookmark_interval=bookmark_interval)
        self.api.start()
        if secured is None:
            secured = find_helm() is not None or bool(os.environ.get("CI"))
            if not secured:
                _warn_open_once()
        self.security: ChartSecurity | None = (
            secure(self.api, device_plugin=device_plugin) if secured else None
        )
        self.cluster = SimCluster(self.api, self.workdir, device_plugin=device_plugin).start()
        self.agents: dict[str, AgentThread] = {}
        self.operator: OperatorRunner | None = None

    # -- parts ---------------------------------------------------------------------------------
    def add_node(
        self,
        name: str,
        models: Iterable[str] = ("h100-80gb",),
        *,
        labelled: bool = True,
        layout: Mapping[int, Iterable[Instance]] | None = None,
        agent: bool = True,
    ) -> None:
        self.cluster.add_node(name, tuple(models), labelled=labelled, layout=layout)
        if agent:
            self.start_agent(name)

    def start_agent(self, name: str) -> AgentThread:
        token = self.security.agent_token(name) if self.security is not None else None
        self.agents[name] = start_agent(
            self.cluster, name, resync_seconds=self.agent_resync_seconds, token=token
        )
        return self.agents[name]

    def stop_agent(self, name: str) -> None:
        self.agents[name].stop()

    @property
    def operator_token(self) -> str | None:
        """The chart's operator ServiceAccount token (None when the double is open)."""
        return self.security.operator_token if self.security is not None else None

    def api_client(self, token: str | None = None) -> kubernetes.client.ApiClient:
        """A kubernetes client for the double, as the operator (default) or with ``token``."""
        conf = kubernetes.client.Configuration(host=self.api.url)
        token = token or self.operator_token
        if token:
            conf.api_key = {"authorization": token}
            conf.api_key_prefix = {"authorization": "Bearer"}
        return kubernetes.client.ApiClient(conf)

    def start_operator(self) -> OperatorRunner:
        token = self.security.operator_token if self.security is not None else None
        self.operator = OperatorRunner(self.api.url, self.config, token=token).start()
        return self.operator

    def stop_operator(self) -> None:
        if self.operator is not None:
            self.operator.stop()
            self.operator = None

    # -- workload ------------------------------------------------------------------------------
    def submit(self, name: str, requests: Mapping[str, int], **kw: Any) -> str:
        pod = mig_pod(name, requests, **kw)
        self.api.create(pod, keep_status=False)
        return f"{pod['metadata']['namespace']}/{name}"

    def pod(self, key: str) -> dict[str, Any] | None:
        ns, name = key.split("/", 1)
        return self.api.get("pods", name, ns)

    def wait_running(self, keys: Iterable[str], timeout: float = 60.0) -> None:
        wanted = [tuple(k.split("/", 1)) for k in keys]

        def all_running(store: Store) -> bool:
            pods = store.type_of("pods", "")
            for ns, name in wanted:
                pod = store.get(pods, ns, name)
                if pod is None or (pod.get("status") or {}).get("phase") != "Running":
                    return False
            return True

        try:
            self.api.wait_for(all_running, timeout)
        except TimeoutError:
            raise AssertionError(f"pods not Running within {timeout} s: {self.describe(keys)}") from None

    def describe(self, keys: Iterable[str]) -> str:
        out = []
        for k in keys:
            pod = self.pod(k) or {}
            status = pod.get("status") or {}
            out.append(f"{k}={status.get('phase')}@{(pod.get('spec') or {}).get('nodeName', '')}")
        layouts = {
            m["metadata"]["name"]: (m.get("spec"), (m.get("status") or {}).get("phase"))
            for m in self.api.list("miglayouts")
        }
        return "; ".join(out) + f"; miglayouts={layouts}"

    def events(self, key: str | None = None, reason: str | None = None) -> list[dict[str, Any]]:
        result = []
        for ev in self.api.list("events"):
            ref = ev.get("involvedObject") or {}
            if (
                key is not None
                and f"{ref.get('namespace')}/{ref.get('name')}" != key
                and ref.get("name") != key
            ):
                continue
            if reason is not None and ev.get("reason") != reason:
                continue
            result.append(ev)
        return result

    def wait_event(self, key: str, reason: str, timeout: float = 30.0) -> dict[str, Any]:
        ns, name = key.split("/", 1) if "/" in key else (None, key)

        def find(store: Store) -> dict[str, Any] | None:
            for ev in store.list(store.type_of("events", "")):
                ref = ev.get("involvedObject") or {}
                if (
                    ref.get("name") == name
                    and (ns is None or ref.get("namespace") == ns)
                    and ev.get("reason") == reason
                ):
                    return ev
            return None

        return self.api.wait_for(find, timeout, f"no {reason} event for {key} within {timeout} s")

    def layout(self, node: str) -> dict[int, list[str]]:
        """What the node's simulated GPUs hold now, as ``{gpu: ["1g.10gb@0", ...]}``."""
        backend = self.cluster.nodes[node].backend
        return {
            g.index: [f"{i.profile}@{i.start}" for i in backend.list_instances(g.index)]
            for g in backend.list_gpus()
        }

    # -- end -----------------------------------------------------------------------------------
    def close(self) -> None:
        errors = []
        try:
            self.stop_operator()
        except Exception as exc:
            errors.append(exc)
        for agent in self.agents.values():
            try:
                agent.stop()
            except Exception as exc:
                errors.append(exc)
        self.cluster.stop()
        self.api.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise errors[0]
