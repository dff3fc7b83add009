"""Read what a real node's NVIDIA driver says about MIG, and what cdmo reads of it. Changes nothing.

    python scripts/nvml_probe.py [--out DIR]

Writes ``probe.json`` (into DIR, default the current folder) and prints a short summary:

- the driver: driver, NVML and CUDA versions, the pynvml (nvidia-ml-py) version in use;
- per GPU: name, UUID, PCI ids, memory, MIG mode (current, pending), for every GPU instance
  profile constant the driver's info and possible placements or the error it gives, and the
  processes on the whole GPU;
- the catalog check: the cdmo model the GPU maps to, and for each of the model's profiles
  whether the driver's id, slices, instance count, SMs and placements are those of
  ``cdmo/mig/data/mig-profiles.yaml`` and its memory at least the catalog's (where the driver
  answers: driver 580 did with MIG off);
- cdmo's own read path: ``NvmlBackend`` list_gpus/list_instances/list_processes (the GPU and
  compute instances that exist, processes on MIG devices), timed, and the profiles it lists
  instances of; then ``cdmo node show`` and
  ``cdmo node apply --dry-run [--enable-mig]`` of the largest profile on GPU 0.

Read-only by construction: before anything runs, every pynvml function that is not plainly a
read (a Get or Is that names no Set, Create, Destroy, Reset, Clear, ...) is replaced by one that
raises, so neither this script nor the cdmo code it calls can change MIG mode or any instance.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.metadata
import io
import json
import re
import sys
import time
from pathlib import Path
from types import FunctionType, ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: pynvml functions that start, stop or explain NVML, or convert its structures in Python.
_PLUMBING = re.compile(
    r"^nvml(Init\w*|Shutdown|ErrorString|ExceptionClass|StructToFriendlyObject|FriendlyObjectToStruct)$"
)
_READS = re.compile(r"(Get|Is)[A-Z0-9_]")
_CHANGES = re.compile(r"Set|Create|Destroy|Reset|Clear|Register|Enable|Disable|Start|Stop|Evict|Remove")


def guard_read_only(nvml: ModuleType) -> list[str]:
    """Replace each pynvml function that is not plainly a read with one that raises.

    Kept: plumbing, and names with Get or Is that name no change (Set, Create, Destroy, ...).
    Refusing too much is safe here; refusing too little is not. Returns the refused names.
    """
    refused = []
    for name in dir(nvml):
        if not name.startswith("nvml") or not isinstance(getattr(nvml, name), FunctionType):
            continue  # constants and ctypes structures (nvmlPciInfo_t) are not calls
        if _PLUMBING.match(name):
            continue
        if _READS.search(name[4:]) and not _CHANGES.search(name[4:]):
            continue
        setattr(nvml, name, _refuse(name))
        refused.append(name)
    return sorted(refused)


def _refuse(name: str) -> Any:
    def refused(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError(f"read-only probe: {name} refused")

    return refused


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _try(nvml: ModuleType, fn: Any, *args: Any) -> dict[str, Any]:
    """{"value": ...} or {"error": name, "rc": n}."""
    try:
        return {"value": fn(*args)}
    except nvml.NVMLError as exc:
        return {"error": str(exc), "rc": getattr(exc, "value", None)}


def _value(nvml: ModuleType, fn: Any, *args: Any) -> Any:
    """What ``fn`` returns (bytes as text), or its error as {"error", "rc"}."""
    got = _try(nvml, fn, *args)
    return _text(got["value"]) if isinstance(got.get("value"), bytes) else got.get("value", got)


def _constants(nvml: ModuleType, prefix: str, count_name: str) -> dict[int, str]:
    count = getattr(nvml, count_name, 0)
    names: dict[int, str] = {}
    for name in dir(nvml):
        value = getattr(nvml, name)
        if name.startswith(prefix) and name != count_name and isinstance(value, int) and value < count:
            names.setdefault(value, name)
    return names


def _gi_profile(nvml: ModuleType, h: Any, constant: int) -> dict[str, Any]:
    got = _try(nvml, nvml.nvmlDeviceGetGpuInstanceProfileInfo, h, constant)
    if "value" not in got:
        return got
    info = got["value"]
    out: dict[str, Any] = {
        field: int(getattr(info, field))
        for field in (
            "id",
            "sliceCount",
            "instanceCount",
            "multiprocessorCount",
            "copyEngineCount",
            "decoderCount",
            "encoderCount",
            "jpegCount",
            "ofaCount",
            "memorySizeMB",
        )
    }
    if hasattr(info, "name"):
        out["name"] = _text(info.name)
    count = ctypes.c_uint(0)
    placed = _try(
        nvml, nvml.nvmlDeviceGetGpuInstancePossiblePlacements, h, info.id, None, ctypes.byref(count)
    )
    if "error" in placed:
        out["placements"] = placed
        return out
    array = (nvml.c_nvmlGpuInstancePlacement_t * max(1, count.value))()
    placed = _try(
        nvml, nvml.nvmlDeviceGetGpuInstancePossiblePlacements, h, info.id, array, ctypes.byref(count)
    )
    out["placements"] = (
        placed if "error" in placed else [[int(p.start), int(p.size)] for p in array[: count.value]]
    )
    out["remainingCapacity"] = _value(nvml, nvml.nvmlDeviceGetGpuInstanceRemainingCapacity, h, info.id)
    return out


def probe_gpu(nvml: ModuleType, index: int) -> dict[str, Any]:
    h = nvml.nvmlDeviceGetHandleByIndex(index)
    pci = nvml.nvmlDeviceGetPciInfo(h)
    mem = _try(nvml, nvml.nvmlDeviceGetMemoryInfo, h)
    mig = _try(nvml, nvml.nvmlDeviceGetMigMode, h)
    gpu: dict[str, Any] = {
        "index": index,
        "name": _text(nvml.nvmlDeviceGetName(h)),
        "uuid": _text(nvml.nvmlDeviceGetUUID(h)),
        "pciDeviceId": f"0x{int(pci.pciDeviceId):08X}",
        "pciSubSystemId": f"0x{int(pci.pciSubSystemId):08X}",
        "memoryTotalMiB": int(mem["value"].total) // (1 << 20) if "value" in mem else mem,
        "migMode": {"current": mig["value"][0], "pending": mig["value"][1]} if "value" in mig else mig,
    }
    gpu["architecture"] = _value(nvml, nvml.nvmlDeviceGetArchitecture, h)
    gpu["virtualizationMode"] = _value(nvml, nvml.nvmlDeviceGetVirtualizationMode, h)
    gpu["maxMigDeviceCount"] = _value(nvml, nvml.nvmlDeviceGetMaxMigDeviceCount, h)
    names = _constants(nvml, "NVML_GPU_INSTANCE_PROFILE_", "NVML_GPU_INSTANCE_PROFILE_COUNT")
    gpu["giProfiles"] = {
        names.get(c, str(c)): _gi_profile(nvml, h, c)
        for c in range(getattr(nvml, "NVML_GPU_INSTANCE_PROFILE_COUNT", 0))
    }
    procs = _try(nvml, nvml.nvmlDeviceGetComputeRunningProcesses, h)
    gpu["processes"] = [int(p.pid) for p in procs["value"]] if "value" in procs else procs
    return gpu


def check_catalog(gpu: dict[str, Any]) -> dict[str, Any]:
    """The cdmo model this GPU maps to, and where the driver's profiles differ from the catalog."""
    from cdmo.mig.catalog import find_model

    model = find_model(gpu["name"]) or find_model(int(gpu["pciDeviceId"], 16))
    if model is None:
        return {"model": None}
    result: dict[str, Any] = {"model": model.key, "profiles": {}}
    for prof in model.profiles:
        got = gpu["giProfiles"].get(prof.nvml_constant)
        if got is None or "error" in got:
            result["profiles"][prof.name] = {"driver": (got or {}).get("error", "not asked")}
            continue
        want = {
            "id": prof.profile_id,
            "sliceCount": prof.compute_slices,
            "instanceCount": prof.max_count,
            "multiprocessorCount": prof.sm_count,
            "placements": [[s, prof.placement_size] for s in prof.starts],
        }
        diffs = {k: {"catalog": v, "driver": got.get(k)} for k, v in want.items() if v != got.get(k)}
        # Drivers differ by a few hundred MiB (memory_mib_observed); one that gives less than
        # the catalog says matters: a memory ask could then land on a profile too small for it.
        if prof.memory_mib is not None and got["memorySizeMB"] < prof.memory_mib:
            diffs["memorySizeMB"] = {"catalog": prof.memory_mib, "driver": got["memorySizeMB"]}
        result["profiles"][prof.name] = {"agrees": not diffs, "differs": diffs, "driverName": got.get("name")}
    total = gpu.get("memoryTotalMiB")
    if model.total_memory_mib is not None and isinstance(total, int) and total != model.total_memory_mib:
        result["totalMemoryMiB"] = {"catalog": model.total_memory_mib, "driver": total}
    return result


