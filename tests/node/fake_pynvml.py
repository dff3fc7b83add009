"""A fake ``pynvml`` module backed by simulated GPUs, for testing the NVML backend's real call path.

The functions have the signatures of nvidia-ml-py's (a test compares them with
``inspect.signature``), take and return the real module's ctypes structs and handle types,
and raise the real ``NVMLError`` subclasses with NVML's return codes. Where the C API takes a
pointer, the fake insists on one (``ctypes.byref`` or ``ctypes.pointer``): a struct passed by
value would be garbage to the real library. Arrays are checked for size as NVML does
(INSUFFICIENT_SIZE). Handles are real ``c_nvmlDevice_t`` / ``c_nvmlGpuInstance_t`` /
``c_nvmlComputeInstance_t`` pointers whose addresses encode (kind, GPU, GI, CI).
"""

from __future__ import annotations

import ctypes
import time
import types
from typing import Any

import pynvml as real

from cdmo.node_agent.simulated import CI_PROFILE_SLICES, SimNvmlError, SimulatedNode

#: The row nvmlDeviceGetComputeRunningProcesses returns: nvidia-ml-py 12.535 (the lowest that
#: cdmo allows) calls the v3 layout c_nvmlProcessInfo_t; later releases name it _v3_t.
_PROCESS_INFO: Any = getattr(real, "c_nvmlProcessInfo_v3_t", None) or real.c_nvmlProcessInfo_t

_DEVICE, _MIG, _GI, _CI = 1, 2, 3, 4

#: What the fake copies from the real module: constants, structs, handle types, errors, helpers.
_COPIED_PREFIXES = (
    "NVML_",
    "NVMLError",
    "c_nvml",
    "struct_c_nvml",
    "nvmlPciInfo_t",
    "nvmlFriendlyObject",
    "nvmlEventType",
)

#: What the fake's GPUs say they can report (nvmlDeviceGetSupportedEventTypes): ECC and XID
#: errors, as a data-centre GPU with ECC on does.
_SUPPORTED_EVENTS = (
    real.nvmlEventTypeSingleBitEccError
    | real.nvmlEventTypeDoubleBitEccError
    | real.nvmlEventTypeXidCriticalError
)


def _encode(kind: int, gpu: int, gi: int = 0, ci: int = 0) -> int:
    return (kind << 40) | ((gpu + 1) << 24) | ((gi + 1) << 12) | (ci + 1)


def _decode(handle: Any) -> tuple[int, int, int, int]:
    addr = ctypes.cast(handle, ctypes.c_void_p).value
    if not addr:
        raise real.NVMLError(real.NVML_ERROR_INVALID_ARGUMENT)
    return addr >> 40, ((addr >> 24) & 0xFFFF) - 1, ((addr >> 12) & 0xFFF) - 1, (addr & 0xFFF) - 1


def _handle(ptr_type: Any, kind: int, gpu: int, gi: int = 0, ci: int = 0) -> Any:
    return ctypes.cast(ctypes.c_void_p(_encode(kind, gpu, gi, ci)), ptr_type)


def _deref(ref: Any, what: str) -> Any:
    """The object behind ``byref(x)`` or ``pointer(x)``; a TypeError for anything else."""
    if type(ref).__name__ == "CArgObject":
        return ref._obj
    if isinstance(ref, ctypes._Pointer):
        return ref.contents
    raise TypeError(f"{what} must be passed by reference (ctypes.byref), not {type(ref).__name__}")


