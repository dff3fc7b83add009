"""cdmo: a dynamic MIG operator for Kubernetes.

Pods ask for ``nvidia.com/mig-<profile>``; cdmo repartitions the GPUs of nodes labelled
``cdmo.clear.ml/gpu-partitioning=mig`` so that they can run, without touching instances in use.
"""

__version__ = "0.1.0"
