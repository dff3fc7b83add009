"""Simulated GPUs that behave as NVML does, per catalog model, and a backend on top of them.

:class:`SimulatedNode` holds the GPUs of one node and answers NVML-level calls (profile ids,
placements, GI and CI ids, return codes): INSUFFICIENT_RESOURCES on an occupied placement,
IN_USE when destroying a GPU instance that still has compute instances or a compute instance
with processes, NOT_SUPPORTED for profiles the model lacks or while MIG is off, a new MIG UUID
on every create, MIG mode current/pending (Ampere needs a reset, Hopper and later do not).
Faults can be injected: fail the next N calls of an NVML function with a return code, or die
(raise :class:`SimulatedCrash`) between creating a GPU instance and its compute instance.
Critical XID errors can be raised (:meth:`SimulatedNode.inject_xid`): every event set that
registered the GPU before then gets them, as NVML delivers them to ``nvmlEventSetWait``.

:class:`SimulatedBackend` is the :class:`~cdmo.node_agent.backend.GpuBackend` on a node kept
in memory (fast: the cluster simulator drives it thousands of times) or in a JSON state file
shared by separate commands (``--sim-state``), locked with ``flock`` while in use. The file
format is documented in docs/node-agent.md.

The fake ``pynvml`` module of the tests is backed by the same :class:`SimulatedNode`.
Must not import pynvml, grpc or kubernetes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from cdmo.api import MAX_GPUS_PER_NODE
from cdmo.errors import InvalidInput, NvmlError
from cdmo.inputfile import SIM_STATE, read_input_text
from cdmo.jsonload import DuplicateKey, load_json
from cdmo.mig.catalog import GpuModel, Profile, get_model, nvml_constants
from cdmo.mig.layouts import Instance, validate_layout
from cdmo.node_agent.backend import (
    ComputeInstanceInfo,
    GpuGone,
    GpuInfo,
    GpuInstanceInfo,
    GpuInstanceLeft,
    InstanceBusy,
    MigModeChange,
    NoPermission,
    NvmlReturn,
    XidEvent,
    build_instance_info,
    error_for_rc,
)

log = structlog.get_logger("cdmo.node_agent.simulated")

STATE_VERSION = 1
_UUID_NAMESPACE = uuidlib.UUID("6f1c1e0a-53c1-4f0b-9a57-63646d6f0001")

#: NVML_COMPUTE_INSTANCE_PROFILE_* value -> compute slices (nvml.h; 8_SLICE/6_SLICE for completeness).
CI_PROFILE_SLICES: dict[int, int] = {0: 1, 1: 2, 2: 3, 3: 4, 4: 7, 5: 8, 6: 6, 7: 1, 8: 7}
_PLAIN_CI_PROFILES = (0, 1, 2, 3, 4)

#: Every NVML function name a fault can be injected into ("*" matches all).
FAULT_CALLS = (
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetMigMode",
    "nvmlDeviceSetMigMode",
    "nvmlDeviceGetGpuInstanceProfileInfo",
    "nvmlDeviceGetGpuInstancePossiblePlacements",
    "nvmlDeviceCreateGpuInstanceWithPlacement",
    "nvmlDeviceGetGpuInstances",
    "nvmlDeviceGetGpuInstanceById",
    "nvmlGpuInstanceGetComputeInstanceProfileInfo",
    "nvmlGpuInstanceCreateComputeInstance",
    "nvmlGpuInstanceGetComputeInstances",
    "nvmlComputeInstanceDestroy",
    "nvmlGpuInstanceDestroy",
    "nvmlDeviceGetComputeRunningProcesses",
    "nvmlEventSetCreate",
    "nvmlDeviceRegisterEvents",
    "nvmlEventSetWait",
)

#: XID events a node keeps for event sets that have not read them yet (the oldest go first).
MAX_XID_EVENTS = 256
#: How often a watch on a state file looks for new XID events (an in-memory node wakes it).
XID_FILE_POLL_SECONDS = 0.1


class SimNvmlError(Exception):
    """An NVML return code from the simulated GPUs."""

    def __init__(self, rc: int, message: str = "") -> None:
        super().__init__(message or NvmlReturn(rc).name)
        self.rc = rc


class SimulatedCrash(BaseException):
    """The agent process 'died' between creating a GPU instance and its compute instance.

    A BaseException so that no error handler in cdmo catches it: like a real crash, it ends
    the pass; the hardware (the SimulatedNode) keeps the half-made GPU instance.
    """


@dataclass
class SimComputeInstance:
    ci_id: int
    profile_id: int
    uuid: str
    processes: list[int] = field(default_factory=list)


@dataclass
class SimGpuInstance:
    gi_id: int
    profile: Profile
    start: int
    cis: dict[int, SimComputeInstance] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.profile.placement_size


@dataclass
class SimGpu:
    index: int
    model: GpuModel
    uuid: str
    mig_current: bool = True
    mig_pending: bool = True
    gis: dict[int, SimGpuInstance] = field(default_factory=dict)
    #: Compute processes on the whole GPU (MIG off): they keep MIG mode from being switched.
    processes: list[int] = field(default_factory=list)

    @property
    def product(self) -> str:
        return self.model.product_names[0]

    @property
    def pci_device_id(self) -> int | None:
        return self.model.pci_device_ids[0] if self.model.pci_device_ids else None


@dataclass
class SimXidEvent:
    """A critical XID error raised on a GPU: ``seq`` orders them (event sets read those after
    the ``seq`` they registered at); ``gi_id``/``ci_id`` None: the whole GPU (NVML's 0xFFFFFFFF)."""

    seq: int
    gpu: int
    xid: int
    gi_id: int | None = None
    ci_id: int | None = None


@dataclass
class Fault:
    """Fail the next ``count`` calls of NVML function ``call`` (or "*") with ``rc``; -1 = always."""

    call: str
    rc: int
    count: int = 1


def _gi_id_for(model: GpuModel, profile: Profile, start: int) -> int:
    """GI ids as drivers usually number them: one slot per placement, biggest sizes first.

    On 8-unit GPUs: full GPU 0; 4-unit @0/@4 -> 1/2; 2-unit -> 3..6; 1-unit -> 7+start
    (mig-profiles-notes.md §6). cdmo treats GI ids as opaque; this only makes them realistic.
    """
    sizes = sorted({p.placement_size for p in model.profiles}, reverse=True)
    offset = 0
    for size in sizes:
        if size == profile.placement_size:
            return offset + start // size
        offset += max(1, model.placement_axis_size // size)
    return offset + start  # pragma: no cover - every profile's size is in sizes


def _ci_profiles_for(profile: Profile) -> tuple[int, ...]:
    """The CI profiles a GPU instance of ``profile`` offers: its default (whole GI) and smaller ones."""
    g = profile.compute_slices
    smaller = [
        c for c in _PLAIN_CI_PROFILES if CI_PROFILE_SLICES[c] < g and 2 * CI_PROFILE_SLICES[c] <= g + 1
    ]
    return tuple(sorted({profile.default_ci.value, *smaller}))


class SimulatedNode:
    """The GPUs of one simulated node, answering NVML-level calls. Thread-safe."""

    def __init__(self, gpus: Sequence[SimGpu], *, seed: str = "sim-node", next_uuid: int = 0) -> None:
        self.gpus = list(gpus)
        self.seed = seed
        self.next_uuid = next_uuid
        self.faults: list[Fault] = []
        self.crash_before_next_compute_instance = False
        #: Every NVML call made, by function name (tests assert on what was never called).
        self.calls: list[str] = []
        self.lock = threading.RLock()
        #: Critical XID errors raised so far (the last MAX_XID_EVENTS), and the last ``seq`` given.
        self.xid_events: list[SimXidEvent] = []
        self.xid_serial = 0
        #: Woken when an XID event is raised (an in-memory watch waits on it).
        self.xid_raised = threading.Condition(self.lock)

    @classmethod
    def from_models(
        cls, models: Sequence[str], *, seed: str = "sim-node", mig_enabled: bool = True
    ) -> SimulatedNode:
        """A new node with one GPU per model (catalog key or product name), MIG on, no instances."""
        gpus = []
        for index, text in enumerate(models):
            model = get_model(text)
            gpu_uuid = "GPU-" + str(uuidlib.uuid5(_UUID_NAMESPACE, f"{seed}/gpu/{index}"))
            gpus.append(SimGpu(index, model, gpu_uuid, mig_current=mig_enabled, mig_pending=mig_enabled))
        return cls(gpus, seed=seed)

    # --- fault injection and outside events ----------------------------------------------

    def inject_fault(self, call: str, rc: int, count: int = 1) -> None:
        """Fail the next ``count`` calls of ``call`` (an NVML function name, or "*") with ``rc``."""
        if call != "*" and call not in FAULT_CALLS:
            raise InvalidInput(
                f"cannot inject a fault into {call!r}", hint="calls are " + ", ".join(FAULT_CALLS)
            )
        with self.lock:
            self.faults.append(Fault(call, int(rc), count))

    def check_fault(self, call: str) -> None:
        """Record the call; raise the first matching injected fault."""
        with self.lock:
            self.calls.append(call)
            for fault in self.faults:
                if fault.call in (call, "*") and fault.count != 0:
                    if fault.count > 0:
                        fault.count -= 1
                    self.faults = [f for f in self.faults if f.count != 0]
                    raise SimNvmlError(fault.rc, f"injected fault in {call}")

    def add_process(self, mig_uuid: str, pid: int) -> None:
        """A compute process starts on the MIG device ``mig_uuid`` (it makes the instance busy)."""
        with self.lock:
            self._ci_by_uuid(mig_uuid).processes.append(pid)

    def remove_process(self, mig_uuid: str, pid: int) -> None:
        with self.lock:
            ci = self._ci_by_uuid(mig_uuid)
            ci.processes = [p for p in ci.processes if p != pid]

    def add_gpu_process(self, index: int, pid: int) -> None:
        """A compute process starts on GPU ``index`` as a whole (MIG off, or a non-MIG pod)."""
        with self.lock:
            self.gpu(index).processes.append(pid)

    def remove_gpu_process(self, index: int, pid: int) -> None:
        with self.lock:
            gpu = self.gpu(index)
            gpu.processes = [p for p in gpu.processes if p != pid]

    def gpu_processes(self, index: int) -> list[int]:
        with self.lock:
            self.check_fault("nvmlDeviceGetComputeRunningProcesses")
            return list(self.gpu(index).processes)

    def _ci_by_uuid(self, mig_uuid: str) -> SimComputeInstance:
        for gpu in self.gpus:
            for gi in gpu.gis.values():
                for ci in gi.cis.values():
                    if ci.uuid == mig_uuid:
                        return ci
        raise InvalidInput(f"no simulated MIG device has UUID {mig_uuid}")

    def inject_xid(self, index: int, xid: int, gi_id: int | None = None, ci_id: int | None = None) -> None:
        """The driver reports critical XID ``xid`` on GPU ``index``: of the MIG device (``gi_id``,
        ``ci_id``), of every compute instance of GPU instance ``gi_id`` (``ci_id`` None), or of the
        whole GPU (both None). Every event set that registered the GPU gets it."""
        with self.lock:
            if not 0 <= index < len(self.gpus):
                raise InvalidInput(f"cannot raise an XID on GPU {index}: the node has {len(self.gpus)} GPUs")
            self.xid_serial += 1
            self.xid_events.append(SimXidEvent(self.xid_serial, index, int(xid), gi_id, ci_id))
            del self.xid_events[:-MAX_XID_EVENTS]
            self.xid_raised.notify_all()

    def register_events(self, index: int) -> int:
        """nvmlDeviceRegisterEvents: the ``seq`` after which GPU ``index``'s events are delivered
        (nvml.h: events from before the registration are not recorded)."""
        with self.lock:
            self.check_fault("nvmlDeviceRegisterEvents")
            self.gpu(index)
            return self.xid_serial

    def next_xid(self, cursors: Mapping[int, int]) -> SimXidEvent | None:
        """The oldest XID event of a GPU in ``cursors`` (index -> last ``seq`` read) not read yet."""
        with self.lock:
            return next((e for e in self.xid_events if e.seq > cursors.get(e.gpu, e.seq)), None)

    def reboot(self) -> None:
        """A node reboot: every GPU and compute instance is gone.

        Ampere keeps MIG mode across reboots (a pending change takes effect); Hopper and later
        do not keep it (ARCHITECTURE.md, "Facts worth knowing"): MIG is off after the reboot.
        """
        with self.lock:
            for gpu in self.gpus:
                gpu.gis.clear()
                gpu.processes.clear()
                if gpu.model.mig_mode_change_needs_reset:
                    gpu.mig_current = gpu.mig_pending
                else:
                    gpu.mig_current = gpu.mig_pending = False

    def reset_gpu(self, index: int) -> None:
        """``nvidia-smi -r``: instances gone, a pending MIG mode takes effect."""
        with self.lock:
            gpu = self.gpu(index)
            gpu.gis.clear()
            gpu.mig_current = gpu.mig_pending

    # --- NVML-level calls ------------------------------------------------------------------

    def _new_mig_uuid(self) -> str:
        self.next_uuid += 1
        return "MIG-" + str(uuidlib.uuid5(_UUID_NAMESPACE, f"{self.seed}/mig/{self.next_uuid}"))

    def gpu(self, index: int) -> SimGpu:
        if not 0 <= index < len(self.gpus):
            raise SimNvmlError(NvmlReturn.INVALID_ARGUMENT, f"no GPU {index}")
        return self.gpus[index]

    def get_mig_mode(self, index: int) -> tuple[bool, bool]:
        with self.lock:
            self.check_fault("nvmlDeviceGetMigMode")
            gpu = self.gpu(index)
            return gpu.mig_current, gpu.mig_pending

    def set_mig_mode(self, index: int, enabled: bool) -> int:
        """Returns the activation status: SUCCESS, or RESET_REQUIRED on Ampere."""
        with self.lock:
            self.check_fault("nvmlDeviceSetMigMode")
            gpu = self.gpu(index)
            if not enabled and gpu.gis:
                raise SimNvmlError(NvmlReturn.IN_USE, "GPU instances exist")
            if gpu.processes and gpu.mig_current != enabled:
                # NVML reports IN_USE in the activation status while processes hold the GPU.
                raise SimNvmlError(NvmlReturn.IN_USE, "processes run on the GPU")
            gpu.mig_pending = enabled
            if gpu.model.mig_mode_change_needs_reset and gpu.mig_current != enabled:
                # Ampere: the driver's own reset attempt cannot run while clients hold the GPU.
                return NvmlReturn.RESET_REQUIRED
            gpu.mig_current = enabled
            return NvmlReturn.SUCCESS

    def gi_profile(self, index: int, constant: int) -> Profile:
        """nvmlDeviceGetGpuInstanceProfileInfo: by NVML_GPU_INSTANCE_PROFILE_* constant."""
        with self.lock:
            self.check_fault("nvmlDeviceGetGpuInstanceProfileInfo")
            gpu = self.gpu(index)
            if (
                not 0
                <= constant
                < nvml_constants()["gpu_instance_profiles"]["NVML_GPU_INSTANCE_PROFILE_COUNT"]
            ):
                raise SimNvmlError(NvmlReturn.INVALID_ARGUMENT, f"no profile constant {constant}")
            if not gpu.mig_current:
                raise SimNvmlError(NvmlReturn.NOT_SUPPORTED, "MIG mode is off")
            for prof in gpu.model.profiles:
                if prof.nvml_constant_value == constant:
                    return prof
            raise SimNvmlError(
                NvmlReturn.NOT_SUPPORTED, f"{gpu.model.key} has no profile constant {constant}"
            )

    def profile_by_id(self, index: int, profile_id: int) -> Profile:
        gpu = self.gpu(index)
        for prof in gpu.model.profiles:
            if prof.profile_id == profile_id:
                return prof
        raise SimNvmlError(NvmlReturn.INVALID_ARGUMENT, f"{gpu.model.key} has no profile id {profile_id}")

    def possible_placements(self, index: int, profile_id: int) -> list[int]:
        """Every placement start of the profile, occupied or not (as NVML returns them)."""
        with self.lock:
            self.check_fault("nvmlDeviceGetGpuInstancePossiblePlacements")
            return list(self.profile_by_id(index, profile_id).starts)

    def create_gpu_instance(self, index: int, profile_id: int, start: int, size: int) -> SimGpuInstance:
        with self.lock:
            self.check_fault("nvmlDeviceCreateGpuInstanceWithPlacement")
            gpu = self.gpu(index)
            if not gpu.mig_current:
                raise SimNvmlError(NvmlReturn.NOT_SUPPORTED, "MIG mode is off")
            prof = self.profile_by_id(index, profile_id)
            if start not in prof.starts or size != prof.placement_size:
                raise SimNvmlError(
                    NvmlReturn.INVALID_ARGUMENT, f"{prof.name} has no placement {start}:{size}"
                )
            current = [Instance(gi.profile.name, gi.start) for gi in gpu.gis.values()]
            if validate_layout(gpu.model, [*current, Instance(prof.name, start)]):
                raise SimNvmlError(NvmlReturn.INSUFFICIENT_RESOURCES, f"{prof.name}@{start} does not fit")
            gi_id = _gi_id_for(gpu.model, prof, start)
            if gi_id in gpu.gis:  # pragma: no cover - the overlap check above already refuses this
                raise SimNvmlError(NvmlReturn.INSUFFICIENT_RESOURCES, f"GI id {gi_id} taken")
            gi = SimGpuInstance(gi_id, prof, start)
            gpu.gis[gi_id] = gi
            return gi

    def gpu_instances(self, index: int, profile_id: int) -> list[SimGpuInstance]:
        with self.lock:
            self.check_fault("nvmlDeviceGetGpuInstances")
            gpu = self.gpu(index)
            if not gpu.mig_current:
                raise SimNvmlError(NvmlReturn.NOT_SUPPORTED, "MIG mode is off")
            self.profile_by_id(index, profile_id)
            return [gi for _, gi in sorted(gpu.gis.items()) if gi.profile.profile_id == profile_id]

    def gpu_instance(self, index: int, gi_id: int) -> SimGpuInstance:
        with self.lock:
            self.check_fault("nvmlDeviceGetGpuInstanceById")
            gpu = self.gpu(index)
            if not gpu.mig_current:
                raise SimNvmlError(NvmlReturn.NOT_SUPPORTED, "MIG mode is off")
            if gi_id not in gpu.gis:
                raise SimNvmlError(NvmlReturn.NOT_FOUND, f"no GPU instance {gi_id}")
            return gpu.gis[gi_id]

    def _live_gi(self, index: int, gi_id: int) -> SimGpuInstance:
        gpu = self.gpu(index)
        if gi_id not in gpu.gis:
            # A handle to a destroyed GPU instance.
            raise SimNvmlError(NvmlReturn.INVALID_ARGUMENT, f"GPU instance {gi_id} was destroyed")
        return gpu.gis[gi_id]

    def ci_profile(self, index: int, gi_id: int, constant: int) -> tuple[int, int]:
        """nvmlGpuInstanceGetComputeInstanceProfileInfo: (CI profile id, compute slices)."""
        with self.lock:
            self.check_fault("nvmlGpuInstanceGetComputeInstanceProfileInfo")
            gi = self._live_gi(index, gi_id)
            if constant not in CI_PROFILE_SLICES:
                raise SimNvmlError(NvmlReturn.INVALID_ARGUMENT, f"no CI profile constant {constant}")
            if constant not in _ci_profiles_for(gi.profile):
                raise SimNvmlError(
                    NvmlReturn.NOT_SUPPORTED, f"{gi.profile.name} has no CI profile {constant}"
                )
            # CI profile ids equal the NVML_COMPUTE_INSTANCE_PROFILE_* values (mig-profiles-notes.md §4).
            return constant, CI_PROFILE_SLICES[constant]

    def create_compute_instance(self, index: int, gi_id: int, ci_profile_id: int) -> SimComputeInstance:
        with self.lock:
            if self.crash_before_next_compute_instance:
                self.crash_before_next_compute_instance = False
                raise SimulatedCrash(f"simulated crash before the compute instance of GPU {index} GI {gi_id}")
            self.check_fault("nvmlGpuInstanceCreateComputeInstance")
            gi = self._live_gi(index, gi_id)
            if ci_profile_id not in _ci_profiles_for(gi.profile):
                raise SimNvmlError(
                    NvmlReturn.NOT_SUPPORTED, f"{gi.profile.name} has no CI profile {ci_profile_id}"
                )
            used = sum(CI_PROFILE_SLICES[c.profile_id] for c in gi.cis.values())
            if used + CI_PROFILE_SLICES[ci_profile_id] > gi.profile.compute_slices:
                raise SimNvmlError(NvmlReturn.INSUFFICIENT_RESOURCES, "compute slices taken")
            ci_id = next(i for i in range(len(gi.cis) + 1) if i not in gi.cis)
            ci = SimComputeInstance(ci_id, ci_profile_id, self._new_mig_uuid())
            gi.cis[ci_id] = ci
            return ci

    def compute_instances(self, index: int, gi_id: int, ci_profile_id: int) -> list[SimComputeInstance]:
        with self.lock:
            self.check_fault("nvmlGpuInstanceGetComputeInstances")
            gi = self._live_gi(index, gi_id)
            return [ci for _, ci in sorted(gi.cis.items()) if ci.profile_id == ci_profile_id]

    def destroy_compute_instance(self, index: int, gi_id: int, ci_id: int) -> None:
        with self.lock:
            self.check_fault("nvmlComputeInstanceDestroy")
            gi = self._live_gi(index, gi_id)
            if ci_id not in gi.cis:
                raise SimNvmlError(NvmlReturn.NOT_FOUND, f"no compute instance {ci_id}")
            if gi.cis[ci_id].processes:
                raise SimNvmlError(NvmlReturn.IN_USE, "processes run on it")
            del gi.cis[ci_id]

    def destroy_gpu_instance(self, index: int, gi_id: int) -> None:
        with self.lock:
            self.check_fault("nvmlGpuInstanceDestroy")
            gpu = self.gpu(index)
            if gi_id not in gpu.gis:
                raise SimNvmlError(NvmlReturn.NOT_FOUND, f"no GPU instance {gi_id}")
            if gpu.gis[gi_id].cis:
                raise SimNvmlError(NvmlReturn.IN_USE, "compute instances exist")
            del gpu.gis[gi_id]

    def mig_devices(self, index: int) -> list[tuple[int, SimGpuInstance, SimComputeInstance]]:
        """(MIG device index, GI, CI) of every MIG device of GPU ``index``, numbered as
        ``nvmlDeviceGetMigDeviceHandleByIndex`` numbers them here: in GI id, then CI id order,
        from 0, without holes, as the fake pynvml (which calls this) and the NVML stand-in do.
        Real drivers may order them otherwise and leave holes: the NVML backend reads the
        index from NVML, never from this order."""
        with self.lock:
            found = [
                (gi, ci) for _, gi in sorted(self.gpu(index).gis.items()) for _, ci in sorted(gi.cis.items())
            ]
            return [(n, gi, ci) for n, (gi, ci) in enumerate(found)]

    def processes(self, index: int, mig_uuid: str) -> list[int]:
        with self.lock:
            self.check_fault("nvmlDeviceGetComputeRunningProcesses")
            for gi in self.gpu(index).gis.values():
                for ci in gi.cis.values():
                    if ci.uuid == mig_uuid:
                        return list(ci.processes)
            raise SimNvmlError(NvmlReturn.NOT_FOUND, f"no MIG device {mig_uuid}")


# --- the backend -----------------------------------------------------------------------------


class SimulatedBackend:
    """The GpuBackend on simulated GPUs: in memory, or in a state file shared by commands.

    ``SimulatedBackend(node)`` keeps ``node`` in memory (no file I/O, no sleeps). With
    ``state_file`` every call locks the file, loads the node, acts and saves it again, so that
    separate processes see the same GPUs.
    """

    def __init__(
        self,
        node: SimulatedNode | None = None,
        *,
        state_file: str | os.PathLike[str] | None = None,
        new_gpus: Sequence[str] = (),
        seed: str = "sim-node",
    ) -> None:
        if node is None and state_file is None:
            raise InvalidInput(
                "a simulated backend needs GPUs", hint="give --sim-gpus h100-80gb,... or --sim-state FILE"
            )
        self._node = node
        self._state_file = Path(state_file) if state_file is not None else None
        self._new_gpus = tuple(new_gpus)
        self._seed = seed
        if self._state_file is not None:
            with self._open():
                pass  # create the file now, so that a bad --sim-gpus fails at once

    @classmethod
    def from_models(cls, models: Sequence[str], *, seed: str = "sim-node") -> SimulatedBackend:
        return cls(SimulatedNode.from_models(models, seed=seed))

    @property
    def node(self) -> SimulatedNode:
        """The in-memory node (not for a file-backed backend: use :func:`open_state`)."""
        if self._node is None:
            raise InvalidInput("this simulated backend keeps its GPUs in a state file")
        return self._node

    @contextlib.contextmanager
    def _open(self) -> Iterator[SimulatedNode]:
        if self._state_file is None:
            assert self._node is not None
            with self._node.lock:
                yield self._node
            return
        with open_state(self._state_file, new_gpus=self._new_gpus, seed=self._seed) as node:
            yield node

    @staticmethod
    def _nvml(what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except SimNvmlError as exc:
            raise error_for_rc(exc.rc, what) from exc

    def list_gpus(self) -> list[GpuInfo]:
        with self._open() as node:
            self._nvml("count the GPUs", node.check_fault, "nvmlDeviceGetCount")
            result = []
            for gpu in node.gpus:
                cur, pend = self._nvml(f"read the MIG mode of GPU {gpu.index}", node.get_mig_mode, gpu.index)
                result.append(
                    GpuInfo(gpu.index, gpu.uuid, gpu.product, gpu.model.key, cur, pend, gpu.pci_device_id)
                )
            return result

    def list_instances(self, gpu: int) -> list[GpuInstanceInfo]:
        with self._open() as node:
            what = f"list the instances of GPU {gpu}"
            sim = self._nvml(what, node.gpu, gpu)
            if not sim.mig_current:
                return []
            result = []
            indexes = _mig_indexes(node, gpu)
            for prof in sim.model.profiles:
                for gi in self._nvml(what, node.gpu_instances, gpu, prof.profile_id):
                    result.append(_instance_info(gpu, gi, indexes))
            return sorted(result, key=lambda i: (i.start, i.profile))

    def list_processes(self, gpu: int) -> dict[str, tuple[int, ...]]:
        with self._open() as node:
            what = f"list the processes on GPU {gpu}"
            sim = self._nvml(what, node.gpu, gpu)
            result: dict[str, tuple[int, ...]] = {}
            if not sim.mig_current:
                pids = self._nvml(what, node.gpu_processes, gpu)
                return {sim.uuid: tuple(pids)} if pids else {}
            for gi in sim.gis.values():
                for ci in gi.cis.values():
                    pids = self._nvml(what, node.processes, gpu, ci.uuid)
                    if pids:
                        result[ci.uuid] = tuple(pids)
            return result

    def create_instance(self, gpu: int, profile: str, start: int) -> GpuInstanceInfo:
        with self._open() as node:
            what = f"create {profile}@{start} on GPU {gpu}"
            sim = self._nvml(what, node.gpu, gpu)
            if not sim.model.has_profile(profile):
                raise error_for_rc(NvmlReturn.NOT_SUPPORTED, what)
            # As NVML wants it: constant -> profile info (.id) -> placements -> create at one.
            prof = self._nvml(what, node.gi_profile, gpu, sim.model.profile(profile).nvml_constant_value)
            if start not in self._nvml(what, node.possible_placements, gpu, prof.profile_id):
                raise error_for_rc(NvmlReturn.INVALID_ARGUMENT, f"{what} ({profile} cannot start at {start})")
            gi = self._nvml(what, node.create_gpu_instance, gpu, prof.profile_id, start, prof.placement_size)
            try:
                ci_id, _ = self._nvml(what, node.ci_profile, gpu, gi.gi_id, prof.default_ci.value)
                self._nvml(what, node.create_compute_instance, gpu, gi.gi_id, ci_id)
            except NvmlError as exc:
                # Leave no GPU instance without its compute instance behind. Where the destroy is
                # refused, say so as NvmlBackend does: re-raising a transient error would have the
                # retried create find this GPU instance at the placement and say PlacementTaken.
                refused = _destroy_new_gpu_instance(node, gpu, gi.gi_id)
                if refused is None or isinstance(exc, (NoPermission, GpuGone)):
                    raise  # nothing left behind, or an error that says more (Fatal, or the GPU gone)
                raise GpuInstanceLeft.after(what, exc, refused, gi.gi_id, profile, start) from exc
            except Exception:
                _destroy_new_gpu_instance(node, gpu, gi.gi_id)  # not NVML's (a bug): clean up, pass it on
                raise
            return _instance_info(gpu, gi, _mig_indexes(node, gpu))

    def create_compute_instance(self, gpu: int, gi_id: int) -> GpuInstanceInfo:
        with self._open() as node:
            what = f"create the compute instance of GPU instance {gi_id} on GPU {gpu}"
            gi = self._nvml(what, node.gpu_instance, gpu, gi_id)
            ci_id, _ = self._nvml(what, node.ci_profile, gpu, gi_id, gi.profile.default_ci.value)
            self._nvml(what, node.create_compute_instance, gpu, gi_id, ci_id)
            return _instance_info(gpu, gi, _mig_indexes(node, gpu))

    def destroy_instance(self, gpu: int, gi_id: int) -> None:
        with self._open() as node:
            what = f"destroy GPU instance {gi_id} on GPU {gpu}"
            gi = self._nvml(what, node.gpu_instance, gpu, gi_id)
            # As NvmlBackend: a process on any CI keeps the whole GI, idle CIs included.
            pids = sorted(p for ci in gi.cis.values() for p in ci.processes)
            if pids:
                raise InstanceBusy(
                    f"{what}: processes {', '.join(map(str, pids))} run on it", NvmlReturn.IN_USE
                )
            for ci_id in sorted(gi.cis):
                try:
                    node.destroy_compute_instance(gpu, gi_id, ci_id)
                except SimNvmlError as exc:
                    if exc.rc != NvmlReturn.NOT_FOUND:
                        raise error_for_rc(exc.rc, what) from exc
            self._nvml(what, node.destroy_gpu_instance, gpu, gi_id)

    def set_mig_mode(self, gpu: int, enabled: bool) -> MigModeChange:
        with self._open() as node:
            what = f"switch MIG {'on' if enabled else 'off'} on GPU {gpu}"
            self._nvml(what, node.set_mig_mode, gpu, enabled)
            cur, pend = self._nvml(what, node.get_mig_mode, gpu)
            return MigModeChange(gpu, cur, pend)

    def watch_xid_events(self) -> SimulatedXidWatch:
        """Every GPU registered for XID events; one NVML refuses (an injected fault in
        ``nvmlDeviceRegisterEvents``, e.g. NOT_SUPPORTED) is not watched, with one warning."""
        cursors: dict[int, int] = {}
        with self._open() as node:
            self._nvml("create an NVML event set", node.check_fault, "nvmlEventSetCreate")
            for gpu in node.gpus:
                try:
                    cursors[gpu.index] = node.register_events(gpu.index)
                except SimNvmlError as exc:
                    err = error_for_rc(exc.rc, f"register GPU {gpu.index} for XID events")
                    log.warning(
                        "Skipped watching GPU for XID errors", gpu=gpu.index, nvml_rc=exc.rc, error=str(err)
                    )
        return SimulatedXidWatch(self, cursors)

    def close(self) -> None:
        """Nothing to release: the state file is saved after every call."""


class SimulatedXidWatch:
    """:class:`~cdmo.node_agent.backend.XidWatch` on simulated GPUs. In memory, a wait sleeps until
    :meth:`SimulatedNode.inject_xid` wakes it; on a state file it looks every
    XID_FILE_POLL_SECONDS (another process may write an event there)."""

    def __init__(self, backend: SimulatedBackend, cursors: dict[int, int]) -> None:
        self._backend = backend
        self._cursors = cursors

    @property
    def gpus(self) -> frozenset[int]:
        return frozenset(self._cursors)

    def wait(self, timeout: float) -> XidEvent | None:
        deadline = time.monotonic() + timeout
        first = True
        while True:
            with self._backend._open() as node:
                if first:  # one NVML call per wait, as nvmlEventSetWait is one
                    self._backend._nvml("wait for XID events", node.check_fault, "nvmlEventSetWait")
                    first = False
                event = node.next_xid(self._cursors)
                if event is not None:
                    self._cursors[event.gpu] = event.seq
                    return XidEvent(event.gpu, event.xid, event.gi_id, event.ci_id)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                if self._backend._state_file is None:
                    node.xid_raised.wait(left)  # lets go of the node's lock while it sleeps
                    continue
            time.sleep(min(left, XID_FILE_POLL_SECONDS))

    def close(self) -> None:
        self._cursors = {}


def _destroy_new_gpu_instance(node: SimulatedNode, gpu: int, gi_id: int) -> int | None:
    """Destroy the GPU instance a failed create just made; NVML's return code if it refuses."""
    try:
        node.destroy_gpu_instance(gpu, gi_id)
    except SimNvmlError as exc:
        return exc.rc
    return None


def _mig_indexes(node: SimulatedNode, gpu: int) -> dict[str, int]:
    """MIG UUID -> MIG device index on GPU ``gpu``."""
    return {ci.uuid: n for n, _, ci in node.mig_devices(gpu)}


def _instance_info(gpu: int, gi: SimGpuInstance, indexes: dict[str, int]) -> GpuInstanceInfo:
    return build_instance_info(
        gpu,
        gi.profile.name,
        gi.start,
        gi.size,
        gi.gi_id,
        [
            ComputeInstanceInfo(
                ci.ci_id,
                ci.uuid,
                CI_PROFILE_SLICES[ci.profile_id] == gi.profile.compute_slices,
                indexes.get(ci.uuid),
            )
            for ci in gi.cis.values()
        ],
    )


# --- the state file --------------------------------------------------------------------------


def dump_state(node: SimulatedNode) -> dict[str, Any]:
    """The JSON document of a node (docs/node-agent.md, "The simulated state file")."""
    return {
        "version": STATE_VERSION,
        "seed": node.seed,
        "next_uuid": node.next_uuid,
        "gpus": [
            {
                "index": gpu.index,
                "model": gpu.model.key,
                "uuid": gpu.uuid,
                "mig": {"current": gpu.mig_current, "pending": gpu.mig_pending},
                "processes": list(gpu.processes),
                "instances": [
                    {
                        "gi_id": gi.gi_id,
                        "profile": gi.profile.name,
                        "start": gi.start,
                        "compute_instances": [
                            {
                                "ci_id": ci.ci_id,
                                "profile_id": ci.profile_id,
                                "uuid": ci.uuid,
                                "processes": ci.processes,
                            }
                            for _, ci in sorted(gi.cis.items())
                        ],
                    }
                    for _, gi in sorted(gpu.gis.items(), key=lambda kv: kv[1].start)
                ],
            }
            for gpu in node.gpus
        ],
        "faults": [{"call": f.call, "rc": f.rc, "count": f.count} for f in node.faults],
        "crash_before_next_compute_instance": node.crash_before_next_compute_instance,
        "xid_serial": node.xid_serial,
        "xid_events": [
            {"seq": e.seq, "gpu": e.gpu, "xid": e.xid, "gi_id": e.gi_id, "ci_id": e.ci_id}
            for e in node.xid_events
        ],
    }


#: NVML's GPU and compute instance ids, XID numbers and return codes, and Linux pids, are unsigned
#: 32-bit numbers; the counters cdmo itself counts up (next_uuid, xid_serial, an event's seq)
#: stay below 2**63, as Kubernetes' integers do. Past these a state file was not written by cdmo.
_MAX_ID = 2**32 - 1
_MAX_COUNTER = 2**63 - 1
_STATE_HINT = "fix that field, or start a new file with --sim-gpus"
_FILE_HINT = "give a state file that cdmo wrote, or start a new one with --sim-gpus"
_REQUIRED = object()


class _StateFields:
    """Typed reads of one state file's fields; each refusal is one line naming the file and the
    field's path (``s.json: gpus[0].instances[1].gi_id: must be ...``), so that a hand-edited file
    is fixed where it is wrong instead of failing later (a KeyError, an overflow) inside a call."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, text: str, hint: str = _STATE_HINT) -> InvalidInput:
        """``text`` (a field's path and what is wrong with it) as the one line of an error."""
        return InvalidInput(f"{self.source}: {text}", hint=hint)

    def _value(self, doc: dict[str, Any], key: str, where: str, default: Any) -> tuple[str, Any]:
        field = f"{where}.{key}" if where else key
        if key not in doc:
            if default is _REQUIRED:
                raise self.fail(f"{field}: is required")
            return field, default
        return field, doc[key]

    def _bad(self, field: str, must: str, value: Any) -> InvalidInput:
        try:
            shown = json.dumps(value)  # as the file writes it: Infinity, true, "x"
        except (TypeError, ValueError):  # pragma: no cover - values come from JSON
            shown = repr(value)
        if len(shown) > 40:
            shown = shown[:37] + "..."
        return self.fail(f"{field}: must be {must}, not {shown}")

    def integer(
        self,
        doc: dict[str, Any],
        key: str,
        where: str,
        default: Any = _REQUIRED,
        *,
        minimum: int = 0,
        maximum: int = _MAX_ID,
    ) -> int:
        field, value = self._value(doc, key, where, default)
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise self._bad(field, f"a whole number from {minimum} to {maximum}", value)
        return value

    def optional_id(self, doc: dict[str, Any], key: str, where: str) -> int | None:
        if doc.get(key) is None:
            return None
        return self.integer(doc, key, where)

    def boolean(self, doc: dict[str, Any], key: str, where: str, default: Any = _REQUIRED) -> bool:
        field, value = self._value(doc, key, where, default)
        if not isinstance(value, bool):
            raise self._bad(field, "true or false", value)
        return value

    def string(self, doc: dict[str, Any], key: str, where: str, default: Any = _REQUIRED) -> str:
        field, value = self._value(doc, key, where, default)
        if not isinstance(value, str):
            raise self._bad(field, "a string", value)
        return value

    def items(self, doc: dict[str, Any], key: str, where: str, default: Any = _REQUIRED) -> list[Any]:
        field, value = self._value(doc, key, where, default)
        if value is None and default is not _REQUIRED:
            return []  # an optional list written as null is empty, as it always read
        if not isinstance(value, list):
            raise self._bad(field, "a list", value)
        return value

    def obj(self, value: Any, field: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(f"{field} must be an object")
        return value

    def pids(self, doc: dict[str, Any], where: str) -> list[int]:
        """The ``processes`` list of a GPU or a compute instance: process ids."""
        field = f"{where}.processes"
        pids = []
        for k, pid in enumerate(self.items(doc, "processes", where, [])):
            if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid <= _MAX_ID:
                raise self._bad(f"{field}[{k}]", f"a process id from 0 to {_MAX_ID}", pid)
            pids.append(pid)
        return pids


def parse_state(doc: Any, source: str = "the state file") -> SimulatedNode:
    """A node from its JSON document; raises InvalidInput naming the file and the bad field.

    Every field is checked for its kind and range here, so that a node that loads answers every
    call (a CI profile id the simulator does not know once failed ``node show`` with a KeyError).
    """
    f = _StateFields(source)
    if not isinstance(doc, dict):
        raise InvalidInput(f"{source}: the simulated state must be a JSON object", hint=_FILE_HINT)
    version = doc.get("version", STATE_VERSION)
    if isinstance(version, bool) or version != STATE_VERSION:
        raise InvalidInput(f"{source}: simulated state version {version!r} is not {STATE_VERSION}")
    # UUIDs left out are derived from the seed, as a new node's are: not from how the file's
    # path was spelled, which gave `show s.json` and `show ./s.json` different GPUs.
    seed = f.string(doc, "seed", "", "sim-node")
    raw_gpus = f.items(doc, "gpus", "")
    if len(raw_gpus) > MAX_GPUS_PER_NODE:
        raise f.fail(f"gpus: {len(raw_gpus)} GPUs; a node holds at most {MAX_GPUS_PER_NODE} here")
    gpus = [_parse_gpu(f, i, g, seed) for i, g in enumerate(raw_gpus)]
    node = SimulatedNode(gpus, seed=seed, next_uuid=f.integer(doc, "next_uuid", "", 0, maximum=_MAX_COUNTER))
    for k, raw in enumerate(f.items(doc, "faults", "", [])):
        where = f"faults[{k}]"
        fault = f.obj(raw, where)
        call = f.string(fault, "call", where)
        if call != "*" and call not in FAULT_CALLS:
            raise f.fail(
                f"{where}.call: {call!r} is not an NVML call", hint="calls are * or " + ", ".join(FAULT_CALLS)
            )
        # -1: fail every call from now on (Fault)
        count = f.integer(fault, "count", where, 1, minimum=-1, maximum=_MAX_COUNTER)
        node.inject_fault(call, f.integer(fault, "rc", where, minimum=1), count)
    node.crash_before_next_compute_instance = f.boolean(doc, "crash_before_next_compute_instance", "", False)
    node.xid_serial = f.integer(doc, "xid_serial", "", 0, maximum=_MAX_COUNTER)
    for k, raw in enumerate(f.items(doc, "xid_events", "", [])):
        where = f"xid_events[{k}]"
        e = f.obj(raw, where)
        gpu = f.integer(e, "gpu", where, maximum=_MAX_ID)
        if not 0 <= gpu < len(gpus):
            raise f.fail(f"{where}.gpu {gpu} is not a GPU of the node")
        # An event written by hand, without seq, is raised now: after every one already there.
        seq = f.integer(e, "seq", where, node.xid_serial + 1, minimum=1, maximum=_MAX_COUNTER)
        node.xid_serial = max(node.xid_serial, seq)
        xid = f.integer(e, "xid", where)
        node.xid_events.append(
            SimXidEvent(seq, gpu, xid, f.optional_id(e, "gi_id", where), f.optional_id(e, "ci_id", where))
        )
    return node


def _parse_gpu(f: _StateFields, i: int, raw: Any, seed: str) -> SimGpu:
    where = f"gpus[{i}]"
    g = f.obj(raw, where)
    if f.integer(g, "index", where, i) != i:
        raise f.fail(f"{where}.index must be {i} (GPUs are listed in index order)")
    try:
        model = get_model(f.string(g, "model", where))
    except InvalidInput as exc:
        raise f.fail(f"{where}.model: {exc.message}", hint=exc.hint or _STATE_HINT) from None
    mig = f.obj(g.get("mig", {}), f"{where}.mig")
    current = f.boolean(mig, "current", f"{where}.mig", True)
    gpu = SimGpu(
        index=i,
        model=model,
        uuid=f.string(g, "uuid", where, "")
        or "GPU-" + str(uuidlib.uuid5(_UUID_NAMESPACE, f"{seed}/gpu/{i}")),
        mig_current=current,
        mig_pending=f.boolean(mig, "pending", f"{where}.mig", current),
        processes=f.pids(g, where),
    )
    parsed: list[tuple[str, dict[str, Any], Profile, int]] = []
    for j, raw_gi in enumerate(f.items(g, "instances", where, [])):
        iwhere = f"{where}.instances[{j}]"
        gi_doc = f.obj(raw_gi, iwhere)
        try:
            prof = model.profile(f.string(gi_doc, "profile", iwhere))
        except InvalidInput as exc:
            raise f.fail(f"{iwhere}.profile: {exc.message}", hint=exc.hint or _STATE_HINT) from None
        parsed.append(
            (iwhere, gi_doc, prof, f.integer(gi_doc, "start", iwhere, maximum=model.placement_axis_size))
        )
    problems = validate_layout(model, [Instance(prof.name, start) for _, _, prof, start in parsed])
    if problems:
        raise f.fail(f"{where} holds instances no {model.key} can hold: " + "; ".join(problems))
    for iwhere, gi_doc, prof, start in parsed:
        gi = SimGpuInstance(f.integer(gi_doc, "gi_id", iwhere, _gi_id_for(model, prof, start)), prof, start)
        if gi.gi_id in gpu.gis:
            raise f.fail(f"{iwhere}.gi_id {gi.gi_id} is used twice on GPU {i}")
        offered = _ci_profiles_for(prof)
        for k, raw_ci in enumerate(f.items(gi_doc, "compute_instances", iwhere, [])):
            cwhere = f"{iwhere}.compute_instances[{k}]"
            c = f.obj(raw_ci, cwhere)
            ci = SimComputeInstance(
                ci_id=f.integer(c, "ci_id", cwhere, k),
                profile_id=f.integer(c, "profile_id", cwhere, prof.default_ci.value),
                uuid=f.string(c, "uuid", cwhere),
                processes=f.pids(c, cwhere),
            )
            if ci.profile_id not in offered:
                raise f.fail(
                    f"{cwhere}.profile_id {ci.profile_id} is not a compute instance profile of {prof.name}; "
                    f"it offers {', '.join(map(str, offered))} (NVML_COMPUTE_INSTANCE_PROFILE_*)",
                )
            if ci.ci_id in gi.cis:
                raise f.fail(f"{cwhere}.ci_id {ci.ci_id} is used twice in GPU instance {gi.gi_id}")
            gi.cis[ci.ci_id] = ci
        used = sum(CI_PROFILE_SLICES[c.profile_id] for c in gi.cis.values())
        if used > prof.compute_slices:
            raise f.fail(
                f"{iwhere}.compute_instances use {used} compute slices; {prof.name} has {prof.compute_slices}"
            )
        gpu.gis[gi.gi_id] = gi
    return gpu


def load_state(path: str | os.PathLike[str]) -> SimulatedNode:
    """Read a state file (no locking: use :func:`open_state` where others may write)."""
    p = Path(path)
    # Bounded, and a regular file only (cdmo.inputfile.SIM_STATE): a pipe or /dev/zero is refused.
    text = read_input_text(p, SIM_STATE)
    try:
        doc = load_json(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{p} is not valid JSON: {exc}", hint=_FILE_HINT) from None
    except DuplicateKey as exc:
        raise InvalidInput(f"{p} is not valid JSON: {exc}", hint="give each key once") from None
    except RecursionError:
        # json nests by recursion; a state file is five levels deep.
        raise InvalidInput(f"{p} is nested too deeply to be a simulated state", hint=_FILE_HINT) from None
    except ValueError:
        # Python refuses an integer of more than 4300 digits (sys.int_info); no id is that long.
        raise InvalidInput(f"{p} holds a number of more than 4300 digits", hint=_FILE_HINT) from None
    return parse_state(doc, str(p))


def save_state(node: SimulatedNode, path: str | os.PathLike[str]) -> None:
    """Write a state file atomically (a temporary file, then a rename)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(dump_state(node), indent=2) + "\n")
    os.replace(tmp, p)


def parse_models(text: str) -> tuple[str, ...]:
    """``"h100-80gb,h100-80gb"`` -> catalog keys; raises UnknownModel for an unknown one."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if len(names) > MAX_GPUS_PER_NODE:
        # Every call loads and saves the whole file: 1,000 GPUs took 48 s to apply.
        raise InvalidInput(
            f"--sim-gpus names {len(names)} GPUs; a node holds at most {MAX_GPUS_PER_NODE} here",
            hint="simulate a node of a real size; cdmo simulate runs whole fleets",
        )
    models = tuple(get_model(name).key for name in names)
    if not models:
        raise InvalidInput("--sim-gpus is empty", hint="give GPU models such as h100-80gb,h100-80gb")
    return models


@contextlib.contextmanager
def open_state(
    path: str | os.PathLike[str], *, new_gpus: Sequence[str] = (), seed: str = "sim-node"
) -> Iterator[SimulatedNode]:
    """Lock the state file, load it (or make a new node of ``new_gpus``), yield it, save it.

    The node is saved even when the body raises: like real GPUs, the simulated ones keep what
    was done before a failure or a (simulated) crash. A call that changed nothing leaves the file
    as it is (a read-only file or folder can be shown; `show` and `--dry-run` write nothing).
    """
    p = Path(path)
    # Lock the folder, not a lock file beside the state: a lock file would be left behind by
    # every command, even one that changed nothing (flock works on a directory's descriptor).
    try:
        lock = os.open(p.parent, os.O_RDONLY)
    except OSError as exc:
        raise InvalidInput(f"cannot open the folder of {p}: {exc.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if p.exists():
                node = load_state(p)
                if new_gpus and tuple(g.model.key for g in node.gpus) != tuple(
                    get_model(m).key for m in new_gpus
                ):
                    raise InvalidInput(
                        f"{p} holds GPUs {','.join(g.model.key for g in node.gpus)}, not {','.join(new_gpus)}",
                        hint="drop --sim-gpus to use the file as it is, or give a new file",
                    )
            elif new_gpus:
                node = SimulatedNode.from_models(new_gpus, seed=seed)
            else:
                raise InvalidInput(
                    f"simulated state {p} does not exist",
                    hint="give --sim-gpus h100-80gb,h100-80gb to create a new simulated node",
                )
            before = dump_state(node) if p.exists() else None
            try:
                yield node
            finally:
                if dump_state(node) != before:
                    save_state(node, p)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    finally:
        os.close(lock)
