"""The NVML backend through the real pynvml and the C stand-in for libnvidia-ml.so.1; both
backends meet one contract. The Python fake pynvml stays for what the stand-in does not model
(an unknown GPU model, the order of shutdown)."""

from __future__ import annotations

import ctypes
import inspect
from collections.abc import Callable
from pathlib import Path

import pynvml as real
import pytest

from cdmo.errors import Fatal
from cdmo.node_agent.backend import (
    NO_WAIT_RETRY,
    AlreadyGone,
    GpuBackend,
    GpuInstanceLeft,
    InstanceBusy,
    InvalidPlacement,
    NoPermission,
    NotSupported,
    NvmlFailure,
    NvmlReturn,
    PlacementTaken,
    TransientNvmlError,
    call_with_retry,
    error_for_rc,
)
from cdmo.node_agent.nvml import NvmlBackend
from cdmo.node_agent.observe import observe_node
from cdmo.node_agent.reconcile import GpuState, reconcile_node
from cdmo.node_agent.simulated import SimulatedBackend, SimulatedNode
from tests.node.conftest import layout
from tests.node.fake_pynvml import fake_function_names, make_fake_pynvml
from tests.node.nvml_standin.gpus import CALLS_ENV, STATE_ENV, StandinGpus

#: The GPUs behind a backend: simulated in memory, or the stand-in's state file.
Gpus = SimulatedNode | StandinGpus


@pytest.fixture(params=["simulated", "nvml-standin"])
def gpus(request: pytest.FixtureRequest, node: SimulatedNode) -> Gpus:
    """Two empty H100s, simulated or behind the NVML stand-in (then reached through pynvml)."""
    if request.param == "simulated":
        return node
    standin: StandinGpus = request.getfixturevalue("standin")
    return standin


@pytest.fixture
def any_backend(gpus: Gpus) -> GpuBackend:
    """The backend on ``gpus``: SimulatedBackend, or NvmlBackend on the real pynvml."""
    if isinstance(gpus, SimulatedNode):
        return SimulatedBackend(gpus)
    return NvmlBackend()


# --- the fake is faithful ----------------------------------------------------------------------


def test_fake_functions_have_the_real_signatures(node: SimulatedNode) -> None:
    fake = make_fake_pynvml(node)
    names = fake_function_names(fake)
    assert "nvmlDeviceCreateGpuInstanceWithPlacement" in names and len(names) > 25
    for name in names:
        assert inspect.signature(getattr(fake, name)) == inspect.signature(getattr(real, name)), name


def test_fake_uses_the_real_structs_and_errors(node: SimulatedNode) -> None:
    fake = make_fake_pynvml(node)
    assert fake.c_nvmlGpuInstancePlacement_t is real.c_nvmlGpuInstancePlacement_t
    assert fake.NVMLError_InUse is real.NVMLError_InUse
    fake.nvmlInit()
    with pytest.raises(real.NVMLError_NotFound):
        fake.nvmlDeviceGetGpuInstanceById(fake.nvmlDeviceGetHandleByIndex(0), 3)


def test_fake_refuses_a_placement_passed_by_value(node: SimulatedNode) -> None:
    fake = make_fake_pynvml(node)
    fake.nvmlInit()
    dev = fake.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(TypeError, match="by reference"):
        fake.nvmlDeviceCreateGpuInstanceWithPlacement(dev, 9, real.c_nvmlGpuInstancePlacement_t(0, 4))


def test_fake_needs_init(node: SimulatedNode) -> None:
    with pytest.raises(real.NVMLError_Uninitialized):
        make_fake_pynvml(node).nvmlDeviceGetCount()


def test_nvml_return_codes_match_pynvml() -> None:
    for rc in NvmlReturn:
        if rc != NvmlReturn.SUCCESS:
            assert getattr(real, f"NVML_ERROR_{rc.name}") == rc.value


