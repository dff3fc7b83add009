"""The simulated GPUs answer as NVML does; the state file keeps them between commands."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from cdmo.errors import InvalidInput, UnknownModel
from cdmo.node_agent.backend import (
    NO_WAIT_RETRY,
    AlreadyGone,
    GpuBackend,
    GpuGone,
    GpuInstanceLeft,
    InstanceBusy,
    InvalidPlacement,
    NoPermission,
    NotSupported,
    NvmlReturn,
    PlacementTaken,
    TransientNvmlError,
    call_with_retry,
)
from cdmo.node_agent.simulated import (
    SimNvmlError,
    SimulatedBackend,
    SimulatedCrash,
    SimulatedNode,
    dump_state,
    load_state,
    open_state,
    parse_models,
    parse_state,
    save_state,
)


def h100_id(name: str) -> int:
    return {
        "1g.10gb": 19,
        "1g.10gb+me": 20,
        "1g.20gb": 15,
        "2g.20gb": 14,
        "3g.40gb": 9,
        "4g.40gb": 5,
        "7g.80gb": 0,
    }[name]


# --- NVML-level behaviour ----------------------------------------------------------------------


def test_profile_info_takes_the_constant_not_the_id(node: SimulatedNode) -> None:
    # NVML_GPU_INSTANCE_PROFILE_3_SLICE is 2; the H100's profile id for 3g.40gb is 9.
    assert node.gi_profile(0, 2).name == "3g.40gb"
    assert node.gi_profile(0, 2).profile_id == 9
    assert node.gi_profile(0, 9).name == "1g.20gb"  # constant 9 is 1_SLICE_REV2


def test_absent_profile_is_not_supported(make_node) -> None:
    a30 = make_node("a30-24gb")
    with pytest.raises(SimNvmlError) as err:
        a30.gi_profile(0, 9)  # no double-memory 1g on A30
    assert err.value.rc == NvmlReturn.NOT_SUPPORTED


def test_profile_constant_out_of_range_is_invalid(node: SimulatedNode) -> None:
    with pytest.raises(SimNvmlError) as err:
        node.gi_profile(0, 99)
    assert err.value.rc == NvmlReturn.INVALID_ARGUMENT


def test_occupied_placement_gives_insufficient_resources(node: SimulatedNode) -> None:
    node.create_gpu_instance(0, h100_id("3g.40gb"), 4, 4)
    with pytest.raises(SimNvmlError) as err:
        node.create_gpu_instance(0, h100_id("2g.20gb"), 4, 2)
    assert err.value.rc == NvmlReturn.INSUFFICIENT_RESOURCES


def test_second_media_instance_gives_insufficient_resources(node: SimulatedNode) -> None:
    node.create_gpu_instance(0, h100_id("1g.10gb+me"), 0, 1)
    with pytest.raises(SimNvmlError) as err:
        node.create_gpu_instance(0, h100_id("1g.10gb+me"), 1, 1)
    assert err.value.rc == NvmlReturn.INSUFFICIENT_RESOURCES


def test_illegal_start_is_invalid_argument(node: SimulatedNode) -> None:
    with pytest.raises(SimNvmlError) as err:
        node.create_gpu_instance(0, h100_id("2g.20gb"), 6, 2)
    assert err.value.rc == NvmlReturn.INVALID_ARGUMENT


def test_destroying_a_gpu_instance_with_compute_instances_is_in_use(node: SimulatedNode) -> None:
    gi = node.create_gpu_instance(0, h100_id("1g.10gb"), 0, 1)
    node.create_compute_instance(0, gi.gi_id, 0)
    with pytest.raises(SimNvmlError) as err:
        node.destroy_gpu_instance(0, gi.gi_id)
    assert err.value.rc == NvmlReturn.IN_USE


def test_destroying_a_compute_instance_with_processes_is_in_use(node: SimulatedNode) -> None:
    gi = node.create_gpu_instance(0, h100_id("1g.10gb"), 0, 1)
    ci = node.create_compute_instance(0, gi.gi_id, 0)
    node.add_process(ci.uuid, 4242)
    with pytest.raises(SimNvmlError) as err:
        node.destroy_compute_instance(0, gi.gi_id, ci.ci_id)
    assert err.value.rc == NvmlReturn.IN_USE
    node.remove_process(ci.uuid, 4242)
    node.destroy_compute_instance(0, gi.gi_id, ci.ci_id)
    node.destroy_gpu_instance(0, gi.gi_id)
    assert node.gpus[0].gis == {}


def test_destroying_what_is_not_there_is_not_found(node: SimulatedNode) -> None:
    with pytest.raises(SimNvmlError) as err:
        node.destroy_gpu_instance(0, 7)
    assert err.value.rc == NvmlReturn.NOT_FOUND


def test_recreating_gives_a_new_uuid(sim: SimulatedBackend) -> None:
    first = sim.create_instance(0, "3g.40gb", 0)
    sim.destroy_instance(0, first.gi_id)
    second = sim.create_instance(0, "3g.40gb", 0)
    assert first.uuid and second.uuid and first.uuid != second.uuid
    assert first.gi_id == second.gi_id  # same placement, same GI id; the MIG device is new


def test_gi_ids_follow_the_placement_slots(sim: SimulatedBackend) -> None:
    made = [sim.create_instance(0, p, s) for p, s in (("3g.40gb", 0), ("2g.20gb", 4), ("1g.10gb", 6))]
    assert [m.gi_id for m in made] == [1, 5, 13]
    assert sim.create_instance(1, "7g.80gb", 0).gi_id == 0


def test_compute_instance_profiles_of_the_h100_double_memory_1g_default_to_rev1(node: SimulatedNode) -> None:
    gi = node.create_gpu_instance(0, h100_id("1g.20gb"), 6, 2)
    assert node.ci_profile(0, gi.gi_id, 7) == (7, 1)  # NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE_REV1
    with pytest.raises(SimNvmlError) as err:
        node.ci_profile(0, gi.gi_id, 2)  # a 3-slice CI in a 1-slice GI
    assert err.value.rc == NvmlReturn.NOT_SUPPORTED


def test_sub_compute_instances_use_up_the_gpu_instance(node: SimulatedNode) -> None:
    gi = node.create_gpu_instance(0, h100_id("3g.40gb"), 0, 4)
    node.create_compute_instance(0, gi.gi_id, 1)  # 2 slices of 3
    node.create_compute_instance(0, gi.gi_id, 0)  # 1 slice
    with pytest.raises(SimNvmlError) as err:
        node.create_compute_instance(0, gi.gi_id, 0)
    assert err.value.rc == NvmlReturn.INSUFFICIENT_RESOURCES


def test_mig_off_refuses_creation_and_lists_nothing(make_node) -> None:
    backend = SimulatedBackend(make_node("h100-80gb", mig=False))
    assert backend.list_instances(0) == []
    with pytest.raises(NotSupported):
        backend.create_instance(0, "1g.10gb", 0)


def test_hopper_switches_mig_without_a_reset(make_node) -> None:
    backend = SimulatedBackend(make_node("h100-80gb", mig=False))
    change = backend.set_mig_mode(0, True)
    assert (change.current, change.pending, change.reset_needed) == (True, True, False)


def test_ampere_needs_a_reset_to_switch_mig(make_node) -> None:
    node = make_node("a100-40gb", mig=False)
    backend = SimulatedBackend(node)
    change = backend.set_mig_mode(0, True)
    assert (change.current, change.pending, change.reset_needed) == (False, True, True)
    node.reset_gpu(0)
    assert backend.list_gpus()[0].mig_current is True


def test_mig_cannot_be_switched_off_with_instances(sim: SimulatedBackend) -> None:
    sim.create_instance(0, "1g.10gb", 0)
    with pytest.raises(InstanceBusy):
        sim.set_mig_mode(0, False)


def test_reboot_loses_every_layout_and_hopper_mig_mode(make_node) -> None:
    node = make_node("h100-80gb", "a100-40gb")
    backend = SimulatedBackend(node)
    backend.create_instance(0, "3g.40gb", 0)
    backend.create_instance(1, "3g.20gb", 0)
    node.reboot()
    gpus = backend.list_gpus()
    assert [g.mig_current for g in gpus] == [False, True]  # Ampere keeps MIG mode, Hopper does not
    assert backend.list_instances(1) == []


def test_fault_injection_fails_the_next_n_calls(node: SimulatedNode) -> None:
    node.inject_fault("nvmlDeviceCreateGpuInstanceWithPlacement", NvmlReturn.TIMEOUT, count=2)
    backend = SimulatedBackend(node)
    for _ in range(2):
        with pytest.raises(TransientNvmlError):
            backend.create_instance(0, "1g.10gb", 0)
    assert backend.create_instance(0, "1g.10gb", 0).profile == "1g.10gb"


def test_fault_with_negative_count_keeps_failing(node: SimulatedNode) -> None:
    node.inject_fault("*", NvmlReturn.NO_PERMISSION, count=-1)
    backend = SimulatedBackend(node)
    for _ in range(3):
        with pytest.raises(NoPermission):
            backend.list_gpus()


def test_unknown_fault_call_is_refused(node: SimulatedNode) -> None:
    with pytest.raises(InvalidInput, match="nvmlDeviceCreateGpuInstanceWithPlacement"):
        node.inject_fault("nvmlCreateEverything", 3)


def test_a_failed_compute_instance_leaves_no_gpu_instance(node: SimulatedNode) -> None:
    node.inject_fault("nvmlGpuInstanceCreateComputeInstance", NvmlReturn.INSUFFICIENT_RESOURCES)
    backend = SimulatedBackend(node)
    with pytest.raises(PlacementTaken):
        backend.create_instance(0, "2g.20gb", 2)
    assert backend.list_instances(0) == []


def test_a_gpu_instance_that_cannot_be_cleaned_up_is_named_as_the_nvml_backend_names_it(
    any_backend: GpuBackend, node: SimulatedNode
) -> None:
    """The CI create fails (transient), then the clean-up destroy is refused: both backends
    raise GpuInstanceLeft (not transient) with the CI's code and the GI's id. The simulated one
    used to re-raise the transient error, and the retried create then found its own GI at the
    placement and said PlacementTaken."""
    node.inject_fault("nvmlGpuInstanceCreateComputeInstance", NvmlReturn.UNKNOWN)
    node.inject_fault("nvmlGpuInstanceDestroy", NvmlReturn.IN_USE)
    with pytest.raises(GpuInstanceLeft) as caught:
        call_with_retry(NO_WAIT_RETRY, any_backend.create_instance, 0, "2g.20gb", 2)
    [left] = any_backend.list_instances(0)
    assert (left.profile, left.start, left.ci_id, left.empty) == ("2g.20gb", 2, None, True)
    assert (caught.value.rc, caught.value.gi_id) == (NvmlReturn.UNKNOWN, left.gi_id)
    assert not isinstance(caught.value, TransientNvmlError)
    message = str(caught.value)
    assert f"GPU instance {left.gi_id}" in message and "UNKNOWN" in message and "IN_USE" in message
    assert node.calls.count("nvmlDeviceCreateGpuInstanceWithPlacement") == 1  # not retried


@pytest.mark.parametrize(
    ("rc", "error"), [(NvmlReturn.NO_PERMISSION, NoPermission), (NvmlReturn.GPU_IS_LOST, GpuGone)]
)
def test_a_fatal_or_gpu_lost_error_wins_over_a_gpu_instance_left(
    any_backend: GpuBackend, node: SimulatedNode, rc: NvmlReturn, error: type[Exception]
) -> None:
    """As NvmlBackend: an error that says more (Fatal, the GPU gone) is raised as it is, even
    though the GI stays."""
    node.inject_fault("nvmlGpuInstanceCreateComputeInstance", rc)
    node.inject_fault("nvmlGpuInstanceDestroy", NvmlReturn.IN_USE)
    with pytest.raises(error) as caught:
        any_backend.create_instance(0, "2g.20gb", 2)
    assert not isinstance(caught.value, GpuInstanceLeft)
    [left] = any_backend.list_instances(0)
    assert (left.profile, left.start, left.empty) == ("2g.20gb", 2, True)


def test_a_transient_compute_instance_error_whose_gpu_instance_went_is_retried(
    any_backend: GpuBackend, node: SimulatedNode
) -> None:
    """The clean-up destroy works: the original (transient) error stands, and the retry makes it."""
    node.inject_fault("nvmlGpuInstanceCreateComputeInstance", NvmlReturn.UNKNOWN)
    made = call_with_retry(NO_WAIT_RETRY, any_backend.create_instance, 0, "2g.20gb", 2)
    assert made.healthy and [i.gi_id for i in any_backend.list_instances(0)] == [made.gi_id]
    assert node.calls.count("nvmlDeviceCreateGpuInstanceWithPlacement") == 2


def test_crash_between_gi_and_ci_leaves_the_gi(node: SimulatedNode) -> None:
    node.crash_before_next_compute_instance = True
    backend = SimulatedBackend(node)
    with pytest.raises(SimulatedCrash):
        backend.create_instance(0, "2g.20gb", 2)
    [orphan] = backend.list_instances(0)
    assert (orphan.profile, orphan.start, orphan.ci_id, orphan.uuid, orphan.healthy) == (
        "2g.20gb",
        2,
        None,
        None,
        False,
    )


def test_backend_errors_map_to_cdmo_errors(sim: SimulatedBackend) -> None:
    with pytest.raises(AlreadyGone):
        sim.destroy_instance(0, 3)
    with pytest.raises(InvalidPlacement):
        sim.create_instance(0, "3g.40gb", 2)
    with pytest.raises(NotSupported):
        sim.create_instance(0, "1g.6gb", 0)  # an A30 profile


def test_processes_are_listed_per_mig_device(sim: SimulatedBackend, node: SimulatedNode) -> None:
    inst = sim.create_instance(0, "1g.10gb", 3)
    sim.create_instance(0, "1g.10gb", 4)
    node.add_process(inst.uuid, 11)
    node.add_process(inst.uuid, 12)
    assert sim.list_processes(0) == {inst.uuid: (11, 12)}


def test_add_process_to_unknown_uuid_is_refused(node: SimulatedNode) -> None:
    with pytest.raises(InvalidInput):
        node.add_process("MIG-nope", 1)


def test_a_backend_needs_gpus() -> None:
    with pytest.raises(InvalidInput):
        SimulatedBackend()


def test_parse_models() -> None:
    assert parse_models("h100-80gb, NVIDIA A100-SXM4-40GB") == ("h100-80gb", "a100-40gb")
    with pytest.raises(UnknownModel):
        parse_models("h100-80gb,v100")
    with pytest.raises(InvalidInput):
        parse_models(" , ")


# --- the state file ----------------------------------------------------------------------------


def test_state_round_trips(tmp_path: Path, node: SimulatedNode) -> None:
    backend = SimulatedBackend(node)
    a = backend.create_instance(0, "3g.40gb", 0)
    backend.create_instance(1, "1g.20gb", 6)
    node.add_process(a.uuid, 77)
    node.inject_fault("nvmlGpuInstanceDestroy", NvmlReturn.IN_USE, 2)
    save_state(node, tmp_path / "s.json")
    again = load_state(tmp_path / "s.json")
    assert dump_state(again) == dump_state(node)
    assert again.next_uuid == node.next_uuid


def test_state_file_is_shared_by_separate_backends(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    first = SimulatedBackend(state_file=path, new_gpus=("h100-80gb",))
    made = first.create_instance(0, "4g.40gb", 0)
    second = SimulatedBackend(state_file=path)
    assert [(i.profile, i.uuid) for i in second.list_instances(0)] == [("4g.40gb", made.uuid)]
    doc = json.loads(path.read_text())
    assert doc["gpus"][0]["instances"][0]["compute_instances"][0]["uuid"] == made.uuid


def test_a_process_written_into_the_file_makes_the_instance_busy(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    backend = SimulatedBackend(state_file=path, new_gpus=("h100-80gb",))
    made = backend.create_instance(0, "2g.20gb", 0)
    doc = json.loads(path.read_text())
    doc["gpus"][0]["instances"][0]["compute_instances"][0]["processes"] = [4242]
    path.write_text(json.dumps(doc))
    assert backend.list_processes(0) == {made.uuid: (4242,)}
    with pytest.raises(InstanceBusy):
        backend.destroy_instance(0, made.gi_id)


def test_missing_state_file_without_models_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="--sim-gpus"):
        SimulatedBackend(state_file=tmp_path / "none.json")


def test_state_file_with_other_models_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    SimulatedBackend(state_file=path, new_gpus=("h100-80gb",))
    with pytest.raises(InvalidInput, match="holds GPUs h100-80gb"):
        SimulatedBackend(state_file=path, new_gpus=("a100-40gb",))


def test_state_file_is_saved_even_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    with open_state(path, new_gpus=("h100-80gb",)) as node:
        node.crash_before_next_compute_instance = True
    backend = SimulatedBackend(state_file=path)
    with pytest.raises(SimulatedCrash):
        backend.create_instance(0, "1g.10gb", 2)
    [orphan] = SimulatedBackend(state_file=path).list_instances(0)
    assert (
        orphan.ci_id is None and json.loads(path.read_text())["crash_before_next_compute_instance"] is False
    )


def test_concurrent_writers_do_not_lose_instances(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    SimulatedBackend(state_file=path, new_gpus=("h100-80gb",))
    errors: list[BaseException] = []

    def make(start: int) -> None:
        try:
            SimulatedBackend(state_file=path).create_instance(0, "1g.10gb", start)
        except BaseException as exc:  # collect for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=make, args=(s,)) for s in range(7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(i.start for i in SimulatedBackend(state_file=path).list_instances(0)) == list(range(7))


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "must be a JSON object"),
        ({"version": 2, "gpus": []}, "version 2"),
        ({"gpus": "x"}, "gpus: must be a list"),
        ({"gpus": [1]}, r"gpus\[0\] must be an object"),
        ({"gpus": [{"model": "h100-80gb", "index": 1}]}, "index must be 0"),
        (
            {
                "gpus": [
                    {
                        "model": "h100-80gb",
                        "instances": [{"profile": "3g.40gb", "start": 0}, {"profile": "4g.40gb", "start": 0}],
                    }
                ]
            },
            "no h100-80gb can hold",
        ),
        (
            {"gpus": [{"model": "h100-80gb", "instances": [{"profile": "3g.40gb", "start": "0"}]}]},
            r"gpus\[0\]\.instances\[0\]\.start: must be a whole number from 0 to 8, not \"0\"",
        ),
    ],
    ids=["not-object", "version", "gpus-not-list", "gpu-not-object", "index", "overlap", "start-type"],
)
def test_bad_state_documents_name_the_field(doc: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_state(doc)


def test_state_file_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{nope")
    with pytest.raises(InvalidInput, match="not valid JSON"):
        load_state(path)


def test_a_hand_written_state_file_gets_defaults(tmp_path: Path) -> None:
    doc = {
        "gpus": [
            {
                "model": "NVIDIA H100 80GB HBM3",
                "instances": [
                    {
                        "profile": "1g.20gb",
                        "start": 6,
                        "compute_instances": [{"uuid": "MIG-hand", "processes": [9]}],
                    }
                ],
            }
        ]
    }
    node = parse_state(doc)
    [inst] = SimulatedBackend(node).list_instances(0)
    assert (inst.profile, inst.gi_id, inst.ci_id, inst.uuid, inst.healthy) == (
        "1g.20gb",
        6,
        0,
        "MIG-hand",
        True,
    )
    assert node.gpus[0].uuid.startswith("GPU-")
