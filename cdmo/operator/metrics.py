"""Prometheus metrics of the operator, in their own registry (one per operator run).

A registry of its own, rather than prometheus_client's global one, so that an operator
restarted in the same process (the tests do that) registers its metrics again without clashes.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.pending_pods = Gauge(
            "cdmo_pending_mig_pods",
            "Pods waiting for MIG devices, by requested resource",
            ["resource"],
            registry=r,
        )
        self.plans = Counter("cdmo_plans", "Plans computed", registry=r)
        self.planning_seconds = Histogram(
            "cdmo_planning_seconds",
            "Time from snapshot to published patches",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.nodes_changed = Counter("cdmo_nodes_changed", "MigLayout specs written by plans", registry=r)
        self.unsatisfied_pods = Gauge(
            "cdmo_unsatisfied_pods",
            "Pods the last plan could not serve, by reason code",
            ["code"],
            registry=r,
        )
        self.conflicts = Counter(
            "cdmo_spec_conflicts", "Spec writes refused because the MigLayout changed meanwhile", registry=r
        )
        self.node_states = Gauge("cdmo_nodes", "Managed nodes by state", ["state"], registry=r)

    def set_pending(self, counts: Mapping[str, int]) -> None:
        self.pending_pods.clear()
        for resource, n in counts.items():
            self.pending_pods.labels(resource=resource).set(n)

    def set_unsatisfied(self, counts: Mapping[str, int]) -> None:
        self.unsatisfied_pods.clear()
        for code, n in counts.items():
            self.unsatisfied_pods.labels(code=code).set(n)

    def set_node_states(self, counts: Mapping[str, int]) -> None:
        self.node_states.clear()
        for state, n in counts.items():
            self.node_states.labels(state=state).set(n)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)

    def total(self, name: str) -> float:
        """The sum of a metric's samples over all label values (0 when it has none)."""
        return float(
            sum(
                sample.value
                for metric in self.registry.collect()
                for sample in metric.samples
                if sample.name == name
            )
        )

    def value(self, name: str, **labels: str) -> float:
        """The current value of a sample (for tests and the CLI); 0 when absent."""
        v = self.registry.get_sample_value(name, labels or None)
        return float(v) if v is not None else 0.0
