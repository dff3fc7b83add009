"""scripts/nvml_probe.py, the read-only probe of a node's driver, and what it read on a real GPU.

tests/data/nvml-probe-h200-580.json is the probe's answer on a lent NVIDIA H200 SXM node
(driver 580.159.04, MIG off). The catalog and the NVML stand-in are both checked against it:
where the stand-in and a real driver could differ, these tests say so by name.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pynvml
import pytest

from cdmo.mig.catalog import find_model, get_model
from tests.harness.scripts import ROOT, load_script
from tests.node.nvml_standin.gpus import StandinGpus, standin_env

PROBE = load_script("scripts/nvml_probe.py")
RECORDING = ROOT / "tests" / "data" / "nvml-probe-h200-580.json"
#: What a GPU instance profile is, as the catalog and the stand-in must agree with a driver.
SHAPE = ("id", "sliceCount", "instanceCount", "multiprocessorCount", "memorySizeMB", "placements", "name")


def recorded_gpu() -> dict[str, Any]:
    doc = json.loads(RECORDING.read_text())
    assert doc["driver"] == "580.159.04" and doc["gpus"][0]["name"] == "NVIDIA H200"
    return dict(doc["gpus"][0])


def test_the_catalog_agrees_with_what_a_real_h200_driver_said() -> None:
    check = PROBE.check_catalog(recorded_gpu())
    assert check["model"] == "h200-141gb"
    model = find_model("h200-141gb")
    assert model is not None and set(check["profiles"]) == set(model.profile_names)
    assert {name: v["differs"] for name, v in check["profiles"].items() if not v["agrees"]} == {}
    assert "totalMemoryMiB" not in check
    assert all(v["driverName"] == f"MIG {name}" for name, v in check["profiles"].items())


def test_check_catalog_names_each_difference() -> None:
    gpu = copy.deepcopy(recorded_gpu())
    profiles = gpu["giProfiles"]
    profiles["NVML_GPU_INSTANCE_PROFILE_3_SLICE"]["multiprocessorCount"] = 58
    profiles["NVML_GPU_INSTANCE_PROFILE_4_SLICE"]["memorySizeMB"] = 70000  # less than the catalog
    profiles["NVML_GPU_INSTANCE_PROFILE_7_SLICE"]["memorySizeMB"] += 512  # more: drivers differ so
    profiles["NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2"]["placements"].pop()
    profiles["NVML_GPU_INSTANCE_PROFILE_2_SLICE"] = {"error": "Not Supported", "rc": 3}
    gpu["memoryTotalMiB"] = 143000
    check = PROBE.check_catalog(gpu)
    differs = {
        name: sorted(v.get("differs", v)) for name, v in check["profiles"].items() if not v.get("agrees")
    }
    assert differs == {
        "3g.71gb": ["multiprocessorCount"],
        "4g.71gb": ["memorySizeMB"],
        "1g.35gb": ["placements"],
        "2g.35gb": ["driver"],
    }
    assert check["profiles"]["2g.35gb"] == {"driver": "Not Supported"}
    assert check["totalMemoryMiB"] == {"catalog": 143771, "driver": 143000}
    assert PROBE.check_catalog({**gpu, "name": "NVIDIA T4", "pciDeviceId": "0x1EB810DE"}) == {"model": None}


def _backend_calls() -> set[str]:
    """Every pynvml function cdmo's NVML backend calls."""
    source = (ROOT / "cdmo" / "node_agent" / "nvml.py").read_text()
    return set(re.findall(r"\b(?:nv|self\._nvml)\.(nvml\w+)", source))


def test_the_guard_refuses_every_change_and_keeps_every_read_the_backend_makes() -> None:
    clone = ModuleType("pynvml_clone")
    clone.__dict__.update(pynvml.__dict__)
    refused = set(PROBE.guard_read_only(clone))
    changes = {
        "nvmlDeviceSetMigMode",
        "nvmlDeviceCreateGpuInstanceWithPlacement",
        "nvmlGpuInstanceCreateComputeInstance",
        "nvmlGpuInstanceDestroy",
        "nvmlComputeInstanceDestroy",
    }
    # The XID watch's event set changes nothing on the GPUs, but the probe never opens one (it
    # reads, it does not watch): the guard may refuse it, as refusing too much is safe.
    events = {"nvmlEventSetCreate", "nvmlDeviceRegisterEvents", "nvmlEventSetWait_v2", "nvmlEventSetFree"}
    calls = _backend_calls()
    assert changes <= calls, "the backend's own changes must be among what it calls"
    assert events <= calls and "watch_xid_events" not in (ROOT / "scripts" / "nvml_probe.py").read_text()
    assert changes <= refused and not (calls - changes - events) & refused
    assert {
        "nvmlDeviceCreateGpuInstance",
        "nvmlDeviceResetGpuLockedClocks",
        "nvmlDeviceClearEccErrorCounts",
    } <= refused
    with pytest.raises(RuntimeError, match="read-only probe: nvmlDeviceSetMigMode refused"):
        clone.nvmlDeviceSetMigMode(None, 1)
    assert clone.nvmlPciInfo_t is pynvml.nvmlPciInfo_t  # ctypes structures are not calls
    assert clone.nvmlStructToFriendlyObject is pynvml.nvmlStructToFriendlyObject  # process lists use it
    assert pynvml.nvmlDeviceSetMigMode is not clone.nvmlDeviceSetMigMode  # the real module untouched


