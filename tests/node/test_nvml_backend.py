"""The NVML backend, through a fake pynvml on simulated GPUs; both backends meet one contract."""

from __future__ import annotations

import inspect

import pynvml as real
import pytest

from cdmo.node_agent.backend import (
    AlreadyGone,
    GpuBackend,
    InstanceBusy,
    InvalidPlacement,
    NoPermission,
    NotSupported,
    NvmlFailure,
    NvmlReturn,
    PlacementTaken,
    TransientNvmlError,
    error_for_rc,
)
from cdmo.node_agent.nvml import NvmlBackend
from cdmo.node_agent.simulated import SimulatedNode
from tests.node.fake_pynvml import fake_function_names, make_fake_pynvml

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


def test_busy_instance_is_not_destroyed(any_backend: GpuBackend, node: SimulatedNode) -> None:
    a = any_backend.create_instance(0, "4g.40gb", 0)
    node.add_process(a.uuid, 99)
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


def test_failed_compute_instance_destroys_the_new_gpu_instance(
    any_backend: GpuBackend, node: SimulatedNode
) -> None:
    node.inject_fault("nvmlGpuInstanceCreateComputeInstance", NvmlReturn.UNKNOWN)
    with pytest.raises(TransientNvmlError):
        any_backend.create_instance(0, "7g.80gb", 0)
    assert any_backend.list_instances(0) == []


def test_sets_mig_mode(any_backend: GpuBackend) -> None:
    change = any_backend.set_mig_mode(1, False)
    assert (change.current, change.pending) == (False, False)
    assert any_backend.list_instances(1) == [] and any_backend.list_processes(1) == {}
    assert [g.mig_current for g in any_backend.list_gpus()] == [True, False]


def test_lists_a_gpu_instance_without_compute_instance(any_backend: GpuBackend, node: SimulatedNode) -> None:
    node.create_gpu_instance(0, 14, 2, 2)  # 2g.20gb, no CI: a crash between the two creates
    [orphan] = any_backend.list_instances(0)
    assert (orphan.profile, orphan.start, orphan.ci_id, orphan.healthy) == ("2g.20gb", 2, None, False)
    any_backend.destroy_instance(0, orphan.gi_id)
    assert any_backend.list_instances(0) == []


def test_lists_a_partial_compute_instance_as_not_full(any_backend: GpuBackend, node: SimulatedNode) -> None:
    gi = node.create_gpu_instance(0, 9, 0, 4)  # 3g.40gb
    node.create_compute_instance(0, gi.gi_id, 0)  # a 1-slice CI
    [inst] = any_backend.list_instances(0)
    assert inst.ci_id == 0 and not inst.full and not inst.healthy
    any_backend.destroy_instance(0, inst.gi_id)
    assert any_backend.list_instances(0) == []
    any_backend.close()


# --- NVML specifics ---------------------------------------------------------------------------


def test_creation_goes_through_profile_info_placements_and_create_with_placement(node: SimulatedNode) -> None:
    fake = make_fake_pynvml(node)
    backend = NvmlBackend(fake)
    fake.calls.clear()
    backend.create_instance(0, "1g.20gb", 6)
    calls = fake.calls
    order = [
        calls.index("nvmlDeviceGetGpuInstanceProfileInfo"),
        calls.index("nvmlDeviceGetGpuInstancePossiblePlacements"),
        calls.index("nvmlDeviceCreateGpuInstanceWithPlacement"),
        calls.index("nvmlGpuInstanceGetComputeInstanceProfileInfo"),
        calls.index("nvmlGpuInstanceCreateComputeInstance"),
    ]
    assert order == sorted(order)
    assert "nvmlDeviceCreateGpuInstance" not in calls
    # H100 1g.20gb: the default compute instance profile is 1_SLICE_REV1 (id 7).
    assert node.gpus[0].gis[6].cis[0].profile_id == 7


def test_mig_uuid_when_the_driver_reports_the_parent_device(node: SimulatedNode) -> None:
    made = NvmlBackend(make_fake_pynvml(node)).create_instance(0, "3g.40gb", 4)
    fake = make_fake_pynvml(node, ci_device_is_parent=True)
    backend = NvmlBackend(fake)
    [listed] = backend.list_instances(0)
    assert listed.uuid == made.uuid
    assert "nvmlDeviceGetMigDeviceHandleByIndex" in fake.calls
    again = backend.create_instance(0, "2g.20gb", 0)
    assert again.uuid == node.gpus[0].gis[again.gi_id].cis[0].uuid


def test_init_failure_says_what_to_do(node: SimulatedNode) -> None:
    fake = make_fake_pynvml(node)

    def broken() -> None:
        raise real.NVMLError(real.NVML_ERROR_LIBRARY_NOT_FOUND)

    fake.nvmlInit = broken
    with pytest.raises(NvmlFailure, match="--backend simulated"):
        NvmlBackend(fake)


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


def test_set_mig_mode_reports_reset_needed_on_ampere(make_node) -> None:
    node = make_node("a100-80gb", mig=False)
    backend = NvmlBackend(make_fake_pynvml(node))
    change = backend.set_mig_mode(0, True)
    assert change.reset_needed and change.pending and not change.current


def test_set_mig_mode_in_use(node: SimulatedNode) -> None:
    backend = NvmlBackend(make_fake_pynvml(node))
    backend.create_instance(0, "1g.10gb", 0)
    with pytest.raises(InstanceBusy):
        backend.set_mig_mode(0, False)


def test_gpu_without_mig_support(node: SimulatedNode) -> None:
    fake = make_fake_pynvml(node)

    def no_mig(device):
        raise real.NVMLError(real.NVML_ERROR_NOT_SUPPORTED)

    fake.nvmlDeviceGetMigMode = no_mig
    backend = NvmlBackend(fake)
    assert [g.mig_current for g in backend.list_gpus()] == [False, False]
    assert backend.list_instances(0) == [] and backend.list_processes(0) == {}


def test_permission_error_is_fatal(node: SimulatedNode) -> None:
    node.inject_fault("nvmlDeviceCreateGpuInstanceWithPlacement", NvmlReturn.NO_PERMISSION)
    with pytest.raises(NoPermission, match="privileged"):
        NvmlBackend(make_fake_pynvml(node)).create_instance(0, "1g.10gb", 0)


def test_close_shuts_nvml_down(node: SimulatedNode) -> None:
    fake = make_fake_pynvml(node)
    NvmlBackend(fake).close()
    assert fake.calls[-1] == "nvmlShutdown"
