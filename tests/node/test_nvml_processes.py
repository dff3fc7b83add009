"""Process rows read in the layout the driver writes (cdmo.node_agent.nvml_processes).

``nvmlDeviceGetComputeRunningProcesses_v3`` (and the graphics and MPS lists' ``_v3``) writes
32-byte rows on R535 drivers and 24-byte ones on every later driver; nvidia-ml-py reads one
layout by its own version (12.535: 32 bytes; later: 24), so whichever pynvml is installed
misreads every row after the first on one of them. These tests put several processes on MIG
devices and read them through the real pynvml over the stand-in, built both ways: in this
process the stand-in as nvml.h declares today, and in a child process one built as an R535
driver. CI runs them with the newest and the lowest nvidia-ml-py (each misread one of the two
before the agent chose the layout itself).

An instance whose only user is an MPS client or a graphics context is in use, as one with a
compute process is: never destroyed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cdmo.errors import Fatal, NvmlError
from cdmo.node_agent.backend import (
    NO_WAIT_RETRY,
    InstanceBusy,
    InvalidPlacement,
    NoPermission,
    NvmlFailure,
    NvmlReturn,
    TransientNvmlError,
    call_with_retry,
)
from cdmo.node_agent.nvml import NvmlBackend
from cdmo.node_agent.nvml_processes import (
    ProcessList,
    Reader,
    RowR535,
    RowV2,
    choose_reader,
    choose_readers,
)
from cdmo.node_agent.observe import observe_node
from cdmo.node_agent.reconcile import GpuState, reconcile_node
from cdmo.node_agent.simulated import SimulatedNode
from tests.node.conftest import layout
from tests.node.fake_pynvml import make_fake_pynvml
from tests.node.nvml_standin.build import build_standin
from tests.node.nvml_standin.gpus import PROCESS_KINDS, ProcessKind, StandinGpus

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


V3 = {kind: kind.function(3) for kind in ProcessList}
V2 = {kind: kind.function(2) for kind in ProcessList}
R535 = "nvmlDeviceGetConfComputeMemSizeInfo"
AFTER_R535 = "nvmlDeviceGetRunningProcessDetailList"
COMPUTE, GRAPHICS, MPS = ProcessList.COMPUTE, ProcessList.GRAPHICS, ProcessList.MPS


@pytest.mark.parametrize(
    ("exported", "readers"),
    [
        (
            {*V3.values(), R535, AFTER_R535},
            (Reader(V3[COMPUTE], RowV2), Reader(V3[GRAPHICS], RowV2, GRAPHICS), Reader(V3[MPS], RowV2, MPS)),
        ),
        # R535's rows are the driver's: all three _v3 write 32 bytes
        (
            {*V3.values(), R535},
            (
                Reader(V3[COMPUTE], RowR535),
                Reader(V3[GRAPHICS], RowR535, GRAPHICS),
                Reader(V3[MPS], RowR535, MPS),
            ),
        ),
        (
            {*V2.values()},
            (Reader(V2[COMPUTE], RowV2), Reader(V2[GRAPHICS], RowV2, GRAPHICS), Reader(V2[MPS], RowV2, MPS)),
        ),
        # each list by its own symbols: MPS only at _v2 here
        (
            {V3[COMPUTE], V3[GRAPHICS], V2[MPS]},
            (Reader(V3[COMPUTE], RowV2), Reader(V3[GRAPHICS], RowV2, GRAPHICS), Reader(V2[MPS], RowV2, MPS)),
        ),
        # a driver without graphics and MPS lists: they are skipped, never a failure
        ({V3[COMPUTE], R535, AFTER_R535}, (Reader(V3[COMPUTE], RowV2),)),
        # without any compute symbol the compute list is still read (and fails): never skipped
        (set(), (Reader(V2[COMPUTE], RowV2),)),
    ],
    ids=["after-r535", "r535", "before-v3", "mixed-versions", "no-graphics-no-mps", "nothing"],
)
def test_every_process_list_gets_its_reader_from_the_drivers_symbols(
    exported: set[str], readers: tuple[Reader, ...]
) -> None:
    assert choose_readers(lambda symbol: symbol in exported) == readers


def _two_devices_with_processes(standin: StandinGpus, kind: ProcessKind = "compute") -> dict[str, list[int]]:
    """Five processes on one MIG device and three on another: rows past the first matter."""
    backend = NvmlBackend()
    a = backend.create_instance(0, "3g.40gb", 4)
    b = backend.create_instance(0, "1g.10gb", 0)
    assert a.uuid and b.uuid
    wanted = {a.uuid: [101, 102, 103, 104, 105], b.uuid: [201, 202, 203]}
    for uuid, pids in wanted.items():
        for pid in pids:
            standin.add_process(uuid, pid, kind)
    return wanted


def _expected(wanted: dict[str, list[int]]) -> dict[str, list[int]]:
    return {uuid: sorted(pids) for uuid, pids in wanted.items()}


@pytest.mark.parametrize("kind", PROCESS_KINDS)
@pytest.mark.parametrize("through_parent", [False, True], ids=["per-mig-device", "through-the-gpu"])
def test_every_row_is_read_from_a_driver_after_r535(
    standin: StandinGpus, through_parent: bool, kind: ProcessKind
) -> None:
    wanted = _two_devices_with_processes(standin, kind)
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
rows = {r.kind.label: r.row.__name__ for r in backend._process_readers}
print(json.dumps({"found": {u: list(p) for u, p in found.items()}, "rows": rows}))
"""


