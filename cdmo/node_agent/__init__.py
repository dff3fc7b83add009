"""The node agent: GPU backends (NVML, simulated), pod-resources client, reconcile (observe,
decide, execute), refresh.

Must not import cdmo.operator; the two halves meet in cdmo.api and the CRD.
"""
