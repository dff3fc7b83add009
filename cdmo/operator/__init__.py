"""The kopf operator: indexes, demand, snapshot building, plan publishing, events.

Must not import cdmo.node_agent; the two halves meet in cdmo.api and the CRD.
"""
