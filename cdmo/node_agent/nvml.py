"""The GpuBackend on real GPUs, through pynvml (the nvidia-ml-py package).

Used as NVML wants it (nvml.h, and the NVIDIA DRA driver's nvlib.go):

- a profile *constant* (``NVML_GPU_INSTANCE_PROFILE_3_SLICE``) goes to
  ``nvmlDeviceGetGpuInstanceProfileInfo``; its ``.id`` is what placement, create and list
  calls take;
- GPU instances are created only with ``nvmlDeviceCreateGpuInstanceWithPlacement`` at the
  planned start, never first-fit (``nvmlDeviceCreateGpuInstance`` is order-sensitive);
- the compute instance spans the whole GPU instance: the catalog's default CI profile for the
  GI profile (on H100 the 1g.20gb default is ``..._1_SLICE_REV1``), looked up with
  ``nvmlGpuInstanceGetComputeInstanceProfileInfo``; if it fails, the GI just made is destroyed;
- the MIG UUID comes from ``nvmlComputeInstanceGetInfo(ci).device``, the way NVIDIA's DRA
  driver reads it. NVML's reference calls that field the "parent device"; when a driver
  returns the parent GPU there, the MIG device is found by its GI and CI ids instead.

Only this module imports pynvml, lazily, so tests can hand in a fake module instead.
"""

from __future__ import annotations

import ctypes
import importlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import structlog

from cdmo.errors import UnknownProfile
from cdmo.mig.catalog import PROFILE_NAME_PATTERN, GpuModel, find_model, nvml_constants
from cdmo.node_agent.backend import (
    AlreadyGone,
    ComputeInstanceInfo,
    GpuGone,
    GpuInfo,
    GpuInstanceInfo,
    GpuInstanceLeft,
    InstanceBusy,
    InvalidPlacement,
    MigModeChange,
    NoPermission,
    NotSupported,
    NvmlError,
    NvmlFailure,
    NvmlReturn,
    TransientNvmlError,
    XidEvent,
    build_instance_info,
    error_for_rc,
    nvml_instance_id,
    rc_name,
)
from cdmo.node_agent.nvml_processes import (
    ProcessList,
    ProcessRow,
    Reader,
    merge_rows,
    read_processes,
    readers_for,
)

log = structlog.get_logger("cdmo.node_agent.nvml")


@dataclass(frozen=True)
class _MigDevice:
    """A MIG device as NVML enumerates it under its GPU."""

    #: The ``i`` of ``nvmlDeviceGetMigDeviceHandleByIndex(gpu, i)``.
    index: int
    uuid: str
    handle: Any


