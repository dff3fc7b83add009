"""The mutating admission webhook that turns fractional GPU asks into MIG slices on pod create.

``review`` builds AdmissionReview responses (pure), ``nodes`` learns the cluster's GPU models
from labelled nodes, ``server`` is the HTTPS server (aiohttp). Imports neither the operator nor
the node agent: the webhook is its own Deployment.
"""
