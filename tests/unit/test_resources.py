from __future__ import annotations

import pytest

from cdmo.errors import InvalidInput
from cdmo.mig.catalog import all_models, get_model
from cdmo.mig.resources import (
    MigResource,
    parse_mig_resource,
    profile_from_resource,
    queue_profile,
    resource_from_profile,
)


@pytest.mark.parametrize(
    ("resource", "profile"),
    [
        ("nvidia.com/mig-1g.10gb", "1g.10gb"),
        ("nvidia.com/mig-1g.10gb.me", "1g.10gb+me"),
        ("nvidia.com/mig-1g.24gb.me.all", "1g.24gb+me.all"),
        ("nvidia.com/mig-1g.24gb.gfx", "1g.24gb+gfx"),
        ("nvidia.com/mig-1g.24gb-me", "1g.24gb-me"),
        ("nvidia.com/mig-7g.141gb", "7g.141gb"),
    ],
)
def test_resource_names_map_to_profiles_and_back(resource: str, profile: str) -> None:
    assert profile_from_resource(resource) == profile
    assert resource_from_profile(profile) == resource


def test_every_catalog_profile_round_trips() -> None:
    for model in all_models():
        for p in model.profiles:
            assert profile_from_resource(p.resource_name) == p.name


@pytest.mark.parametrize("resource", ["nvidia.com/gpu", "nvidia.com/mig-big", "cpu"])
def test_non_mig_resources_are_refused(resource: str) -> None:
    with pytest.raises(InvalidInput):
        profile_from_resource(resource)


@pytest.mark.parametrize(
    ("key", "queue", "profile"),
    [
        ("h100-80gb", "slice-1", "1g.10gb"),
        ("h100-80gb", "slice-2", "2g.20gb"),
        ("h100-80gb", "slice-4", "4g.40gb"),
        ("h100-80gb", "slice-7", "7g.80gb"),
        ("a100-40gb", "slice-1", "1g.5gb"),
        ("a100-40gb", "slice-7", "7g.40gb"),
    ],
)
def test_clearml_queues_map_to_profiles(key: str, queue: str, profile: str) -> None:
    assert queue_profile(get_model(key), queue) == profile


def test_a_queue_the_model_cannot_serve_is_refused() -> None:
    with pytest.raises(InvalidInput, match="no 7-slice profile"):
        queue_profile(get_model("a30-24gb"), "slice-7")


@pytest.mark.parametrize(
    ("resource", "profile", "shared"),
    [
        ("nvidia.com/mig-1g.10gb", "1g.10gb", False),
        ("nvidia.com/mig-1g.10gb.shared", "1g.10gb", True),
        ("nvidia.com/mig-1g.10gb.me", "1g.10gb+me", False),
        ("nvidia.com/mig-1g.10gb.me.shared", "1g.10gb+me", True),
        ("nvidia.com/mig-1g.24gb-me.shared", "1g.24gb-me", True),
        ("nvidia.com/mig-7g.141gb", "7g.141gb", False),
    ],
)
def test_parse_mig_resource_reads_plain_and_shared_names(resource: str, profile: str, shared: bool) -> None:
    assert parse_mig_resource(resource) == MigResource(profile, shared)


@pytest.mark.parametrize(
    "resource",
    [
        "nvidia.com/gpu",
        "nvidia.com/gpu.shared",
        "cpu",
        "",
        "nvidia.com/mig-",
        "nvidia.com/mig-.shared",
        "nvidia.com/mig-big",
        "nvidia.com/mig-1g.10gb.shared.shared",
        "nvidia.com/mig-1g.10gb.bogus",
        "NVIDIA.COM/MIG-1G.10GB",
        "nvidia.com/mig-1g.10gb" + "0" * 10000,
    ],
)
def test_parse_mig_resource_says_none_for_anything_else_and_never_raises(resource: str) -> None:
    assert parse_mig_resource(resource) is None
