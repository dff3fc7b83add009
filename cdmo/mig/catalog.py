"""The MIG hardware catalog: GPU models, their GPU-instance profiles and legal placements.

The facts live in ``data/mig-profiles.yaml`` (carried from the team's shared data file with its
citations); this module turns them into frozen dataclasses and answers look-ups by catalog key,
NVML product name, GPU-feature-discovery label and PCI device id.

Pure: imports nothing of Kubernetes or NVML, reads only its own package data.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from cdmo.errors import UnknownModel, UnknownProfile

# The shared YAML helper lives in cdmo.yamlload; re-exported here for the callers that import it
# from the catalog.
from cdmo.yamlload import load_yaml as load_yaml

#: Profile names as NVIDIA writes them: 1g.10gb, 1g.10gb+me, 1g.24gb+me.all, 1g.24gb+gfx, 1g.24gb-me.
PROFILE_NAME_PATTERN = r"^[0-9]+g\.[0-9]+gb(\+me\.all|\+me|\+gfx|-me)?$"
_PROFILE_NAME_RE = re.compile(PROFILE_NAME_PATTERN)


@dataclass(frozen=True)
class CiProfile:
    """A compute-instance profile: the NVML constant's name and value."""

    constant: str
    value: int


@dataclass(frozen=True)
class Profile:
    """One GPU-instance profile of one GPU model."""

    name: str
    #: NVML_GPU_INSTANCE_PROFILE_* name and value: what nvmlDeviceGetGpuInstanceProfileInfo takes.
    nvml_constant: str
    nvml_constant_value: int
    #: The device's profile id (nvidia-smi's ID): what placement, create and list calls take.
    profile_id: int
    compute_slices: int
    #: Units the instance occupies on the GPU's placement (memory) axis.
    placement_size: int
    memory_mib: int | None
    max_count: int
    starts: tuple[int, ...]
    exclusive_group: str | None
    default_ci: CiProfile
    variant_of: str | None
    sm_count: int | None
    #: Field names that the data file marks as inferred rather than read from a source.
    inferred: tuple[str, ...] = ()

    @property
    def resource_name(self) -> str:
        """The device plugin's mixed-strategy resource name (``+`` written as ``.``)."""
        return "nvidia.com/mig-" + self.name.replace("+", ".")

    @property
    def is_variant(self) -> bool:
        """True for +me, +gfx, +me.all and -me profiles: same geometry as a base profile."""
        return self.variant_of is not None

    def units(self, start: int) -> range:
        """The placement units an instance at ``start`` occupies."""
        return range(start, start + self.placement_size)

    def mask(self, start: int) -> int:
        """Bit mask of the placement units an instance at ``start`` occupies."""
        return ((1 << self.placement_size) - 1) << start


@dataclass(frozen=True)
class GpuModel:
    """A GPU model that supports MIG, with every profile it offers."""

    key: str
    product_names: tuple[str, ...]
    pci_device_ids: tuple[int, ...]
    architecture: str
    total_memory_mib: int | None
    placement_axis_size: int
    compute_slices_total: int
    max_instances: int
    confidence: str
    profiles: tuple[Profile, ...] = field(repr=False)

    @functools.cached_property
    def _by_name(self) -> dict[str, Profile]:
        return {p.name: p for p in self.profiles}

    def profile(self, name: str) -> Profile:
        """The profile called ``name``; raises UnknownProfile naming the model's profiles."""
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownProfile(
                f"{name} is not a MIG profile of {self.key}",
                hint="its profiles are " + ", ".join(self.profile_names),
            ) from None

    def has_profile(self, name: str) -> bool:
        return name in self._by_name

    @property
    def profile_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.profiles)

    @property
    def base_profiles(self) -> tuple[Profile, ...]:
        """Profiles that are not variants (+me, +gfx, ...) of another."""
        return tuple(p for p in self.profiles if not p.is_variant)

    @property
    def mig_mode_change_needs_reset(self) -> bool:
        """Ampere needs a GPU reset after SetMigMode; Hopper and later switch without one."""
        return self.architecture.lower().startswith("ampere")

    @property
    def gfd_product_labels(self) -> tuple[str, ...]:
        """The ``nvidia.com/gpu.product`` label values (GPU feature discovery writes spaces as -)."""
        return tuple(gfd_label(n) for n in self.product_names)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GpuModel) and other.key == self.key


def gfd_label(product_name: str) -> str:
    """The GPU feature discovery label form of an NVML product name."""
    return re.sub(r"\s+", "-", product_name.strip())


def is_profile_name(text: str) -> bool:
    """Whether ``text`` has the shape of a MIG profile name (it may still be absent on a model)."""
    return bool(_PROFILE_NAME_RE.match(text))


def _parse_pci_ids(raw: list[str]) -> tuple[int, ...]:
    # Data entries carry notes, e.g. "0x20F310DE / 0x20F510DE (A800 80GB)".
    ids: list[int] = []
    for entry in raw:
        ids.extend(int(h, 16) for h in re.findall(r"0x[0-9A-Fa-f]{8}", str(entry)))
    return tuple(ids)


def _ci_profile(raw: dict[str, Any] | None, constants: dict[str, int]) -> CiProfile | None:
    if not raw:
        return None
    name = raw["constant"]
    return CiProfile(name, constants[name])


