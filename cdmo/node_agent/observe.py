"""Observe: read what a node's GPUs hold and who holds it, into one frozen snapshot.

The first of reconcile's three parts (observe -> decide -> execute). Reads NVML through the
backend (GPUs, every GPU and compute instance, compute processes) and the node's holders
(kubelet pod-resources and pods bound to the node, through ``in_use``), and decides nothing.
Execute calls :func:`observe_node` again right before each destroy, so that the re-check sees
the node's current truth on every GPU, not the first observation's.

No Kubernetes here: ``in_use`` is an InUse or a callable the agent (or a test) hands in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from cdmo.node_agent.backend import (
    DEFAULT_RETRY,
    GpuBackend,
    GpuInfo,
    GpuInstanceInfo,
    RetryPolicy,
    call_with_retry,
)
from cdmo.node_agent.inuse import EMPTY_IN_USE, InUse

#: What holds the node's devices: a fixed InUse, or a callable that reads it afresh.
InUseSource = InUse | Callable[[], InUse]


def read_in_use(source: InUseSource) -> InUse:
    return source() if callable(source) else source


@dataclass(frozen=True)
class NodeObservation:
    """A node as read at one moment: its GPUs, their instances, and every holder."""

    gpus: Mapping[int, GpuInfo] = field(default_factory=dict)
    #: GPU index -> its GPU instances (empty when MIG is off)
    instances: Mapping[int, tuple[GpuInstanceInfo, ...]] = field(default_factory=dict)
    #: pod-resources, bound pods and NVML processes (MIG devices, or whole GPUs with MIG off)
    in_use: InUse = field(default_factory=InUse)

    def withholding(self, uuids: Collection[str]) -> NodeObservation:
        """This observation with every instance whose MIG device is among ``uuids`` (what the
        device plugin withholds after a critical XID) marked ``withheld``: not healthy, so that
        decide destroys and makes again a free one the layout keeps, in place and with a new
        UUID, which the kubelet may hand out again (as it does an instance with a broken compute
        instance). One a pod holds is kept."""
        wanted = frozenset(uuids)
        if not wanted:
            return self
        instances = {
            index: tuple(
                dataclasses.replace(i, withheld=True) if not wanted.isdisjoint(i.uuids) else i for i in insts
            )
            for index, insts in self.instances.items()
        }
        return dataclasses.replace(self, instances=instances)

    def without(self, gone: Collection[GpuInstanceInfo]) -> NodeObservation:
        """This observation less the instances already destroyed in this pass.

        An instance is the same when GPU, GI id and MIG UUIDs match: a GI made again later in
        the pass may get the same id, never the same UUIDs.
        """
        if not gone:
            return self
        keys = {(i.gpu, i.gi_id, i.uuids) for i in gone}
        return NodeObservation(
            self.gpus,
            {
                g: tuple(i for i in insts if (g, i.gi_id, i.uuids) not in keys)
                for g, insts in self.instances.items()
            },
            self.in_use,
        )


def observe_node(
    backend: GpuBackend,
    in_use: InUseSource = EMPTY_IN_USE,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> NodeObservation:
    """Read every GPU of the node, what each holds, and who holds it. Changes nothing.

    The pods (pod-resources, the API server: the slow reads) come first, NVML last, so that
    what NVML says is as fresh as it can be when the decision is made.
    """
    holders = read_in_use(in_use)
    gpus = {g.index: g for g in call_with_retry(retry, backend.list_gpus)}
    instances: dict[int, tuple[GpuInstanceInfo, ...]] = {}
    processes: dict[str, tuple[int, ...]] = {}
    for index, info in sorted(gpus.items()):
        instances[index] = (
            tuple(call_with_retry(retry, backend.list_instances, index)) if info.mig_current else ()
        )
        # With MIG off the GPU's own processes count: they keep --enable-mig away.
        processes.update(call_with_retry(retry, backend.list_processes, index))
    return NodeObservation(gpus, instances, holders.with_processes(processes))