class NvmlBackend:
    """MIG on the GPUs of this node through NVML. Needs a privileged pod to change anything."""

    def __init__(self, nvml: ModuleType | None = None) -> None:
        self._nvml = nvml if nvml is not None else _import_pynvml()
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as exc:
            raise NvmlFailure(
                f"cannot initialise NVML: {exc}",
                getattr(exc, "value", None),
                hint="run the agent on a node with the NVIDIA driver (privileged, with the NVIDIA "
                "container runtime), or use --backend simulated",
            ) from exc
        self._models: dict[int, GpuModel | None] = {}
        self._uuids: dict[int, str] = {}
        self._process_readers: tuple[Reader, ...] | None = None

    # --- plumbing ------------------------------------------------------------------------

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._nvml.NVMLError as exc:
            raise error_for_rc(exc.value, what) from exc

    def _running_processes(self, what: str, handle: Any) -> list[ProcessRow]:
        """The processes on ``handle`` from every list the driver has: compute, graphics and MPS
        (cdmo.node_agent.nvml_processes: in the row layout the driver writes, which pynvml's own
        calls get wrong on one driver family or the other), each (pid, GI, CI) once, with
        INSUFFICIENT_SIZE made transient.

        The count first, then an array of twice that plus 5; processes that start in between
        overflow it (nvml.h: "the number of elements might change in time"). A new read sees
        them, so the callers' bounded retries (``call_with_retry``) read again; if it never
        fits, the read fails: a process list not read is never "no processes".

        The one return code read as "none in this list" is NOT_SUPPORTED from the graphics or
        the MPS list (nvml.h: "not supported by device"): a device that cannot be asked for
        that kind of context holds none (graphics on a compute-only GPU or MIG device, MPS
        before Volta). The one documented refusal of a device that may hold processes, vGPU
        host mode on MIG device handles, refuses the compute list on the same handle first,
        and that NOT_SUPPORTED is raised for the caller to read through the parent GPU. Every
        other code fails the read, from any list: NO_PERMISSION (Fatal: unseen is not none),
        INVALID_ARGUMENT, GPU_IS_LOST, FUNCTION_NOT_FOUND from a call the library exports,
        UNKNOWN and the other transient codes after their retries.
        """
        nv = self._nvml
        if self._process_readers is None:
            self._process_readers = self._call(f"{what}: find the process calls", readers_for, nv)
        lists: list[list[ProcessRow]] = []
        for reader in self._process_readers:
            step = f"{what} ({reader.kind.label} processes)"
            try:
                lists.append(self._call(step, read_processes, nv, reader, handle))
            except NotSupported:
                if reader.kind is ProcessList.COMPUTE:
                    raise
                continue  # no such contexts on this device (see above)
            except NvmlFailure as exc:
                if exc.rc != NvmlReturn.INSUFFICIENT_SIZE:
                    raise
                raise TransientNvmlError(
                    f"{step}: the process list grew while NVML read it (INSUFFICIENT_SIZE), will retry",
                    exc.rc,
                ) from exc
        return merge_rows(*lists)

    def _handle(self, gpu: int) -> Any:
        return self._call(f"open GPU {gpu}", self._nvml.nvmlDeviceGetHandleByIndex, gpu)

    def _model(self, gpu: int, handle: Any) -> GpuModel | None:
        if gpu not in self._models:
            name = self._call(f"read the name of GPU {gpu}", self._nvml.nvmlDeviceGetName, handle)
            pci = self._call(f"read the PCI info of GPU {gpu}", self._nvml.nvmlDeviceGetPciInfo, handle)
            self._models[gpu] = find_model(name) or find_model(int(pci.pciDeviceId))
            self._uuids[gpu] = self._call(f"read the UUID of GPU {gpu}", self._nvml.nvmlDeviceGetUUID, handle)
        return self._models[gpu]

    def _mig_mode(self, gpu: int, handle: Any) -> tuple[bool, bool]:
        try:
            cur, pend = self._call(f"read the MIG mode of GPU {gpu}", self._nvml.nvmlDeviceGetMigMode, handle)
        except NotSupported:
            return False, False  # a GPU without MIG
        return bool(cur), bool(pend)

    # --- GpuBackend ------------------------------------------------------------------------

    def list_gpus(self) -> list[GpuInfo]:
        nv = self._nvml
        count = self._call("count the GPUs", nv.nvmlDeviceGetCount)
        result = []
        for gpu in range(count):
            h = self._handle(gpu)
            uuid = self._call(f"read the UUID of GPU {gpu}", nv.nvmlDeviceGetUUID, h)
            product = self._call(f"read the name of GPU {gpu}", nv.nvmlDeviceGetName, h)
            pci = self._call(f"read the PCI info of GPU {gpu}", nv.nvmlDeviceGetPciInfo, h)
            model = find_model(product) or find_model(int(pci.pciDeviceId))
            self._models[gpu] = model
            self._uuids[gpu] = uuid
            cur, pend = self._mig_mode(gpu, h)
            result.append(
                GpuInfo(
                    gpu,
                    uuid,
                    product,
                    model.key if model else None,
                    cur,
                    pend,
                    int(pci.pciDeviceId),
                    numa_node(getattr(pci, "busId", "")),
                )
            )
        return result

    def _gi_profiles(self, gpu: int, h: Any) -> list[tuple[str, Any]]:
        """(profile name, GpuInstanceProfileInfo) for each GI profile the GPU offers.

        The catalog's profiles first, under the catalog's names; then every other profile
        constant NVML knows, so that an instance of a profile the catalog lacks (a later driver's,
        or one made with nvidia-smi) is still seen: it takes space and a pod may hold it. Those
        are named as NVML names them ("MIG 2g.20gb+me" -> ``2g.20gb+me``), else ``profile-id-N``.
        """
        nv = self._nvml
        model = self._model(gpu, h)
        catalog = {p.nvml_constant_value: p.name for p in model.profiles} if model else {}
        found: dict[int, tuple[str, Any]] = {}
        others = [c for c in range(_profile_constant_count(nv, "GPU")) if c not in catalog]
        for constant in [*catalog, *others]:
            name = catalog.get(constant)
            try:
                info = self._call(
                    f"read profile {name or constant} of GPU {gpu}",
                    nv.nvmlDeviceGetGpuInstanceProfileInfo,
                    h,
                    constant,
                )
            except (NotSupported, InvalidPlacement):
                continue  # the GPU lacks this profile (go-nvlib skips these two codes too)
            if info.id not in found:
                found[info.id] = (name or _nvml_profile_name(info, model is not None), info)
        return list(found.values())

    def _compute_instances(
        self, gpu: int, h: Any, gi: Any, gi_id: int, devices: list[_MigDevice] | None = None
    ) -> list[tuple[int, int, str | None]]:
        """(CI id, compute slices, MIG UUID) of every compute instance in GPU instance ``gi``."""
        what = f"list the compute instances of GPU {gpu} GI {gi_id}"
        return sorted(
            (int(info.id), int(prof.sliceCount), self._mig_uuid(gpu, h, gi_id, info, devices))
            for prof, _, info in self._compute_instance_infos(gi, what)
        )

    def _compute_instance_infos(self, gi: Any, what: str) -> list[tuple[Any, Any, Any]]:
        """(CI profile info, CI handle, ComputeInstanceInfo) of every compute instance in ``gi``."""
        nv = self._nvml
        return [
            (prof, handle, self._call(what, nv.nvmlComputeInstanceGetInfo, handle))
            for prof, handle in self._compute_instance_handles(gi, what)
        ]

    def _compute_instance_handles(self, gi: Any, what: str) -> Iterator[tuple[Any, Any]]:
        """(CI profile info, CI handle) of every compute instance in GPU instance ``gi``.

        CI profiles are listed by constant; duplicates (1_SLICE_REV1 of 1_SLICE, 7_SLICE_NVL of
        7_SLICE) return the same profile id and are visited once.
        """
        nv = self._nvml
        seen: set[int] = set()
        for constant in range(_profile_constant_count(nv, "COMPUTE")):
            try:
                prof = self._call(
                    what,
                    nv.nvmlGpuInstanceGetComputeInstanceProfileInfo,
                    gi,
                    constant,
                    nv.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
                )
            except (NotSupported, InvalidPlacement):
                continue
            if prof.id in seen or prof.instanceCount == 0:
                continue
            seen.add(prof.id)
            handles = (nv.c_nvmlComputeInstance_t * prof.instanceCount)()
            count = ctypes.c_uint(0)
            self._call(what, nv.nvmlGpuInstanceGetComputeInstances, gi, prof.id, handles, ctypes.byref(count))
            for k in range(count.value):
                yield prof, handles[k]

    def _mig_uuid(
        self, gpu: int, h: Any, gi_id: int, ci_info: Any, devices: list[_MigDevice] | None = None
    ) -> str | None:
        """The MIG UUID of a compute instance; ``devices``: the GPU's MIG devices, if already read."""
        nv = self._nvml
        uuid = self._call(f"read a MIG device UUID on GPU {gpu}", nv.nvmlDeviceGetUUID, ci_info.device)
        if uuid.startswith("MIG-") and uuid != self._uuids.get(gpu):
            return str(uuid)
        # The driver returned the parent GPU: find the MIG device with these GI and CI ids, among
        # the devices already read, else (none, or made since) in a fresh walk.
        what = f"find the MIG device of GPU {gpu} GI {gi_id} CI {ci_info.id}"

        def find(walked: list[_MigDevice]) -> str | None:
            for dev in walked:
                if (
                    self._call(what, nv.nvmlDeviceGetGpuInstanceId, dev.handle) == gi_id
                    and self._call(what, nv.nvmlDeviceGetComputeInstanceId, dev.handle) == ci_info.id
                ):
                    return dev.uuid
            return None

        return (find(devices) if devices is not None else None) or find(self._mig_devices(gpu, h, what))

    def _mig_devices(self, gpu: int, h: Any, what: str) -> list[_MigDevice]:
        """Every MIG device of the GPU with NVML's index for it, walked as go-nvlib's
        ``VisitMigDevices`` walks them for NVIDIA's device plugin: ``i`` in
        ``range(nvmlDeviceGetMaxMigDeviceCount)``, ``nvmlDeviceGetMigDeviceHandleByIndex(gpu, i)``,
        NOT_FOUND and INVALID_ARGUMENT skipped. A skipped ``i`` is a hole, kept: the next device
        keeps its own ``i`` (what ``<gpu>:<i>`` means to NVIDIA's plugin and container toolkit).
        One call for the count, one per index, one per device found for its UUID."""
        nv = self._nvml
        found = []
        for index in range(self._call(what, nv.nvmlDeviceGetMaxMigDeviceCount, h)):
            try:
                mig = self._call(what, nv.nvmlDeviceGetMigDeviceHandleByIndex, h, index)
            except (AlreadyGone, InvalidPlacement):
                continue  # no MIG device at this index
            found.append(_MigDevice(index, str(self._call(what, nv.nvmlDeviceGetUUID, mig)), mig))
        return found

    def _gpu_instances(self, gpu: int, h: Any) -> list[tuple[str, Any, Any, int]]:
        """(profile name, GI handle, GpuInstanceInfo, compute slices) of every GPU instance."""
        nv = self._nvml
        what = f"list the GPU instances of GPU {gpu}"
        result = []
        for name, info in self._gi_profiles(gpu, h):
            if info.instanceCount == 0:
                continue
            handles = (nv.c_nvmlGpuInstance_t * info.instanceCount)()
            count = ctypes.c_uint(0)
            self._call(what, nv.nvmlDeviceGetGpuInstances, h, info.id, handles, ctypes.byref(count))
            for k in range(count.value):
                gi_info = self._call(what, nv.nvmlGpuInstanceGetInfo, handles[k])
                result.append((name, handles[k], gi_info, int(info.sliceCount)))
        return result

    def list_instances(self, gpu: int) -> list[GpuInstanceInfo]:
        h = self._handle(gpu)
        if not self._mig_mode(gpu, h)[0]:
            return []
        # NVML's own MIG device index of each compute instance, by UUID (what `<gpu>:<i>` names
        # to NVIDIA's toolkit). Where the GPU does not number its MIG devices (nvml.h:
        # NOT_SUPPORTED), the index is unknown (None), never guessed; any other failure fails
        # the read, as every other call here does.
        devices: list[_MigDevice] | None
        try:
            devices = self._mig_devices(gpu, h, f"number the MIG devices of GPU {gpu}")
        except NotSupported:
            devices = None
        indexes = {d.uuid: d.index for d in devices or ()}
        result = []
        for name, gi, info, slices in self._gpu_instances(gpu, h):
            gi_id = int(info.id)
            cis = self._compute_instances(gpu, h, gi, gi_id, devices)
            result.append(
                build_instance_info(
                    gpu,
                    name,
                    int(info.placement.start),
                    int(info.placement.size),
                    gi_id,
                    [
                        ComputeInstanceInfo(
                            ci_id,
                            uuid,
                            slices is None or ci_slices == slices,
                            indexes.get(uuid) if uuid else None,
                        )
                        for ci_id, ci_slices, uuid in cis
                    ],
                )
            )
        return sorted(result, key=lambda i: (i.start, i.profile))

    def list_processes(self, gpu: int) -> dict[str, tuple[int, ...]]:
        nv = self._nvml
        h = self._handle(gpu)
        what = f"list the processes on GPU {gpu}"
        if not self._mig_mode(gpu, h)[0]:
            # MIG off: the GPU is one device; its processes keep --enable-mig away from it.
            procs = self._running_processes(what, h)
            uuid = self._call(f"read the UUID of GPU {gpu}", nv.nvmlDeviceGetUUID, h)
            return {str(uuid): tuple(sorted({p.pid for p in procs}))} if procs else {}
        # Per MIG device (nvml.h: the parent's handle gives them only to a privileged caller).
        devices = [(d.uuid, d.handle) for d in self._mig_devices(gpu, h, what)]
        result: dict[str, tuple[int, ...]] = {}
        try:
            for uuid, mig in devices:
                procs = self._running_processes(what, mig)
                if procs:  # a pid in two lists (compute and MPS, say) is one process
                    result[uuid] = tuple(sorted({p.pid for p in procs}))
        except NotSupported:
            # nvml.h: not on MIG device handles in vGPU host mode (the compute list, read first
            # on each handle, says so). The parent GPU's aggregate names each process's GI and
            # CI ids.
            return self._processes_by_parent(gpu, h, devices)
        return result

    def _processes_by_parent(
        self, gpu: int, h: Any, devices: list[tuple[str, Any]]
    ) -> dict[str, tuple[int, ...]]:
        nv = self._nvml
        what = f"list the processes on GPU {gpu} (MIG device handles refused, so through the GPU's)"
        try:
            procs = self._running_processes(what, h)
        except (NotSupported, NoPermission) as exc:
            message = (
                f"cannot read the processes on GPU {gpu}: NVML refused them on its MIG devices "
                f"(NOT_SUPPORTED) and on the GPU ({rc_name(exc.rc)}); no instance on it is "
                "destroyed while they are unknown"
            )
            hint = "run the agent privileged with hostPID: true"
            if isinstance(exc, NoPermission):
                # NO_PERMISSION is Fatal wherever this backend meets it (error_for_rc, and
                # create_instance lets it through as it is), the per-MIG-device read included: a
                # missing privilege does not pass by retrying, so the agent stops and says so
                # (status PermissionDenied) instead of failing pass after pass.
                raise NoPermission(message, exc.rc, hint=hint) from exc
            raise NvmlFailure(message, exc.rc, hint=hint) from exc
        by_ids: dict[tuple[int | None, int | None], str] = {
            (
                int(self._call(what, nv.nvmlDeviceGetGpuInstanceId, mig)),
                int(self._call(what, nv.nvmlDeviceGetComputeInstanceId, mig)),
            ): uuid
            for uuid, mig in devices
        }
        found: dict[str, set[int]] = {}
        for p in procs:
            # A process NVML cannot place on a MIG device is counted on every one: held, not lost.
            key = (p.gi_id, p.ci_id)
            for uuid in [by_ids[key]] if key in by_ids else list(by_ids.values()):
                found.setdefault(uuid, set()).add(p.pid)
        return {uuid: tuple(sorted(pids)) for uuid, pids in found.items()}

    def create_instance(self, gpu: int, profile: str, start: int) -> GpuInstanceInfo:
        nv = self._nvml
        what = f"create {profile}@{start} on GPU {gpu}"
        h = self._handle(gpu)
        model = self._model(gpu, h)
        if model is None:
            raise NotSupported(f"{what}: cdmo does not know this GPU model", NvmlReturn.NOT_SUPPORTED)
        try:
            prof = model.profile(profile)
        except UnknownProfile as exc:
            raise NotSupported(f"{what}: {exc}", NvmlReturn.NOT_SUPPORTED) from None
        info = self._call(what, nv.nvmlDeviceGetGpuInstanceProfileInfo, h, prof.nvml_constant_value)

        # Possible placements: ask for the count first (NULL array), then fetch them all.
        count = ctypes.c_uint(0)
        self._call(what, nv.nvmlDeviceGetGpuInstancePossiblePlacements, h, info.id, None, ctypes.byref(count))
        placements = (nv.c_nvmlGpuInstancePlacement_t * max(1, count.value))()
        self._call(
            what, nv.nvmlDeviceGetGpuInstancePossiblePlacements, h, info.id, placements, ctypes.byref(count)
        )
        match = [p for p in placements[: count.value] if p.start == start]
        if not match:
            legal = ", ".join(str(p.start) for p in placements[: count.value])
            raise InvalidPlacement(
                f"{what}: NVML offers {profile} only at starts {legal}", NvmlReturn.INVALID_ARGUMENT
            )
        placement = nv.c_nvmlGpuInstancePlacement_t(match[0].start, match[0].size)
        gi = self._call(
            what, nv.nvmlDeviceCreateGpuInstanceWithPlacement, h, info.id, ctypes.byref(placement)
        )
        gi_id: int | None = None
        try:
            gi_info = self._call(what, nv.nvmlGpuInstanceGetInfo, gi)
            gi_id = int(gi_info.id)
            ci_prof = self._call(
                what,
                nv.nvmlGpuInstanceGetComputeInstanceProfileInfo,
                gi,
                prof.default_ci.value,
                nv.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
            )
            ci = self._call(what, nv.nvmlGpuInstanceCreateComputeInstance, gi, ci_prof.id)
        except NvmlError as exc:
            # No GPU instance without its compute instance may stay behind.
            refused = self._destroy_new_gpu_instance(gi, gpu, profile, start, gi_id)
            if refused is None or isinstance(exc, (NoPermission, GpuGone)):
                raise  # nothing left behind, or an error that says more (Fatal, or the GPU gone)
            raise GpuInstanceLeft.after(what, exc, refused, gi_id, profile, start) from exc
        try:
            ci_info = self._call(what, nv.nvmlComputeInstanceGetInfo, ci)
            uuid = self._mig_uuid(gpu, h, gi_id, ci_info)
        except (NoPermission, GpuGone):
            raise
        except NvmlError as exc:
            # Both instances exist: a retried create could only find the placement taken.
            raise NvmlFailure(
                f"{what}: made GPU instance {gi_id} and its compute instance, but reading them back failed "
                f"({rc_name(exc.rc)}); the next pass reads them",
                exc.rc,
            ) from exc
        return build_instance_info(
            gpu,
            profile,
            int(gi_info.placement.start),
            int(gi_info.placement.size),
            gi_id,
            [ComputeInstanceInfo(int(ci_info.id), uuid)],
        )

    def _destroy_new_gpu_instance(
        self, gi: Any, gpu: int, profile: str, start: int, gi_id: int | None
    ) -> int | None:
        """Destroy the GPU instance a failed create just made; NVML's return code if it refuses."""
        nv = self._nvml
        try:
            nv.nvmlGpuInstanceDestroy(gi)
        except nv.NVMLError as exc:
            log.warning(
                "Failed to destroy GPU instance after a failed compute instance",
                gpu=gpu,
                profile=profile,
                start=start,
                gi_id=gi_id,
                nvml_rc=exc.value,
            )
            return int(exc.value)
        return None

    def create_compute_instance(self, gpu: int, gi_id: int) -> GpuInstanceInfo:
        nv = self._nvml
        what = f"create the compute instance of GPU instance {gi_id} on GPU {gpu}"
        h = self._handle(gpu)
        model = self._model(gpu, h)
        gi = self._call(what, nv.nvmlDeviceGetGpuInstanceById, h, gi_id)  # NOT_FOUND -> AlreadyGone
        gi_info = self._call(what, nv.nvmlGpuInstanceGetInfo, gi)
        name = next((n for n, p in self._gi_profiles(gpu, h) if p.id == gi_info.profileId), None)
        if model is None or name is None or not model.has_profile(name):
            raise NotSupported(
                f"{what}: cdmo does not know this GPU instance's profile", NvmlReturn.NOT_SUPPORTED
            )
        prof = model.profile(name)
        ci_prof = self._call(
            what,
            nv.nvmlGpuInstanceGetComputeInstanceProfileInfo,
            gi,
            prof.default_ci.value,
            nv.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
        )
        ci = self._call(what, nv.nvmlGpuInstanceCreateComputeInstance, gi, ci_prof.id)
        ci_info = self._call(what, nv.nvmlComputeInstanceGetInfo, ci)
        uuid = self._mig_uuid(gpu, h, gi_id, ci_info)
        return build_instance_info(
            gpu,
            name,
            int(gi_info.placement.start),
            int(gi_info.placement.size),
            gi_id,
            [ComputeInstanceInfo(int(ci_info.id), uuid)],
        )

    def destroy_instance(self, gpu: int, gi_id: int) -> None:
        nv = self._nvml
        what = f"destroy GPU instance {gi_id} on GPU {gpu}"
        h = self._handle(gpu)
        gi = self._call(what, nv.nvmlDeviceGetGpuInstanceById, h, gi_id)  # NOT_FOUND -> AlreadyGone
        # A process on any compute instance keeps the whole GI: check them all before the first
        # CI destroy, or the idle CIs of a split GI would go before NVML refuses the busy one.
        busy = self.list_processes(gpu)
        cis = self._compute_instance_infos(gi, what)
        pids = sorted(
            {p for _, _, info in cis for p in busy.get(self._mig_uuid(gpu, h, gi_id, info) or "", ())}
        )
        if pids:
            raise InstanceBusy(f"{what}: processes {', '.join(map(str, pids))} run on it", NvmlReturn.IN_USE)
        for _, handle, info in cis:
            self._destroy_compute_instance(gpu, gi, gi_id, int(info.id), handle, what)
        self._call(what, nv.nvmlGpuInstanceDestroy, gi)

    def _destroy_compute_instance(
        self, gpu: int, gi: Any, gi_id: int, ci_id: int, handle: Any, what: str
    ) -> None:
        """Destroy compute instance ``ci_id`` of GPU instance ``gi``; one that has gone meanwhile
        (another tool destroyed it since this destroy read it) counts as destroyed.

        NVML answers a destroy through the handle of a compute instance that has gone with
        INVALID_ARGUMENT, the code of any bad argument, not NOT_FOUND. So on either code the GPU
        instance's compute instances are read again: without ``ci_id`` among them it has gone;
        with it (or when they cannot be read) the destroy's own error is raised.
        """
        try:
            self._call(what, self._nvml.nvmlComputeInstanceDestroy, handle)
        except (InvalidPlacement, AlreadyGone) as exc:
            try:
                left = {int(info.id) for _, _, info in self._compute_instance_infos(gi, what)}
            except (NoPermission, GpuGone):
                raise  # these say more than the destroy's code
            except NvmlError as again:
                raise exc from again
            if ci_id in left:
                raise
            log.info(
                "Found compute instance already destroyed", gpu=gpu, gi_id=gi_id, ci_id=ci_id, nvml_rc=exc.rc
            )

    def set_mig_mode(self, gpu: int, enabled: bool) -> MigModeChange:
        nv = self._nvml
        what = f"switch MIG {'on' if enabled else 'off'} on GPU {gpu}"
        h = self._handle(gpu)
        mode = nv.NVML_DEVICE_MIG_ENABLE if enabled else nv.NVML_DEVICE_MIG_DISABLE
        status = self._call(what, nv.nvmlDeviceSetMigMode, h, mode)
        if status not in (NvmlReturn.SUCCESS, NvmlReturn.RESET_REQUIRED):
            raise error_for_rc(status, what)
        cur, pend = self._mig_mode(gpu, h)
        return MigModeChange(gpu, cur, pend)

    def watch_xid_events(self) -> NvmlXidWatch:
        """An event set with every GPU registered for ``nvmlEventTypeXidCriticalError``, as
        NVIDIA's device plugin registers them (internal/rm/health.go): the GPU's handle, its
        supported event types (``nvmlDeviceGetSupportedEventTypes``), then
        ``nvmlDeviceRegisterEvents``. Events of MIG devices arrive on their GPU, with the GI and
        CI ids (nvml.h: MIG device handles take no registration). A GPU NVML refuses
        (NOT_SUPPORTED, or lost) is not watched: one warning. Four calls per GPU, once."""
        nv = self._nvml
        xid = int(nv.nvmlEventTypeXidCriticalError)
        event_set = self._call("create an NVML event set", nv.nvmlEventSetCreate)
        watched: dict[str, int] = {}
        try:
            for gpu in range(self._call("count the GPUs", nv.nvmlDeviceGetCount)):
                what = f"register GPU {gpu} for XID events"
                try:
                    h = self._handle(gpu)
                    uuid = str(self._call(what, nv.nvmlDeviceGetUUID, h))
                    if not int(self._call(what, nv.nvmlDeviceGetSupportedEventTypes, h)) & xid:
                        raise NotSupported(
                            f"{what}: the GPU's supported event types lack XID errors",
                            NvmlReturn.NOT_SUPPORTED,
                        )
                    self._call(what, nv.nvmlDeviceRegisterEvents, h, xid, event_set)
                except NvmlError as exc:
                    log.warning(
                        "Skipped watching GPU for XID errors", gpu=gpu, nvml_rc=exc.rc, error=str(exc)
                    )
                    continue
                watched[uuid] = gpu
        except BaseException:
            _free_event_set(nv, event_set)
            raise
        return NvmlXidWatch(nv, event_set, watched)

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as exc:
            log.debug("Failed to shut down NVML", nvml_rc=exc.value)