@pytest.fixture(scope="module")
def r535_standin(tmp_path_factory: pytest.TempPathFactory, nvml_standin_lib: Path) -> Path:
    """The stand-in built as an R535 driver, in a folder of its own (a child loads it)."""
    return build_standin(tmp_path_factory.mktemp("nvml-standin-r535"), r535_rows=True)


@pytest.mark.parametrize("kind", PROCESS_KINDS)
@pytest.mark.parametrize("through_parent", [False, True], ids=["per-mig-device", "through-the-gpu"])
def test_every_row_is_read_from_an_r535_driver(
    standin: StandinGpus, r535_standin: Path, through_parent: bool, kind: ProcessKind
) -> None:
    wanted = _two_devices_with_processes(standin, kind)  # made here; the child reads the same state
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
    assert answer["rows"] == {"compute": "RowR535", "graphics": "RowR535", "MPS": "RowR535"}
    assert answer["found"] == _expected(wanted)


# --- graphics and MPS processes keep their instance ---------------------------------------------

#: The stand-in's name (for faults) of each kind's list.
LIST_CALL = {
    "compute": "nvmlDeviceGetComputeRunningProcesses",
    "graphics": "nvmlDeviceGetGraphicsRunningProcesses",
    "mps": "nvmlDeviceGetMPSComputeRunningProcesses",
}


@pytest.mark.parametrize("kind", PROCESS_KINDS)
@pytest.mark.parametrize("through_parent", [False, True], ids=["per-mig-device", "through-the-gpu"])
def test_an_instance_whose_only_user_is_an_mps_or_graphics_process_is_kept_by_a_pass(
    standin: StandinGpus, kind: ProcessKind, through_parent: bool
) -> None:
    """The layout drops all three instances of GPU 0; a process of any kind on the 1g.10gb
    blocks the GPU: nothing of it is destroyed, the holder is named."""
    backend = NvmlBackend()
    backend.create_instance(0, "3g.40gb", 0)
    backend.create_instance(0, "2g.20gb", 4)
    used = backend.create_instance(0, "1g.10gb", 6)
    assert used.uuid
    standin.add_process(used.uuid, 4242, kind)
    if through_parent:
        standin.inject_fault("nvmlDeviceGetComputeRunningProcesses@mig", NvmlReturn.NOT_SUPPORTED, -1)
    before = standin.records("gi") + standin.records("ci")

    assert backend.list_processes(0) == {used.uuid: (4242,)}
    assert "4242" in {h.name for h in observe_node(backend, retry=NO_WAIT_RETRY).in_use.holders_of(used.uuid)}
    result = reconcile_node(backend, {0: layout("7g.80gb@0")}, retry=NO_WAIT_RETRY).gpu(0)

    assert result.state == GpuState.BLOCKED, result
    assert "4242" in str(result.blockers)
    assert standin.records("gi") + standin.records("ci") == before
    with pytest.raises(InstanceBusy, match="4242"):  # the backend's own check, before any destroy
        backend.destroy_instance(0, used.gi_id)
    assert standin.records("gi") + standin.records("ci") == before


def test_a_pid_in_two_lists_is_one_process(standin: StandinGpus) -> None:
    """An MPS server's client with a compute context too is listed by both; it is one holder."""
    backend = NvmlBackend()
    made = backend.create_instance(0, "1g.10gb", 6)
    assert made.uuid
    for kind in PROCESS_KINDS:
        standin.add_process(made.uuid, 4242, kind)
    standin.add_process(made.uuid, 7, "mps")
    assert backend.list_processes(0) == {made.uuid: (7, 4242)}


