"""The NVML stand-in's GPUs, as a test or a shell session sets them up.

The state file (format in standin.c) holds GPUs, MIG mode, instances, processes and injected
faults. GPUs, processes, faults and options are written here; GPU and compute instances are
made the way another tool or a person would make them: with NVML calls through pynvml, so the
stand-in decides ids, placements and UUIDs.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pynvml

STATE_ENV = "CDMO_NVML_STANDIN_STATE"
#: nvml.h: an event's GI or CI id where the error is not attributable to one (the whole GPU).
NO_INSTANCE = 0xFFFFFFFF
CALLS_ENV = "CDMO_NVML_STANDIN_CALLS"

#: The NVML process lists a stand-in process can be in (the ``proc`` record's KIND).
ProcessKind = Literal["compute", "graphics", "mps"]
PROCESS_KINDS: tuple[ProcessKind, ...] = ("compute", "graphics", "mps")

#: Catalog key -> whether a MIG mode change needs a GPU reset (Ampere) — as standin.c models it.
#: ``h100-80gb-next``: an H100 whose driver also offers 2g.20gb+me, a profile the catalog lacks.
MODELS = {"h100-80gb": False, "h100-80gb-next": False, "a100-40gb": True, "h200-141gb": False, "t4": False}


@dataclass(frozen=True)
class MadeGpuInstance:
    gpu: int
    gi_id: int


@dataclass(frozen=True)
class MadeComputeInstance:
    gpu: int
    gi_id: int
    ci_id: int
    uuid: str


class StandinGpus:
    """The GPUs in one stand-in state file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, path: Path, models: list[str], *, mig: bool = True) -> StandinGpus:
        lines = ["serial 0"]
        for index, model in enumerate(models):
            if model not in MODELS:
                raise ValueError(f"the stand-in models {', '.join(MODELS)}, not {model}")
            on = int(mig and model != "t4")
            lines.append(f"gpu {model} GPU-0000abcd-{index:04x}-4000-8000-{index + 1:012x} {on} {on}")
        path.write_text("\n".join(lines) + "\n")
        return cls(path)

    @property
    def env(self) -> dict[str, str]:
        """What a process needs in its environment to see these GPUs."""
        return {STATE_ENV: str(self.path)}

    # --- the file ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _edit(self) -> Iterator[list[str]]:
        """The state's lines, written back on exit, under the lock the stand-in takes too."""
        with open(self.path, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            lines = f.read().splitlines()
            yield lines
            f.seek(0)
            f.truncate()
            f.write("\n".join(lines) + "\n")

    def records(self, kind: str) -> list[list[str]]:
        return [line.split() for line in self.path.read_text().splitlines() if line.split()[:1] == [kind]]

    def add_process(self, uuid: str, pid: int, kind: ProcessKind = "compute") -> None:
        """A process starts on a MIG device (or, with a GPU UUID, on the whole GPU). ``kind``: the
        NVML list that shows it, compute (a CUDA context), graphics or mps (an MPS client)."""
        with self._edit() as lines:
            lines.append(_proc_record(uuid, pid, kind))

    def remove_process(self, uuid: str, pid: int, kind: ProcessKind = "compute") -> None:
        with self._edit() as lines:
            lines[:] = [line for line in lines if line != _proc_record(uuid, pid, kind)]

    def inject_fault(self, call: str, rc: int, count: int = 1) -> None:
        """The next ``count`` calls of ``call`` (pynvml's name, without _v2) return ``rc``; -1: all."""
        with self._edit() as lines:
            lines.append(f"fault {call} {int(rc)} {count}")

    def grow_processes(self, uuid: str, new: int, count: int = 1, kind: ProcessKind = "compute") -> None:
        """``new`` processes of ``kind`` start on device ``uuid`` right after each of the next
        ``count`` count queries of that kind's process list that list it (-1: all), before the
        caller's second call. pynvml's second call then gets INSUFFICIENT_SIZE where ``new``
        exceeds its slack (the count + 5)."""
        with self._edit() as lines:
            lines.append(f"grow {uuid} {int(new)} {int(count)}" + ("" if kind == "compute" else f" {kind}"))

    def vanish_compute_instance(self, uuid: str) -> None:
        """Another tool destroys the compute instance of MIG device ``uuid`` right before the next
        ``nvmlComputeInstanceDestroy`` call (of any compute instance): a caller that read it
        before then destroys a stale handle, which NVML answers with INVALID_ARGUMENT."""
        with self._edit() as lines:
            lines.append(f"vanish {uuid}")

    def raise_xid(self, gpu: int, xid: int, gi_id: int | None = None, ci_id: int | None = None) -> None:
        """The driver reports critical XID error ``xid`` on GPU ``gpu``: of MIG device (``gi_id``,
        ``ci_id``), of every compute instance of GPU instance ``gi_id`` (``ci_id`` None), or of the
        whole GPU (both None: NVML's 0xFFFFFFFF). Event sets that registered the GPU get it."""
        with self._edit() as lines:
            seqs = [int(line.split()[1]) for line in lines if line.startswith("xid ")]
            ids = [NO_INSTANCE if i is None else int(i) for i in (gi_id, ci_id)]
            lines.append(f"xid {max(seqs, default=0) + 1} {int(gpu)} {int(xid)} {ids[0]} {ids[1]}")

    def lose_gpu(self, gpu: int) -> None:
        """The GPU falls off the bus: every NVML call on it answers GPU_IS_LOST."""
        with self._edit() as lines:
            lines.append(f"lost {gpu}")

    def set_option(self, name: str) -> None:
        """``unprivileged``, ``ci-device-parent`` or ``mig-index-by-start`` (see standin.c)."""
        with self._edit() as lines:
            lines.append(f"option {name}")

    def set_mig_mode(self, gpu: int, current: bool, pending: bool) -> None:
        with self._edit() as lines:
            gpus = [i for i, line in enumerate(lines) if line.startswith("gpu ")]
            words = lines[gpus[gpu]].split()
            lines[gpus[gpu]] = " ".join([*words[:3], str(int(current)), str(int(pending))])

    def reboot(self) -> None:
        """No instance survives; Ampere keeps its (pending) MIG mode, Hopper comes back with MIG off."""
        with self._edit() as lines:
            kept = []
            for line in lines:
                words = line.split()
                if words[0] in ("gi", "ci"):
                    continue
                if words[0] == "gpu":
                    on = words[4] if MODELS[words[1]] else "0"
                    line = " ".join([*words[:3], on, on])
                kept.append(line)
            lines[:] = kept

    def reset_gpu(self, gpu: int) -> None:
        """``nvidia-smi -i N -r``: the GPU's instances are gone, a pending MIG mode takes effect."""
        with self._edit() as lines:
            gpus = [i for i, line in enumerate(lines) if line.startswith("gpu ")]
            words = lines[gpus[gpu]].split()
            lines[gpus[gpu]] = " ".join([*words[:3], words[4], words[4]])
            lines[:] = [
                line
                for line in lines
                if not (line.split()[0] in ("gi", "ci") and line.split()[1] == str(gpu))
            ]

    # --- instances, made through NVML ----------------------------------------------------

    def instances(self) -> list[tuple[int, int, int, int]]:
        """(GPU, GI id, profile id, start) of every GPU instance."""
        return [(int(g), int(i), int(p), int(s)) for _, g, i, p, s in self.records("gi")]

    def compute_instances(self) -> list[tuple[int, int, int, int, str]]:
        """(GPU, GI id, CI id, CI profile id, MIG UUID) of every compute instance."""
        return [(int(g), int(i), int(c), int(p), u) for _, g, i, c, p, u in self.records("ci")]

    def create_gpu_instance(self, gpu: int, profile_id: int, start: int, size: int) -> MadeGpuInstance:
        with _nvml():
            dev = pynvml.nvmlDeviceGetHandleByIndex(gpu)
            placement = pynvml.c_nvmlGpuInstancePlacement_t(start, size)
            gi = pynvml.nvmlDeviceCreateGpuInstanceWithPlacement(dev, profile_id, ctypes.byref(placement))
            return MadeGpuInstance(gpu, int(pynvml.nvmlGpuInstanceGetInfo(gi).id))

    def create_compute_instance(self, gpu: int, gi_id: int, ci_profile: int) -> MadeComputeInstance:
        """A compute instance of ``ci_profile`` (an NVML_COMPUTE_INSTANCE_PROFILE_* constant)."""
        with _nvml():
            dev = pynvml.nvmlDeviceGetHandleByIndex(gpu)
            gi = pynvml.nvmlDeviceGetGpuInstanceById(dev, gi_id)
            prof = pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                gi, ci_profile, pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
            )
            ci = pynvml.nvmlGpuInstanceCreateComputeInstance(gi, prof.id)
            info = pynvml.nvmlComputeInstanceGetInfo(ci)
            uuid = pynvml.nvmlDeviceGetUUID(info.device)
            return MadeComputeInstance(gpu, gi_id, int(info.id), str(uuid))

    def resolve_index(self, index_id: str) -> str | None:
        """The UUID of the MIG device ``<gpu>:<i>`` names, as NVIDIA's container toolkit finds
        it: ``nvmlDeviceGetMigDeviceHandleByIndex(gpu, i)``; None where there is none."""
        gpu, mig = (int(part) for part in index_id.split(":"))
        with _nvml():
            dev = pynvml.nvmlDeviceGetHandleByIndex(gpu)
            try:
                handle = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(dev, mig)
            except (pynvml.NVMLError_NotFound, pynvml.NVMLError_InvalidArgument):
                return None
            return str(pynvml.nvmlDeviceGetUUID(handle))


def _proc_record(uuid: str, pid: int, kind: ProcessKind) -> str:
    """A ``proc`` record as the stand-in writes it back: a compute process without its kind."""
    return f"proc {uuid} {int(pid)}" + ("" if kind == "compute" else f" {kind}")


@contextlib.contextmanager
def _nvml() -> Iterator[None]:
    pynvml.nvmlInit()
    try:
        yield
    finally:
        pynvml.nvmlShutdown()


def standin_env(lib_dir: Path, gpus: StandinGpus) -> dict[str, str]:
    """The environment of a command that should load the stand-in instead of the driver's NVML."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib_dir), env.get("LD_LIBRARY_PATH")) if p)
    env.update(gpus.env)
    return env