class NvmlXidWatch:
    """:class:`~cdmo.node_agent.backend.XidWatch` over one NVML event set (``nvmlEventSetWait_v2``,
    which both ends of the nvidia-ml-py range call, as go-nvml's ``EventSet.Wait`` does)."""

    def __init__(self, nvml: ModuleType, event_set: Any, by_uuid: dict[str, int]) -> None:
        self._nvml = nvml
        self._set: Any = event_set
        self._by_uuid = dict(by_uuid)

    @property
    def gpus(self) -> frozenset[int]:
        return frozenset(self._by_uuid.values())

    def wait(self, timeout: float) -> XidEvent | None:
        nv = self._nvml
        try:
            # ctypes lets go of the GIL for the call: only this thread waits.
            data = nv.nvmlEventSetWait_v2(self._set, max(0, int(timeout * 1000)))
        except nv.NVMLError as exc:
            if exc.value == NvmlReturn.TIMEOUT:  # no event, or an interrupt (nvml.h)
                return None
            raise error_for_rc(exc.value, "wait for XID events") from exc
        if not int(data.eventType) & int(nv.nvmlEventTypeXidCriticalError):
            return None
        xid = int(data.eventData)
        gpu: int | None
        try:
            uuid = str(nv.nvmlDeviceGetUUID(data.device))
        except nv.NVMLError as exc:
            # As NVIDIA's plugin: an event whose device cannot be told may concern any GPU.
            log.warning("Failed to read the GPU of an XID event", xid=xid, nvml_rc=exc.value)
            gpu = None
        else:
            if uuid not in self._by_uuid:
                log.info("Ignored XID event of a device not watched", xid=xid, uuid=uuid)
                return None
            gpu = self._by_uuid[uuid]
        return XidEvent(
            gpu, xid, nvml_instance_id(data.gpuInstanceId), nvml_instance_id(data.computeInstanceId)
        )

    def close(self) -> None:
        if self._set is not None:
            _free_event_set(self._nvml, self._set)
            self._set = None


