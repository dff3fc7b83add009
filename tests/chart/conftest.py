"""Shared pieces of the chart tests: the helm binary, rendering, and object look-ups.

helm comes from scripts/get-helm (.tools/bin/helm) or PATH. Where there is none the chart
tests skip and say how to get it, except in CI (CI set), where they fail: CI must run them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "cdmo"
#: The Kubernetes version whose schemas the rendered objects must satisfy.
KUBE_VERSION = "1.30"
RELEASE = "cdmo"
NAMESPACE = "cdmo-system"
NONDEFAULT_VALUES = Path(__file__).resolve().parent / "values-nondefault.yaml"
VAP_API = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"


def find_helm() -> str | None:
    local = ROOT / ".tools" / "bin" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("helm")


class HelmError(Exception):
    """helm exited non-zero; the message is its stderr."""


class Helm:
    """Runs helm against the chart; renders are cached, since many tests read the same one."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self._cache: dict[tuple[str, ...], list[dict[str, Any]]] = {}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.binary, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)

    def template_args(
        self,
        sets: Sequence[str] = (),
        values_files: Sequence[Path] = (),
        api_versions: Sequence[str] = (),
        include_crds: bool = False,
    ) -> list[str]:
        args = [
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            f"{KUBE_VERSION}.0",
        ]
        for f in values_files:
            args += ["--values", str(f)]
        for s in sets:
            args += ["--set", s]
        for a in api_versions:
            args += ["--api-versions", a]
        if include_crds:
            args.append("--include-crds")
        return args

    def render(
        self,
        *sets: str,
        values_files: Sequence[Path] = (),
        api_versions: Sequence[str] = (),
        include_crds: bool = False,
    ) -> list[dict[str, Any]]:
        """The rendered objects; raises HelmError with helm's message when rendering fails."""
        args = self.template_args(sets, values_files, api_versions, include_crds)
        key = tuple(args)
        if key not in self._cache:
            result = self.run(*args)
            if result.returncode != 0:
                raise HelmError(result.stderr.strip())
            self._cache[key] = [d for d in yaml.safe_load_all(result.stdout) if d]
        # Tests may poke at the objects; hand out copies.
        return yaml.safe_load(yaml.safe_dump(self._cache[key]))


@pytest.fixture(scope="session")
def helm() -> Helm:
    binary = find_helm()
    if binary is None:
        reason = "helm not found at .tools/bin/helm or on PATH; run `python3 scripts/get-helm`"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must run the chart tests: .ci/run calls scripts/get-helm)")
        pytest.skip(reason)
    return Helm(binary)


#: Named renders used across the tests: defaults, and every non-default branch at once.
RENDERS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "nondefault": {"values_files": (NONDEFAULT_VALUES,)},
    "defaults-on-1.30-cluster": {"api_versions": (VAP_API,)},
    "delete-pod": {"sets": ("agent.refreshStrategy=delete-pod",)},
    "refresh-none": {"sets": ("agent.refreshStrategy=none",)},
    "sighup-no-taint": {"sets": ("agent.refreshStrategy=sighup", "agent.reconfiguringTaint=")},
    "standalone": {"sets": ("operator.peering.enabled=false", "operator.replicas=1")},
    "sim-backend": {
        "sets": (
            "agent.backend=simulated",
            "agent.sim.gpus=h100-80gb\\,a100-40gb",
            "agent.sim.state=/tmp/gpus.json",
        )
    },
}


def render_named(helm: Helm, name: str) -> list[dict[str, Any]]:
    spec = RENDERS[name]
    return helm.render(
        *spec.get("sets", ()),
        values_files=spec.get("values_files", ()),
        api_versions=spec.get("api_versions", ()),
    )


def by_kind(objects: Iterable[Mapping[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [dict(o) for o in objects if o.get("kind") == kind]


def one(objects: Iterable[Mapping[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    """The single object of ``kind`` whose name ends with ``name_suffix``."""
    found = [o for o in by_kind(objects, kind) if o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, (
        f"expected one {kind} named *{name_suffix}, found {[o['metadata']['name'] for o in found]}"
    )
    return found[0]


def container(workload: Mapping[str, Any]) -> dict[str, Any]:
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c: Mapping[str, Any]) -> dict[str, Any]:
    """name -> value (a string) or valueFrom (a dict)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}
