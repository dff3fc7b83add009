"""What the node agent asks of a GPU backend, and the errors NVML's return codes become.

Two backends implement :class:`GpuBackend`: ``nvml.NvmlBackend`` (pynvml, real GPUs) and
``simulated.SimulatedBackend`` (GPUs in memory or in a state file, with NVML's behaviour).
Everything above them (reconcile, status, the CLI) sees only the dataclasses here.

Must not import pynvml, grpc or kubernetes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol, TypeVar

import tenacity

from cdmo.errors import Fatal, NvmlError, Transient
from cdmo.mig.layouts import Instance


class NvmlReturn(IntEnum):
    """NVML return codes (nvml.h ``NVML_ERROR_*``) that cdmo tells apart."""

    SUCCESS = 0
    UNINITIALIZED = 1
    INVALID_ARGUMENT = 2
    NOT_SUPPORTED = 3
    NO_PERMISSION = 4
    NOT_FOUND = 6
    INSUFFICIENT_SIZE = 7
    DRIVER_NOT_LOADED = 9
    TIMEOUT = 10
    IRQ_ISSUE = 11
    FUNCTION_NOT_FOUND = 13
    GPU_IS_LOST = 15
    RESET_REQUIRED = 16
    IN_USE = 19
    MEMORY = 20
    INSUFFICIENT_RESOURCES = 23
    NOT_READY = 27
    UNKNOWN = 999


# --- data ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuInfo:
    """One physical GPU as NVML reports it."""

    index: int
    uuid: str
    product: str
    #: The catalog key (``h100-80gb``); None when cdmo does not know the model.
    model_key: str | None
    mig_current: bool
    mig_pending: bool
    pci_device_id: int | None = None
    #: The NUMA node the GPU sits on (the kernel's numa_node of its PCI device); None: unknown
    #: or a machine of one node. The device plugin hands it to the kubelet's Topology Manager.
    numa_node: int | None = None


@dataclass(frozen=True)
class ComputeInstanceInfo:
    """One compute instance of a GPU instance: one MIG device with its own UUID."""

    ci_id: int
    uuid: str | None
    #: The compute instance spans its whole GPU instance (the only kind the device plugin takes).
    full: bool = True
    #: NVML's index of this MIG device under its GPU: the ``i`` of
    #: ``nvmlDeviceGetMigDeviceHandleByIndex(gpu, i)``, which NVIDIA's device plugin and container
    #: toolkit mean by ``<gpu>:<i>``. Not the rank of the GPU instance id: a driver may order MIG
    #: devices otherwise and leave holes. None where the backend could not read it. Not part of
    #: what the instance is (equality): it may move as other MIG devices come and go.
    mig_index: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class GpuInstanceInfo:
    """A GPU instance and its compute instances: one MIG device when it is whole.

    ``ci_id``, ``uuid`` and ``full`` describe the first compute instance; ``compute_instances``
    lists every one, because a GI left by another tool may hold several and a pod may hold any
    of them (:attr:`uuids`). ``ci_id`` and ``uuid`` are None for a GPU instance without a
    compute instance (an agent that died between the two creates, or a GI destroy refused after
    its CI went). ``full`` is False when the compute instance does not span the whole GPU
    instance; the device plugin refuses such devices.
    """

    gpu: int
    profile: str
    start: int
    size: int
    gi_id: int
    ci_id: int | None
    uuid: str | None
    full: bool = True
    #: Compute instances in this GPU instance (1 for a healthy MIG device).
    ci_count: int = 1
    #: Every compute instance, by CI id; empty means "only the one named by ci_id/uuid".
    compute_instances: tuple[ComputeInstanceInfo, ...] = ()
    #: The agent's device plugin withholds its MIG device after a critical XID error (not read
    #: from NVML: NodeObservation.withholding marks it). Not part of what the instance is.
    withheld: bool = field(default=False, compare=False)

    @property
    def instance(self) -> Instance:
        return Instance(self.profile, self.start)

    @property
    def healthy(self) -> bool:
        """One compute instance spanning the whole GPU instance, as the device plugin needs, and
        not withheld by it after a critical XID."""
        return self.ci_id is not None and self.full and self.ci_count == 1 and not self.withheld

    @property
    def empty(self) -> bool:
        """A GPU instance without any compute instance: its MIG device has vanished."""
        return self.ci_id is None and not self.compute_instances

    @property
    def mig_index(self) -> int | None:
        """NVML's MIG device index of the compute instance named by ``ci_id``/``uuid``; None when
        unknown (see :attr:`ComputeInstanceInfo.mig_index`)."""
        return next(
            (
                ci.mig_index
                for ci in self.compute_instances
                if ci.ci_id == self.ci_id and ci.uuid == self.uuid
            ),
            None,
        )

    @property
    def uuids(self) -> tuple[str, ...]:
        """The MIG device UUID of every compute instance (a holder of any one holds the GI)."""
        if self.compute_instances:
            return tuple(ci.uuid for ci in self.compute_instances if ci.uuid)
        return (self.uuid,) if self.uuid else ()

    def __str__(self) -> str:
        return f"GPU {self.gpu} {self.profile}@{self.start}"


def build_instance_info(
    gpu: int,
    profile: str,
    start: int,
    size: int,
    gi_id: int,
    cis: Sequence[ComputeInstanceInfo],
) -> GpuInstanceInfo:
    """A GpuInstanceInfo from every compute instance of the GI (sorted by CI id)."""
    ordered = tuple(sorted(cis, key=lambda c: c.ci_id))
    first = ordered[0] if ordered else None
    return GpuInstanceInfo(
        gpu=gpu,
        profile=profile,
        start=start,
        size=size,
        gi_id=gi_id,
        ci_id=first.ci_id if first else None,
        uuid=first.uuid if first else None,
        full=first is not None and first.full,
        ci_count=len(ordered),
        compute_instances=ordered,
    )


@dataclass(frozen=True)
class MigModeChange:
    """The MIG mode after a set: ``reset_needed`` when pending differs from current (Ampere)."""

    gpu: int
    current: bool
    pending: bool

    @property
    def reset_needed(self) -> bool:
        return self.current != self.pending


#: nvml.h: the ``gpuInstanceId`` / ``computeInstanceId`` of an XID event or a process row when
#: it is not attributable to one GPU or compute instance (the whole GPU, or MIG off).
NVML_NO_INSTANCE_ID = 0xFFFFFFFF


def nvml_instance_id(value: int) -> int | None:
    """A GI or CI id as NVML gives it, None for :data:`NVML_NO_INSTANCE_ID`."""
    return None if int(value) == NVML_NO_INSTANCE_ID else int(value)


@dataclass(frozen=True)
class XidEvent:
    """One critical XID error NVML delivered (``nvmlEventTypeXidCriticalError``).

    ``gpu`` is the GPU's NVML index, None when NVML named a device the backend could not tell
    (its UUID could not be read): the event may concern any GPU. ``gi_id`` and ``ci_id`` name
    the MIG device where the driver attributed the error to one; None (NVML's 0xFFFFFFFF) for an
    error of the whole GPU. A ``gi_id`` without ``ci_id`` concerns every compute instance of that
    GPU instance.
    """

    gpu: int | None
    xid: int
    gi_id: int | None = None
    ci_id: int | None = None

    @property
    def scope(self) -> str:
        """What the event concerns: ``device``, ``gpu-instance``, ``gpu`` or ``node`` (its GPU
        unknown)."""
        if self.gpu is None:
            return "node"
        if self.gi_id is None:
            return "gpu"
        return "gpu-instance" if self.ci_id is None else "device"


class XidWatch(Protocol):
    """An NVML event set with the node's GPUs registered for critical XID errors.

    ``gpus`` are the indexes actually watched: a GPU whose registration NVML refused
    (NOT_SUPPORTED, or any other code) is left out, with one warning logged by the backend.
    Events raised before the watch was opened are not delivered (nvml.h: "All events that
    occurred before this call are not recorded").
    """

    @property
    def gpus(self) -> frozenset[int]: ...

    def wait(self, timeout: float) -> XidEvent | None:
        """The next critical XID event, or None when none came within ``timeout`` seconds (or
        NVML delivered something else). Blocks only this thread; raises NvmlError when the wait
        itself fails (the watch is then to be closed and opened again)."""
        ...

    def close(self) -> None:
        """Free the event set (nvmlEventSetFree); never raises."""
        ...


class GpuBackend(Protocol):
    """The GPUs of one node. Indexes are NVML's; profiles are catalog names."""

    def list_gpus(self) -> list[GpuInfo]: ...

    def list_instances(self, gpu: int) -> list[GpuInstanceInfo]:
        """Every GPU instance of ``gpu`` with its compute instance; empty when MIG is off."""
        ...

    def list_processes(self, gpu: int) -> dict[str, tuple[int, ...]]:
        """Device UUID -> pids of the compute processes running on it (only busy ones).

        With MIG on the devices are the MIG devices (every compute instance); with MIG off the
        GPU itself, keyed by the GPU's UUID (what ``--enable-mig`` must not pull away).
        """
        ...

    def create_instance(self, gpu: int, profile: str, start: int) -> GpuInstanceInfo:
        """A GPU instance at exactly ``start`` plus its full-size compute instance.

        If the compute instance fails, the GPU instance just made is destroyed again.
        """
        ...

    def create_compute_instance(self, gpu: int, gi_id: int) -> GpuInstanceInfo:
        """The full-size compute instance in GPU instance ``gi_id``, which has none (a repair).

        Raises AlreadyGone when there is no such GPU instance.
        """
        ...

    def destroy_instance(self, gpu: int, gi_id: int) -> None:
        """Destroy the compute instances of GPU instance ``gi_id``, then the GPU instance.

        Raises AlreadyGone when there is no such GPU instance.
        """
        ...

    def set_mig_mode(self, gpu: int, enabled: bool) -> MigModeChange: ...

    def watch_xid_events(self) -> XidWatch:
        """Register every GPU for critical XID events (nvmlEventSetCreate,
        nvmlDeviceRegisterEvents); a GPU NVML refuses is not watched (see :class:`XidWatch`).
        Raises NvmlError when no event set can be made at all."""
        ...

    def close(self) -> None: ...


# --- errors ----------------------------------------------------------------------------------


class InstanceBusy(NvmlError):
    """NVML_ERROR_IN_USE: a process, a compute instance or a client (DCGM) holds it."""


class PlacementTaken(NvmlError):
    """NVML_ERROR_INSUFFICIENT_RESOURCES: the placement (or the profile's count) is taken."""


class NotSupported(NvmlError):
    """NVML_ERROR_NOT_SUPPORTED: MIG is off, or the GPU has no such profile."""


class InvalidPlacement(NvmlError):
    """NVML_ERROR_INVALID_ARGUMENT: a start that the profile does not offer, or a bad handle."""


class AlreadyGone(NvmlError):
    """NVML_ERROR_NOT_FOUND on destroy: the instance is not there (counts as destroyed)."""


class NoPermission(NvmlError, Fatal):
    """NVML_ERROR_NO_PERMISSION: the agent cannot change MIG; retrying will not help."""


class TransientNvmlError(NvmlError, Transient):
    """An NVML error that may pass (timeout, unknown, not ready): retried with backoff."""


class NvmlFailure(NvmlError):
    """Any other NVML error."""


class GpuInstanceLeft(NvmlFailure):
    """A create made its GPU instance, then failed, and NVML refused to destroy that GPU instance
    again: it stays (``gi_id``; None if unread) and takes the placement. Not transient: a retried
    create would only find the placement taken by it. The next pass lists it and repairs it in
    place, or destroys it when the layout no longer wants it. ``rc`` is the create's error."""

    def __init__(self, message: str, rc: int | None, gi_id: int | None) -> None:
        super().__init__(message, rc)
        self.gi_id = gi_id

    @classmethod
    def after(
        cls, what: str, cause: NvmlError, refused: int, gi_id: int | None, profile: str, start: int
    ) -> GpuInstanceLeft:
        """The error for ``what``: making the compute instance failed with ``cause``, and the
        destroy of GPU instance ``gi_id`` (None: its id was not read) was refused with ``refused``."""
        gi = f"GPU instance {gi_id}" if gi_id is not None else "a GPU instance whose id could not be read"
        return cls(
            f"{what}: making its compute instance failed ({rc_name(cause.rc)}) and NVML refused to "
            f"destroy the GPU instance just made ({gi}: {rc_name(refused)}); it stays at "
            f"{profile}@{start}, so the placement is taken by it; the next pass repairs it, or "
            "destroys it if the layout no longer wants it",
            cause.rc,
            gi_id,
        )


class GpuGone(NvmlFailure):
    """NVML_ERROR_GPU_IS_LOST or RESET_REQUIRED: the GPU answers nothing until it is reset or
    the node rebooted; a pass makes no further change on it."""


_TRANSIENT = frozenset(
    {NvmlReturn.TIMEOUT, NvmlReturn.UNKNOWN, NvmlReturn.NOT_READY, NvmlReturn.MEMORY, NvmlReturn.IRQ_ISSUE}
)

PRIVILEGED_HINT = (
    "the node agent must run privileged (securityContext.privileged: true) with the NVIDIA "
    "driver's /dev/nvidia-caps visible; MIG changes need root"
)


def rc_name(rc: int | None) -> str:
    """NVML's name for return code ``rc`` (``IN_USE``), or the number where cdmo has no name for it."""
    if rc is None:
        return "no return code"
    try:
        return NvmlReturn(rc).name
    except ValueError:
        return str(rc)


def error_for_rc(rc: int, what: str) -> NvmlError:
    """The cdmo error for NVML return code ``rc`` while doing ``what`` ("create 3g.40gb@4 on GPU 0")."""
    name = rc_name(rc)
    if rc == NvmlReturn.IN_USE:
        return InstanceBusy(f"{what}: NVML says it is in use (IN_USE)", rc)
    if rc == NvmlReturn.INSUFFICIENT_RESOURCES:
        return PlacementTaken(f"{what}: NVML says the placement is taken (INSUFFICIENT_RESOURCES)", rc)
    if rc == NvmlReturn.NOT_SUPPORTED:
        return NotSupported(
            f"{what}: NVML says not supported (NOT_SUPPORTED): MIG mode is off or the GPU has no such profile",
            rc,
        )
    if rc == NvmlReturn.INVALID_ARGUMENT:
        return InvalidPlacement(f"{what}: NVML refused the arguments (INVALID_ARGUMENT)", rc)
    if rc == NvmlReturn.NOT_FOUND:
        return AlreadyGone(f"{what}: NVML says it does not exist (NOT_FOUND)", rc)
    if rc == NvmlReturn.NO_PERMISSION:
        return NoPermission(f"{what}: NVML denied permission (NO_PERMISSION)", rc, hint=PRIVILEGED_HINT)
    if rc in (NvmlReturn.GPU_IS_LOST, NvmlReturn.RESET_REQUIRED):
        return GpuGone(f"{what}: NVML error {name}: the GPU needs a reset or a reboot of the node", rc)
    if rc in _TRANSIENT:
        return TransientNvmlError(f"{what}: NVML error {name}, will retry", rc)
    return NvmlFailure(f"{what}: NVML error {name}", rc)


# --- retries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries of transient NVML errors: ``attempts`` tries, exponential backoff.

    ``initial_seconds=0`` turns the waits off (the simulator and tests use that).
    """

    attempts: int = 4
    initial_seconds: float = 0.2
    max_seconds: float = 2.0


DEFAULT_RETRY = RetryPolicy()
NO_WAIT_RETRY = RetryPolicy(attempts=4, initial_seconds=0.0, max_seconds=0.0)

T = TypeVar("T")


def call_with_retry(policy: RetryPolicy, fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)``, retried on TransientNvmlError as ``policy`` says; other errors pass through.

    The first try is a plain call: almost every call succeeds at once, and reconcile makes many
    (the re-check reads the whole node before each destroy), so tenacity's machinery is only
    built once a try has failed. The waits are the same: ``initial_seconds``, then doubling.
    """
    try:
        return fn(*args)
    except TransientNvmlError:
        if policy.attempts <= 1:
            raise
    if policy.initial_seconds > 0:
        time.sleep(min(policy.initial_seconds, policy.max_seconds))
        wait: tenacity.wait.wait_base = tenacity.wait_exponential(
            multiplier=2 * policy.initial_seconds, max=policy.max_seconds
        )
    else:
        wait = tenacity.wait_none()
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(TransientNvmlError),
        stop=tenacity.stop_after_attempt(policy.attempts - 1),
        wait=wait,
        reraise=True,
    )
    return retrying(fn, *args)
