"""GPU models, MIG profiles, placements and valid layouts: data plus pure code.

Must not import Kubernetes, kopf or NVML.
"""

from cdmo.mig.catalog import GpuModel, Profile, all_models, find_model, get_model, model_keys
from cdmo.mig.layouts import (
    Instance,
    check_layout,
    enumerate_layouts,
    format_layout,
    free_placements,
    named_layout,
    named_layouts,
    parse_layout,
    validate_layout,
)
from cdmo.mig.resources import profile_from_resource, resource_from_profile

__all__ = [
    "GpuModel",
    "Instance",
    "Profile",
    "all_models",
    "check_layout",
    "enumerate_layouts",
    "find_model",
    "format_layout",
    "free_placements",
    "get_model",
    "model_keys",
    "named_layout",
    "named_layouts",
    "parse_layout",
    "profile_from_resource",
    "resource_from_profile",
    "validate_layout",
]
