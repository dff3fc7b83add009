"""The catalog carries the shared hardware facts and finds models by every name they go by."""

from __future__ import annotations

import pytest

from cdmo.errors import UnknownModel, UnknownProfile
from cdmo.mig.catalog import all_models, find_model, get_model, model_keys

EXPECTED_MODELS = [
    "a30-24gb",
    "a100-40gb",
    "a100-80gb",
    "h100-80gb",
    "h100-94gb",
    "gh200-96gb",
    "h200-141gb",
    "b200-180gb",
    "rtx-pro-6000-blackwell",
]


def test_every_model_of_the_issue_is_in_the_catalog() -> None:
    assert list(model_keys()) == EXPECTED_MODELS


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("h100-80gb", "h100-80gb"),
        ("NVIDIA H100 80GB HBM3", "h100-80gb"),
        ("NVIDIA-H100-80GB-HBM3", "h100-80gb"),
        ("NVIDIA H100 PCIe", "h100-80gb"),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
        ("NVIDIA-A100-SXM4-40GB", "a100-40gb"),
        ("NVIDIA A100 80GB PCIe", "a100-80gb"),
        ("0x233010DE", "h100-80gb"),
        ("0x20b710de", "a30-24gb"),
        (0x20F310DE, "a100-80gb"),
        ("0x20F510DE", "a100-80gb"),
        ("NVIDIA H200", "h200-141gb"),
        ("NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition", "rtx-pro-6000-blackwell"),
    ],
    ids=lambda v: str(v),
)
def test_lookup_by_key_product_gfd_label_and_pci_id(text: str | int, key: str) -> None:
    model = find_model(text)
    assert model is not None
    assert model.key == key


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(UnknownModel) as info:
        get_model("NVIDIA T4")
    message = str(info.value)
    assert "NVIDIA T4" in message
    for key in EXPECTED_MODELS:
        assert key in message


def test_h100_profiles_carry_constants_ids_and_placements() -> None:
    h100 = get_model("h100-80gb")
    assert h100.profile_names == (
        "1g.10gb",
        "1g.10gb+me",
        "1g.20gb",
        "2g.20gb",
        "3g.40gb",
        "4g.40gb",
        "7g.80gb",
    )
    rev2 = h100.profile("1g.20gb")
    assert (rev2.nvml_constant, rev2.nvml_constant_value, rev2.profile_id) == (
        "NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2",
        9,
        15,
    )
    assert rev2.placement_size == 2 and rev2.starts == (0, 2, 4, 6)
    # Hopper's double-memory 1g gets the REV1 compute-instance profile by default (observed).
    assert rev2.default_ci.constant == "NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE_REV1"
    assert rev2.default_ci.value == 7
    me = h100.profile("1g.10gb+me")
    assert me.exclusive_group == "media-ext" and me.max_count == 1
    assert me.default_ci.constant == "NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE"  # from its base
    assert h100.profile("3g.40gb").placement_size == 4
    assert h100.profile("7g.80gb").profile_id == 0


@pytest.mark.parametrize(
    ("key", "profile", "constant", "profile_id"),
    [
        ("h100-80gb", "1g.10gb", 0, 19),
        ("h100-80gb", "1g.10gb+me", 7, 20),
        ("h100-80gb", "4g.40gb", 3, 5),
        ("a100-40gb", "3g.20gb", 2, 9),
        ("a30-24gb", "1g.6gb", 0, 14),
        ("a30-24gb", "4g.24gb", 3, 0),
        ("rtx-pro-6000-blackwell", "1g.24gb+gfx", 10, 47),
    ],
    ids=lambda v: str(v),
)
def test_profile_constant_differs_from_the_device_profile_id(
    key: str, profile: str, constant: int, profile_id: int
) -> None:
    # NVML takes the constant in GetGpuInstanceProfileInfo and the returned id everywhere else.
    p = get_model(key).profile(profile)
    assert (p.nvml_constant_value, p.profile_id) == (constant, profile_id)


def test_unknown_profile_names_the_models_profiles() -> None:
    with pytest.raises(UnknownProfile, match=r"1g\.10gb, 1g\.10gb\+me"):
        get_model("h100-80gb").profile("9g.99gb")


def test_every_profile_has_legal_placements_within_the_axis() -> None:
    for model in all_models():
        for p in model.profiles:
            assert p.starts, (model.key, p.name)
            assert all(s >= 0 and s + p.placement_size <= model.placement_axis_size for s in p.starts)
            assert 1 <= p.max_count <= model.max_instances


def test_mig_mode_reset_rule_by_architecture() -> None:
    assert get_model("a100-40gb").mig_mode_change_needs_reset
    assert get_model("a30-24gb").mig_mode_change_needs_reset
    assert not get_model("h100-80gb").mig_mode_change_needs_reset
    assert not get_model("b200-180gb").mig_mode_change_needs_reset