def probe_backend(repeat: int) -> dict[str, Any]:
    """cdmo's NVML read path, as `cdmo node show --backend nvml` and the agent's observe use it."""
    from cdmo.node_agent.nvml import NvmlBackend

    backend = NvmlBackend()
    try:
        gpus = backend.list_gpus()
        out: dict[str, Any] = {"gpus": [repr(g) for g in gpus]}
        out["instances"] = {g.index: [repr(i) for i in backend.list_instances(g.index)] for g in gpus}
        out["processes"] = {g.index: backend.list_processes(g.index) for g in gpus}
        # The GPU instance profiles the backend lists instances of (every constant pynvml or the
        # catalog knows is asked; those the catalog lacks under NVML's own name): on a driver
        # whose profiles the catalog holds, exactly the catalog's.
        out["profilesListed"] = {
            g.index: sorted(name for name, _ in backend._gi_profiles(g.index, backend._handle(g.index)))
            for g in gpus
        }
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for g in backend.list_gpus():
                backend.list_instances(g.index)
                backend.list_processes(g.index)
            times.append(time.perf_counter() - t0)
        times.sort()
        out["readSeconds"] = {"repeat": repeat, "median": times[len(times) // 2], "max": times[-1]}
    finally:
        backend.close()
    return out


def run_cdmo(argv: list[str]) -> dict[str, Any]:
    """One cdmo command in this process (so under the guard): its exit code and output."""
    from cdmo.cli import main as cdmo_main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cdmo_main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return {"argv": argv, "rc": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def probe_cli(catalog: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    """`cdmo node show`, and `cdmo node apply --dry-run` of the largest profile on GPU 0."""
    from cdmo.mig.catalog import find_model

    runs = [run_cdmo(["node", "show", "--backend", "nvml", "-o", "json"])]
    runs.append(run_cdmo(["node", "show", "--backend", "nvml"]))
    model = find_model(catalog[0]["model"]) if catalog and catalog[0]["model"] else None
    if model is not None:
        largest = max(model.base_profiles, key=lambda p: p.compute_slices)
        layout = folder / "probe-layout.yaml"
        layout.write_text(f"gpus: [{{index: 0, instances: [{{profile: {largest.name}, start: 0}}]}}]\n")
        apply = ["node", "apply", str(layout), "--dry-run", "--backend", "nvml"]
        runs.append(run_cdmo([*apply, "-o", "json"]))
        runs.append(run_cdmo([*apply, "--enable-mig", "-o", "json"]))
        runs.append(run_cdmo([*apply, "--enable-mig"]))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for probe.json")
    parser.add_argument("--repeat", type=int, default=20, help="timed reads of the backend (1-1000)")
    args = parser.parse_args(argv)
    if not 1 <= args.repeat <= 1000:
        parser.error("--repeat must be 1 to 1000")
    try:  # before the probe, so that a bad --out costs nothing
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"--out {args.out}: cannot make that folder ({exc.strerror})")
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError:
        print("nvml_probe: the pynvml module is missing; install nvidia-ml-py", file=sys.stderr)
        return 2
    refused = guard_read_only(nvml)
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        print(
            f"nvml_probe: cannot initialise NVML ({exc}); run on a node with the NVIDIA driver",
            file=sys.stderr,
        )
        return 2
    try:
        doc: dict[str, Any] = {
            "pynvml": importlib.metadata.version("nvidia-ml-py"),
            "driver": _value(nvml, nvml.nvmlSystemGetDriverVersion),
            "nvml": _value(nvml, nvml.nvmlSystemGetNVMLVersion),
            "cuda": _value(nvml, nvml.nvmlSystemGetCudaDriverVersion),
            "refusedFunctions": len(refused),
            "gpus": [probe_gpu(nvml, i) for i in range(nvml.nvmlDeviceGetCount())],
        }
    finally:
        nvml.nvmlShutdown()
    doc["catalog"] = [check_catalog(g) for g in doc["gpus"]]
    doc["backend"] = probe_backend(args.repeat)
    doc["cli"] = probe_cli(doc["catalog"], args.out)
    (args.out / "probe.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    for gpu, cat in zip(doc["gpus"], doc["catalog"], strict=True):
        answered = sum(1 for p in gpu["giProfiles"].values() if "error" not in p)
        print(
            f"GPU {gpu['index']} {gpu['name']} {gpu['pciDeviceId']}: MIG {gpu['migMode']}, "
            f"model {cat['model']}, {answered} of {len(gpu['giProfiles'])} GI profile constants answered"
        )
        for name, verdict in cat.get("profiles", {}).items():
            print(f"  {name}: {verdict}")
    for run in doc["cli"]:
        print(f"$ cdmo {' '.join(run['argv'])}  -> exit {run['rc']}")
        print(run["stdout"].rstrip() or "(no output)")
        if run["stderr"].strip():
            print(run["stderr"].rstrip())
    print(
        f"driver {doc['driver']}, NVML {doc['nvml']}, pynvml {doc['pynvml']}; backend read {doc['backend']['readSeconds']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
