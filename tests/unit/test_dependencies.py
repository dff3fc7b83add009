"""Dependency bounds that hold (issue 14): pyproject's lower bounds, the lowest-versions
constraints CI installs to run the end-to-end suite on them, and the image's lock file."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def runtime_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    return {canonicalize_name(r.name): r for r in reqs}


def pins(path: Path) -> dict[str, Version]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = Version(version)
    return out


def test_every_runtime_dependency_has_a_lower_bound() -> None:
    for name, req in runtime_requirements().items():
        assert any(s.operator == ">=" for s in req.specifier), f"{name} has no >= bound"


def test_kopf_is_at_least_the_release_that_logs_in_with_a_current_client() -> None:
    (bound,) = [s for s in runtime_requirements()["kopf"].specifier if s.operator == ">="]
    assert Version(bound.version) >= Version("1.45.0")  # and server-side selectors


def test_lowest_constraints_pin_each_dependency_to_its_lower_bound() -> None:
    lowest = pins(ROOT / "constraints" / "lowest.txt")
    reqs = runtime_requirements()
    assert set(lowest) == set(reqs)
    for name, req in reqs.items():
        (bound,) = [s for s in req.specifier if s.operator == ">="]
        assert lowest[name] == Version(bound.version), name


def test_the_image_lock_pins_every_runtime_dependency_within_its_bounds() -> None:
    locked = pins(ROOT / "constraints" / "image.txt")
    for name, req in runtime_requirements().items():
        assert name in locked, f"{name} is not pinned in constraints/image.txt"
        assert req.specifier.contains(locked[name]), f"{name}=={locked[name]} breaks {req}"


def test_the_image_installs_from_the_lock_file() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--constraint constraints/image.txt ." in dockerfile


def test_ci_runs_the_end_to_end_suite_on_the_lowest_versions() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-c constraints/lowest.txt" in ci and "tests/integration" in ci