@pytest.mark.parametrize("kind", ["graphics", "mps"])
def test_a_device_without_graphics_or_mps_contexts_lists_none_of_them(
    standin: StandinGpus, kind: str
) -> None:
    """nvml.h: NOT_SUPPORTED "if this query is not supported by device": such a device holds no
    such context, so that list is empty and the others still count."""
    backend = NvmlBackend()
    made = backend.create_instance(0, "1g.10gb", 6)
    assert made.uuid
    standin.add_process(made.uuid, 501)
    for call in (LIST_CALL[kind], LIST_CALL[kind] + "@mig"):
        standin.inject_fault(call, NvmlReturn.NOT_SUPPORTED, -1)
    assert backend.list_processes(0) == {made.uuid: (501,)}
    standin.remove_process(made.uuid, 501)
    backend.destroy_instance(0, made.gi_id)  # an empty answer is an answer: the free one goes
    assert standin.instances() == []


@pytest.mark.parametrize("kind", ["graphics", "mps"])
@pytest.mark.parametrize(
    ("rc", "error"),
    [
        (NvmlReturn.NO_PERMISSION, NoPermission),
        (NvmlReturn.INVALID_ARGUMENT, InvalidPlacement),
        (NvmlReturn.GPU_IS_LOST, NvmlFailure),
        (NvmlReturn.FUNCTION_NOT_FOUND, NvmlFailure),
        (NvmlReturn.UNKNOWN, TransientNvmlError),
    ],
    ids=lambda v: getattr(v, "name", getattr(v, "__name__", str(v))),
)
def test_any_other_refusal_of_a_graphics_or_mps_list_fails_the_read(
    standin: StandinGpus, kind: str, rc: NvmlReturn, error: type[Exception]
) -> None:
    """Unread is never "none": the read fails and the instance is not destroyed. NO_PERMISSION is
    Fatal, as everywhere in the backend."""
    backend = NvmlBackend()
    made = backend.create_instance(0, "1g.10gb", 6)
    standin.inject_fault(LIST_CALL[kind] + "@mig", rc, -1)
    with pytest.raises(NvmlError) as caught:
        call_with_retry(NO_WAIT_RETRY, backend.list_processes, 0)
    assert isinstance(caught.value, error) and caught.value.rc == rc
    assert (f"({'MPS' if kind == 'mps' else kind} processes)") in str(caught.value)
    assert isinstance(caught.value, Fatal) == (rc == NvmlReturn.NO_PERMISSION)
    with pytest.raises(type(caught.value)):
        call_with_retry(NO_WAIT_RETRY, backend.destroy_instance, 0, made.gi_id)
    assert len(standin.compute_instances()) == 1


def test_mps_clients_that_start_between_the_two_calls_are_read_again(standin: StandinGpus) -> None:
    """INSUFFICIENT_SIZE from the MPS list is transient, as from the compute list."""
    backend = NvmlBackend()
    made = backend.create_instance(0, "1g.10gb", 6)
    assert made.uuid
    standin.add_process(made.uuid, 4242, "mps")
    standin.grow_processes(made.uuid, 10, kind="mps")
    with pytest.raises(TransientNvmlError, match=r"\(MPS processes\).*INSUFFICIENT_SIZE"):
        backend.list_processes(0)
    pids = call_with_retry(NO_WAIT_RETRY, backend.list_processes, 0)[made.uuid]
    assert 4242 in pids and len(pids) == 11


def test_a_driver_without_graphics_and_mps_lists_reads_compute_alone(node: SimulatedNode) -> None:
    """Symbols missing altogether (FUNCTION_NOT_FOUND from the lookup): those lists are skipped,
    no failure, and compute processes still keep their instance."""
    bare = make_fake_pynvml(node, process_lists=("Compute",))
    backend = NvmlBackend(bare)
    made = backend.create_instance(0, "1g.10gb", 6)
    assert made.uuid
    node.add_process(made.uuid, 99)
    assert backend.list_processes(0) == {made.uuid: (99,)}
    assert [r.kind for r in backend._process_readers or ()] == [COMPUTE]
    assert not {"nvmlDeviceGetGraphicsRunningProcesses", "nvmlDeviceGetMPSComputeRunningProcesses"} & set(
        bare.calls
    )
    with pytest.raises(InstanceBusy):
        backend.destroy_instance(0, made.gi_id)
    # The whole set, as a driver after R535 exports it: every list is asked.
    full = make_fake_pynvml(node)
    assert NvmlBackend(full).list_processes(0) == {made.uuid: (99,)}
    assert {"nvmlDeviceGetGraphicsRunningProcesses", "nvmlDeviceGetMPSComputeRunningProcesses"} <= set(
        full.calls
    )
