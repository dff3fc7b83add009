"""A device's compute processes, read in the row layout the loaded driver writes.

``nvmlDeviceGetComputeRunningProcesses_v3`` fills an array of rows whose size is not in its name:
the R535 drivers write 32-byte rows (``usedGpuCcProtectedMemory`` appended), every other driver
24-byte ones (``nvmlProcessInfo_v2_t``, as nvml.h declares today). pynvml picks one layout by its
own version: nvidia-ml-py 12.535 reads 32-byte rows, later releases 24-byte rows. With the other
driver, every row after the first is read at the wrong offset: pids, and the GPU and compute
instance ids that place a process on a MIG device, come out as garbage (nvitop's
``libnvml.py`` and its pull request 79 tell the story). So the agent makes the two calls itself,
through pynvml's own function lookup, with the layout told by the driver's symbols, as nvitop
does: R535 has ``nvmlDeviceGetConfComputeMemSizeInfo`` but not yet
``nvmlDeviceGetRunningProcessDetailList``. Drivers before ``_v3`` get ``_v2`` (24-byte rows).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cdmo.node_agent.backend import NvmlReturn, nvml_instance_id


class RowV2(ctypes.Structure):
    """``nvmlProcessInfo_v2_t``: what ``_v2`` and (but on R535) ``_v3`` write."""

    _fields_ = [
        ("pid", ctypes.c_uint),
        ("usedGpuMemory", ctypes.c_ulonglong),
        ("gpuInstanceId", ctypes.c_uint),
        ("computeInstanceId", ctypes.c_uint),
    ]


class RowR535(ctypes.Structure):
    """What ``_v3`` writes on the R535 drivers: the v2 row and ``usedGpuCcProtectedMemory``."""

    _fields_ = [*RowV2._fields_, ("usedGpuCcProtectedMemory", ctypes.c_ulonglong)]


@dataclass(frozen=True)
class ProcessRow:
    pid: int
    #: The process's GPU and compute instance ids on a MIG GPU; None where NVML gives none.
    gi_id: int | None
    ci_id: int | None


@dataclass(frozen=True)
class Reader:
    """Which function to call and the row it fills."""

    function: str
    row: type[ctypes.Structure]


def choose_reader(has: Callable[[str], bool]) -> Reader:
    """The reader for a driver whose library exports the symbols for which ``has`` is true."""
    if has("nvmlDeviceGetComputeRunningProcesses_v3"):
        r535 = has("nvmlDeviceGetConfComputeMemSizeInfo") and not has("nvmlDeviceGetRunningProcessDetailList")
        return Reader("nvmlDeviceGetComputeRunningProcesses_v3", RowR535 if r535 else RowV2)
    return Reader("nvmlDeviceGetComputeRunningProcesses_v2", RowV2)


def reader_for(nv: Any) -> Reader:
    """:func:`choose_reader` for the library pynvml module ``nv`` has loaded (after nvmlInit)."""

    def has(symbol: str) -> bool:
        try:
            nv._nvmlGetFunctionPointer(symbol)
        except nv.NVMLError as exc:
            if exc.value == NvmlReturn.FUNCTION_NOT_FOUND:
                return False
            raise
        return True

    return choose_reader(has)


def read_processes(nv: Any, reader: Reader, handle: Any) -> list[ProcessRow]:
    """The compute processes on ``handle``; raises ``nv.NVMLError`` as pynvml's own call would.

    The count first (no array), then an array of twice that plus five, as pynvml does; processes
    that start between the two calls may still overflow it: INSUFFICIENT_SIZE, for the caller to
    read again.
    """
    fn = nv._nvmlGetFunctionPointer(reader.function)
    count = ctypes.c_uint(0)
    rc = fn(handle, ctypes.byref(count), None)
    if rc == NvmlReturn.SUCCESS:
        return []
    if rc != NvmlReturn.INSUFFICIENT_SIZE:
        raise nv.NVMLError(rc)
    count.value = count.value * 2 + 5
    rows = (reader.row * count.value)()
    rc = fn(handle, ctypes.byref(count), rows)
    if rc != NvmlReturn.SUCCESS:
        raise nv.NVMLError(rc)
    return [
        ProcessRow(int(r.pid), nvml_instance_id(r.gpuInstanceId), nvml_instance_id(r.computeInstanceId))
        for r in rows[: count.value]
    ]
