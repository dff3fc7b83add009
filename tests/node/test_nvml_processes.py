"""Process rows read in the layout the driver writes (cdmo.node_agent.nvml_processes).

``nvmlDeviceGetComputeRunningProcesses_v3`` writes 32-byte rows on R535 drivers and 24-byte ones
on every later driver; nvidia-ml-py reads one layout by its own version (12.535: 32 bytes; later:
24), so whichever pynvml is installed misreads every row after the first on one of them. These
tests put several processes on MIG devices and read them through the real pynvml over the
stand-in, built both ways: in this process the stand-in as nvml.h declares today, and in a child
process one built as an R535 driver. CI runs them with the newest and the lowest nvidia-ml-py
(each misread one of the two before the agent chose the layout itself).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cdmo.node_agent.backend import NvmlReturn
from cdmo.node_agent.nvml import NvmlBackend
from cdmo.node_agent.nvml_processes import Reader, RowR535, RowV2, choose_reader
from tests.node.nvml_standin.build import build_standin
from tests.node.nvml_standin.gpus import StandinGpus

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("symbols", "reader"),
    [
        # after R535: the detail list is there; rows are nvml.h's nvmlProcessInfo_t
        (
            {"_v3", "ConfCompute", "DetailList"},
            Reader("nvmlDeviceGetComputeRunningProcesses_v3", RowV2),
        ),
        # R535: confidential computing came, the detail list not yet; rows carry one more field
        ({"_v3", "ConfCompute"}, Reader("nvmlDeviceGetComputeRunningProcesses_v3", RowR535)),
        # before R535 (R470-R530): _v3 with the rows it was declared with
        ({"_v3"}, Reader("nvmlDeviceGetComputeRunningProcesses_v3", RowV2)),
        # before _v3
        (set(), Reader("nvmlDeviceGetComputeRunningProcesses_v2", RowV2)),
    ],
    ids=["after-r535", "r535", "before-r535", "before-v3"],
)
def test_the_row_layout_follows_the_drivers_symbols(symbols: set[str], reader: Reader) -> None:
    names = {
        "_v3": "nvmlDeviceGetComputeRunningProcesses_v3",
        "ConfCompute": "nvmlDeviceGetConfComputeMemSizeInfo",
        "DetailList": "nvmlDeviceGetRunningProcessDetailList",
    }
    exported = {names[s] for s in symbols}
    assert choose_reader(lambda symbol: symbol in exported) == reader


def _two_devices_with_processes(standin: StandinGpus) -> dict[str, list[int]]:
    """Five processes on one MIG device and three on another: rows past the first matter."""
    backend = NvmlBackend()
    a = backend.create_instance(0, "3g.40gb", 4)
    b = backend.create_instance(0, "1g.10gb", 0)
    assert a.uuid and b.uuid
    wanted = {a.uuid: [101, 102, 103, 104, 105], b.uuid: [201, 202, 203]}
    for uuid, pids in wanted.items():
        for pid in pids:
            standin.add_process(uuid, pid)
    return wanted


def _expected(wanted: dict[str, list[int]]) -> dict[str, list[int]]:
    return {uuid: sorted(pids) for uuid, pids in wanted.items()}


@pytest.mark.parametrize("through_parent", [False, True], ids=["per-mig-device", "through-the-gpu"])
def test_every_row_is_read_from_a_driver_after_r535(standin: StandinGpus, through_parent: bool) -> None:
    wanted = _two_devices_with_processes(standin)
    if through_parent:
        # vGPU host mode: MIG device handles refuse; the GPU's rows place each process by its
        # GPU and compute instance ids, which a misread row gets wrong.
        standin.inject_fault("nvmlDeviceGetComputeRunningProcesses@mig", NvmlReturn.NOT_SUPPORTED, -1)
    found = NvmlBackend().list_processes(0)
    assert {u: list(p) for u, p in found.items()} == _expected(wanted)


_CHILD = """
import json
from cdmo.node_agent.nvml import NvmlBackend
backend = NvmlBackend()
found = backend.list_processes(0)
print(json.dumps({"found": {u: list(p) for u, p in found.items()}, "row": backend._process_reader.row.__name__}))
"""


@pytest.fixture(scope="module")
def r535_standin(tmp_path_factory: pytest.TempPathFactory, nvml_standin_lib: Path) -> Path:
    """The stand-in built as an R535 driver, in a folder of its own (a child loads it)."""
    return build_standin(tmp_path_factory.mktemp("nvml-standin-r535"), r535_rows=True)


@pytest.mark.parametrize("through_parent", [False, True], ids=["per-mig-device", "through-the-gpu"])
def test_every_row_is_read_from_an_r535_driver(
    standin: StandinGpus, r535_standin: Path, through_parent: bool
) -> None:
    wanted = _two_devices_with_processes(standin)  # made here; the child reads the same state
    if through_parent:
        standin.inject_fault("nvmlDeviceGetComputeRunningProcesses@mig", NvmlReturn.NOT_SUPPORTED, -1)
    env = {
        **os.environ,
        **standin.env,
        "LD_LIBRARY_PATH": str(r535_standin.parent),
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout)
    assert answer["row"] == "RowR535"
    assert answer["found"] == _expected(wanted)