def _free_event_set(nv: ModuleType, event_set: Any) -> None:
    try:
        nv.nvmlEventSetFree(event_set)
    except nv.NVMLError as exc:
        log.debug("Failed to free NVML event set", nvml_rc=exc.value)


#: Where the kernel lists PCI devices; each one's ``numa_node`` says its NUMA node (-1: none).
SYS_PCI_DEVICES = Path("/sys/bus/pci/devices")


def numa_node(bus_id: bytes | str) -> int | None:
    """The NUMA node of the PCI device NVML names ``bus_id`` ("00000000:3B:00.0"; sysfs calls it
    0000:3b:00.0), as NVIDIA's device plugin reads it; None where the kernel does not say."""
    text = bus_id.decode(errors="replace") if isinstance(bus_id, bytes) else str(bus_id)
    parts = text.strip().rstrip("\x00").lower().split(":")
    if len(parts) != 3 or not parts[0]:
        return None
    try:
        node = int((SYS_PCI_DEVICES / f"{parts[0][-4:]}:{parts[1]}:{parts[2]}" / "numa_node").read_text())
    except (OSError, ValueError):
        return None
    return node if node >= 0 else None


def _profile_constant_count(nv: ModuleType, kind: str) -> int:
    """How many NVML_{kind}_INSTANCE_PROFILE_* constants to ask about: the most that pynvml or
    the catalog knows (nvidia-ml-py 12.535.77 knows 10 GI and 8 CI constants, 13.x 18 and 9).
    A constant beyond what the driver knows is refused (INVALID_ARGUMENT) and skipped."""
    name = f"NVML_{kind}_INSTANCE_PROFILE_COUNT"
    section = "gpu_instance_profiles" if kind == "GPU" else "compute_instance_profiles"
    return max(int(getattr(nv, name, 0)), nvml_constants()[section].get(name, 0))


def _nvml_profile_name(info: Any, known_model: bool) -> str:
    """A GPU instance profile's name as NVML gives it (v2 info: "MIG 1g.10gb+me"), or its id
    (always on a model cdmo does not know, whose profiles no catalog name may stand for)."""
    if not known_model:
        return f"profile-id-{info.id}"
    raw = getattr(info, "name", b"")
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    name = text.removeprefix("MIG ").strip()
    return name if re.match(PROFILE_NAME_PATTERN, name) else f"profile-id-{info.id}"


def _import_pynvml() -> ModuleType:
    try:
        return importlib.import_module("pynvml")
    except ImportError as exc:  # pragma: no cover - nvidia-ml-py is a dependency
        raise NvmlFailure(
            "the pynvml module is missing", hint="install nvidia-ml-py (pip install nvidia-ml-py)"
        ) from exc