def make_fake_pynvml(
    node: SimulatedNode,
    *,
    ci_device_is_parent: bool = False,
    process_lists: tuple[str, ...] = ("Compute", "Graphics", "MPSCompute"),
) -> types.ModuleType:
    """A module object that stands in for ``pynvml`` on ``node``.

    ``ci_device_is_parent``: make ``nvmlComputeInstanceGetInfo(ci).device`` the parent GPU, as
    NVML's reference describes the field, instead of the MIG device (what drivers return).
    ``process_lists``: the process lists whose ``_v3`` the library exports
    (``nvmlDeviceGet<list>RunningProcesses_v3``); a driver without graphics or MPS lists lacks
    theirs. The simulated node's processes are all compute processes: the other lists are empty.
    """
    mod = types.ModuleType("pynvml")
    for name in dir(real):
        if name.startswith(_COPIED_PREFIXES):
            setattr(mod, name, getattr(real, name))
    mod.nvmlStructToFriendlyObject = real.nvmlStructToFriendlyObject
    mod.calls = []  # every fake function called, in order
    state = {"initialised": False}
    #: event set id -> GPU index -> the last XID event seq it read (or registered at)
    event_sets: dict[int, dict[int, int]] = {}

    def call(name: str, fn: Any) -> Any:
        mod.calls.append(name)
        if not state["initialised"] and name not in ("nvmlInit", "nvmlShutdown"):
            raise real.NVMLError(real.NVML_ERROR_UNINITIALIZED)
        try:
            return fn()
        except SimNvmlError as exc:
            raise real.NVMLError(exc.rc) from None

    def resolve(handle: Any, *kinds: int) -> tuple[int, int, int, int]:
        kind, gpu, gi, ci = _decode(handle)
        if kind not in kinds:
            raise real.NVMLError(real.NVML_ERROR_INVALID_ARGUMENT)
        node.gpu(gpu)
        return kind, gpu, gi, ci

    def mig_devices(gpu: int) -> list[tuple[int, int, Any]]:
        """(GI id, CI id, CI) in MIG device index order: the simulated node's own numbering,
        so that SimulatedBackend and NvmlBackend on this fake name the same indexes."""
        return [(gi.gi_id, ci.ci_id, ci) for _, gi, ci in node.mig_devices(gpu)]

    # --- library ------------------------------------------------------------------------

    def nvmlInit():
        mod.calls.append("nvmlInit")
        state["initialised"] = True

    def nvmlShutdown():
        mod.calls.append("nvmlShutdown")
        state["initialised"] = False

    # --- devices ------------------------------------------------------------------------

    def nvmlDeviceGetCount():
        def go() -> int:
            node.check_fault("nvmlDeviceGetCount")
            return len(node.gpus)

        return call("nvmlDeviceGetCount", go)

    def nvmlDeviceGetHandleByIndex(index):
        def go() -> Any:
            node.check_fault("nvmlDeviceGetHandleByIndex")
            node.gpu(index)
            return _handle(real.c_nvmlDevice_t, _DEVICE, index)

        return call("nvmlDeviceGetHandleByIndex", go)

    def nvmlDeviceGetUUID(handle):
        def go() -> str:
            kind, gpu, gi, ci = resolve(handle, _DEVICE, _MIG)
            if kind == _DEVICE:
                return node.gpu(gpu).uuid
            gis = node.gpu(gpu).gis
            if gi not in gis or ci not in gis[gi].cis:
                raise SimNvmlError(real.NVML_ERROR_INVALID_ARGUMENT, "stale MIG device handle")
            return gis[gi].cis[ci].uuid

        return call("nvmlDeviceGetUUID", go)

    def nvmlDeviceGetName(handle):
        def go() -> str:
            kind, gpu, gi, _ = resolve(handle, _DEVICE, _MIG)
            sim = node.gpu(gpu)
            if kind == _MIG:
                return f"{sim.product} MIG {sim.gis[gi].profile.name}"
            return sim.product

        return call("nvmlDeviceGetName", go)

    def nvmlDeviceGetPciInfo(handle):
        def go() -> Any:
            _, gpu, _, _ = resolve(handle, _DEVICE)
            info = real.nvmlPciInfo_t()
            info.pciDeviceId = node.gpu(gpu).pci_device_id or 0
            info.bus = gpu + 1
            info.busId = f"00000000:{gpu + 1:02X}:00.0".encode()
            return info

        return call("nvmlDeviceGetPciInfo", go)

    def nvmlDeviceGetMigMode(device):
        def go() -> list[int]:
            _, gpu, _, _ = resolve(device, _DEVICE)
            cur, pend = node.get_mig_mode(gpu)
            return [int(cur), int(pend)]

        return call("nvmlDeviceGetMigMode", go)

    def nvmlDeviceSetMigMode(device, mode):
        def go() -> int:
            _, gpu, _, _ = resolve(device, _DEVICE)
            if mode not in (real.NVML_DEVICE_MIG_ENABLE, real.NVML_DEVICE_MIG_DISABLE):
                raise SimNvmlError(real.NVML_ERROR_INVALID_ARGUMENT)
            return int(node.set_mig_mode(gpu, mode == real.NVML_DEVICE_MIG_ENABLE))

        return call("nvmlDeviceSetMigMode", go)

    # --- GPU instances ------------------------------------------------------------------

    def nvmlDeviceGetGpuInstanceProfileInfo(device, profile, version=2):
        def go() -> Any:
            _, gpu, _, _ = resolve(device, _DEVICE)
            prof = node.gi_profile(gpu, profile)
            info = (
                real.c_nvmlGpuInstanceProfileInfo_v2_t()
                if version == 2
                else real.c_nvmlGpuInstanceProfileInfo_t()
            )
            info.id = prof.profile_id
            info.sliceCount = prof.compute_slices
            info.instanceCount = prof.max_count
            info.multiprocessorCount = prof.sm_count or 0
            info.memorySizeMB = prof.memory_mib or 0
            if version == 2:
                info.name = prof.name.encode()
            return info

        return call("nvmlDeviceGetGpuInstanceProfileInfo", go)

    def nvmlDeviceGetGpuInstancePossiblePlacements(device, profileId, placementsRef, countRef):
        def go() -> int:
            _, gpu, _, _ = resolve(device, _DEVICE)
            count = _deref(countRef, "countRef")
            starts = node.possible_placements(gpu, profileId)
            size = node.profile_by_id(gpu, profileId).placement_size
            if placementsRef is None:
                count.value = len(starts)
                return real.NVML_SUCCESS
            if (
                not isinstance(placementsRef, ctypes.Array)
                or placementsRef._type_ is not real.c_nvmlGpuInstancePlacement_t
            ):
                raise TypeError("placementsRef must be an array of c_nvmlGpuInstancePlacement_t")
            if len(placementsRef) < len(starts):
                raise SimNvmlError(real.NVML_ERROR_INSUFFICIENT_SIZE)
            for k, start in enumerate(starts):
                placementsRef[k].start = start
                placementsRef[k].size = size
            count.value = len(starts)
            return real.NVML_SUCCESS

        return call("nvmlDeviceGetGpuInstancePossiblePlacements", go)

    def nvmlDeviceCreateGpuInstanceWithPlacement(device, profileId, placement):
        def go() -> Any:
            _, gpu, _, _ = resolve(device, _DEVICE)
            p = _deref(placement, "placement")
            if not isinstance(p, real.c_nvmlGpuInstancePlacement_t):
                raise TypeError("placement must point to a c_nvmlGpuInstancePlacement_t")
            gi = node.create_gpu_instance(gpu, profileId, p.start, p.size)
            return _handle(real.c_nvmlGpuInstance_t, _GI, gpu, gi.gi_id)

        return call("nvmlDeviceCreateGpuInstanceWithPlacement", go)

    def nvmlDeviceCreateGpuInstance(device, profileId):
        mod.calls.append("nvmlDeviceCreateGpuInstance")
        raise AssertionError("cdmo must never create GPU instances first-fit (nvmlDeviceCreateGpuInstance)")

    def nvmlDeviceGetGpuInstances(device, profileId, gpuInstancesRef, countRef):
        def go() -> int:
            _, gpu, _, _ = resolve(device, _DEVICE)
            count = _deref(countRef, "countRef")
            gis = node.gpu_instances(gpu, profileId)
            if (
                not isinstance(gpuInstancesRef, ctypes.Array)
                or gpuInstancesRef._type_ is not real.c_nvmlGpuInstance_t
            ):
                raise TypeError("gpuInstancesRef must be an array of c_nvmlGpuInstance_t")
            if len(gpuInstancesRef) < len(gis):
                raise SimNvmlError(real.NVML_ERROR_INSUFFICIENT_SIZE)
            for k, gi in enumerate(gis):
                gpuInstancesRef[k] = _handle(real.c_nvmlGpuInstance_t, _GI, gpu, gi.gi_id)
            count.value = len(gis)
            return real.NVML_SUCCESS

        return call("nvmlDeviceGetGpuInstances", go)

    def nvmlDeviceGetGpuInstanceById(device, gpuInstanceId):
        def go() -> Any:
            _, gpu, _, _ = resolve(device, _DEVICE)
            gi = node.gpu_instance(gpu, gpuInstanceId)
            return _handle(real.c_nvmlGpuInstance_t, _GI, gpu, gi.gi_id)

        return call("nvmlDeviceGetGpuInstanceById", go)

    def nvmlGpuInstanceGetInfo(gpuInstance):
        def go() -> Any:
            _, gpu, gi_id, _ = resolve(gpuInstance, _GI)
            gi = node._live_gi(gpu, gi_id)
            info = real.c_nvmlGpuInstanceInfo_t()
            info.device = _handle(real.c_nvmlDevice_t, _DEVICE, gpu)
            info.id = gi.gi_id
            info.profileId = gi.profile.profile_id
            info.placement = real.c_nvmlGpuInstancePlacement_t(gi.start, gi.size)
            return info

        return call("nvmlGpuInstanceGetInfo", go)

    def nvmlGpuInstanceDestroy(gpuInstance):
        def go() -> int:
            _, gpu, gi_id, _ = resolve(gpuInstance, _GI)
            node.destroy_gpu_instance(gpu, gi_id)
            return real.NVML_SUCCESS

        return call("nvmlGpuInstanceDestroy", go)

    # --- compute instances --------------------------------------------------------------

    def nvmlGpuInstanceGetComputeInstanceProfileInfo(device, profile, engProfile, version=2):
        def go() -> Any:
            _, gpu, gi_id, _ = resolve(device, _GI)
            if engProfile != real.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED:
                raise SimNvmlError(real.NVML_ERROR_INVALID_ARGUMENT)
            ci_id, slices = node.ci_profile(gpu, gi_id, profile)
            info = (
                real.c_nvmlComputeInstanceProfileInfo_v2_t()
                if version == 2
                else real.c_nvmlComputeInstanceProfileInfo_t()
            )
            info.id = ci_id
            info.sliceCount = slices
            info.instanceCount = max(1, node._live_gi(gpu, gi_id).profile.compute_slices // slices)
            return info

        return call("nvmlGpuInstanceGetComputeInstanceProfileInfo", go)

    def nvmlGpuInstanceCreateComputeInstance(gpuInstance, profileId):
        def go() -> Any:
            _, gpu, gi_id, _ = resolve(gpuInstance, _GI)
            ci = node.create_compute_instance(gpu, gi_id, profileId)
            return _handle(real.c_nvmlComputeInstance_t, _CI, gpu, gi_id, ci.ci_id)

        return call("nvmlGpuInstanceCreateComputeInstance", go)

    def nvmlGpuInstanceGetComputeInstances(gpuInstance, profileId, computeInstancesRef, countRef):
        def go() -> int:
            _, gpu, gi_id, _ = resolve(gpuInstance, _GI)
            count = _deref(countRef, "countRef")
            cis = node.compute_instances(gpu, gi_id, profileId)
            if (
                not isinstance(computeInstancesRef, ctypes.Array)
                or computeInstancesRef._type_ is not real.c_nvmlComputeInstance_t
            ):
                raise TypeError("computeInstancesRef must be an array of c_nvmlComputeInstance_t")
            if len(computeInstancesRef) < len(cis):
                raise SimNvmlError(real.NVML_ERROR_INSUFFICIENT_SIZE)
            for k, ci in enumerate(cis):
                computeInstancesRef[k] = _handle(real.c_nvmlComputeInstance_t, _CI, gpu, gi_id, ci.ci_id)
            count.value = len(cis)
            return real.NVML_SUCCESS

        return call("nvmlGpuInstanceGetComputeInstances", go)

    def nvmlComputeInstanceGetInfo(computeInstance):
        def go() -> Any:
            _, gpu, gi_id, ci_id = resolve(computeInstance, _CI)
            gi = node._live_gi(gpu, gi_id)
            if ci_id not in gi.cis:
                raise SimNvmlError(real.NVML_ERROR_INVALID_ARGUMENT, "stale compute instance handle")
            ci = gi.cis[ci_id]
            info = real.c_nvmlComputeInstanceInfo_t()
            info.device = (
                _handle(real.c_nvmlDevice_t, _DEVICE, gpu)
                if ci_device_is_parent
                else _handle(real.c_nvmlDevice_t, _MIG, gpu, gi_id, ci_id)
            )
            info.gpuInstance = _handle(real.c_nvmlGpuInstance_t, _GI, gpu, gi_id)
            info.id = ci.ci_id
            info.profileId = ci.profile_id
            info.placement = real.c_nvmlComputeInstancePlacement_t(0, CI_PROFILE_SLICES[ci.profile_id])
            return info

        return call("nvmlComputeInstanceGetInfo", go)

    def nvmlComputeInstanceDestroy(computeInstance):
        def go() -> int:
            _, gpu, gi_id, ci_id = resolve(computeInstance, _CI)
            node.destroy_compute_instance(gpu, gi_id, ci_id)
            return real.NVML_SUCCESS

        return call("nvmlComputeInstanceDestroy", go)

    # --- MIG devices and processes ------------------------------------------------------

    def nvmlDeviceGetMaxMigDeviceCount(device):
        def go() -> int:
            _, gpu, _, _ = resolve(device, _DEVICE)
            sim = node.gpu(gpu)
            return sim.model.max_instances if sim.mig_current else 0

        return call("nvmlDeviceGetMaxMigDeviceCount", go)

    def nvmlDeviceGetMigDeviceHandleByIndex(device, index):
        def go() -> Any:
            _, gpu, _, _ = resolve(device, _DEVICE)
            devs = mig_devices(gpu)
            if not 0 <= index < len(devs):
                raise SimNvmlError(real.NVML_ERROR_NOT_FOUND)
            gi_id, ci_id, _ = devs[index]
            return _handle(real.c_nvmlDevice_t, _MIG, gpu, gi_id, ci_id)

        return call("nvmlDeviceGetMigDeviceHandleByIndex", go)

    def nvmlDeviceGetGpuInstanceId(device):
        return call("nvmlDeviceGetGpuInstanceId", lambda: resolve(device, _MIG)[2])

    def nvmlDeviceGetComputeInstanceId(device):
        return call("nvmlDeviceGetComputeInstanceId", lambda: resolve(device, _MIG)[3])

    def nvmlDeviceGetComputeRunningProcesses(handle):
        def go() -> list[Any]:
            kind, gpu, gi_id, ci_id = resolve(handle, _DEVICE, _MIG)
            rows = []
            if kind == _DEVICE and not node.gpu(gpu).mig_current:
                # MIG off: processes run on the GPU as a whole.
                for pid in node.gpu_processes(gpu):
                    info = _PROCESS_INFO()
                    info.pid = pid
                    info.usedGpuMemory = 1 << 30
                    rows.append(real.nvmlStructToFriendlyObject(info))
                return rows
            for g, c, ci in mig_devices(gpu):
                if kind == _MIG and (g, c) != (gi_id, ci_id):
                    continue
                for pid in node.processes(gpu, ci.uuid):
                    info = _PROCESS_INFO()
                    info.pid = pid
                    info.usedGpuMemory = 1 << 30
                    info.gpuInstanceId = g
                    info.computeInstanceId = c
                    rows.append(real.nvmlStructToFriendlyObject(info))
            return rows

        return call("nvmlDeviceGetComputeRunningProcesses", go)

    # --- events -------------------------------------------------------------------------

    def event_set(handle: Any) -> dict[int, int]:
        addr = ctypes.cast(handle, ctypes.c_void_p).value
        if not addr or addr not in event_sets:
            raise SimNvmlError(real.NVML_ERROR_INVALID_ARGUMENT, "not an event set")
        return event_sets[addr]

    def nvmlEventSetCreate():
        def go() -> Any:
            node.check_fault("nvmlEventSetCreate")
            key = 0x5E7 << 32 | (len(event_sets) + 1)
            event_sets[key] = {}
            return ctypes.cast(ctypes.c_void_p(key), real.c_nvmlEventSet_t)

        return call("nvmlEventSetCreate", go)

    def nvmlDeviceGetSupportedEventTypes(handle):
        def go() -> int:
            resolve(handle, _DEVICE)
            return int(_SUPPORTED_EVENTS)

        return call("nvmlDeviceGetSupportedEventTypes", go)

    def nvmlDeviceRegisterEvents(handle, eventTypes, eventSet):
        def go() -> None:
            _, gpu, _, _ = resolve(handle, _DEVICE)  # nvml.h: not on MIG device handles
            cursors = event_set(eventSet)
            if int(eventTypes) & ~int(_SUPPORTED_EVENTS):
                raise SimNvmlError(real.NVML_ERROR_NOT_SUPPORTED, "event types the GPU cannot report")
            cursors.setdefault(gpu, node.register_events(gpu))

        return call("nvmlDeviceRegisterEvents", go)

    def nvmlEventSetWait_v2(eventSet, timeoutms):
        def go() -> Any:
            cursors = event_set(eventSet)
            node.check_fault("nvmlEventSetWait")
            deadline = time.monotonic() + int(timeoutms) / 1000
            with node.lock:
                while (found := node.next_xid(cursors)) is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise SimNvmlError(real.NVML_ERROR_TIMEOUT, "no event")
                    node.xid_raised.wait(left)
            cursors[found.gpu] = found.seq
            data = real.c_nvmlEventData_t()
            data.device = _handle(real.c_nvmlDevice_t, _DEVICE, found.gpu)
            data.eventType = real.nvmlEventTypeXidCriticalError
            data.eventData = found.xid
            data.gpuInstanceId = 0xFFFFFFFF if found.gi_id is None else found.gi_id
            data.computeInstanceId = 0xFFFFFFFF if found.ci_id is None else found.ci_id
            return data

        return call("nvmlEventSetWait", go)

    def nvmlEventSetWait(eventSet, timeoutms):
        return nvmlEventSetWait_v2(eventSet, timeoutms)

    def nvmlEventSetFree(eventSet):
        def go() -> None:
            event_set(eventSet)
            event_sets.pop(ctypes.cast(eventSet, ctypes.c_void_p).value or 0, None)

        return call("nvmlEventSetFree", go)

    # --- C entry points (cdmo reads process rows itself: cdmo.node_agent.nvml_processes) -----

    def running_processes_v3(handle: Any, count_ref: Any, rows: Any) -> int:
        """``nvmlDeviceGetComputeRunningProcesses_v3`` as a driver after R535 answers it: the
        count with no array (INSUFFICIENT_SIZE), else 24-byte rows into the caller's array."""
        try:
            found = nvmlDeviceGetComputeRunningProcesses(handle)
        except real.NVMLError as exc:
            return int(exc.value)
        count = count_ref._obj  # the c_uint behind ctypes.byref
        room = count.value
        count.value = len(found)
        if not found:
            return int(real.NVML_SUCCESS)
        if rows is None or len(found) > room:
            return int(real.NVML_ERROR_INSUFFICIENT_SIZE)
        for row, p in zip(rows, found, strict=False):
            row.pid = p.pid
            row.gpuInstanceId = getattr(p, "gpuInstanceId", 0xFFFFFFFF)
            row.computeInstanceId = getattr(p, "computeInstanceId", 0xFFFFFFFF)
        return int(real.NVML_SUCCESS)

    def no_processes_v3(name: str) -> Any:
        """A graphics or MPS list's ``_v3`` (``name``): the handle checked, then no process."""

        def entry(handle: Any, count_ref: Any, rows: Any) -> int:
            try:
                call(name, lambda: resolve(handle, _DEVICE, _MIG))
            except real.NVMLError as exc:
                return int(exc.value)
            count_ref._obj.value = 0
            return int(real.NVML_SUCCESS)

        return entry

    entry_points = {
        "Compute": running_processes_v3,
        "Graphics": no_processes_v3("nvmlDeviceGetGraphicsRunningProcesses"),
        "MPSCompute": no_processes_v3("nvmlDeviceGetMPSComputeRunningProcesses"),
    }
    exported = {f"nvmlDeviceGet{stem}RunningProcesses_v3": entry_points[stem] for stem in process_lists}

    def _nvmlGetFunctionPointer(name: str) -> Any:
        # The symbols of a driver after R535: _v3, with neither R535 marker (24-byte rows).
        if name in exported:
            return exported[name]
        raise real.NVMLError(real.NVML_ERROR_FUNCTION_NOT_FOUND)

    for fn in list(locals().values()):
        if isinstance(fn, types.FunctionType) and fn.__name__.startswith("nvml"):
            setattr(mod, fn.__name__, fn)
    mod._nvmlGetFunctionPointer = _nvmlGetFunctionPointer
    return mod


#: The fake's functions, for the signature check against the real module.
def fake_function_names(mod: types.ModuleType) -> list[str]:
    return sorted(
        n
        for n in dir(mod)
        if n.startswith("nvml")
        and callable(getattr(mod, n))
        and n != "nvmlStructToFriendlyObject"
        and not n.startswith("nvmlPciInfo")
        and not n.startswith("nvmlFriendly")
    )