def _run_probe(gpus: StandinGpus, lib: Path, out: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "nvml_probe.py"), "--out", str(out), "--repeat", "3"],
        capture_output=True,
        text=True,
        env=standin_env(lib.parent, gpus),
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    doc: dict[str, Any] = json.loads((out / "probe.json").read_text())
    return doc


def test_the_probe_reads_a_node_and_changes_nothing(
    make_standin: Callable[..., StandinGpus], nvml_standin_lib: Path, tmp_path: Path
) -> None:
    """GPU 0 with MIG off (the probe's dry run would switch it on), GPU 1 with a used instance."""
    gpus = make_standin("h100-80gb", "h100-80gb")
    gpus.set_mig_mode(0, False, False)
    made = gpus.create_gpu_instance(1, 9, 0, 4)  # 3g.40gb@0
    ci = gpus.create_compute_instance(1, made.gi_id, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE)
    gpus.add_process(ci.uuid, 77)
    before = (gpus.records("gpu"), gpus.instances(), gpus.compute_instances())

    doc = _run_probe(gpus, nvml_standin_lib, tmp_path / "out")

    assert (gpus.records("gpu"), gpus.instances(), gpus.compute_instances()) == before
    assert doc["refusedFunctions"] > 0
    assert [g["migMode"] for g in doc["gpus"]] == [{"current": 0, "pending": 0}, {"current": 1, "pending": 1}]
    assert all(c["model"] == "h100-80gb" for c in doc["catalog"])
    assert ci.uuid in json.dumps(doc["backend"]["instances"]) and doc["backend"]["processes"]["1"]
    h100 = sorted(get_model("h100-80gb").profile_names)
    assert doc["backend"]["profilesListed"] == {"0": h100, "1": h100}  # the catalog's, no other
    dry_runs = [r for r in doc["cli"] if "--dry-run" in r["argv"] and "--enable-mig" in r["argv"]]
    assert [r["rc"] for r in dry_runs] == [0, 0]
    assert "switch MIG on on GPU 0" in dry_runs[-1]["stdout"]


def test_the_standin_h200_answers_as_the_real_driver_did(
    make_standin: Callable[..., StandinGpus], nvml_standin_lib: Path, tmp_path: Path
) -> None:
    """Our double and a real driver may differ: this pins the stand-in's H200 to driver 580's
    answers, profile by profile (engine counts apart, which the stand-in does not model)."""
    gpus = make_standin("h200-141gb", mig=False)
    doc = _run_probe(gpus, nvml_standin_lib, tmp_path / "out")
    real, ours = recorded_gpu()["giProfiles"], doc["gpus"][0]["giProfiles"]
    answered = sorted(c for c, p in real.items() if "error" not in p)
    assert sorted(c for c, p in ours.items() if "error" not in p) == answered
    for constant in answered:
        assert {k: ours[constant][k] for k in SHAPE} == {k: real[constant][k] for k in SHAPE}, constant
    assert doc["gpus"][0]["pciDeviceId"] == "0x233510DE" and doc["catalog"][0]["model"] == "h200-141gb"


def test_the_probe_says_what_to_do_without_nvml(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "nvml_probe.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(tmp_path), "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert done.returncode == 2 and "cannot initialise NVML" in done.stderr and "Traceback" not in done.stderr
    bad = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "nvml_probe.py"), "--repeat", "0"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--repeat must be 1 to 1000" in bad.stderr
    (tmp_path / "a-file").write_text("")
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "nvml_probe.py"), "--out", str(tmp_path / "a-file")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "cannot make that folder" in out.stderr and "Traceback" not in out.stderr