def _build_model(raw: dict[str, Any], gi_consts: dict[str, int], ci_consts: dict[str, int]) -> GpuModel:
    raw_profiles = raw["gpu_instance_profiles"]
    defaults = {p["name"]: _ci_profile(p.get("default_ci_profile"), ci_consts) for p in raw_profiles}
    profiles = []
    for p in raw_profiles:
        ci = defaults[p["name"]] or (defaults.get(p["variant_of"]) if p.get("variant_of") else None)
        if ci is None:
            raise ValueError(f"catalog: {raw['key']} {p['name']} has no default CI profile")
        profiles.append(
            Profile(
                name=p["name"],
                nvml_constant=p["nvml_profile_constant"],
                nvml_constant_value=gi_consts[p["nvml_profile_constant"]],
                profile_id=int(p["smi_profile_id"]),
                compute_slices=int(p["compute_slices"]),
                placement_size=int(p["memory_slices"]),
                memory_mib=p.get("memory_mib"),
                max_count=int(p["max_count"]),
                starts=tuple(sorted(int(pl["start"]) for pl in p["placements"])),
                exclusive_group=p.get("exclusive_group"),
                default_ci=ci,
                variant_of=p.get("variant_of"),
                sm_count=p.get("sm_count"),
                inferred=tuple(str(i) for i in p.get("inferred") or ()),
            )
        )
    return GpuModel(
        key=raw["key"],
        product_names=tuple(raw["product_names"]),
        pci_device_ids=_parse_pci_ids(raw.get("pci_device_ids") or []),
        architecture=raw["architecture"],
        total_memory_mib=raw.get("total_memory_mib"),
        placement_axis_size=int(raw["placement_axis_size"]),
        compute_slices_total=int(raw["compute_slices_total"]),
        max_instances=int(raw["max_instances"]),
        confidence=str(raw.get("confidence", "")),
        profiles=tuple(profiles),
    )


@functools.cache
def _raw_catalog() -> dict[str, Any]:
    text = resources.files("cdmo.mig").joinpath("data/mig-profiles.yaml").read_text()
    data: dict[str, Any] = load_yaml(text)  # packaged with cdmo: a mapping, checked by tests
    return data


@functools.cache
def all_models() -> tuple[GpuModel, ...]:
    """Every GPU model of the catalog, in the data file's order."""
    raw = _raw_catalog()
    gi = raw["nvml_constants"]["gpu_instance_profiles"]
    ci = raw["nvml_constants"]["compute_instance_profiles"]
    return tuple(_build_model(m, gi, ci) for m in raw["models"])


def model_keys() -> tuple[str, ...]:
    return tuple(m.key for m in all_models())


def nvml_constants() -> dict[str, dict[str, int]]:
    """NVML_GPU_INSTANCE_PROFILE_* and NVML_COMPUTE_INSTANCE_PROFILE_* values from nvml.h."""
    raw = _raw_catalog()["nvml_constants"]
    return {
        "gpu_instance_profiles": dict(raw["gpu_instance_profiles"]),
        "compute_instance_profiles": dict(raw["compute_instance_profiles"]),
    }


def _norm(text: str) -> str:
    return re.sub(r"[\s_-]+", "-", text.strip().lower())


@functools.cache
def _lookup_table() -> dict[str, GpuModel]:
    table: dict[str, GpuModel] = {}
    for m in all_models():
        table[_norm(m.key)] = m
        for name in m.product_names:
            table[_norm(name)] = m  # covers the GFD label form too: spaces and dashes fold alike
    return table


def find_model(text: str | int) -> GpuModel | None:
    """The model for a catalog key, NVML product name, GFD label or PCI device id; else None."""
    if isinstance(text, int):
        return _by_pci_id(text)
    return _find_by_text(str(text))


@functools.lru_cache(maxsize=1024)
def _find_by_text(text: str) -> GpuModel | None:
    # Planning parses every GPU's model string, and a cluster has only a few distinct ones; the
    # catalog never changes within a process, so the answer for a string is cached (bounded, as
    # snapshots may carry any string).
    stripped = text.strip()
    if re.fullmatch(r"0x[0-9A-Fa-f]{8}", stripped):
        return _by_pci_id(int(stripped, 16))
    return _lookup_table().get(_norm(stripped))


def _by_pci_id(pci_id: int) -> GpuModel | None:
    for m in all_models():
        if pci_id in m.pci_device_ids:
            return m
    return None


def get_model(text: str | int) -> GpuModel:
    """Like :func:`find_model`, but raises UnknownModel listing the known models."""
    model = find_model(text)
    if model is None:
        raise UnknownModel(
            f"unknown GPU model {text!r}",
            hint="known models are "
            + ", ".join(model_keys())
            + " (a catalog key, an NVML product name such as 'NVIDIA H100 80GB HBM3',"
            " a GFD label such as NVIDIA-H100-80GB-HBM3, or a PCI device id such as 0x233010DE)",
        )
    return model


def models_with_profile(name: str) -> tuple[GpuModel, ...]:
    """Every model that offers a profile called ``name``."""
    return tuple(m for m in all_models() if m.has_profile(name))
