"""A device's processes, read in the row layout the loaded driver writes.

NVML lists the processes on a device in three lists, one function each, all with the same rows:
compute contexts (``nvmlDeviceGetComputeRunningProcesses``), graphics contexts
(``nvmlDeviceGetGraphicsRunningProcesses``) and MPS clients
(``nvmlDeviceGetMPSComputeRunningProcesses``). A process in any of them uses the device; an
instance whose only user is an MPS client or a graphics context is as used as one with a CUDA
process.

Each ``_v3`` fills an array of rows whose size is not in its name: the R535 drivers write 32-byte
rows (``usedGpuCcProtectedMemory`` appended), every other driver 24-byte ones
(``nvmlProcessInfo_v2_t``, as nvml.h declares today). pynvml picks one layout by its own
version: nvidia-ml-py 12.535 reads 32-byte rows, later releases 24-byte rows. With the other
driver, every row after the first is read at the wrong offset: pids, and the GPU and compute
instance ids that place a process on a MIG device, come out as garbage (nvitop's
``libnvml.py`` and its pull request 79 tell the story). So the agent makes the calls itself,
through pynvml's own function lookup, with the layout told by the driver's symbols, as nvitop
does: R535 has ``nvmlDeviceGetConfComputeMemSizeInfo`` but not yet
``nvmlDeviceGetRunningProcessDetailList``. The rule is the driver's, so it holds for all three
lists alike. Drivers before ``_v3`` get ``_v2`` (24-byte rows).

A driver that exports neither ``_v3`` nor ``_v2`` of the graphics or the MPS list has no such
list: it is skipped. The compute list is never skipped: without it nothing could be told about
the processes, so its call is made and fails (FUNCTION_NOT_FOUND), and the read fails with it.

Must not import pynvml (the caller hands in the module it loaded).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
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


class ProcessList(Enum):
    """NVML's lists of processes on a device; the value is the part of the function's name
    between ``nvmlDeviceGet`` and ``RunningProcesses``."""

    COMPUTE = "Compute"
    GRAPHICS = "Graphics"
    MPS = "MPSCompute"

    def function(self, version: int) -> str:
        """The C function of this list at ``version`` (2 or 3)."""
        return f"nvmlDeviceGet{self.value}RunningProcesses_v{version}"

    @property
    def label(self) -> str:
        """How messages name the list's processes."""
        return {"COMPUTE": "compute", "GRAPHICS": "graphics", "MPS": "MPS"}[self.name]


@dataclass(frozen=True)
class ProcessRow:
    pid: int
    #: The process's GPU and compute instance ids on a MIG GPU; None where NVML gives none.
    gi_id: int | None
    ci_id: int | None


@dataclass(frozen=True)
class Reader:
    """Which function to call, the row it fills, and the list it reads."""

    function: str
    row: type[ctypes.Structure]
    kind: ProcessList = ProcessList.COMPUTE


def choose_reader(has: Callable[[str], bool], kind: ProcessList = ProcessList.COMPUTE) -> Reader | None:
    """The reader of list ``kind`` for a driver whose library exports the symbols for which
    ``has`` is true; None where the driver has no such list (never for the compute list)."""
    v3 = kind.function(3)
    if has(v3):
        r535 = has("nvmlDeviceGetConfComputeMemSizeInfo") and not has("nvmlDeviceGetRunningProcessDetailList")
        return Reader(v3, RowR535 if r535 else RowV2, kind)
    if kind is ProcessList.COMPUTE or has(kind.function(2)):
        return Reader(kind.function(2), RowV2, kind)
    return None


def choose_readers(has: Callable[[str], bool]) -> tuple[Reader, ...]:
    """A reader for every list the driver has, the compute list first (see :func:`choose_reader`)."""
    return tuple(r for kind in ProcessList if (r := choose_reader(has, kind)) is not None)


def readers_for(nv: Any) -> tuple[Reader, ...]:
    """:func:`choose_readers` for the library pynvml module ``nv`` has loaded (after nvmlInit).

    Only FUNCTION_NOT_FOUND (pynvml's answer for a symbol the library lacks) means "no such
    symbol"; any other error of the lookup is raised.
    """

    def has(symbol: str) -> bool:
        try:
            nv._nvmlGetFunctionPointer(symbol)
        except nv.NVMLError as exc:
            if exc.value == NvmlReturn.FUNCTION_NOT_FOUND:
                return False
            raise
        return True

    return choose_readers(has)


def read_processes(nv: Any, reader: Reader, handle: Any) -> list[ProcessRow]:
    """The processes of ``reader``'s list on ``handle``; raises ``nv.NVMLError`` as pynvml's own
    call would.

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


def merge_rows(*lists: list[ProcessRow]) -> list[ProcessRow]:
    """The rows of every list, each (pid, GI id, CI id) once, in first-seen order: a process
    with a compute and a graphics context, or an MPS server's pid also listed as a client, is
    one process, not two."""
    return list(dict.fromkeys(row for rows in lists for row in rows))