@pytest.mark.parametrize(
    ("rc", "kind"),
    [
        (NvmlReturn.IN_USE, InstanceBusy),
        (NvmlReturn.INSUFFICIENT_RESOURCES, PlacementTaken),
        (NvmlReturn.NOT_SUPPORTED, NotSupported),
        (NvmlReturn.NO_PERMISSION, NoPermission),
        (NvmlReturn.NOT_FOUND, AlreadyGone),
        (NvmlReturn.INVALID_ARGUMENT, InvalidPlacement),
        (NvmlReturn.TIMEOUT, TransientNvmlError),
        (NvmlReturn.UNKNOWN, TransientNvmlError),
        (NvmlReturn.GPU_IS_LOST, NvmlFailure),
        (12345, NvmlFailure),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_error_mapping(rc: int, kind: type) -> None:
    err = error_for_rc(rc, "do it")
    assert isinstance(err, kind) and err.rc == rc and str(err).startswith("do it")


def test_no_permission_says_the_pod_must_be_privileged() -> None:
    assert "privileged" in str(error_for_rc(NvmlReturn.NO_PERMISSION, "create 1g.10gb@0 on GPU 0"))


# --- the contract both backends keep -----------------------------------------------------------


def test_lists_gpus(any_backend: GpuBackend) -> None:
    gpus = any_backend.list_gpus()
    assert [(g.index, g.model_key, g.product, g.mig_current) for g in gpus] == [
        (0, "h100-80gb", "NVIDIA H100 80GB HBM3", True),
        (1, "h100-80gb", "NVIDIA H100 80GB HBM3", True),
    ]
    assert gpus[0].uuid != gpus[1].uuid and gpus[0].pci_device_id == 0x233010DE


def test_creates_at_the_exact_placement_with_a_whole_compute_instance(any_backend: GpuBackend) -> None:
    made = [any_backend.create_instance(0, p, s) for p, s in (("1g.10gb", 6), ("3g.40gb", 0), ("1g.20gb", 4))]
    listed = any_backend.list_instances(0)
    assert [(i.profile, i.start, i.size) for i in listed] == [
        ("3g.40gb", 0, 4),
        ("1g.20gb", 4, 2),
        ("1g.10gb", 6, 1),
    ]
    assert all(i.healthy and i.uuid and i.uuid.startswith("MIG-") for i in listed)
    assert {i.uuid for i in made} == {i.uuid for i in listed}


def test_destroys_compute_then_gpu_instance(any_backend: GpuBackend) -> None:
    a = any_backend.create_instance(1, "2g.20gb", 2)
    any_backend.destroy_instance(1, a.gi_id)
    assert any_backend.list_instances(1) == []
    with pytest.raises(AlreadyGone):
        any_backend.destroy_instance(1, a.gi_id)


def test_busy_instance_is_not_destroyed(any_backend: GpuBackend, gpus: Gpus) -> None:
    a = any_backend.create_instance(0, "4g.40gb", 0)
    gpus.add_process(a.uuid, 99)
    assert any_backend.list_processes(0) == {a.uuid: (99,)}
    with pytest.raises(InstanceBusy):
        any_backend.destroy_instance(0, a.gi_id)
    assert [i.uuid for i in any_backend.list_instances(0)] == [a.uuid]


def test_taken_placement_and_bad_start(any_backend: GpuBackend) -> None:
    any_backend.create_instance(0, "3g.40gb", 4)
    with pytest.raises(PlacementTaken):
        any_backend.create_instance(0, "1g.10gb", 5)
    with pytest.raises(InvalidPlacement):
        any_backend.create_instance(0, "2g.20gb", 6)


def test_absent_profile_is_not_supported(any_backend: GpuBackend) -> None:
    with pytest.raises(NotSupported):
        any_backend.create_instance(0, "1g.12gb", 0)


def test_failed_compute_instance_destroys_the_new_gpu_instance(any_backend: GpuBackend, gpus: Gpus) -> None:
    gpus.inject_fault("nvmlGpuInstanceCreateComputeInstance", NvmlReturn.UNKNOWN)
    with pytest.raises(TransientNvmlError):
        any_backend.create_instance(0, "7g.80gb", 0)
    assert any_backend.list_instances(0) == []


def test_sets_mig_mode(any_backend: GpuBackend) -> None:
    change = any_backend.set_mig_mode(1, False)
    assert (change.current, change.pending) == (False, False)
    assert any_backend.list_instances(1) == [] and any_backend.list_processes(1) == {}
    assert [g.mig_current for g in any_backend.list_gpus()] == [True, False]


def test_lists_a_gpu_instance_without_compute_instance(any_backend: GpuBackend, gpus: Gpus) -> None:
    gpus.create_gpu_instance(0, 14, 2, 2)  # 2g.20gb, no CI: a crash between the two creates
    [orphan] = any_backend.list_instances(0)
    assert (orphan.profile, orphan.start, orphan.ci_id, orphan.healthy) == ("2g.20gb", 2, None, False)
    any_backend.destroy_instance(0, orphan.gi_id)
    assert any_backend.list_instances(0) == []


def test_lists_a_partial_compute_instance_as_not_full(any_backend: GpuBackend, gpus: Gpus) -> None:
    gi = gpus.create_gpu_instance(0, 9, 0, 4)  # 3g.40gb
    gpus.create_compute_instance(0, gi.gi_id, 0)  # a 1-slice CI
    [inst] = any_backend.list_instances(0)
    assert inst.ci_id == 0 and not inst.full and not inst.healthy
    any_backend.destroy_instance(0, inst.gi_id)
    assert any_backend.list_instances(0) == []
    any_backend.close()


# --- NVML specifics, through the real pynvml and the stand-in --------------------------------


def test_creation_goes_through_profile_info_placements_and_create_with_placement(
    standin: StandinGpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = NvmlBackend()
    calls = tmp_path / "calls.log"
    monkeypatch.setenv(CALLS_ENV, str(calls))
    backend.create_instance(0, "1g.20gb", 6)
    made = calls.read_text().split()
    order = [
        made.index("nvmlDeviceGetGpuInstanceProfileInfo"),
        made.index("nvmlDeviceGetGpuInstancePossiblePlacements"),
        made.index("nvmlDeviceCreateGpuInstanceWithPlacement"),
        made.index("nvmlGpuInstanceGetComputeInstanceProfileInfo"),
        made.index("nvmlGpuInstanceCreateComputeInstance"),
    ]
    assert order == sorted(order)
    # H100 1g.20gb: GI profile id 15 at start 6, its compute instance of profile 1_SLICE_REV1 (7).
    [(gpu, gi_id, profile_id, start)] = standin.instances()
    assert (gpu, profile_id, start) == (0, 15, 6)
    assert [(g, i, p) for g, i, _, p, _ in standin.compute_instances()] == [(0, gi_id, 7)]


def test_profile_constant_is_not_the_profile_id(standin: StandinGpus) -> None:
    """NVML takes a constant and answers an id: 3_SLICE (2) is id 9; the backend must not mix them."""
    made = NvmlBackend().create_instance(1, "3g.40gb", 0)
    assert standin.instances() == [(1, made.gi_id, 9, 0)]


def test_new_uuid_on_re_create(standin: StandinGpus) -> None:
    backend = NvmlBackend()
    first = backend.create_instance(0, "2g.20gb", 2)
    backend.destroy_instance(0, first.gi_id)
    again = backend.create_instance(0, "2g.20gb", 2)
    assert again.gi_id == first.gi_id and again.uuid != first.uuid


def test_a_split_gpu_instance_lists_every_compute_instance(any_backend: GpuBackend, gpus: Gpus) -> None:
    """A 3g.40gb split by another tool into a 2-slice and a 1-slice compute instance."""
    gi = gpus.create_gpu_instance(0, 9, 4, 4)
    a = gpus.create_compute_instance(0, gi.gi_id, real.NVML_COMPUTE_INSTANCE_PROFILE_2_SLICE)
    b = gpus.create_compute_instance(0, gi.gi_id, real.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE)
    [inst] = any_backend.list_instances(0)
    assert (inst.profile, inst.start, inst.ci_count, inst.healthy) == ("3g.40gb", 4, 2, False)
    assert inst.uuid in (a.uuid, b.uuid)
    gpus.add_process(b.uuid, 77)
    assert any_backend.list_processes(0) == {b.uuid: (77,)}


def _index_ids(backend: GpuBackend, gpu: int) -> dict[str, int | None]:
    """MIG UUID -> the MIG device index the backend reports for it."""
    return {
        ci.uuid: ci.mig_index for i in backend.list_instances(gpu) for ci in i.compute_instances if ci.uuid
    }


def test_mig_device_indexes_are_nvmls_on_every_backend(any_backend: GpuBackend, gpus: Gpus) -> None:
    """Every compute instance is a MIG device with its own index, counted across GPU instances
    in NVML's order (the stand-in's and the simulated node's: GI id, then CI id), not per GI."""
    split = gpus.create_gpu_instance(0, 9, 0, 4)  # 3g.40gb@0, GI 1
    a = gpus.create_compute_instance(0, split.gi_id, real.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE)
    b = gpus.create_compute_instance(0, split.gi_id, real.NVML_COMPUTE_INSTANCE_PROFILE_2_SLICE)
    whole = any_backend.create_instance(0, "3g.40gb", 4)  # GI 2
    one = any_backend.create_instance(1, "1g.10gb", 3)
    assert _index_ids(any_backend, 0) == {a.uuid: 0, b.uuid: 1, whole.uuid: 2}
    assert _index_ids(any_backend, 1) == {one.uuid: 0}
    [listed] = [i for i in any_backend.list_instances(0) if i.gi_id == whole.gi_id]
    assert listed.mig_index == 2 and listed == whole  # the index is not part of what it is
    if isinstance(gpus, SimulatedNode):  # the simulated backend agrees with NVML's on the same GPUs
        assert _index_ids(NvmlBackend(make_fake_pynvml(gpus)), 0) == _index_ids(any_backend, 0)
    else:
        assert gpus.resolve_index(f"0:{listed.mig_index}") == whole.uuid


def test_mig_device_indexes_keep_nvmls_order_and_holes(standin: StandinGpus) -> None:
    """A driver that numbers MIG devices by slot (standin.c: mig-index-by-start): the index is
    read from NVML, holes and order kept, never counted from the GI ids."""
    standin.set_option("mig-index-by-start")
    backend = NvmlBackend()
    made = [backend.create_instance(0, p, s) for p, s in [("3g.40gb", 4), ("1g.10gb", 0), ("1g.10gb", 2)]]
    assert [m.gi_id for m in made] == [2, 7, 9]
    assert _index_ids(backend, 0) == {made[0].uuid: 4, made[1].uuid: 0, made[2].uuid: 2}
    for uuid, index in _index_ids(backend, 0).items():
        assert standin.resolve_index(f"0:{index}") == uuid
    # where the UUID itself is found through the same walk (the parent-device form), too
    standin.set_option("ci-device-parent")
    assert _index_ids(NvmlBackend(), 0) == {made[0].uuid: 4, made[1].uuid: 0, made[2].uuid: 2}


def test_mig_device_index_is_unknown_where_nvml_does_not_number_them(standin: StandinGpus) -> None:
    """nvml.h: nvmlDeviceGetMigDeviceHandleByIndex may answer NOT_SUPPORTED: the index is None
    (never guessed) and the instances are still listed; other errors fail the read."""
    backend = NvmlBackend()
    made = backend.create_instance(0, "3g.40gb", 4)
    standin.inject_fault("nvmlDeviceGetMigDeviceHandleByIndex", NvmlReturn.NOT_SUPPORTED, 1)
    [listed] = backend.list_instances(0)
    assert (listed.uuid, listed.healthy, listed.mig_index) == (made.uuid, True, None)
    assert backend.list_instances(0)[0].mig_index == 0  # the fault was for one call
    standin.inject_fault("nvmlDeviceGetMaxMigDeviceCount", NvmlReturn.UNKNOWN, 1)
    with pytest.raises(TransientNvmlError):
        backend.list_instances(0)


def test_a_process_on_the_second_compute_instance_keeps_the_gpu_instance(
    any_backend: GpuBackend, gpus: Gpus
) -> None:
    """Nothing of it goes, not even its idle first compute instance (a pod may hold that one)."""
    gi = gpus.create_gpu_instance(0, 9, 0, 4)
    gpus.create_compute_instance(0, gi.gi_id, real.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE)
    second = gpus.create_compute_instance(0, gi.gi_id, real.NVML_COMPUTE_INSTANCE_PROFILE_2_SLICE)
    gpus.add_process(second.uuid, 501)
    with pytest.raises(InstanceBusy, match="501"):
        any_backend.destroy_instance(0, gi.gi_id)
    [kept] = any_backend.list_instances(0)
    assert (kept.gi_id, kept.ci_count) == (gi.gi_id, 2)


def test_gpu_instance_destroy_refused_after_its_compute_instance_went(standin: StandinGpus) -> None:
    """dcgm-exporter holds the GI: the CI is gone, the GI stays without one (a repair for later)."""
    backend = NvmlBackend()
    made = backend.create_instance(0, "1g.10gb", 3)
    standin.inject_fault("nvmlGpuInstanceDestroy", NvmlReturn.IN_USE)
    with pytest.raises(InstanceBusy):
        backend.destroy_instance(0, made.gi_id)
    [left] = backend.list_instances(0)
    assert (left.gi_id, left.ci_id, left.uuid, left.healthy) == (made.gi_id, None, None, False)
    backend.destroy_instance(0, made.gi_id)
    assert backend.list_instances(0) == []


# --- a compute instance destroyed by another tool meanwhile ------------------------------------


def test_a_compute_instance_gone_before_its_destroy_counts_as_destroyed(standin: StandinGpus) -> None:
    """nvidia-smi destroys the CI between the agent's read and its destroy: NVML answers the stale
    handle with INVALID_ARGUMENT (not NOT_FOUND). Gone is what was wanted: the GI goes too, in
    this same call."""
    backend = NvmlBackend()
    made = backend.create_instance(0, "2g.20gb", 2)
    kept = backend.create_instance(0, "1g.10gb", 6)
    assert made.uuid
    standin.vanish_compute_instance(made.uuid)
    backend.destroy_instance(0, made.gi_id)
    assert [i.uuid for i in backend.list_instances(0)] == [kept.uuid]
    assert standin.records("vanish") == []  # the race was staged, not left unused


def test_the_second_compute_instance_of_a_split_gpu_instance_gone_meanwhile(standin: StandinGpus) -> None:
    """Its first CI is destroyed by the agent; the second was destroyed by another tool since the
    agent listed it: the GI goes in the same pass."""
    gi = standin.create_gpu_instance(0, 9, 0, 4)
    standin.create_compute_instance(0, gi.gi_id, real.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE)
    second = standin.create_compute_instance(0, gi.gi_id, real.NVML_COMPUTE_INSTANCE_PROFILE_2_SLICE)
    standin.vanish_compute_instance(second.uuid)
    backend = NvmlBackend()
    backend.destroy_instance(0, gi.gi_id)
    assert backend.list_instances(0) == [] and standin.compute_instances() == []


def test_a_pass_whose_compute_instance_vanishes_before_the_destroy_is_applied_at_once(
    standin: StandinGpus,
) -> None:
    backend = NvmlBackend()
    gone = backend.create_instance(0, "3g.40gb", 0)
    assert gone.uuid
    standin.vanish_compute_instance(gone.uuid)
    result = reconcile_node(backend, {0: layout("7g.80gb@0")}, retry=NO_WAIT_RETRY).gpu(0)
    assert result.state == GpuState.READY, result
    assert [(i.profile, i.start) for i in backend.list_instances(0)] == [("7g.80gb", 0)]


@pytest.mark.parametrize("rc", [NvmlReturn.INVALID_ARGUMENT, NvmlReturn.NOT_FOUND], ids=lambda rc: rc.name)
def test_a_refused_compute_instance_destroy_of_one_still_there_is_an_error(
    standin: StandinGpus, rc: NvmlReturn
) -> None:
    """The code alone does not say "gone": the CI is read again, and it is still there."""
    backend = NvmlBackend()
    made = backend.create_instance(0, "1g.10gb", 6)
    standin.inject_fault("nvmlComputeInstanceDestroy", rc)
    with pytest.raises((InvalidPlacement, AlreadyGone)) as caught:
        backend.destroy_instance(0, made.gi_id)
    assert caught.value.rc == rc
    assert [i.uuid for i in backend.list_instances(0)] == [made.uuid]
    backend.destroy_instance(0, made.gi_id)  # the fault was for one call
    assert backend.list_instances(0) == []


def test_mig_uuid_when_the_driver_reports_the_parent_device(standin: StandinGpus) -> None:
    made = NvmlBackend().create_instance(0, "3g.40gb", 4)
    standin.set_option("ci-device-parent")
    backend = NvmlBackend()
    [listed] = backend.list_instances(0)
    assert listed.uuid == made.uuid
    again = backend.create_instance(0, "2g.20gb", 0)
    assert again.uuid in {c[4] for c in standin.compute_instances() if c[1] == again.gi_id}
    assert again.uuid and again.uuid.startswith("MIG-") and again.uuid != made.uuid


def test_init_failure_says_what_to_do(standin: StandinGpus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STATE_ENV)  # the stand-in then answers as a node without the driver
    with pytest.raises(NvmlFailure, match="--backend simulated") as caught:
        NvmlBackend()
    assert caught.value.rc == NvmlReturn.DRIVER_NOT_LOADED


def test_unknown_model_is_listed_but_not_changed(node: SimulatedNode) -> None:
    fake = make_fake_pynvml(node)
    fake_pci = fake.nvmlDeviceGetPciInfo

    def name(handle):
        return "NVIDIA Mystery GPU"

    def pci(handle):
        info = fake_pci(handle)
        info.pciDeviceId = 0x12345678
        return info

    fake.nvmlDeviceGetName = name
    fake.nvmlDeviceGetPciInfo = pci
    node.create_gpu_instance(0, 9, 0, 4)  # what the fake GPU holds (the NVML ids are the H100's)
    backend = NvmlBackend(fake)
    assert backend.list_gpus()[0].model_key is None
    [inst] = backend.list_instances(0)
    assert inst.profile == "profile-id-9" and inst.size == 4
    with pytest.raises(NotSupported, match="does not know"):
        backend.create_instance(0, "3g.40gb", 4)


def test_set_mig_mode_reports_reset_needed_on_ampere(make_standin: Callable[..., StandinGpus]) -> None:
    standin = make_standin("a100-40gb", mig=False)
    backend = NvmlBackend()
    change = backend.set_mig_mode(0, True)
    assert change.reset_needed and change.pending and not change.current
    assert backend.list_gpus()[0].model_key == "a100-40gb"
    with pytest.raises(NotSupported):  # not before the reset
        backend.create_instance(0, "7g.40gb", 0)
    standin.reset_gpu(0)
    assert backend.create_instance(0, "7g.40gb", 0).healthy


def test_a100_offers_its_own_profiles(make_standin: Callable[..., StandinGpus]) -> None:
    make_standin("a100-40gb")
    backend = NvmlBackend()
    made = [backend.create_instance(0, p, s) for p, s in (("4g.20gb", 0), ("2g.10gb", 4), ("1g.5gb", 6))]
    assert [(i.profile, i.start, i.size) for i in backend.list_instances(0)] == [
        ("4g.20gb", 0, 4),
        ("2g.10gb", 4, 2),
        ("1g.5gb", 6, 1),
    ]
    assert all(i.healthy for i in made)
    with pytest.raises(NotSupported):
        backend.create_instance(0, "1g.20gb", 0)  # an H100 profile


def test_set_mig_mode_in_use(standin: StandinGpus) -> None:
    backend = NvmlBackend()
    backend.create_instance(0, "1g.10gb", 0)
    with pytest.raises(InstanceBusy):
        backend.set_mig_mode(0, False)
    assert backend.list_gpus()[0].mig_current


def test_hopper_switches_mig_without_a_reset(standin: StandinGpus) -> None:
    standin.reboot()  # Hopper comes back with MIG off
    backend = NvmlBackend()
    assert [g.mig_current for g in backend.list_gpus()] == [False, False]
    change = backend.set_mig_mode(1, True)
    assert (change.current, change.pending, change.reset_needed) == (True, True, False)


def test_gpu_without_mig_support(make_standin: Callable[..., StandinGpus]) -> None:
    make_standin("t4", "t4")
    backend = NvmlBackend()
    assert [(g.mig_current, g.model_key) for g in backend.list_gpus()] == [(False, None), (False, None)]
    assert backend.list_instances(0) == [] and backend.list_processes(0) == {}


def test_permission_error_is_fatal(standin: StandinGpus) -> None:
    standin.set_option("unprivileged")
    backend = NvmlBackend()
    with pytest.raises(NoPermission, match="privileged"):
        backend.create_instance(0, "1g.10gb", 0)
    assert len(backend.list_gpus()) == 2  # reading needs no privilege


def test_close_shuts_nvml_down(node: SimulatedNode) -> None:
    fake = make_fake_pynvml(node)
    NvmlBackend(fake).close()
    assert fake.calls[-1] == "nvmlShutdown"


@pytest.mark.parametrize("model_key", ["h100-80gb", "a100-40gb"])
def test_the_catalog_agrees_with_the_standin(
    model_key: str, make_standin: Callable[..., StandinGpus]
) -> None:
    """Two tables written apart from NVIDIA's docs (cdmo's catalog, standin.c) name the same
    profile ids, slices, placements and CI profiles: a slip in either shows here."""
    from cdmo.mig.catalog import get_model

    make_standin(model_key)
    model = get_model(model_key)
    real.nvmlInit()
    try:
        dev = real.nvmlDeviceGetHandleByIndex(0)
        for prof in model.profiles:
            info = real.nvmlDeviceGetGpuInstanceProfileInfo(dev, prof.nvml_constant_value)
            assert (info.id, info.sliceCount, info.instanceCount) == (
                prof.profile_id,
                prof.compute_slices,
                prof.max_count,
            ), prof.name
            count = ctypes.c_uint(0)
            real.nvmlDeviceGetGpuInstancePossiblePlacements(dev, info.id, None, ctypes.byref(count))
            placements = (real.c_nvmlGpuInstancePlacement_t * count.value)()
            real.nvmlDeviceGetGpuInstancePossiblePlacements(dev, info.id, placements, ctypes.byref(count))
            assert [(p.start, p.size) for p in placements] == [(s, prof.placement_size) for s in prof.starts]
        assert model.mig_mode_change_needs_reset == (model_key == "a100-40gb")
    finally:
        real.nvmlShutdown()


@pytest.mark.parametrize("model_key", ["h100-80gb", "a100-40gb"])
def test_every_profile_is_made_whole_at_every_start(
    model_key: str, make_standin: Callable[..., StandinGpus]
) -> None:
    from cdmo.mig.catalog import get_model

    make_standin(model_key)
    backend = NvmlBackend()
    for prof in get_model(model_key).profiles:
        for start in prof.starts:
            made = backend.create_instance(0, prof.name, start)
            [listed] = backend.list_instances(0)
            assert (listed.profile, listed.start, listed.healthy) == (prof.name, start, True)
            backend.destroy_instance(0, made.gi_id)
    assert backend.list_instances(0) == []


@pytest.mark.parametrize(
    ("rc", "kind"),
    [
        (NvmlReturn.IN_USE, InstanceBusy),
        (NvmlReturn.INSUFFICIENT_RESOURCES, PlacementTaken),
        (NvmlReturn.NOT_SUPPORTED, NotSupported),
        (NvmlReturn.NO_PERMISSION, NoPermission),
        (NvmlReturn.INVALID_ARGUMENT, InvalidPlacement),
        (NvmlReturn.TIMEOUT, TransientNvmlError),
        (NvmlReturn.UNKNOWN, TransientNvmlError),
        (NvmlReturn.GPU_IS_LOST, NvmlFailure),
        (12345, NvmlFailure),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_return_codes_from_the_library_become_backend_errors(
    rc: int, kind: type, standin: StandinGpus
) -> None:
    """The codes come out of the C library and through pynvml's NVMLError classes."""
    standin.inject_fault("nvmlDeviceCreateGpuInstanceWithPlacement", rc)
    backend = NvmlBackend()
    with pytest.raises(kind) as caught:
        backend.create_instance(0, "1g.10gb", 0)
    assert caught.value.rc == rc and standin.instances() == []
    backend.create_instance(0, "1g.10gb", 0)  # the fault was for one call
    assert len(standin.instances()) == 1


def test_calls_from_two_threads_and_a_second_process_keep_one_state(
    standin: StandinGpus, nvml_standin_lib: Path
) -> None:
    """The agent calls NVML from more than one thread, and `cdmo node` may run beside it."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from tests.node.nvml_standin.gpus import standin_env

    def fill(gpu: int) -> int:
        backend, made = NvmlBackend(), 0
        for start in range(7):
            try:
                backend.create_instance(gpu, "1g.10gb", start)
                made += 1
            except PlacementTaken:
                pass  # the other thread was first
        return made

    other = subprocess.Popen(  # a third writer: fills GPU 1 with 1g.10gb too, but from start 6 down
        [
            sys.executable,
            "-c",
            "from cdmo.node_agent.nvml import NvmlBackend\n"
            "from cdmo.node_agent.backend import PlacementTaken\n"
            "b = NvmlBackend()\n"
            "for s in range(6, -1, -1):\n"
            "    try: b.create_instance(1, '1g.10gb', s)\n"
            "    except PlacementTaken: pass\n",
        ],
        env={**standin_env(nvml_standin_lib.parent, standin), "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    with ThreadPoolExecutor(2) as pool:
        made = list(pool.map(fill, [0, 0]))
    assert other.wait(timeout=60) == 0
    # GPU 0: each of its 7 placements made exactly once between the two threads; the state
    # file stayed whole.
    assert sum(made) == 7
    assert [(g, p) for g, _, p, _ in standin.instances() if g == 0] == [(0, 19)] * 7
    assert sum(1 for g, *_ in standin.instances() if g == 1) == 7
    assert len({c[4] for c in standin.compute_instances()}) == 14


def test_mig_mode_is_not_switched_under_a_process_on_the_whole_gpu(standin: StandinGpus) -> None:
    """NVML reports IN_USE in the activation status (return code SUCCESS): still refused."""
    standin.reboot()  # Hopper: back with MIG off
    backend = NvmlBackend()
    gpu = backend.list_gpus()[0]
    standin.add_process(gpu.uuid, 888)
    with pytest.raises(InstanceBusy):
        backend.set_mig_mode(0, True)
    assert [(g.mig_current, g.mig_pending) for g in backend.list_gpus()] == [(False, False)] * 2
    standin.remove_process(gpu.uuid, 888)
    assert backend.set_mig_mode(0, True).current


def test_repair_makes_the_full_compute_instance_of_a_gpu_instance_without_one(
    any_backend: GpuBackend, gpus: Gpus
) -> None:
    gi = gpus.create_gpu_instance(0, 15, 2, 2)  # 1g.20gb, no CI (an agent died between the creates)
    repaired = any_backend.create_compute_instance(0, gi.gi_id)
    assert (repaired.gi_id, repaired.profile, repaired.start, repaired.healthy) == (
        gi.gi_id,
        "1g.20gb",
        2,
        True,
    )
    [listed] = any_backend.list_instances(0)
    assert listed.healthy and listed.uuid == repaired.uuid
    with pytest.raises(AlreadyGone):
        any_backend.create_compute_instance(0, 12)


def test_a_gpu_instance_that_cannot_be_destroyed_after_a_failed_compute_instance_is_repaired_later(
    standin: StandinGpus,
) -> None:
    """CI create fails, then NVML refuses the clean-up destroy: the caller sees GpuInstanceLeft
    with the CI error's code (not a transient error: a retry would find the placement taken),
    the GI stays without a CI, and the repair makes the H100 1g.20gb's REV1 CI."""
    standin.inject_fault("nvmlGpuInstanceCreateComputeInstance", NvmlReturn.UNKNOWN)
    standin.inject_fault("nvmlGpuInstanceDestroy", NvmlReturn.IN_USE)
    backend = NvmlBackend()
    with pytest.raises(GpuInstanceLeft) as caught:
        backend.create_instance(0, "1g.20gb", 4)
    [left] = backend.list_instances(0)
    assert (caught.value.rc, caught.value.gi_id) == (NvmlReturn.UNKNOWN, left.gi_id)
    assert (left.profile, left.start, left.ci_id, left.healthy) == ("1g.20gb", 4, None, False)
    backend.create_compute_instance(0, left.gi_id)
    assert [(g, i, p) for g, i, _, p, _ in standin.compute_instances()] == [(0, left.gi_id, 7)]


# --- what a real driver answers that the catalog or the happy path does not cover -------------


def test_an_instance_of_a_profile_the_catalog_lacks_is_listed(
    make_standin: Callable[..., StandinGpus],
) -> None:
    """A later driver offers 2g.20gb+me (GI profile constant 2_SLICE_REV1, id 21), which cdmo's
    catalog lacks, and nvidia-smi made one. It takes memory slices 2-3 and a pod may hold its
    device: it must be listed, not skipped because the catalog has no such profile."""
    standin = make_standin("h100-80gb-next")
    gi = standin.create_gpu_instance(0, 21, 2, 2)
    ci = standin.create_compute_instance(0, gi.gi_id, real.NVML_COMPUTE_INSTANCE_PROFILE_2_SLICE)
    backend = NvmlBackend()
    [inst] = backend.list_instances(0)
    assert (inst.profile, inst.start, inst.size, inst.gi_id, inst.uuid, inst.healthy) == (
        "2g.20gb+me",
        2,
        2,
        gi.gi_id,
        ci.uuid,
        True,
    )
    with pytest.raises(NotSupported):  # cdmo does not make what its catalog lacks
        backend.create_compute_instance(0, gi.gi_id)


def test_processes_are_read_from_the_parent_gpu_when_mig_device_handles_refuse(standin: StandinGpus) -> None:
    """nvml.h: per-instance process queries on MIG device handles are not supported in vGPU
    host mode (NOT_SUPPORTED); the parent GPU's handle gives them all, with GI and CI ids."""
    backend = NvmlBackend()
    backend.create_instance(0, "3g.40gb", 0)
    busy = backend.create_instance(0, "1g.10gb", 6)
    assert busy.uuid
    standin.add_process(busy.uuid, 4242)
    standin.inject_fault("nvmlDeviceGetComputeRunningProcesses@mig", NvmlReturn.NOT_SUPPORTED, -1)
    assert backend.list_processes(0) == {busy.uuid: (4242,)}
    with pytest.raises(InstanceBusy, match="4242"):
        backend.destroy_instance(0, busy.gi_id)
    assert len(standin.compute_instances()) == 2


def test_processes_that_cannot_be_read_at_all_say_so(standin: StandinGpus) -> None:
    backend = NvmlBackend()
    made = backend.create_instance(0, "1g.10gb", 6)
    standin.inject_fault("nvmlDeviceGetComputeRunningProcesses@mig", NvmlReturn.NOT_SUPPORTED, -1)
    standin.inject_fault("nvmlDeviceGetComputeRunningProcesses", NvmlReturn.NOT_SUPPORTED, -1)
    with pytest.raises(NvmlFailure, match="processes") as caught:
        backend.list_processes(0)
    assert "MIG mode is off" not in str(caught.value)  # not NOT_SUPPORTED's usual meaning
    assert not isinstance(caught.value, Fatal)
    with pytest.raises(NvmlFailure):
        backend.destroy_instance(0, made.gi_id)
    assert len(standin.compute_instances()) == 1  # nothing destroyed blind


@pytest.mark.parametrize("through_parent", [False, True], ids=["per-mig-device", "through-the-gpu"])
def test_no_permission_to_read_processes_is_fatal_on_either_path(
    standin: StandinGpus, through_parent: bool
) -> None:
    """NO_PERMISSION is Fatal wherever the backend meets it: from the MIG device handles, and
    from the parent GPU read when MIG device handles refuse (vGPU host mode). The agent stops
    and says so (PermissionDenied) instead of failing every pass; nothing is destroyed."""
    backend = NvmlBackend()
    made = backend.create_instance(0, "1g.10gb", 6)
    if through_parent:
        standin.inject_fault("nvmlDeviceGetComputeRunningProcesses@mig", NvmlReturn.NOT_SUPPORTED, -1)
        standin.inject_fault("nvmlDeviceGetComputeRunningProcesses", NvmlReturn.NO_PERMISSION, -1)
    else:
        standin.inject_fault("nvmlDeviceGetComputeRunningProcesses@mig", NvmlReturn.NO_PERMISSION, -1)
    with pytest.raises(NoPermission, match="processes") as caught:
        backend.list_processes(0)
    assert isinstance(caught.value, Fatal) and caught.value.rc == NvmlReturn.NO_PERMISSION
    assert "privileged" in str(caught.value)
    with pytest.raises(Fatal):
        reconcile_node(backend, {0: layout("7g.80gb@0")}, retry=NO_WAIT_RETRY)
    assert [c[4] for c in standin.compute_instances()] == [made.uuid]


def test_each_gpu_says_its_numa_node_as_the_kernel_lists_it(
    make_standin: Callable[..., StandinGpus], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NVML's bus id "00000000:01:00.0" is sysfs's 0000:01:00.0; -1 or no file: not said."""
    from cdmo.node_agent import nvml

    make_standin("h100-80gb", "h100-80gb", "h100-80gb")
    for bus, node in (("0000:01:00.0", "1\n"), ("0000:02:00.0", "-1\n")):
        (tmp_path / bus).mkdir()
        (tmp_path / bus / "numa_node").write_text(node)
    monkeypatch.setattr(nvml, "SYS_PCI_DEVICES", tmp_path)
    assert [g.numa_node for g in NvmlBackend().list_gpus()] == [1, None, None]
    assert nvml.numa_node(b"00000000:01:00.0\x00") == 1 and nvml.numa_node("garbage") is None


# --- the process list grows between pynvml's two calls (INSUFFICIENT_SIZE) -------------------


def test_processes_that_start_between_pynvmls_two_calls_are_read_again(standin: StandinGpus) -> None:
    """pynvml asks the count, then fills an array of twice that plus 5; ten processes starting in
    between overflow it (INSUFFICIENT_SIZE). The agent's read tries again and sees all eleven."""
    backend = NvmlBackend()
    made = backend.create_instance(0, "1g.10gb", 6)
    assert made.uuid
    standin.add_process(made.uuid, 4242)
    standin.grow_processes(made.uuid, 10)
    observed = observe_node(backend, retry=NO_WAIT_RETRY)
    pids = {h.name for h in observed.in_use.holders_of(made.uuid)}
    assert "4242" in pids and len(pids) == 11


def test_a_destroy_whose_process_read_races_new_processes_keeps_the_instance(standin: StandinGpus) -> None:
    """More processes start while the destroy reads them: the retried read names them all. (With
    none before, pynvml's first call answers SUCCESS and the read is an empty snapshot; NVML's
    own IN_USE on the CI destroy then keeps the instance.)"""
    backend = NvmlBackend()
    made = backend.create_instance(0, "3g.40gb", 4)
    assert made.uuid
    standin.add_process(made.uuid, 501)
    standin.grow_processes(made.uuid, 8)
    with pytest.raises(InstanceBusy, match="processes 501, 600"):
        call_with_retry(NO_WAIT_RETRY, backend.destroy_instance, 0, made.gi_id)
    assert [i.uuid for i in backend.list_instances(0)] == [made.uuid]


def test_a_process_list_that_never_fits_fails_the_read_after_bounded_tries(
    standin: StandinGpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never "no processes": the read fails, as any unreadable process list does, and nothing
    is destroyed; the tries are the retry policy's, no more."""
    backend = NvmlBackend()
    made = backend.create_instance(0, "1g.10gb", 0)
    standin.inject_fault("nvmlDeviceGetComputeRunningProcesses@mig", NvmlReturn.INSUFFICIENT_SIZE, -1)
    calls = tmp_path / "calls.log"
    monkeypatch.setenv(CALLS_ENV, str(calls))
    with pytest.raises(TransientNvmlError, match="INSUFFICIENT_SIZE") as caught:
        observe_node(backend, retry=NO_WAIT_RETRY)
    assert caught.value.rc == NvmlReturn.INSUFFICIENT_SIZE
    # pynvml's two calls per read, one read per try
    assert (
        calls.read_text().split().count("nvmlDeviceGetComputeRunningProcesses@mig")
        == 2 * NO_WAIT_RETRY.attempts
    )
    with pytest.raises(TransientNvmlError):
        call_with_retry(NO_WAIT_RETRY, backend.destroy_instance, 0, made.gi_id)
    assert len(standin.compute_instances()) == 1


# --- a create that leaves its GPU instance behind -----------------------------------------------


def test_a_gpu_instance_left_by_a_failed_create_is_named_not_reported_as_a_taken_placement(
    standin: StandinGpus,
) -> None:
    """The CI fails (transient), then NVML refuses the clean-up destroy: the retried create used
    to find its own GPU instance at the placement and report INSUFFICIENT_RESOURCES."""
    standin.inject_fault("nvmlGpuInstanceCreateComputeInstance", NvmlReturn.UNKNOWN)
    standin.inject_fault("nvmlGpuInstanceDestroy", NvmlReturn.IN_USE)
    backend = NvmlBackend()
    with pytest.raises(GpuInstanceLeft) as caught:
        call_with_retry(NO_WAIT_RETRY, backend.create_instance, 0, "1g.20gb", 4)
    [left] = backend.list_instances(0)
    assert (left.profile, left.start, left.empty) == ("1g.20gb", 4, True)
    assert (caught.value.rc, caught.value.gi_id) == (NvmlReturn.UNKNOWN, left.gi_id)
    message = str(caught.value)
    assert f"GPU instance {left.gi_id}" in message and "UNKNOWN" in message and "IN_USE" in message


def test_the_next_pass_repairs_a_gpu_instance_left_by_a_failed_create(standin: StandinGpus) -> None:
    standin.inject_fault("nvmlGpuInstanceCreateComputeInstance", NvmlReturn.UNKNOWN)
    standin.inject_fault("nvmlGpuInstanceDestroy", NvmlReturn.IN_USE)
    backend = NvmlBackend()
    first = reconcile_node(backend, {0: layout("1g.20gb@4")}, retry=NO_WAIT_RETRY).gpu(0)
    [(_, gi_id, _, _)] = standin.instances()
    assert first.state == GpuState.FAILED
    assert f"GPU instance {gi_id}" in first.message and "INSUFFICIENT_RESOURCES" not in first.message
    second = reconcile_node(backend, {0: layout("1g.20gb@4")}, retry=NO_WAIT_RETRY).gpu(0)
    assert second.state == GpuState.READY and [i.gi_id for i in second.repaired] == [gi_id]
    assert [(g, i) for g, i, *_ in standin.compute_instances()] == [(0, gi_id)]


def test_the_next_pass_destroys_a_gpu_instance_left_by_a_failed_create_that_the_layout_drops(
    standin: StandinGpus,
) -> None:
    """Without a compute instance it has no device: nothing can hold it, it goes as a free one."""
    standin.inject_fault("nvmlGpuInstanceCreateComputeInstance", NvmlReturn.UNKNOWN)
    standin.inject_fault("nvmlGpuInstanceDestroy", NvmlReturn.IN_USE)
    backend = NvmlBackend()
    reconcile_node(backend, {0: layout("2g.20gb@0,1g.10gb@6")}, retry=NO_WAIT_RETRY)
    [left] = [i for i in backend.list_instances(0) if i.empty]
    assert (left.profile, left.start) == ("2g.20gb", 0)
    result = reconcile_node(backend, {0: layout("1g.10gb@6")}, retry=NO_WAIT_RETRY).gpu(0)
    assert result.state == GpuState.READY and [i.gi_id for i in result.destroyed] == [left.gi_id]
    assert [(p, s) for _, _, p, s in standin.instances()] == [(19, 6)]


def test_a_create_whose_read_back_fails_is_not_reported_as_a_taken_placement(standin: StandinGpus) -> None:
    """The GPU and compute instances are made; reading the CI back fails (transient). A retried
    create could only find the placement taken by them: the error says what was made instead,
    and the next read lists the instance whole."""
    standin.inject_fault("nvmlComputeInstanceGetInfo", NvmlReturn.UNKNOWN)
    backend = NvmlBackend()
    with pytest.raises(NvmlFailure) as caught:
        call_with_retry(NO_WAIT_RETRY, backend.create_instance, 0, "3g.40gb", 0)
    assert not isinstance(caught.value, PlacementTaken) and caught.value.rc == NvmlReturn.UNKNOWN
    [made] = backend.list_instances(0)
    assert made.healthy and f"GPU instance {made.gi_id}" in str(caught.value)
