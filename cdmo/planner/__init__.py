"""snapshot -> plan: the pure planning function (see docs/planner.md). No Kubernetes, no NVML."""
